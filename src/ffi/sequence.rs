//! Sequences from C: create, reset, truncate, free, step and statistics.
//!
//! Thread safety: an engine may be used from any number of threads at once; so may
//! *different* sequences. One sequence is used by one thread at a time: a call that finds
//! it busy on another thread fails with `INVALID_ARGUMENT` instead of racing (freeing a
//! sequence while another thread uses it is still the caller's bug).

use std::sync::{Arc, Mutex, MutexGuard, TryLockError};

use super::handle::{borrow, box_into_handle, clone_arc, free_box, Castable, OwnershipBox};
use super::*;
use crate::engine::{Sequence, StepOptions};
use crate::sample::SamplingParams;
use crate::spec::TreeParams;

/// A sequence: one conversation with its own KV cache. It holds a reference to its
/// engine, so it stays valid after `subspec_free(engine)`.
#[allow(non_camel_case_types)]
pub struct subspec_sequence {
    engine: Arc<subspec_engine>,
    seq: Mutex<Sequence>,
}

impl Castable for subspec_sequence {
    type Ownership = OwnershipBox;
    const ARG: &'static str = "seq";
}

/// How [`subspec_step`] chooses tokens. Start from [`subspec_step_default_params`].
#[repr(C)]
#[allow(non_camel_case_types)]
#[derive(Debug, Clone, Copy)]
pub struct subspec_step_params {
    /// Softmax temperature; `0` (default) is greedy.
    pub temperature: f32,
    /// Keep the `top_k` most likely tokens; `0` (default) keeps all.
    pub top_k: u32,
    /// Nucleus sampling threshold in (0, 1]; `1` (default) keeps all.
    pub top_p: f32,
    /// RNG seed; a token's draw depends only on (seed, position). Default 0.
    pub seed: u64,
    /// Draft a tree and verify it (default true; needs an engine with a draft). Output is
    /// identical either way, only faster with speculation.
    pub speculate: bool,
    /// Tree frontier width (default 1).
    pub tree_width: u32,
    /// Tree depth in draft steps (default 8).
    pub tree_depth: u32,
    /// Most tree nodes verified at once, root included (default 64; at most the engine's
    /// `max_tree_tokens`).
    pub tree_max_tokens: u32,
    /// Draft softmax temperature used to rank paths (default 0.2).
    pub draft_temperature: f32,
}

/// Greedy decoding, speculative with the default tree.
#[no_mangle]
pub extern "C" fn subspec_step_default_params() -> subspec_step_params {
    let s = SamplingParams::default();
    let t = TreeParams::default();
    subspec_step_params {
        temperature: s.temperature,
        top_k: s.top_k as u32,
        top_p: s.top_p,
        seed: s.seed,
        speculate: true,
        tree_width: t.width as u32,
        tree_depth: t.depth as u32,
        tree_max_tokens: t.max_tokens as u32,
        draft_temperature: t.draft_temperature,
    }
}

/// Writes to `*out` the step parameters that pay best for `engine`: greedy, speculative,
/// with the tree shape suited to its placement (deeper and wider when layers are
/// offloaded). Statuses: `OK`, `NULL_POINTER`, `PANIC`.
///
/// # Safety
/// `engine` must be NULL or a live engine handle; `out` NULL or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn subspec_engine_step_params(
    engine: *const subspec_engine,
    out: *mut subspec_step_params,
) -> subspec_status {
    // SAFETY: the caller's guarantee.
    unsafe {
        with_engine(engine, |e| {
            check_out(out, "out")?;
            let t = e.engine.default_tree();
            let p = subspec_step_params {
                tree_width: t.width as u32,
                tree_depth: t.depth as u32,
                tree_max_tokens: t.max_tokens as u32,
                draft_temperature: t.draft_temperature,
                ..subspec_step_default_params()
            };
            out.write(p);
            Ok(())
        })
    }
}

impl subspec_step_params {
    fn options(&self, max_tokens: usize) -> StepOptions {
        StepOptions {
            sampling: SamplingParams {
                temperature: self.temperature,
                top_k: self.top_k as usize,
                top_p: self.top_p,
                seed: self.seed,
            },
            speculate: self.speculate,
            tree: TreeParams {
                width: self.tree_width as usize,
                depth: self.tree_depth as usize,
                max_tokens: self.tree_max_tokens as usize,
                draft_temperature: self.draft_temperature,
                adaptive: false,
            },
            max_tokens,
        }
    }
}

impl subspec_sequence {
    /// The sequence, or a failure if another thread is using it.
    fn lock(&self) -> FfiResult<MutexGuard<'_, Sequence>> {
        match self.seq.try_lock() {
            Ok(g) => Ok(g),
            Err(TryLockError::WouldBlock) => Err(Failure::invalid(
                "the sequence is in use by another thread: use one sequence per thread",
            )),
            Err(TryLockError::Poisoned(_)) => Err(Failure::new(
                subspec_status::Internal,
                "the sequence is unusable after an internal panic: free it",
            )),
        }
    }
}

