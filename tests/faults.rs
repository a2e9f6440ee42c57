//! Faults on the slow tier (issue 13): reads of the model file that fail with EIO, come
//! back short, or stall for a second, injected mid-pass through
//! `subspec::internals::faults` while SmolLM2 runs at its minimum budget (every decoder
//! layer streamed from disk on every target pass). A failed read fails its step with an
//! I/O error naming the file and leaves the sequence as it was; once the fault clears,
//! the reader restarts and the sequence goes on to exactly the tokens a fault-free run
//! gives, plain and speculative; a stall only delays. No reader thread or file
//! descriptor is left behind. A fault while loading resident weights fails the load.
//! An abort requested from another thread while a pass waits on a stalled read stops the
//! step at the next layer boundary, with the same guarantees (issue 17, item 3).
//!
//! The fault plan is process-wide, so these tests take turns.

mod common;

use std::sync::Mutex;
use std::time::{Duration, Instant};

use subspec::internals::faults::{self, Fault};
use subspec::{Engine, EngineOptions, ErrorKind, SamplingParams, StepOptions};

static TURN: Mutex<()> = Mutex::new(());

/// Tensor reads of one streamed layer (its seven linears).
const PER_LAYER: u64 = 7;

fn options(budget: Option<u64>) -> EngineOptions {
    common::smollm2_options(256, 33, budget)
}

/// SmolLM2 at its minimum budget: every layer streamed.
fn offloaded() -> Engine {
    common::smollm2_all_streamed(256, 33)
}

const PROMPT: [u32; 6] = [504, 2365, 3058, 314, 4849, 30];

fn modes(e: &Engine) -> [StepOptions; 3] {
    [
        StepOptions::plain(SamplingParams::greedy()),
        StepOptions::speculative(SamplingParams::greedy()).with_tree(e.default_tree()),
        StepOptions::speculative(SamplingParams::new(0.8, 0, 0.95, 11)).with_tree(e.default_tree()),
    ]
}

