//! The C ABI driven by arbitrary bytes (the `capi` fuzz target, and its corpus replay in
//! tests/fuzz_corpus.rs): the bytes are read as a script of calls on a tiny random-weight
//! model, one engine resident and one at its minimum budget (streaming both layers from
//! disk): create and free up to four sequences; steps, evals and host-sampled iterations
//! with parameters, token ids (negative and out-of-vocabulary ones too) and output
//! capacities taken from the bytes; truncates, resets, token reads; NULL where a pointer
//! is required. Every call must return a status; a panic caught at the boundary (status
//! `PANIC`), an `INTERNAL` error, an output count past its buffer or a sequence that
//! changes on a failed call is a bug, and this function panics so the fuzzer reports it.

use std::path::PathBuf;
use std::sync::OnceLock;

use super::*;
use crate::checkpoint::DType;
use crate::synth::{write_model, SynthShape};

/// Reads the script: bytes, little-endian numbers, zeros past the end.
struct Script<'a>(&'a [u8]);

impl Script<'_> {
    fn done(&self) -> bool {
        self.0.is_empty()
    }
    fn u8(&mut self) -> u8 {
        match self.0.split_first() {
            Some((&b, rest)) => {
                self.0 = rest;
                b
            }
            None => 0,
        }
    }
    fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }
    fn u64(&mut self) -> u64 {
        (0..8).fold(0, |a, i| a | (self.u8() as u64) << (8 * i))
    }
    /// A token id: mostly inside the tiny model's 128, sometimes far outside or negative.
    fn token(&mut self) -> i32 {
        match self.u8() {
            b @ 0..=199 => (b % 128) as i32,
            200..=227 => self.u16() as i32,
            228..=255 => -(self.u8() as i32) - 1,
        }
    }
    fn tokens(&mut self) -> Vec<i32> {
        let n = self.u8() % 12;
        (0..n).map(|_| self.token()).collect()
    }
}

/// The two engines, as addresses (the handles are shared across threads by design).
fn engines() -> &'static [usize; 2] {
    static E: OnceLock<[usize; 2]> = OnceLock::new();
    E.get_or_init(|| {
        let dir: PathBuf =
            std::env::temp_dir().join(format!("subspec-fuzz-capi-{}", std::process::id()));
        if !dir.join("model.safetensors").is_file() {
            let shape = SynthShape::named("tiny").expect("a known shape");
            write_model(&dir, &shape, DType::F16, 3).expect("writing the fuzz model");
        }
        let path = std::ffi::CString::new(dir.to_str().expect("a UTF-8 temp dir"))
            .expect("no NUL in the path");
        let load = |min_budget: bool| -> usize {
            let mut p = std::mem::MaybeUninit::<subspec_load_params>::uninit();
            let mut e = std::ptr::null_mut();
            // SAFETY: the init function writes the whole struct; the path outlives the calls.
            unsafe {
                assert_eq!(
                    subspec_load_params_init(
                        p.as_mut_ptr(),
                        std::mem::size_of::<subspec_load_params>()
                    ),
                    subspec_status::Ok
                );
                let mut p = p.assume_init();
                p.model_path = path.as_ptr();
                p.context_length = 64;
                p.require_tokenizer = false;
                p.threads = 1;
                if min_budget {
                    let mut min = 0;
                    assert_eq!(subspec_minimum_budget(&p, &mut min), subspec_status::Ok);
                    p.memory_budget = min;
                }
                assert_eq!(subspec_load(&p, &mut e), subspec_status::Ok);
            }
            e as usize
        };
        [load(false), load(true)]
    })
}

/// Panics (for the fuzzer) on a status that means a bug.
fn check(st: subspec_status, call: &str) -> subspec_status {
    assert!(
        !matches!(st, subspec_status::Panic | subspec_status::Internal),
        "{call}: {st:?}"
    );
    st
}

/// Step parameters from the script, often valid, sometimes out of range.
fn step_params(engine: *const subspec_engine, s: &mut Script) -> subspec_step_params {
    let mut p = std::mem::MaybeUninit::<subspec_step_params>::uninit();
    // SAFETY: a live engine; the init function writes the whole struct.
    let mut p = unsafe {
        let st = subspec_engine_step_params_init(
            engine,
            p.as_mut_ptr(),
            std::mem::size_of::<subspec_step_params>(),
        );
        assert_eq!(st, subspec_status::Ok);
        p.assume_init()
    };
    let flags = s.u8();
    p.speculate = flags & 1 != 0;
    p.adaptive_depth = flags & 2 != 0;
    if flags & 4 != 0 {
        p.temperature = s.u8() as f32 / 64.0;
        p.top_k = s.u8() as u32;
        p.top_p = s.u8() as f32 / 200.0;
        p.seed = s.u64();
    }
    if flags & 8 != 0 {
        p.tree_width = s.u8() as u32 % 10;
        p.tree_depth = s.u8() as u32 % 40;
        p.tree_max_tokens = s.u8() as u32;
    }
    p
}

/// `ids` as a C array: NULL when empty, as a caller without input passes it.
fn ids_or_null(ids: &[i32]) -> *const i32 {
    if ids.is_empty() {
        std::ptr::null()
    } else {
        ids.as_ptr()
    }
}

/// A sequence's tokens.
fn tokens_of(seq: *const subspec_sequence) -> Vec<i32> {
    let mut out = vec![0i32; 128];
    let mut n = 0;
    // SAFETY: a live sequence of this thread; `out` holds 128 ids (the context is 64).
    let st = unsafe { subspec_sequence_tokens(seq, out.as_mut_ptr(), out.len(), &mut n) };
    assert_eq!(st, subspec_status::Ok, "reading a sequence's tokens");
    out.truncate(n);
    out
}

