//! Golden tests against Hugging Face transformers (float32, CPU): fixtures made by
//! tests/golden/make_golden.py from the same converted models. Logits within 1e-3 (with
//! an f32 KV cache; the two-byte caches within their own bounds, [`KV_TOL`]),
//! greedy continuations identical, perplexity within 0.1%. Gemma 3 270M runs from its
//! Q4_K_M GGUF, against transformers on the f32 conversion of that file (the fixture's
//! `engine_path`).

mod common;

use std::path::Path;

use serde_json::Value;
use subspec::internals::AttnMask;
use subspec::Pass;
use subspec::{KvDtype, SamplingParams, StepOptions};

const LOGIT_TOL: f32 = 1e-3;

fn fixture(model: &str) -> Value {
    let path = common::root()
        .join("tests/golden")
        .join(model)
        .join("fixture.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

/// The engine a fixture is checked on: its `engine_path` (a GGUF file) when it names
/// one, else the converted model directory.
fn engine(model: &str) -> std::sync::Arc<subspec::Engine> {
    match fixture(model).get("engine_path").and_then(|p| p.as_str()) {
        None => common::engine(model),
        Some(p) => {
            let path = common::root().join(p);
            assert!(
                path.is_file(),
                "{} is missing: run `bash scripts/fetch-models.sh` first",
                path.display()
            );
            common::engine_at(&path)
        }
    }
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn read_f32(path: &Path) -> Vec<f32> {
    let b = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

fn check_tokenizer(model: &str) {
    let engine = engine(model);
    let tok = engine.tokenizer().unwrap();
    let fx = fixture(model);
    for p in fx["prompts"].as_array().unwrap() {
        let template = p.get("template").and_then(|v| v.as_bool()).unwrap_or(false);
        let got = tok.encode(p["text"].as_str().unwrap(), !template).unwrap();
        assert_eq!(
            got,
            ids(&p["ids"]),
            "{model}/{}: token ids differ from transformers'",
            p["name"]
        );
    }
    let ppl = &fx["perplexity"];
    let text =
        std::fs::read_to_string(common::root().join(ppl["text_file"].as_str().unwrap())).unwrap();
    assert_eq!(
        tok.encode(&text, true).unwrap(),
        ids(&ppl["ids"]),
        "{model}: perplexity text ids"
    );
}

/// Every KV cache type and the largest |logit difference| to transformers' it is held to:
/// f32 computes as transformers does; the two-byte caches round every key and value
/// (relative error 2^-11 for f16, 2^-8 for bf16), which moves logits of magnitude ~10-30
/// by up to a few hundredths (measured: docs/BENCHMARKS.md, "A KV cache in f16").
const KV_TOL: [(KvDtype, f32); 3] = [
    (KvDtype::F32, LOGIT_TOL),
    (KvDtype::F16, 5e-2),
    (KvDtype::Bf16, 1.0),
];

fn check_logits(model: &str) {
    let engine = engine(model);
    for (dtype, tol) in KV_TOL {
        check_logits_with(&engine, model, dtype, tol);
    }
}

fn check_logits_with(engine: &subspec::Engine, model: &str, dtype: KvDtype, tol: f32) {
    let m = engine.model();
    let vocab = m.config().vocab;
    let fx = fixture(model);
    assert_eq!(fx["vocab_size"].as_u64().unwrap() as usize, vocab);
    for p in fx["prompts"].as_array().unwrap() {
        let name = p["name"].as_str().unwrap();
        let ids = ids(&p["ids"]);
        let n = ids.len();
        let mut cache = m.new_cache_of(n, dtype).unwrap();
        let positions: Vec<usize> = (0..n).collect();
        let logits = engine
            .install(|| {
                m.forward(
                    &mut cache,
                    &ids,
                    &positions,
                    &AttnMask::causal(n),
                    &positions,
                )
            })
            .unwrap();
        let mut worst = 0f32;
        for (pos, top) in p["top"].as_array().unwrap().iter().enumerate() {
            let row = &logits[pos * vocab..(pos + 1) * vocab];
            for (id, want) in top["ids"]
                .as_array()
                .unwrap()
                .iter()
                .zip(top["logits"].as_array().unwrap())
            {
                let (id, want) = (id.as_u64().unwrap() as usize, want.as_f64().unwrap() as f32);
                let d = (row[id] - want).abs();
                worst = worst.max(d);
                assert!(
                    d < tol,
                    "{model}/{name} ({dtype} KV): position {pos} token {id}: ours {} vs transformers {want}",
                    row[id]
                );
            }
        }
        let last = read_f32(
            &common::root()
                .join("tests/golden")
                .join(model)
                .join(p["last_logits_file"].as_str().unwrap()),
        );
        assert_eq!(last.len(), vocab);
        let row = &logits[(n - 1) * vocab..];
        for (id, (&a, &b)) in row.iter().zip(&last).enumerate() {
            let d = (a - b).abs();
            worst = worst.max(d);
            assert!(
                d < tol,
                "{model}/{name} ({dtype} KV): last position, token {id}: ours {a} vs transformers {b}"
            );
        }
        eprintln!("{model}/{name} ({dtype} KV): {n} positions, max |logit diff| {worst:.2e}");
    }
}

fn check_greedy(model: &str) {
    let engine = engine(model);
    let fx = fixture(model);
    for p in fx["prompts"].as_array().unwrap() {
        let want = ids(&p["greedy"]);
        let mut seq = engine.new_sequence().unwrap();
        seq.append(&ids(&p["ids"])).unwrap();
        let mut got = Vec::new();
        while got.len() < want.len() {
            got.extend(
                seq.step(&StepOptions::plain(SamplingParams::greedy()))
                    .unwrap(),
            );
        }
        assert_eq!(
            got, want,
            "{model}/{}: greedy continuation differs from transformers'",
            p["name"]
        );
    }
}

fn check_perplexity(model: &str) {
    let engine = engine(model);
    let fx = fixture(model);
    let ppl = &fx["perplexity"];
    let ids = ids(&ppl["ids"]);
    let (n, nll) = engine.perplexity(&ids, ids.len(), Pass::Target).unwrap();
    assert_eq!(n, ids.len() - 1);
    let (want_nll, want_ppl) = (
        ppl["mean_nll"].as_f64().unwrap(),
        ppl["ppl"].as_f64().unwrap(),
    );
    let rel = (nll.exp() - want_ppl).abs() / want_ppl;
    eprintln!(
        "{model}: perplexity {:.4} vs transformers {want_ppl:.4} (NLL {nll:.6} vs {want_nll:.6})",
        nll.exp()
    );
    assert!(
        rel < 1e-3,
        "{model}: perplexity {} vs transformers {want_ppl} ({:.3}% off)",
        nll.exp(),
        rel * 100.0
    );
}

#[test]
fn smollm2_tokenizer_matches_transformers() {
    check_tokenizer(common::SMOLLM2);
}

#[test]
fn smollm2_logits_match_transformers() {
    check_logits(common::SMOLLM2);
}

#[test]
fn smollm2_greedy_matches_transformers() {
    check_greedy(common::SMOLLM2);
}

#[test]
fn smollm2_perplexity_matches_transformers() {
    check_perplexity(common::SMOLLM2);
}

#[test]
fn qwen2_tokenizer_matches_transformers() {
    check_tokenizer(common::QWEN2);
}

#[test]
fn qwen2_logits_match_transformers() {
    check_logits(common::QWEN2);
}

#[test]
fn qwen2_greedy_matches_transformers() {
    check_greedy(common::QWEN2);
}

#[test]
fn qwen2_perplexity_matches_transformers() {
    check_perplexity(common::QWEN2);
}

#[test]
fn gemma3_tokenizer_matches_transformers() {
    check_tokenizer(common::GEMMA3);
}

#[test]
fn gemma3_logits_match_transformers() {
    check_logits(common::GEMMA3);
}

#[test]
fn gemma3_greedy_matches_transformers() {
    check_greedy(common::GEMMA3);
}

#[test]
fn gemma3_perplexity_matches_transformers() {
    check_perplexity(common::GEMMA3);
}