/// Threads of this process named `name` (the reader is "subspec-stream").
fn threads_named(name: &str) -> usize {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|c| c.trim() == name)
        .count()
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// Waits (up to 10 s) for the reader threads to come down to `n`: a stopped reader exits
/// once its current read returns.
fn wait_for_readers(n: usize) {
    let t0 = Instant::now();
    while threads_named("subspec-stream") != n {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "{} reader threads, expected {n}",
            threads_named("subspec-stream")
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_failed_read_mid_pass_fails_the_step_and_changes_nothing() {
    let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    faults::clear();
    let engine = offloaded();
    let n = 12;
    for opts in modes(&engine) {
        let want = {
            let mut s = engine.new_sequence().unwrap();
            s.append(&PROMPT).unwrap();
            s.generate(&opts, n, |_| true).unwrap()
        };
        wait_for_readers(1);
        let fds = open_fds();
        for (fault, says) in [
            (Fault::Eio, "Input/output error"),
            (Fault::ShortRead, "short read"),
        ] {
            for skip_layers in [0, 5, 20] {
                let mut seq = engine.new_sequence().unwrap();
                seq.append(&PROMPT).unwrap();
                seq.step(&opts).unwrap();
                let before = seq.tokens().to_vec();
                let stats = seq.stats().clone();
                // The ring already holds the first layers of the next pass: the fault
                // lands `skip_layers` layers after them, inside the next target pass.
                faults::inject(fault, skip_layers * PER_LAYER, 1);
                let e = seq
                    .step(&opts)
                    .expect_err("the faulty read must fail the step");
                assert_eq!(faults::pending(), 0, "the fault was used");
                assert_eq!(e.kind(), ErrorKind::Io, "{e}");
                assert!(e.message().contains("model.safetensors"), "{e}");
                assert!(e.message().contains(says), "{fault:?}: {e}");
                assert_eq!(seq.tokens(), &before[..], "{fault:?}: the sequence changed");
                assert_eq!(seq.stats(), &stats, "{fault:?}: the statistics changed");
                // The fault is gone: the reader restarts (at least one more step, even when
                // the first emitted all `n` tokens) and the output is the same.
                loop {
                    seq.step(&opts).unwrap();
                    if seq.len() >= PROMPT.len() + n {
                        break;
                    }
                }
                assert_eq!(
                    &seq.tokens()[PROMPT.len()..PROMPT.len() + n],
                    &want[..],
                    "{fault:?} after {skip_layers} layers, {opts:?}"
                );
                drop(seq);
                wait_for_readers(1);
                assert_eq!(open_fds(), fds, "file descriptors after {fault:?}");
            }
        }
    }
}

#[test]
fn a_stalled_read_only_delays_the_pass() {
    let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    faults::clear();
    let engine = offloaded();
    let opts = StepOptions::speculative(SamplingParams::greedy()).with_tree(engine.default_tree());
    let want = {
        let mut s = engine.new_sequence().unwrap();
        s.append(&PROMPT).unwrap();
        s.generate(&opts, 16, |_| true).unwrap()
    };
    let mut seq = engine.new_sequence().unwrap();
    seq.append(&PROMPT).unwrap();
    seq.step(&opts).unwrap();
    // Three reads of the next pass each block for half a second.
    faults::inject(Fault::Stall(Duration::from_millis(500)), 3 * PER_LAYER, 3);
    seq.step(&opts).unwrap();
    assert_eq!(faults::pending(), 0, "the stalls happened");
    while seq.len() < PROMPT.len() + 16 {
        seq.step(&opts).unwrap();
    }
    assert_eq!(&seq.tokens()[PROMPT.len()..PROMPT.len() + 16], &want[..]);
    drop(seq);
    wait_for_readers(1);
}

#[test]
fn a_failed_read_of_resident_weights_fails_the_load() {
    let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    faults::clear();
    // Under a budget resident weights are read once through the slow tier's path (the
    // tied embedding and lm_head first).
    let min = Engine::minimum_budget(&options(None)).unwrap();
    let threads = threads_named("subspec-stream");
    let fds = open_fds();
    for fault in [Fault::Eio, Fault::ShortRead] {
        faults::inject(fault, 0, 1);
        let e = Engine::load(&options(Some(min))).expect_err("the load must fail");
        faults::clear();
        assert_eq!(e.kind(), ErrorKind::Io, "{e}");
        assert!(e.message().contains("model.safetensors"), "{e}");
        assert_eq!(
            threads_named("subspec-stream"),
            threads,
            "a reader was left"
        );
        assert_eq!(open_fds(), fds, "a file was left open");
    }
    // Nothing was left half-made: the next load works.
    let e = Engine::load(&options(Some(min))).unwrap();
    let mut s = e.new_sequence().unwrap();
    s.append(&PROMPT).unwrap();
    s.step(&StepOptions::plain(SamplingParams::greedy()))
        .unwrap();
}

#[test]
fn an_abort_mid_pass_stops_at_the_next_layer_and_changes_nothing() {
    let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    faults::clear();
    let engine = offloaded();
    for opts in modes(&engine) {
        let want = {
            let mut s = engine.new_sequence().unwrap();
            s.append(&PROMPT).unwrap();
            s.generate(&opts, 12, |_| true).unwrap()
        };
        let mut seq = engine.new_sequence().unwrap();
        seq.append(&PROMPT).unwrap();
        seq.step(&opts).unwrap();
        let before = seq.tokens().to_vec();
        let stats = seq.stats().clone();
        // A read of the next target pass stalls; once it has begun, another thread asks
        // the sequence to stop: the pass may finish the layer it waits for, no more.
        faults::inject(Fault::Stall(Duration::from_millis(300)), 10 * PER_LAYER, 1);
        let handle = seq.abort_handle();
        let aborter = std::thread::spawn(move || {
            let t0 = Instant::now();
            while faults::pending() > 0 && t0.elapsed() < Duration::from_secs(30) {
                std::thread::sleep(Duration::from_millis(1));
            }
            handle.abort();
        });
        let e = seq.step(&opts).expect_err("the abort must stop the step");
        aborter.join().unwrap();
        assert_eq!(e.kind(), ErrorKind::Aborted, "{e}");
        assert!(e.message().contains("before decoder layer"), "{e}");
        eprintln!(
            "{}: {e}",
            if opts.speculate {
                "speculative"
            } else {
                "plain"
            }
        );
        assert!(
            !seq.abort_handle().is_requested(),
            "the step took the request"
        );
        assert_eq!(seq.tokens(), &before[..], "{opts:?}: the sequence changed");
        assert_eq!(seq.stats(), &stats, "{opts:?}: the statistics changed");
        while seq.len() < PROMPT.len() + 12 {
            seq.step(&opts).unwrap();
        }
        assert_eq!(
            &seq.tokens()[PROMPT.len()..PROMPT.len() + 12],
            &want[..],
            "{opts:?}"
        );
        drop(seq);
        wait_for_readers(1);
    }
}

#[test]
fn an_abort_requested_between_calls_stops_the_next_one_unless_cleared() {
    let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    faults::clear();
    let engine = Engine::load(&options(None)).unwrap();
    let opts = StepOptions::speculative(SamplingParams::greedy()).with_tree(engine.default_tree());
    let mut seq = engine.new_sequence().unwrap();
    seq.append(&PROMPT).unwrap();
    let handle = seq.abort_handle();
    handle.abort();
    let e = seq.step(&opts).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Aborted);
    assert!(e.message().contains("before decoder layer 0"), "{e}");
    assert_eq!(seq.tokens(), &PROMPT[..]);
    assert_eq!(seq.stats().iterations, 0);
    // Taken once: the next call runs. A withdrawn request stops nothing.
    handle.abort();
    handle.clear();
    let got = seq.step(&opts).unwrap();
    assert!(!got.is_empty());
    // Eval and a host-sampled iteration's begin stop the same way.
    let len = seq.len();
    handle.abort();
    assert_eq!(seq.eval(&[]).unwrap_err().kind(), ErrorKind::Aborted);
    handle.abort();
    assert_eq!(
        seq.begin(&[], &opts).unwrap_err().kind(),
        ErrorKind::Aborted
    );
    assert!(!seq.is_iterating());
    assert_eq!(seq.len(), len);
    seq.begin(&[], &opts).unwrap();
    seq.cancel().unwrap();
}
