//! Offloading: output under any budget equals the fully resident output, token for token
//! (plain and speculative, greedy and sampled), and budget or file failures are clear
//! errors.

mod common;

use common::small_options as options;

use std::path::Path;

use subspec::{Engine, ErrorKind, SamplingParams, StepOptions};

fn generate(engine: &Engine, prompt: &[u32], opts: &StepOptions, n: usize) -> Vec<u32> {
    let mut seq = engine.new_sequence().unwrap();
    seq.append(prompt).unwrap();
    seq.generate(opts, n, |_| true).unwrap()
}

/// Greedy, and seeded nucleus sampling.
fn samplings() -> [SamplingParams; 2] {
    [
        SamplingParams::greedy(),
        SamplingParams::new(0.9, 0, 0.9, 5),
    ]
}

/// Budgets from "everything streamed" to "everything resident": same tokens as no budget.
fn check_budgets(dir: &Path, prompt: &[u32], n: usize) {
    let min = Engine::minimum_budget(&options(dir, None)).unwrap();
    let reference = Engine::load(&options(dir, None)).unwrap();
    let samplings = samplings();
    let want: Vec<Vec<u32>> = samplings
        .iter()
        .map(|s| generate(&reference, prompt, &StepOptions::plain(*s), n))
        .collect();
    let layers = reference.config().n_layers;
    let mut seen_offloaded = Vec::new();
    for budget in [min, min + min / 8, 1 << 40] {
        let engine = Engine::load(&options(dir, Some(budget))).unwrap();
        let offloaded = engine.placement().unwrap().offloaded().len();
        seen_offloaded.push(offloaded);
        for (s, want) in samplings.iter().zip(&want) {
            assert_eq!(
                &generate(&engine, prompt, &StepOptions::plain(*s), n),
                want,
                "plain, budget {budget} ({offloaded} of {layers} layers offloaded), {s:?}"
            );
            assert_eq!(
                &generate(&engine, prompt, &StepOptions::speculative(*s), n),
                want,
                "SubSpec, budget {budget} ({offloaded} of {layers} layers offloaded), {s:?}"
            );
        }
        if offloaded > 0 {
            let bytes = engine.model().stream_stats().unwrap().bytes;
            assert!(bytes > 0, "offloaded layers were streamed");
        }
    }
    assert_eq!(
        seen_offloaded[0], layers,
        "the minimum budget streams every layer"
    );
    assert_eq!(
        seen_offloaded[2], 0,
        "a huge budget keeps everything resident"
    );
}

#[test]
fn tiny_models_give_the_same_tokens_under_any_budget() {
    for qwen2 in [false, true] {
        let dir = common::temp_dir(if qwen2 { "off-q" } else { "off-l" });
        common::write_tiny_model(&dir, qwen2);
        check_budgets(&dir, &[3, 9, 27, 81, 16], 20);
    }
}

#[test]
fn smollm2_gives_the_same_tokens_under_any_budget() {
    let dir = common::model_dir(common::SMOLLM2);
    let engine = common::engine(common::SMOLLM2);
    let prompt = engine
        .tokenizer()
        .unwrap()
        .encode("The recipe for a good loaf of bread", true)
        .unwrap();
    check_budgets(&dir, &prompt, 12);
}

#[test]
fn too_small_a_budget_names_the_minimum() {
    let dir = common::temp_dir("off-small");
    common::write_tiny_model(&dir, false);
    let min = Engine::minimum_budget(&options(&dir, None)).unwrap();
    let e = match Engine::load(&options(&dir, Some(min - 1))) {
        Ok(_) => panic!("loaded below the minimum budget"),
        Err(e) => e,
    };
    assert_eq!(e.kind(), ErrorKind::OutOfMemory);
    assert!(
        e.message().contains("too small") && e.message().contains("at least"),
        "{e}"
    );
    assert!(Engine::load(&options(&dir, Some(1))).is_err());
}

#[test]
fn unreadable_model_file_is_a_clear_error() {
    let dir = common::temp_dir("off-unreadable");
    common::write_tiny_model(&dir, false);
    std::fs::remove_file(dir.join("model.safetensors")).unwrap();
    std::fs::create_dir(dir.join("model.safetensors")).unwrap();
    let e = Engine::minimum_budget(&options(&dir, None)).unwrap_err();
    assert!(e.message().contains("model.safetensors"), "{e}");
    let e = match Engine::load(&options(&dir, Some(1 << 30))) {
        Ok(_) => panic!("loaded a directory as a model file"),
        Err(e) => e,
    };
    assert!(e.message().contains("model.safetensors"), "{e}");
}

#[test]
fn a_model_file_that_changes_size_while_open_is_an_error_not_a_crash() {
    let dir = common::temp_dir("off-resize");
    common::write_tiny_model(&dir, true);
    let min = Engine::minimum_budget(&options(&dir, None)).unwrap();
    let engine = Engine::load(&options(&dir, Some(min))).unwrap();
    let mut seq = engine.new_sequence().unwrap();
    seq.append(&[1, 2, 3]).unwrap();
    seq.step(&StepOptions::plain(SamplingParams::greedy()))
        .unwrap();
    let path = dir.join("model.safetensors");
    let size = std::fs::metadata(&path).unwrap().len();
    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.set_len(size + 4096).unwrap();
    // Layers already prefetched may still serve one pass; the next reads see the change.
    let mut error = None;
    for _ in 0..4 {
        match seq.step(&StepOptions::plain(SamplingParams::greedy())) {
            Ok(_) => {}
            Err(e) => {
                error = Some(e);
                break;
            }
        }
    }
    let e = error.expect("a resized model file must be noticed");
    assert_eq!(e.kind(), ErrorKind::Io);
    assert!(e.message().contains("changed size"), "{e}");
    // Put it back: streaming recovers.
    f.set_len(size).unwrap();
    let len = seq.len();
    seq.step(&StepOptions::plain(SamplingParams::greedy()))
        .unwrap();
    assert_eq!(seq.len(), len + 1);
}