/// Runs the script in `bytes`; returns how many calls it made.
pub fn capi(bytes: &[u8]) -> crate::error::Result<usize> {
    let mut s = Script(bytes);
    let engine = engines()[(s.u8() & 1) as usize] as *mut subspec_engine;
    let mut seqs: Vec<*mut subspec_sequence> = Vec::new();
    let mut calls = 0;
    while !s.done() {
        calls += 1;
        let op = s.u8();
        if op % 16 == 0 || seqs.is_empty() {
            if seqs.len() < 4 {
                let mut q = std::ptr::null_mut();
                // SAFETY: a live engine; an out pointer to a local.
                let st = unsafe { subspec_sequence_create(engine, &mut q) };
                assert_eq!(check(st, "create"), subspec_status::Ok);
                seqs.push(q);
            }
            continue;
        }
        let i = s.u8() as usize % seqs.len();
        let q = seqs[i];
        let before = tokens_of(q);
        let st = match op % 16 {
            1 => {
                // SAFETY: a live sequence, freed once (removed from the list).
                unsafe { subspec_sequence_free(q) };
                seqs.swap_remove(i);
                continue;
            }
            2..=6 => {
                let p = step_params(engine, &mut s);
                let input = s.tokens();
                let cap = s.u8() as usize % 12;
                let mut out = vec![-7i32; cap.max(1)];
                let mut n = usize::MAX;
                let null_out = op % 16 == 6 && s.u8() % 4 == 0;
                // SAFETY: a live sequence; `input` and `out` valid for their lengths (or
                // NULL on purpose, which must be refused).
                let st = check(
                    unsafe {
                        subspec_step(
                            q,
                            &p,
                            ids_or_null(&input),
                            input.len(),
                            if null_out {
                                std::ptr::null_mut()
                            } else {
                                out.as_mut_ptr()
                            },
                            cap,
                            &mut n,
                        )
                    },
                    "step",
                );
                if st == subspec_status::Ok {
                    assert!(n >= 1 && n <= cap, "step wrote {n} tokens into {cap}");
                    let after = tokens_of(q);
                    assert_eq!(&after[after.len() - n..], &out[..n], "step's tokens");
                }
                st
            }
            7 => {
                let len = s.u8() as usize % 80;
                // SAFETY: a live sequence.
                check(unsafe { subspec_sequence_truncate(q, len) }, "truncate")
            }
            8 => {
                // SAFETY: a live sequence.
                check(unsafe { subspec_sequence_reset(q) }, "reset")
            }
            9 => {
                let p = step_params(engine, &mut s);
                let input = s.tokens();
                // SAFETY: a live sequence; `input` valid for its length.
                check(
                    unsafe { subspec_iter_begin(q, &p, ids_or_null(&input), input.len()) },
                    "iter_begin",
                )
            }
            10 => {
                let (mut l, mut n) = (std::ptr::null(), 0usize);
                // SAFETY: a live sequence; out pointers to locals.
                let st = check(
                    unsafe { subspec_iter_logits(q, &mut l, &mut n) },
                    "iter_logits",
                );
                if st == subspec_status::Ok {
                    assert!(!l.is_null() && n == 128, "iter_logits: {n} logits");
                }
                st
            }
            11 => {
                let t = s.token();
                let mut has_next = false;
                // SAFETY: a live sequence; an out pointer to a local.
                check(
                    unsafe { subspec_iter_push(q, t, &mut has_next) },
                    "iter_push",
                )
            }
            12 => {
                let mut n = 0;
                // SAFETY: as above.
                check(unsafe { subspec_iter_end(q, &mut n) }, "iter_end")
            }
            13 => {
                // SAFETY: a live sequence.
                check(unsafe { subspec_iter_cancel(q) }, "iter_cancel")
            }
            14 => {
                let input = s.tokens();
                let cap = [0usize, 64, 128, 256][s.u8() as usize % 4];
                let mut logits = vec![0f32; cap.max(1)];
                let mut n = 0;
                // SAFETY: a live sequence; buffers valid for their lengths.
                check(
                    unsafe {
                        subspec_sequence_eval(
                            q,
                            ids_or_null(&input),
                            input.len(),
                            logits.as_mut_ptr(),
                            cap,
                            &mut n,
                        )
                    },
                    "eval",
                )
            }
            _ => {
                let cap = s.u8() as usize % 70;
                let mut out = vec![0i32; cap.max(1)];
                let mut n = 0;
                // SAFETY: a live sequence; `out` holds `cap` ids.
                let st = check(
                    unsafe { subspec_sequence_tokens(q, out.as_mut_ptr(), cap, &mut n) },
                    "tokens",
                );
                assert!(
                    n == before.len() && (st != subspec_status::Ok || n <= cap),
                    "tokens: {n} of {} into {cap} ({st:?})",
                    before.len()
                );
                st
            }
        };
        // A failed call changes nothing; iteration calls are exempt (an error inside an
        // open iteration leaves it open, with what was pushed).
        let changes_nothing = !matches!(op % 16, 9..=13);
        if st != subspec_status::Ok && changes_nothing {
            assert_eq!(
                tokens_of(q),
                before,
                "a failed call ({op}: {st:?}) changed the sequence"
            );
        }
    }
    for q in seqs {
        // SAFETY: live sequences, each freed once.
        unsafe { subspec_sequence_free(q) };
    }
    Ok(calls)
}