/// Runs `f` on a live sequence inside the boundary, recording failures on its engine.
///
/// # Safety
/// `seq` must be NULL or a live sequence handle.
unsafe fn with_sequence(
    seq: *const subspec_sequence,
    f: impl FnOnce(&subspec_sequence) -> FfiResult<()>,
) -> subspec_status {
    // SAFETY: the caller's guarantee.
    match unsafe { borrow(seq) } {
        Ok(s) => boundary(Some(&s.engine.last_error), || f(s)),
        Err(failure) => boundary(None, || Err(failure)),
    }
}

/// Creates an empty sequence on `engine` and writes it to `*out` (free it with
/// [`subspec_sequence_free`]). Its KV cache holds the engine's context length.
/// Statuses: `OK`, `NULL_POINTER`, `PANIC`; on failure `*out` is untouched.
///
/// # Safety
/// `engine` NULL or a live engine handle; `out` NULL or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn subspec_sequence_create(
    engine: *const subspec_engine,
    out: *mut *mut subspec_sequence,
) -> subspec_status {
    // SAFETY: the caller's guarantee.
    unsafe {
        with_engine(engine, |_| {
            check_out(out, "out")?;
            // The sequence's own count on the engine.
            let engine = clone_arc(engine)?;
            let seq = engine.engine.new_sequence()?;
            let handle = box_into_handle(subspec_sequence {
                engine,
                seq: Mutex::new(seq),
            });
            out.write(handle);
            Ok(())
        })
    }
}

/// Frees a sequence (and its reference to the engine); NULL is a no-op.
///
/// # Safety
/// `seq` must be NULL or a live sequence handle that no other thread is using.
#[no_mangle]
pub unsafe extern "C" fn subspec_sequence_free(seq: *mut subspec_sequence) {
    let _ = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: the caller's guarantee: a live handle, freed once.
        unsafe { free_box(seq) }
    }));
}

/// Empties the sequence and zeroes its statistics (the KV cache is kept for reuse).
/// Statuses: `OK`, `NULL_POINTER`, `INVALID_ARGUMENT` (in use on another thread), `PANIC`.
///
/// # Safety
/// `seq` must be NULL or a live sequence handle.
#[no_mangle]
pub unsafe extern "C" fn subspec_sequence_reset(seq: *mut subspec_sequence) -> subspec_status {
    // SAFETY: the caller's guarantee.
    unsafe {
        with_sequence(seq, |s| {
            s.lock()?.truncate(0);
            Ok(())
        })
    }
}

/// Keeps the first `len` tokens and forgets the rest (prompt reuse: the cached prefix is
/// not recomputed); `0` is a reset. `INVALID_ARGUMENT` if `len` is beyond the sequence's
/// length (nothing changes).
///
/// # Safety
/// `seq` must be NULL or a live sequence handle.
#[no_mangle]
pub unsafe extern "C" fn subspec_sequence_truncate(
    seq: *mut subspec_sequence,
    len: usize,
) -> subspec_status {
    // SAFETY: the caller's guarantee.
    unsafe {
        with_sequence(seq, |s| {
            let mut q = s.lock()?;
            if len > q.len() {
                return Err(Failure::invalid(format!(
                    "cannot truncate to {len}: the sequence has {} tokens",
                    q.len()
                )));
            }
            q.truncate(len);
            Ok(())
        })
    }
}

/// Copies the sequence's tokens (prompt and generated) into `out` (capacity `cap`) and
/// their number to `*n_out`; `BUFFER_TOO_SMALL` writes only `*n_out` (the number needed).
/// `out` may be NULL when `cap` is 0.
///
/// # Safety
/// `seq` NULL or live; `out` NULL or valid for `cap` writes; `n_out` NULL or valid.
#[no_mangle]
pub unsafe extern "C" fn subspec_sequence_tokens(
    seq: *const subspec_sequence,
    out: *mut i32,
    cap: usize,
    n_out: *mut usize,
) -> subspec_status {
    // SAFETY: the caller's guarantee.
    unsafe {
        with_sequence(seq, |s| {
            let ids: Vec<i32> = s.lock()?.tokens().iter().map(|&t| t as i32).collect();
            write_items(&ids, out, cap, n_out, "sequence tokens")
        })
    }
}