/// The adaptive depth, a draft with its own quantized lm_head, a draft with substitutes
/// for every layer and a draft over part of the vocabulary stay lossless under a budget,
/// and the planner counts the extra draft weights (none for a view of the target's head).
#[test]
fn draft_variants_are_lossless_and_budgeted() {
    for qwen2 in [false, true] {
        let dir = common::temp_dir(if qwen2 { "off-head-q" } else { "off-head-l" });
        common::write_tiny_model(&dir, qwen2);
        let base = options(&dir, None);
        let min = Engine::minimum_budget(&base).unwrap();
        let full_head = {
            let mut o = options(&dir, None);
            o.draft = Some(subspec::DraftOptions::default().with_quantize_lm_head(true));
            Engine::minimum_budget(&o).unwrap()
        };
        let variants = [
            subspec::DraftOptions::default().with_quantize_lm_head(true),
            subspec::DraftOptions::default().with_substitute_all_layers(true),
            // the draft proposes ids below 64 of the tiny model's 128
            subspec::DraftOptions::default().with_vocab(64),
            subspec::DraftOptions::default()
                .with_quantize_lm_head(true)
                .with_vocab(64),
        ];
        for d in variants {
            let mut o = options(&dir, None);
            o.draft = Some(d.clone());
            let min_d = Engine::minimum_budget(&o).unwrap();
            // A budget that keeps some layers resident.
            o.budget = Some(min_d + min_d / 4);
            let engine = Engine::load(&o).unwrap();
            let (_, subs) = engine.draft().unwrap();
            let layers = engine.config().n_layers;
            let with_subs = subs.layers;
            let draft_vocab = if d.vocab == 0 {
                engine.config().vocab
            } else {
                d.vocab
            };
            if d.quantize_lm_head {
                assert!(
                    min_d > min,
                    "the draft lm_head is budgeted ({min_d} vs {min})"
                );
                assert!(subs.lm_head_bytes > 0, "the draft has its own lm_head");
                if d.vocab != 0 {
                    assert!(min_d < full_head, "half the rows: {min_d} vs {full_head}");
                }
            } else if d.vocab != 0 {
                // a view of the target's head: no memory
                assert_eq!((min_d, subs.lm_head_bytes), (min, 0));
            } else {
                assert_eq!(with_subs, layers, "every layer has a substitute");
            }
            // The draft scores only the ids below its vocabulary: infinite NLL above.
            let below: Vec<u32> = (0..40).map(|i| (i * 7 % 64) as u32).collect();
            let (_, nll) = engine.perplexity(&below, 40, subspec::Pass::Draft).unwrap();
            assert!(nll.is_finite());
            let mut above = below.clone();
            above[20] = 100;
            let (_, nll) = engine.perplexity(&above, 40, subspec::Pass::Draft).unwrap();
            assert_eq!(nll.is_finite(), draft_vocab > 100, "{d:?}");
            let tree = engine.default_tree();
            let prompt = [3, 9, 27, 81, 16];
            for s in samplings() {
                let want = generate(&engine, &prompt, &StepOptions::plain(s), 24);
                for adaptive in [false, true] {
                    let opts = StepOptions::speculative(s).with_tree(tree.with_adaptive(adaptive));
                    assert_eq!(
                        generate(&engine, &prompt, &opts, 24),
                        want,
                        "{d:?}, adaptive {adaptive}, {s:?}"
                    );
                }
            }
        }
    }
}

/// A draft vocabulary larger than the model's is refused at load, naming the option; a
/// smaller one gives the first columns of the full draft's logits, bit for bit.
#[test]
fn a_draft_vocabulary_is_checked_and_its_logits_are_the_heads_first_columns() {
    let dir = common::temp_dir("off-draft-vocab");
    common::write_tiny_model(&dir, true);
    let mut o = options(&dir, None);
    o.draft = Some(subspec::DraftOptions::default().with_vocab(129));
    let Err(e) = Engine::load(&o) else {
        panic!("a draft vocabulary of 129 loaded")
    };
    assert_eq!(e.kind(), ErrorKind::InvalidArgument);
    assert!(e.message().contains("draft_vocab 129"), "{e}");
    // the whole vocabulary, named, is fine
    o.draft = Some(subspec::DraftOptions::default().with_vocab(128));
    let full = Engine::load(&o).unwrap();
    assert_eq!(full.draft().unwrap().1.lm_head_bytes, 0);
    // half of it: the draft's logits are the first columns of the full draft's
    o.draft = Some(subspec::DraftOptions::default().with_vocab(64));
    let half = Engine::load(&o).unwrap();
    let ids = [5u32, 17, 99, 3, 64, 127];
    let rows: Vec<usize> = (0..ids.len()).collect();
    let draft_logits = |e: &Engine| {
        let m = e.model();
        let mut c = m.new_cache(ids.len()).unwrap();
        let mask = subspec::internals::AttnMask::causal(ids.len());
        e.install(|| m.forward_at(&mut c, subspec::Pass::Draft, 0, &ids, &rows, &mask, &rows))
            .unwrap()
    };
    let want: Vec<f32> = draft_logits(&full)
        .chunks_exact(128)
        .flat_map(|r| r[..64].to_vec())
        .collect();
    assert_eq!(draft_logits(&half), want);
}
