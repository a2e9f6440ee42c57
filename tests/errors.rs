//! Bad input gets a clear error naming the problem, never a crash, and leaves no state
//! half-changed.

mod common;

use std::path::Path;

use subspec::{Engine, EngineOptions, ErrorKind, SamplingParams, StepOptions};

fn load(dir: &Path) -> subspec::Result<Engine> {
    let mut o = EngineOptions::new(dir);
    o.require_tokenizer = false;
    Engine::load(&o)
}

fn load_err(dir: &Path) -> subspec::Error {
    match load(dir) {
        Ok(_) => panic!("{} loaded but should not", dir.display()),
        Err(e) => e,
    }
}

#[test]
fn missing_directory() {
    let e = load_err(Path::new("/nonexistent/model"));
    assert_eq!(e.kind(), ErrorKind::Io);
    assert!(e.message().contains("/nonexistent/model"), "{e}");
}

#[test]
fn missing_and_corrupt_weights() {
    let dir = common::temp_dir("corrupt");
    common::write_tiny_model(&dir, false);
    let good = std::fs::read(dir.join("model.safetensors")).unwrap();

    std::fs::remove_file(dir.join("model.safetensors")).unwrap();
    let e = load_err(&dir);
    assert!(e.message().contains("model.safetensors"), "{e}");

    std::fs::write(
        dir.join("model.safetensors"),
        b"this is not a safetensors file",
    )
    .unwrap();
    let e = load_err(&dir);
    assert_eq!(e.kind(), ErrorKind::InvalidModel);
    assert!(e.message().contains("model.safetensors"), "{e}");

    // Truncated: the header promises more data than the file holds.
    std::fs::write(dir.join("model.safetensors"), &good[..good.len() / 2]).unwrap();
    let e = load_err(&dir);
    assert_eq!(e.kind(), ErrorKind::InvalidModel, "{e}");

    std::fs::write(dir.join("model.safetensors"), &good[..4]).unwrap();
    assert_eq!(load_err(&dir).kind(), ErrorKind::InvalidModel);
}

#[test]
fn unsupported_or_inconsistent_config() {
    let dir = common::temp_dir("config");
    common::write_tiny_model(&dir, false);
    let cfg_path = dir.join("config.json");
    let original: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&cfg_path).unwrap()).unwrap();
    let with = |k: &str, v: serde_json::Value| {
        let mut c = original.clone();
        c[k] = v;
        std::fs::write(&cfg_path, c.to_string()).unwrap();
    };

    with("architectures", serde_json::json!(["GPT2LMHeadModel"]));
    let e = load_err(&dir);
    assert_eq!(e.kind(), ErrorKind::Unsupported);
    assert!(
        e.message().contains("architectures") && e.message().contains("config.json"),
        "{e}"
    );

    with(
        "rope_scaling",
        serde_json::json!({"rope_type": "yarn", "factor": 4.0}),
    );
    assert!(load_err(&dir).message().contains("rope_scaling"));

    // A config that disagrees with the weights: the tensor and both shapes are named.
    with("hidden_size", serde_json::json!(32));
    let e = load_err(&dir);
    assert_eq!(e.kind(), ErrorKind::InvalidModel);
    assert!(
        e.message().contains("model.layers.0") || e.message().contains("embed_tokens"),
        "{e}"
    );
    assert!(e.message().contains("expected"), "{e}");

    std::fs::write(&cfg_path, "{ not json").unwrap();
    let e = load_err(&dir);
    assert!(e.message().contains("invalid JSON"), "{e}");
}

#[test]
fn missing_tensor_is_named() {
    let dir = common::temp_dir("missing-tensor");
    common::write_tiny_model(&dir, true);
    // Rewrite without one bias.
    let bytes = std::fs::read(dir.join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let kept: Vec<(String, Vec<usize>, Vec<f32>)> = st
        .tensors()
        .into_iter()
        .filter(|(n, _)| n != "model.layers.1.self_attn.k_proj.bias")
        .map(|(n, v)| {
            let vals = v
                .data()
                .chunks_exact(2)
                .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect();
            (n, v.shape().to_vec(), vals)
        })
        .collect();
    common::write_safetensors(&dir.join("model.safetensors"), &kept);
    let e = load_err(&dir);
    assert!(
        e.message().contains("model.layers.1.self_attn.k_proj.bias"),
        "{e}"
    );
}

#[test]
fn invalid_tokens_and_sequence_misuse_leave_state_unchanged() {
    let dir = common::temp_dir("tokens");
    common::write_tiny_model(&dir, false);
    let engine = load(&dir).unwrap();
    let mut seq = engine.new_sequence().unwrap();

    let e = seq
        .step(&StepOptions::plain(SamplingParams::greedy()))
        .unwrap_err();
    assert!(e.message().contains("empty"), "{e}");

    let e = seq.append(&[3, 128, 4]).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidToken);
    assert!(e.message().contains("128"), "{e}");
    assert!(
        seq.is_empty(),
        "a rejected append must not change the sequence"
    );

    seq.append(&[3, 4, 5]).unwrap();
    let bad = SamplingParams::greedy().with_temperature(-1.0);
    assert_eq!(
        seq.step(&StepOptions::plain(bad)).unwrap_err().kind(),
        ErrorKind::InvalidArgument
    );
    assert_eq!(seq.tokens(), &[3, 4, 5]);
    let bad = SamplingParams::greedy()
        .with_temperature(1.0)
        .with_top_p(0.0);
    assert!(seq
        .step(&StepOptions::plain(bad))
        .unwrap_err()
        .message()
        .contains("top_p"));

    // Context limit (256 for the tiny model).
    let e = seq.append(&vec![7; 254]).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ContextFull);
    assert_eq!(seq.len(), 3);

    let tok = seq
        .step(&StepOptions::plain(SamplingParams::greedy()))
        .unwrap();
    assert_eq!(tok.len(), 1);
    assert_eq!(seq.len(), 4);
}

