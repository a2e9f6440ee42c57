//! Speculative decoding is lossless, exactly: its output equals plain autoregressive
//! decoding token for token (greedy and seeded sampling, several tree shapes, both test
//! models), and its sampled tokens follow the target's distribution.

mod common;

use subspec::internals::distribution;
use subspec::{Engine, EngineOptions, ErrorKind, KvDtype, SamplingParams, StepOptions, TreeParams};

/// 20+ prompts of varied kinds: prose, code, chat, lists, numbers, other languages.
const PROMPTS: &[&str] = &[
    "The history of the printing press begins",
    "def merge_sort(values):\n    ",
    "<|im_start|>user\nWhat is the boiling point of water?<|im_end|>\n<|im_start|>assistant\n",
    "1, 2, 3, 5, 8, 13,",
    "Ingredients for pancakes:\n-",
    "SELECT name, email FROM users WHERE",
    "La capitale de la France est",
    "Once upon a time, in a small village by the sea,",
    "import numpy as np\nimport matplotlib.pyplot as plt\n\n",
    "Q: If a train travels 60 miles in 1.5 hours, what is its speed?\nA:",
    "<|im_start|>user\nSummarise the water cycle in two sentences.<|im_end|>\n<|im_start|>assistant\n",
    "The three laws of thermodynamics are",
    "fn main() {\n    let v: Vec<i32> =",
    "Dear hiring manager,\n\nI am writing to",
    "<html>\n<head>\n<title>",
    "To be, or not to be, that is",
    "The mitochondria is",
    "#include <stdio.h>\n\nint main(void) {\n",
    "Translate to Spanish: good morning, friends. ->",
    "Step 1: Preheat the oven to",
    "The quick brown fox",
    "class Stack:\n    def __init__(self):\n",
];

/// Tree shapes: a chain, the default, a wide shallow tree, and a paper-like tree.
fn shapes() -> [TreeParams; 4] {
    let d = TreeParams::default();
    [
        d.with_width(1).with_depth(6),
        d,
        d.with_width(8).with_depth(2).with_max_tokens(17),
        d.with_width(4).with_depth(4),
    ]
}

/// Greedy and two seeded sampling settings.
fn samplings() -> [SamplingParams; 3] {
    [
        SamplingParams::greedy(),
        SamplingParams::new(0.8, 0, 0.95, 1),
        SamplingParams::new(1.3, 40, 1.0, 7),
    ]
}

fn generate(engine: &Engine, prompt: &[u32], opts: &StepOptions, n: usize) -> (Vec<u32>, f64) {
    let mut seq = engine.new_sequence().unwrap();
    seq.append(prompt).unwrap();
    let out = seq.generate(opts, n, |_| true).unwrap();
    (out, seq.stats().tau())
}

fn check_equality(model: &str, n_new: usize) {
    let engine = common::engine(model);
    let tok = engine.tokenizer().unwrap();
    let mut taus = Vec::new();
    for (i, text) in PROMPTS.iter().enumerate() {
        let ids = tok.encode(text, true).unwrap();
        let tree = shapes()[i % 4];
        for sampling in samplings() {
            let (plain, _) = generate(&engine, &ids, &StepOptions::plain(sampling), n_new);
            let spec_opts = StepOptions::speculative(sampling).with_tree(tree);
            let (spec, tau) = generate(&engine, &ids, &spec_opts, n_new);
            assert_eq!(
                spec, plain,
                "{model}: prompt {i} {text:?}, tree {tree:?}, sampling {sampling:?}"
            );
            taus.push(tau);
        }
    }
    let mean = taus.iter().sum::<f64>() / taus.len() as f64;
    eprintln!(
        "{model}: {} equal generations, mean tau {mean:.2}",
        taus.len()
    );
    assert!(
        mean > 1.0,
        "the draft never got a token accepted: tau {mean}"
    );
}

#[test]
fn smollm2_speculative_equals_plain() {
    check_equality(common::SMOLLM2, 16);
}

#[test]
fn qwen2_speculative_equals_plain() {
    check_equality(common::QWEN2, 12);
}

fn tiny_engine(tag: &str, qwen2: bool) -> Engine {
    let dir = common::temp_dir(tag);
    common::write_tiny_model(&dir, qwen2);
    let mut o = EngineOptions::new(&dir);
    o.require_tokenizer = false;
    Engine::load(&o).unwrap()
}

