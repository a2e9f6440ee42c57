//! The budget is a promise (issue 13): while an engine loads under a memory budget
//! (weights read, substitutes quantized) and generates from a prompt that fills most of
//! its context, the process's anonymous resident memory (`RssAnon`, sampled every
//! millisecond by a second thread) stays within the budget plus the one part the planner
//! does not place: the tokenizer (its vocabulary and merges, host memory on any device),
//! measured here first. What is not anonymous memory is not counted: the memory-mapped
//! model file (the untied embedding table, which only ever has a few rows read, and the
//! file's pages while the load reads it). docs/RELIABILITY.md lists the figures.
//!
//! This binary holds one test, so no other test's memory is in the process.

mod common;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use subspec::{Engine, EngineOptions, SamplingParams, StepOptions, Tokenizer};

/// `RssAnon` of this process, in bytes.
fn rss_anon() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = s.lines().find(|l| l.starts_with("RssAnon:")).unwrap();
    let kb: u64 = line["RssAnon:".len()..]
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .unwrap();
    kb * 1024
}

/// Gives freed heap pages back (glibc keeps them otherwise, as the engine's load does).
fn trim() {
    // SAFETY: no preconditions.
    unsafe { libc::malloc_trim(0) };
}

/// The highest `RssAnon` while `f` runs.
fn peak_during<R>(f: impl FnOnce() -> R) -> (R, u64) {
    let peak = Arc::new(AtomicU64::new(rss_anon()));
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (peak, stop) = (peak.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                peak.fetch_max(rss_anon(), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(1));
            }
        })
    };
    let r = f();
    peak.fetch_max(rss_anon(), Ordering::Relaxed);
    stop.store(true, Ordering::Relaxed);
    sampler.join().unwrap();
    (r, peak.load(Ordering::Relaxed))
}

const MIB: f64 = 1048576.0;

/// Loads `path` at its minimum budget (context 2048) and generates 24 tokens after a
/// prompt of 1900; checks the peak against the budget and the tokenizer's memory.
fn check(path: PathBuf) {
    let name = path.file_name().unwrap().to_string_lossy().to_string();
    trim();
    let base = rss_anon();
    // The tokenizer's own resident memory, measured as the engine leaves it (trimmed).
    let tok = Tokenizer::load(&path).unwrap();
    trim();
    let tokenizer = rss_anon().saturating_sub(base);
    let text = std::fs::read_to_string(common::root().join("tests/golden/ppl.txt")).unwrap();
    let mut prompt = tok.encode(&text, true).unwrap();
    while prompt.len() < 1900 {
        prompt.extend_from_within(..);
    }
    prompt.truncate(1900);
    drop(tok);
    trim();
    let base = rss_anon();

    let mut o = EngineOptions::new(&path);
    o.max_context = 2048;
    let budget = Engine::minimum_budget(&o).unwrap();
    o.budget = Some(budget);
    let ((), peak) = peak_during(|| {
        let engine = Engine::load(&o).unwrap();
        let mut seq = engine.new_sequence().unwrap();
        seq.append(&prompt).unwrap();
        let opts =
            StepOptions::speculative(SamplingParams::greedy()).with_tree(engine.default_tree());
        let out = seq.generate(&opts, 24, |_| true).unwrap();
        assert!(!out.is_empty());
    });
    let used = peak.saturating_sub(base);
    eprintln!(
        "{name}: budget {:.1} MiB, tokenizer {:.1} MiB, peak anonymous memory {:.1} MiB ({:.0}% of budget + tokenizer)",
        budget as f64 / MIB,
        tokenizer as f64 / MIB,
        used as f64 / MIB,
        100.0 * used as f64 / (budget + tokenizer) as f64
    );
    assert!(
        used <= budget + tokenizer,
        "{name}: {:.1} MiB of anonymous memory at the peak, over the budget of {:.1} MiB plus the tokenizer's {:.1} MiB",
        used as f64 / MIB,
        budget as f64 / MIB,
        tokenizer as f64 / MIB
    );
}

#[test]
fn anonymous_memory_stays_within_the_budget_and_the_tokenizer() {
    check(common::model_dir(common::SMOLLM2));
    let gguf = common::root().join("models/.cache/gguf");
    check(gguf.join("gemma-3-270m-Q4_K_M.gguf"));
    check(gguf.join("Qwen2.5-Coder-0.5B-Instruct.gguf"));
}