/// Statistics of a sequence since its creation or last reset.
#[repr(C)]
#[allow(non_camel_case_types)]
#[derive(Debug, Clone, Copy, Default)]
pub struct subspec_sequence_stats {
    /// Tokens in the sequence (prompt and generated).
    pub length: u64,
    /// Steps run (one target pass each, prompt prefill excluded).
    pub iterations: u64,
    /// Tokens emitted by those steps.
    pub generated: u64,
    /// Draft tokens accepted (`generated` minus one bonus token per step).
    pub accepted: u64,
    /// Draft forwards run.
    pub draft_steps: u64,
    /// Mean tokens per target pass (`generated / iterations`; 0 before the first step).
    pub tau: f64,
    /// Seconds spent drafting.
    pub draft_seconds: f64,
    /// Seconds spent in target passes (prefill and verification).
    pub verify_seconds: f64,
}

/// Writes the sequence's statistics to `*out`. Statuses: `OK`, `NULL_POINTER`,
/// `INVALID_ARGUMENT` (in use on another thread), `PANIC`.
///
/// # Safety
/// `seq` NULL or live; `out` NULL or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn subspec_sequence_get_stats(
    seq: *const subspec_sequence,
    out: *mut subspec_sequence_stats,
) -> subspec_status {
    // SAFETY: the caller's guarantee.
    unsafe {
        with_sequence(seq, |s| {
            check_out(out, "out")?;
            let q = s.lock()?;
            let st = q.stats();
            let stats = subspec_sequence_stats {
                length: q.len() as u64,
                iterations: st.iterations as u64,
                generated: st.generated as u64,
                accepted: st.accepted as u64,
                draft_steps: st.draft_steps as u64,
                tau: st.tau(),
                draft_seconds: st.draft_s,
                verify_seconds: st.verify_s,
            };
            out.write(stats);
            Ok(())
        })
    }
}

/// Appends `n_input` tokens to the sequence (a prompt, a user turn, or nothing), runs
/// them, and chooses the next token(s): one with `speculate` false, or every token of one
/// draft-and-verify iteration (accepted draft tokens plus the target's bonus token), at
/// most `out_capacity`. Writes them to `out` and their number (at least 1) to `*n_out`;
/// they are part of the sequence already (do not pass them back as input). Every token is
/// exactly the one plain decoding would choose, greedy or seeded. A step ends at an EOS
/// token, so only the last token returned can be one ([`subspec_is_eos`]): stop there, or
/// when the context is full.
///
/// Statuses: `OK`; `NULL_POINTER` (`seq`, `params`, `out`, `n_out`, or `input` with
/// `n_input > 0`); `BUFFER_TOO_SMALL` (`out_capacity` is 0); `INVALID_TOKEN` (an input id
/// is negative or outside the vocabulary); `INVALID_ARGUMENT` (a parameter out of range;
/// `speculate` without a draft; the sequence is empty and `n_input` is 0, e.g. after a
/// reset; in use on another thread); `CONTEXT_FULL`; `PANIC`.
/// After any failure the sequence is exactly as before the call (input not appended,
/// statistics unchanged) and `*n_out` and `out` are untouched.
///
/// # Safety
/// `seq` NULL or a live sequence handle; `params` NULL or valid; `input` NULL or valid for
/// `n_input` reads; `out` NULL or valid for `out_capacity` writes; `n_out` NULL or valid.
#[no_mangle]
pub unsafe extern "C" fn subspec_step(
    seq: *mut subspec_sequence,
    params: *const subspec_step_params,
    input: *const i32,
    n_input: usize,
    out: *mut i32,
    out_capacity: usize,
    n_out: *mut usize,
) -> subspec_status {
    // SAFETY: the caller's guarantee.
    unsafe {
        with_sequence(seq, |s| {
            let p = deref(params, "params")?;
            let input = token_ids(slice(input, n_input, "input")?)?;
            check_out(out, "out")?;
            check_out(n_out, "n_out")?;
            if out_capacity == 0 {
                return Err(Failure::new(
                    subspec_status::BufferTooSmall,
                    "out_capacity is 0: a step returns at least one token",
                ));
            }
            let opts = p.options(out_capacity);
            let mut q = s.lock()?;
            let before = q.len();
            q.append(&input)?;
            let tokens = match q.step(&opts) {
                Ok(t) if t.len() <= out_capacity => t,
                r => {
                    // The step left the sequence as it was; undo the append too.
                    q.truncate(before);
                    return Err(match r {
                        Err(e) => e.into(),
                        Ok(t) => Failure::new(
                            subspec_status::Internal,
                            format!("step returned {} tokens, over {out_capacity}", t.len()),
                        ),
                    });
                }
            };
            let ids: Vec<i32> = tokens.iter().map(|&t| t as i32).collect();
            std::ptr::copy_nonoverlapping(ids.as_ptr(), out, ids.len());
            n_out.write(ids.len());
            Ok(())
        })
    }
}
