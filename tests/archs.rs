//! The architectures beyond the two trained test models, against transformers: tiny
//! random-weight models built from real-shaped configs (Llama 3.1 and 3.2 with llama3
//! rope scaling, linear scaling, Qwen2 and Qwen3, Mistral with and without a sliding window shorter
//! than the prompt, Gemma 3 with local and global layers and a query_pre_attn_scalar of
//! its own), saved by transformers 5 (`tests/golden/make_arch_fixtures.py`).
//! Logits at every prompt position within 1e-4, the same 16-token greedy continuation,
//! and speculative output equal to plain output; and the same for the same weights written
//! as GGUF files the way llama.cpp's converter writes them (q/k rows permuted for Llama,
//! Llama 3's scaling as a `rope_freqs` tensor, Gemma's norms with their 1 added).

mod common;

use serde_json::Value;
use subspec::internals::AttnMask;
use subspec::{Engine, EngineOptions, KvDtype, SamplingParams, StepOptions, TreeParams};

const ARCHS: &[&str] = &[
    "llama3.1",
    "llama3.2",
    "llama-linear",
    "qwen2",
    "qwen3",
    "mistral",
    "mistral-window",
    "llama3.1-hd32",
    "mistral-window-hd32",
    "gemma3",
    "gemma3-scalar",
];
const TOL: f32 = 1e-4;

/// The fixture's engine (from `file`: "" for the directory, or "model.gguf") and the
/// expected values; `None` when the fixture has no such file.
fn fixture_from(name: &str, file: &str) -> Option<(Engine, Value)> {
    let dir = common::root().join("tests/golden/arch").join(name);
    let expected: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json")).unwrap()).unwrap();
    let path = dir.join(file);
    if !path.exists() {
        return None;
    }
    let mut o = EngineOptions::new(&path);
    o.require_tokenizer = false;
    o.threads = 2;
    // The architectures' math against transformers' at TOL: an f32 cache, as theirs (the
    // two-byte caches' rounding is checked against the real models in tests/golden.rs).
    o.kv_dtype = Some(KvDtype::F32);
    let engine = Engine::load(&o).unwrap_or_else(|e| panic!("{name}/{file}: {e}"));
    Some((engine, expected))
}

/// Every fixture as a directory and, where written, as a GGUF file.
fn fixtures() -> Vec<(String, Engine, Value)> {
    let mut out = Vec::new();
    for name in ARCHS {
        for file in ["", "model.gguf"] {
            if let Some((e, v)) = fixture_from(name, file) {
                out.push((format!("{name}/{file}"), e, v));
            }
        }
    }
    // Every fixture has its GGUF but the windowed Mistrals and gemma3-scalar.
    assert!(out.len() >= 2 * ARCHS.len() - 3, "GGUF fixtures missing");
    out
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

#[test]
fn logits_match_transformers_at_every_position() {
    for (name, engine, fx) in fixtures() {
        let prompt = ids(&fx["prompt"]);
        let n = prompt.len();
        let m = engine.model();
        let vocab = engine.config().vocab;
        let mut cache = m.new_cache(n).unwrap();
        let pos: Vec<usize> = (0..n).collect();
        let logits = engine
            .install(|| m.forward(&mut cache, &prompt, &pos, &AttnMask::causal(n), &pos))
            .unwrap();
        let mut worst = 0f32;
        for (p, want) in fx["logits"].as_array().unwrap().iter().enumerate() {
            for (t, w) in want.as_array().unwrap().iter().enumerate() {
                let (ours, w) = (logits[p * vocab + t], w.as_f64().unwrap() as f32);
                let d = (ours - w).abs();
                worst = worst.max(d);
                assert!(
                    d <= TOL * w.abs().max(1.0),
                    "{name}: position {p} token {t}: ours {ours} vs transformers {w}"
                );
            }
        }
        eprintln!("{name}: {n} positions, max |logit diff| {worst:.2e}");
    }
}

#[test]
fn greedy_continuations_match_and_speculation_changes_nothing() {
    for (name, engine, fx) in fixtures() {
        let prompt = ids(&fx["prompt"]);
        let want = ids(&fx["greedy"]);
        let run = |opts: &StepOptions| {
            let mut seq = engine.new_sequence().unwrap();
            seq.append(&prompt).unwrap();
            // EOS (id 1) is a token like any other here: the reference does not stop.
            let mut out = Vec::new();
            while out.len() < want.len() {
                let got = seq
                    .step(&opts.with_max_tokens(want.len() - out.len()))
                    .unwrap();
                out.extend(got);
            }
            out
        };
        let plain = run(&StepOptions::plain(SamplingParams::greedy()));
        assert_eq!(
            plain, want,
            "{name}: greedy continuation differs from transformers'"
        );
        for tree in [
            TreeParams::default(),
            TreeParams::default().with_width(3).with_depth(4),
        ] {
            let spec = run(&StepOptions::speculative(SamplingParams::greedy()).with_tree(tree));
            assert_eq!(spec, plain, "{name}: speculative != plain with {tree:?}");
        }
        let sampled = SamplingParams::new(0.9, 0, 0.95, 3);
        assert_eq!(
            run(&StepOptions::speculative(sampled)),
            run(&StepOptions::plain(sampled)),
            "{name}: sampled speculative != plain"
        );
    }
}

#[test]
fn a_quantized_gguf_matches_its_dequantized_reference_and_speculates_losslessly() {
    // model-q.gguf: the llama3.1 fixture with its matrices in Q8_0, Q4_0, Q4_1, Q5_0 and
    // Q5_1 (gguf-py's quantizers); expected-q.json: transformers' logits for the weights
    // gguf-py dequantizes from it.
    let (q, _) = fixture_from("llama3.1", "model-q.gguf").expect("model-q.gguf");
    let path = common::root().join("tests/golden/arch/llama3.1/expected-q.json");
    let fx: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let prompt = ids(&fx["prompt"]);
    let n = prompt.len();
    let m = q.model();
    let vocab = q.config().vocab;
    let mut cache = m.new_cache(n).unwrap();
    let pos: Vec<usize> = (0..n).collect();
    let logits = q
        .install(|| m.forward(&mut cache, &prompt, &pos, &AttnMask::causal(n), &pos))
        .unwrap();
    let mut worst = 0f32;
    for (p, want) in fx["logits"].as_array().unwrap().iter().enumerate() {
        for (t, w) in want.as_array().unwrap().iter().enumerate() {
            let (ours, w) = (logits[p * vocab + t], w.as_f64().unwrap() as f32);
            worst = worst.max((ours - w).abs());
            assert!(
                (ours - w).abs() <= TOL * w.abs().max(1.0),
                "position {p} token {t}: ours {ours} vs the dequantized reference {w}"
            );
        }
    }
    eprintln!("model-q.gguf: max |logit diff| {worst:.2e}");
    for sampling in [
        SamplingParams::greedy(),
        SamplingParams::new(0.9, 0, 1.0, 2),
    ] {
        let run = |opts: StepOptions| {
            let mut s = q.new_sequence().unwrap();
            s.append(&prompt).unwrap();
            s.generate(&opts, 16, |_| true).unwrap()
        };
        assert_eq!(
            run(StepOptions::speculative(sampling)),
            run(StepOptions::plain(sampling)),
            "{sampling:?}"
        );
    }
}