#[test]
fn tiny_models_speculative_equals_plain_with_limits() {
    for qwen2 in [false, true] {
        let engine = tiny_engine(if qwen2 { "spec-q" } else { "spec-l" }, qwen2);
        for (i, sampling) in samplings().iter().enumerate() {
            for tree in shapes() {
                let prompt: Vec<u32> = (0..5).map(|j| (j * 13 + i as u32 * 5 + 2) % 128).collect();
                // Several lengths, so the requested length is reached mid-path.
                for n in [1, 2, 7, 30] {
                    let (plain, _) = generate(&engine, &prompt, &StepOptions::plain(*sampling), n);
                    let spec_opts = StepOptions::speculative(*sampling).with_tree(tree);
                    let (spec, _) = generate(&engine, &prompt, &spec_opts, n);
                    assert_eq!(
                        spec, plain,
                        "tiny qwen2={qwen2}, {sampling:?}, {tree:?}, n={n}"
                    );
                    assert!(spec.len() <= n);
                }
            }
        }
    }
}

/// Draft and target read and write one cache, whatever its type: with f32 and bf16 (f16
/// is the default every other test runs with) speculative decoding is plain decoding.
#[test]
fn every_kv_cache_type_keeps_speculation_lossless() {
    for kv in [KvDtype::F32, KvDtype::Bf16] {
        for qwen2 in [false, true] {
            let dir = common::temp_dir(&format!("spec-kv-{kv}-{qwen2}"));
            common::write_tiny_model(&dir, qwen2);
            let mut o = EngineOptions::new(&dir);
            o.require_tokenizer = false;
            o.kv_dtype = Some(kv);
            let engine = Engine::load(&o).unwrap();
            assert_eq!(engine.model().kv_dtype(), kv);
            for (sampling, tree) in samplings().into_iter().zip(shapes()) {
                let prompt: Vec<u32> = (0..6).map(|j| (j * 29 + 3) % 128).collect();
                let (plain, _) = generate(&engine, &prompt, &StepOptions::plain(sampling), 24);
                let spec_opts = StepOptions::speculative(sampling).with_tree(tree);
                let (spec, _) = generate(&engine, &prompt, &spec_opts, 24);
                assert_eq!(
                    spec, plain,
                    "{kv} KV, qwen2={qwen2}, {sampling:?}, {tree:?}"
                );
            }
        }
    }
    // a real model with the coarsest rounding
    let mut o = EngineOptions::new(common::model_dir(common::SMOLLM2));
    o.max_context = 256;
    o.kv_dtype = Some(KvDtype::Bf16);
    let engine = Engine::load(&o).unwrap();
    let ids = engine
        .tokenizer()
        .unwrap()
        .encode(PROMPTS[0], true)
        .unwrap();
    let greedy = SamplingParams::greedy();
    let (plain, _) = generate(&engine, &ids, &StepOptions::plain(greedy), 24);
    let (spec, tau) = generate(&engine, &ids, &StepOptions::speculative(greedy), 24);
    assert_eq!(spec, plain, "SmolLM2, bf16 KV");
    assert!(tau > 1.0, "tau {tau}");
}

/// Depths chosen by measured cost (0, a plain step, included) change only the speed: the
/// output is plain decoding's, and the engine measured its costs once.
#[test]
fn depths_chosen_by_measured_cost_are_lossless() {
    for qwen2 in [false, true] {
        let engine = tiny_engine(if qwen2 { "auto-q" } else { "auto-l" }, qwen2);
        let costs = engine.tree_costs().unwrap();
        assert_eq!(costs.verify[0].0, 1, "{costs:?}");
        assert!(costs.verify.iter().all(|&(_, s)| s > 0.0), "{costs:?}");
        assert!(!costs.draft.is_empty() && costs.draft.iter().all(|&(_, s)| s > 0.0));
        assert_eq!(
            engine.tree_costs().unwrap(),
            costs,
            "measured once, then kept"
        );
        for (i, sampling) in samplings().iter().enumerate() {
            let prompt: Vec<u32> = (0..6).map(|j| (j * 17 + i as u32 * 3 + 1) % 128).collect();
            for tree in [
                TreeParams::default().with_depth(12),
                TreeParams::default().with_width(3).with_depth(6),
            ] {
                let auto =
                    StepOptions::speculative(*sampling).with_tree(tree.with_auto_depth(true));
                for n in [1, 9, 40] {
                    let (plain, _) = generate(&engine, &prompt, &StepOptions::plain(*sampling), n);
                    let (got, _) = generate(&engine, &prompt, &auto, n);
                    assert_eq!(
                        got, plain,
                        "tiny qwen2={qwen2}, {sampling:?}, {tree:?}, n={n}"
                    );
                }
            }
        }
    }
    // Without a draft there is nothing to measure.
    let dir = common::temp_dir("auto-nodraft");
    common::write_tiny_model(&dir, true);
    let mut o = EngineOptions::new(&dir);
    o.require_tokenizer = false;
    o.draft = None;
    let e = Engine::load(&o).unwrap().tree_costs().unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument);
}