#[test]
fn truncate_and_reuse_give_the_same_tokens() {
    let dir = common::temp_dir("truncate");
    common::write_tiny_model(&dir, true);
    let engine = load(&dir).unwrap();
    let p = SamplingParams::new(0.8, 0, 0.95, 11);
    let mut seq = engine.new_sequence().unwrap();
    seq.append(&[5, 6, 7, 8]).unwrap();
    let first = seq.generate(&StepOptions::plain(p), 12, |_| true).unwrap();
    seq.truncate(4);
    assert_eq!(seq.tokens(), &[5, 6, 7, 8]);
    let again = seq.generate(&StepOptions::plain(p), 12, |_| true).unwrap();
    assert_eq!(first, again, "same seed, same positions, same tokens");
    seq.truncate(0);
    assert!(seq.is_empty());
}

#[test]
fn missing_tokenizer_is_an_error_when_required() {
    let dir = common::temp_dir("no-tokenizer");
    common::write_tiny_model(&dir, false);
    let e = match Engine::load(&EngineOptions::new(&dir)) {
        Ok(_) => panic!("loaded without tokenizer.json"),
        Err(e) => e,
    };
    assert_eq!(e.kind(), ErrorKind::Tokenizer);
    assert!(e.message().contains("tokenizer.json"), "{e}");
}

#[test]
fn progress_callback_reports_and_can_abort() {
    use std::sync::{Arc, Mutex};
    let dir = common::temp_dir("progress");
    common::write_tiny_model(&dir, false);
    let seen = Arc::new(Mutex::new(Vec::new()));
    let mut o = EngineOptions::new(&dir);
    o.require_tokenizer = false;
    let s = seen.clone();
    o.progress = Some(subspec::Progress(Arc::new(move |f| {
        s.lock().unwrap().push(f);
        true
    })));
    Engine::load(&o).unwrap();
    let fractions = seen.lock().unwrap().clone();
    assert_eq!(fractions.first(), Some(&0.0));
    assert_eq!(fractions.last(), Some(&1.0));
    assert!(fractions.windows(2).all(|w| w[0] <= w[1]), "{fractions:?}");

    o.progress = Some(subspec::Progress(Arc::new(|f| f < 0.5)));
    let e = match Engine::load(&o) {
        Ok(_) => panic!("the callback asked to abort"),
        Err(e) => e,
    };
    assert_eq!(e.kind(), ErrorKind::Aborted);
    assert!(e.message().contains("aborted"), "{e}");
}

#[test]
fn an_engine_planned_for_n_sequences_refuses_one_more_until_one_is_freed() {
    let dir = common::temp_dir("max-seqs");
    common::write_tiny_model(&dir, true);
    let mut o = EngineOptions::new(&dir);
    o.require_tokenizer = false;
    o.max_context = 64;
    let one = Engine::minimum_budget(&o).unwrap();
    o.max_sequences = 3;
    let three = Engine::minimum_budget(&o).unwrap();
    assert!(
        three > one,
        "three KV caches need more than one: {three} vs {one}"
    );
    // A budget for one sequence is too small for three, and says what it holds.
    let e = Engine::plan(&o, one).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::OutOfMemory);
    assert!(
        e.message()
            .contains("for 3 sequences at once; it holds 1 sequence"),
        "{e}"
    );
    let engine = Engine::load(&o).unwrap();
    assert_eq!(engine.max_sequences(), 3);
    let mut seqs: Vec<_> = (0..3).map(|_| engine.new_sequence().unwrap()).collect();
    assert_eq!(engine.live_sequences(), 3);
    let e = engine.new_sequence().unwrap_err();
    assert_eq!(e.kind(), ErrorKind::OutOfMemory);
    assert!(e.message().contains("planned for 3 sequences"), "{e}");
    assert_eq!(engine.live_sequences(), 3, "the refused one is not counted");
    seqs[1].append(&[1, 2, 3]).unwrap();
    seqs.remove(1);
    assert_eq!(engine.live_sequences(), 2);
    seqs.push(engine.new_sequence().unwrap());
    assert_eq!(engine.live_sequences(), 3);
    drop(seqs);
    assert_eq!(engine.live_sequences(), 0);
    // Unlimited by default.
    let engine = load(&dir).unwrap();
    let many: Vec<_> = (0..8).map(|_| engine.new_sequence().unwrap()).collect();
    assert_eq!(
        (engine.max_sequences(), engine.live_sequences()),
        (0, many.len())
    );
}
