//! Concurrency stress through the C ABI: 8 threads on one shared engine, each running
//! its own seeded script of steps (greedy and sampled, speculative and plain, bad token
//! ids, random output capacities), truncates, resets and free/create, must produce
//! exactly the trace the same scripts produce run one after another; and two threads
//! stepping one sequence on purpose get `INVALID_ARGUMENT` for the loser, never a
//! corrupted sequence. `SUBSPEC_STRESS_OPS` lengthens the scripts (CI uses the default).

mod common;

use std::sync::{Arc, Barrier};

use common::capi::{create, step, step_params, tokens, Handle, Rng};
use subspec::ffi::*;

const THREADS: u64 = 8;
const CONTEXT: u32 = 256;

/// Runs script `id` on its own sequence; returns, per operation, a description of the
/// call, its status, the tokens it returned and the sequence's tokens afterwards.
fn script(e: Handle<subspec_engine>, id: u64, ops: usize) -> Vec<String> {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (id + 1).wrapping_mul(0x2545_f491_4f6c_dd1d));
    let mut s = create(e);
    let mut trace = Vec::with_capacity(ops);
    for _ in 0..ops {
        let len = tokens(s).len();
        let op = rng.next(12);
        let what = match op {
            _ if len > CONTEXT as usize - 24 => {
                let to = rng.next(len as u64 / 2) as usize;
                // SAFETY: a live sequence of this thread.
                let st = unsafe { subspec_sequence_truncate(s.0, to) };
                format!("truncate {to}: {st:?}")
            }
            0..=7 => {
                let mut input: Vec<i32> = (0..if len == 0 {
                    1 + rng.next(8)
                } else {
                    rng.next(2)
                })
                    .map(|_| rng.next(128) as i32)
                    .collect();
                if rng.next(10) == 0 {
                    // An id outside the 128-token vocabulary: refused, nothing changes.
                    input.push(128 + rng.next(1000) as i32);
                }
                let sp = if rng.next(2) == 0 {
                    step_params(0.0, 0, rng.next(3) != 0)
                } else {
                    step_params(0.8, rng.next(1 << 20), rng.next(3) != 0)
                };
                let cap = 1 + rng.next(8) as usize;
                let (st, out) = step(s, &sp, &input, cap);
                format!(
                    "step {input:?} t={} seed={} spec={} cap={cap}: {st:?} {out:?}",
                    sp.temperature, sp.seed, sp.speculate
                )
            }
            8 | 9 => {
                let to = rng.next(len as u64 + 1) as usize;
                // SAFETY: a live sequence of this thread.
                let st = unsafe { subspec_sequence_truncate(s.0, to) };
                format!("truncate {to}: {st:?}")
            }
            10 => {
                // SAFETY: a live sequence of this thread.
                let st = unsafe { subspec_sequence_reset(s.0) };
                format!("reset: {st:?}")
            }
            _ => {
                // SAFETY: a live sequence of this thread, not used again.
                unsafe { subspec_sequence_free(s.0) };
                s = create(e);
                "free and create".to_string()
            }
        };
        trace.push(format!("{what} -> {:?}", tokens(s)));
    }
    // SAFETY: a live sequence of this thread, not used again.
    unsafe { subspec_sequence_free(s.0) };
    trace
}

fn ops() -> usize {
    std::env::var("SUBSPEC_STRESS_OPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300)
}

#[test]
fn eight_threads_match_the_serial_run() {
    let dir = common::temp_dir("stress");
    common::write_tiny_model(&dir, false);
    let e = common::capi::load(&dir, CONTEXT, 0, 1);
    let ops = ops();
    let serial: Vec<Vec<String>> = (0..THREADS).map(|id| script(e, id, ops)).collect();
    for round in 0..2 {
        let barrier = Arc::new(Barrier::new(THREADS as usize));
        let threads: Vec<_> = (0..THREADS)
            .map(|id| {
                let barrier = barrier.clone();
                std::thread::spawn(move || {
                    barrier.wait();
                    script(e, id, ops)
                })
            })
            .collect();
        for (id, t) in threads.into_iter().enumerate() {
            let got = t.join().expect("a stress thread panicked");
            for (k, (g, w)) in got.iter().zip(&serial[id]).enumerate() {
                assert_eq!(g, w, "round {round}, thread {id}, operation {k}");
            }
        }
    }
    // The scripts exercised what they are meant to: successful speculative steps, refused
    // ids, and sequences near the context limit.
    let all = serial.concat();
    assert!(all
        .iter()
        .any(|t| t.contains("spec=true") && t.contains(": Ok [")));
    assert!(all.iter().any(|t| t.contains(": InvalidToken [")));
    assert!(all.iter().any(|t| t.starts_with("free and create")));
    // SAFETY: every sequence is freed; the engine is not used again.
    unsafe { subspec_free(e.0) };
}

#[test]
fn a_sequence_shared_by_two_threads_is_refused_not_corrupted() {
    let dir = common::temp_dir("stress-shared");
    common::write_tiny_model(&dir, false);
    let e = common::capi::load(&dir, CONTEXT, 0, 1);
    let greedy = step_params(0.0, 0, true);
    let prompt = [5, 17, 33, 2, 90];
    // The reference: the same sequence grown by one thread.
    let reference = {
        let s = create(e);
        assert_eq!(step(s, &greedy, &prompt, 8).0, subspec_status::Ok);
        while tokens(s).len() < CONTEXT as usize - 16 {
            assert_eq!(step(s, &greedy, &[], 8).0, subspec_status::Ok);
        }
        let t = tokens(s);
        // SAFETY: a live sequence, not used again.
        unsafe { subspec_sequence_free(s.0) };
        t
    };
    let mut refused = 0;
    for _round in 0..20 {
        let s = create(e);
        assert_eq!(step(s, &greedy, &prompt, 8).0, subspec_status::Ok);
        let barrier = Arc::new(Barrier::new(2));
        let threads: Vec<_> = (0..2)
            .map(|_| {
                let barrier = barrier.clone();
                std::thread::spawn(move || {
                    barrier.wait();
                    let (mut ok, mut busy) = (0, 0);
                    for _ in 0..40 {
                        match step(s, &greedy, &[], 2).0 {
                            subspec_status::Ok => ok += 1,
                            subspec_status::InvalidArgument => busy += 1,
                            // Both threads together can reach the context limit.
                            subspec_status::ContextFull => break,
                            st => panic!("a shared step gave {st:?}"),
                        }
                    }
                    (ok, busy)
                })
            })
            .collect();
        let mut stepped = 0;
        for t in threads {
            let (ok, busy) = t.join().unwrap();
            stepped += ok;
            refused += busy;
        }
        assert!(stepped > 0, "neither thread got the sequence");
        // Whatever interleaving happened, the sequence is the one-thread sequence's prefix.
        let got = tokens(s);
        assert!(got.len() > prompt.len());
        let n = got.len().min(reference.len());
        assert_eq!(
            got[..n],
            reference[..n],
            "the shared sequence was corrupted"
        );
        // SAFETY: a live sequence; both threads are joined.
        unsafe { subspec_sequence_free(s.0) };
        if refused > 0 {
            break;
        }
    }
    assert!(
        refused > 0,
        "two threads never contended for the sequence in 20 rounds"
    );
    // SAFETY: every sequence is freed; the engine is not used again.
    unsafe { subspec_free(e.0) };
}