#[test]
fn prefilling_the_prompt_first_changes_nothing() {
    let engine = tiny_engine("spec-prefill", true);
    let prompt: Vec<u32> = (0..100).map(|j| (j * 31 + 7) % 128).collect();
    for sampling in samplings() {
        for opts in [
            StepOptions::plain(sampling),
            StepOptions::speculative(sampling),
        ] {
            let (want, _) = generate(&engine, &prompt, &opts, 12);
            let mut seq = engine.new_sequence().unwrap();
            seq.append(&prompt).unwrap();
            seq.prefill_pending().unwrap();
            seq.prefill_pending().unwrap(); // nothing left: a no-op
            assert_eq!(seq.len(), prompt.len());
            let got = seq.generate(&opts, 12, |_| true).unwrap();
            assert_eq!(got, want, "{opts:?}");
        }
    }
}

/// A server keeps a sequence between requests and runs only what a new prompt does not
/// share with it: the kept KV (written by a speculative generation's verification
/// passes) must be what a fresh prefill writes, so the answer is the fresh sequence's.
#[test]
fn reusing_the_kv_of_an_earlier_generation_changes_nothing() {
    // Steps until the sequence holds `len` tokens (an end-of-text token does not stop it)
    // and returns the first `len`.
    fn run_to(seq: &mut subspec::Sequence, opts: &StepOptions, len: usize) -> Vec<u32> {
        while seq.len() < len {
            seq.step(opts).unwrap();
        }
        seq.tokens()[..len].to_vec()
    }
    for qwen2 in [false, true] {
        let engine = tiny_engine(if qwen2 { "reuse-q" } else { "reuse-l" }, qwen2);
        for sampling in samplings() {
            let opts = StepOptions::speculative(sampling);
            let first: Vec<u32> = (0..40).map(|j| (j * 29 + 3) % 128).collect();
            let mut seq = engine.new_sequence().unwrap();
            seq.append(&first).unwrap();
            let answer = run_to(&mut seq, &opts, first.len() + 20)[first.len()..].to_vec();
            // The follow-up turn: the first prompt, part of the answer, new tokens.
            let mut next = first.clone();
            next.extend_from_slice(&answer[..12]);
            next.extend_from_slice(&[(answer[12] + 1) % 128, 8, 9]);
            let keep = first.len() + 12;
            seq.truncate(keep);
            assert_eq!(seq.cached(), keep, "the kept prefix's KV stays");
            seq.append(&next[keep..]).unwrap();
            let reused = run_to(&mut seq, &opts, next.len() + 16);
            let mut fresh = engine.new_sequence().unwrap();
            fresh.append(&next).unwrap();
            let want = run_to(&mut fresh, &opts, next.len() + 16);
            assert_eq!(reused, want, "qwen2={qwen2}, {sampling:?}");
        }
    }
}

#[test]
fn speculation_stops_at_the_context_limit_like_plain() {
    let engine = tiny_engine("spec-ctx", false); // context 256
    let prompt: Vec<u32> = (0..250).map(|j| (j * 7 + 3) % 128).collect();
    let (plain, _) = generate(
        &engine,
        &prompt,
        &StepOptions::plain(SamplingParams::greedy()),
        100,
    );
    let (spec, _) = generate(
        &engine,
        &prompt,
        &StepOptions::speculative(SamplingParams::greedy()),
        100,
    );
    assert_eq!(spec, plain);
    assert!(plain.len() <= 6);
    let mut seq = engine.new_sequence().unwrap();
    seq.append(&prompt).unwrap();
    seq.generate(
        &StepOptions::speculative(SamplingParams::greedy()),
        100,
        |_| true,
    )
    .unwrap();
    if seq.len() == 256 {
        let e = seq
            .step(&StepOptions::speculative(SamplingParams::greedy()))
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::ContextFull);
    }
}

#[test]
fn impossible_tree_settings_are_errors() {
    let engine = tiny_engine("spec-bad", false);
    let mut seq = engine.new_sequence().unwrap();
    seq.append(&[1, 2, 3]).unwrap();
    let base = StepOptions::speculative(SamplingParams::greedy());
    for (tree, what) in [
        (base.tree.with_width(0), "width"),
        (base.tree.with_depth(0), "depth"),
        (base.tree.with_depth(256), "context"),
        (base.tree.with_max_tokens(1), "max tokens"),
        (base.tree.with_max_tokens(100_000), "max tokens"),
        (base.tree.with_draft_temperature(0.0), "temperature"),
    ] {
        let e = seq.step(&base.with_tree(tree)).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{tree:?}");
        assert!(e.message().contains(what), "{tree:?}: {e}");
        assert_eq!(
            seq.tokens(),
            &[1, 2, 3],
            "a failed step leaves the sequence as it was"
        );
    }
    // No draft loaded: speculation is refused, plain works.
    let dir = common::temp_dir("spec-nodraft");
    common::write_tiny_model(&dir, false);
    let mut o = EngineOptions::new(&dir);
    o.require_tokenizer = false;
    o.draft = None;
    let plain_only = Engine::load(&o).unwrap();
    let mut seq = plain_only.new_sequence().unwrap();
    seq.append(&[1, 2, 3]).unwrap();
    assert!(seq.step(&base).unwrap_err().message().contains("draft"));
    assert_eq!(
        seq.step(&StepOptions::plain(SamplingParams::greedy()))
            .unwrap()
            .len(),
        1
    );
}

/// Over many seeds, the first tokens of speculative sampling follow the target softmax
/// (total variation of the first sampled token against the computed distribution).
#[test]
fn speculative_samples_follow_the_target_distribution() {
    let engine = tiny_engine("spec-stat", false);
    let prompt = [5u32, 9, 77, 3];
    let temp = 0.7;
    let n = 3000;
    let mut first = vec![0usize; 128];
    for seed in 0..n {
        let sampling = SamplingParams::new(temp, 0, 1.0, seed);
        let mut seq = engine.new_sequence().unwrap();
        seq.append(&prompt).unwrap();
        let out = seq
            .step(
                &StepOptions::speculative(sampling)
                    .with_tree(TreeParams::default().with_width(3).with_depth(2)),
            )
            .unwrap();
        first[out[0] as usize] += 1;
    }
    // The target's distribution after the prompt.
    let m = engine.model();
    let mut cache = m.new_cache(8).unwrap();
    let pos: Vec<usize> = (0..prompt.len()).collect();
    let logits = m
        .forward(
            &mut cache,
            &prompt,
            &pos,
            &subspec::internals::AttnMask::causal(prompt.len()),
            &[prompt.len() - 1],
        )
        .unwrap();
    let p = distribution(&logits, &SamplingParams::new(temp, 0, 1.0, 0));
    let mut probs = vec![0f64; 128];
    for (t, pr) in p {
        probs[t as usize] = pr;
    }
    let tv: f64 = (0..128)
        .map(|t| (first[t] as f64 / n as f64 - probs[t]).abs())
        .sum::<f64>()
        / 2.0;
    // Expected TV of an honest sample: sum_t sqrt(2 p (1 - p) / (pi n)) / 2.
    let expected: f64 = probs
        .iter()
        .map(|&q| (2.0 * q * (1.0 - q) / (std::f64::consts::PI * n as f64)).sqrt())
        .sum::<f64>()
        / 2.0;
    eprintln!("TV {tv:.4}, expected for an honest sampler {expected:.4}");
    assert!(tv < 2.0 * expected + 0.01, "TV {tv} vs expected {expected}");
}
