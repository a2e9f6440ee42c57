//! GGUF files loaded natively, against the exact reference: the f32 Hugging Face
//! conversion of the same file (`scripts/fetch_models.py --dtype f32`, which dequantizes
//! with gguf-py and undoes llama.cpp's q/k permutation). Logits must be bit-identical,
//! which checks every dequantizer and the permutation; speculative output equals plain
//! output on the GGUF path, resident and offloaded; the tokenizer and chat template built
//! from the GGUF metadata agree with tokenizer.json and tokenizer_config.json; and
//! malformed files are errors naming the file and what is wrong.

mod common;

use std::path::PathBuf;

use serde_json::Value;
use subspec::internals::AttnMask;
use subspec::{
    ChatMessage, Engine, EngineOptions, ErrorKind, SamplingParams, StepOptions, Tokenizer,
};

/// The GGUF file each test model was converted from.
fn gguf_path(model: &str) -> PathBuf {
    let name = match model {
        common::SMOLLM2 => "SmolLM2-135M-Instruct.Q4_1.gguf",
        common::QWEN2 => "Qwen2.5-Coder-0.5B-Instruct.gguf",
        common::GEMMA3 => "gemma-3-270m-Q4_K_M.gguf",
        _ => unreachable!(),
    };
    let p = common::root().join("models/.cache/gguf").join(name);
    assert!(
        p.is_file(),
        "{} is missing: run `bash scripts/fetch-models.sh` first",
        p.display()
    );
    p
}

/// The f32 conversion of the same GGUF.
fn f32_dir(model: &str) -> PathBuf {
    let p = common::root().join("models/f32").join(model);
    assert!(
        p.join("model.safetensors").is_file(),
        "{} is missing: run `bash scripts/fetch-models.sh --dtype f32 --out models/f32` (the README's test command does)",
        p.display()
    );
    p
}

fn load(path: PathBuf, budget: Option<u64>) -> Engine {
    let mut o = EngineOptions::new(path);
    o.max_context = 512;
    o.budget = budget;
    Engine::load(&o).unwrap_or_else(|e| panic!("{e}"))
}

fn prompts(model: &str) -> Vec<Vec<u32>> {
    let p = common::root()
        .join("tests/golden")
        .join(model)
        .join("fixture.json");
    let fx: Value = serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap();
    fx["prompts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            p["ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_u64().unwrap() as u32)
                .collect()
        })
        .collect()
}

/// Logits at every position of `ids`.
fn logits(engine: &Engine, ids: &[u32]) -> Vec<f32> {
    let m = engine.model();
    let n = ids.len();
    let mut cache = m.new_cache(n).unwrap();
    let pos: Vec<usize> = (0..n).collect();
    engine
        .install(|| m.forward(&mut cache, ids, &pos, &AttnMask::causal(n), &pos))
        .unwrap()
}

#[test]
fn gguf_logits_are_bit_identical_to_the_f32_conversion() {
    for model in [common::SMOLLM2, common::QWEN2, common::GEMMA3] {
        let (g, f) = (load(gguf_path(model), None), load(f32_dir(model), None));
        assert_eq!(g.config().vocab, f.config().vocab);
        assert_eq!(g.config().n_layers, f.config().n_layers);
        for ids in prompts(model) {
            let (a, b) = (logits(&g, &ids), logits(&f, &ids));
            let differ = a
                .iter()
                .zip(&b)
                .position(|(x, y)| x.to_bits() != y.to_bits());
            assert!(
                differ.is_none(),
                "{model}: logit {} differs: GGUF {} vs f32 conversion {}",
                differ.unwrap(),
                a[differ.unwrap()],
                b[differ.unwrap()]
            );
        }
    }
}

#[test]
fn gguf_speculation_equals_plain_resident_and_offloaded() {
    for model in [common::SMOLLM2, common::QWEN2, common::GEMMA3] {
        let path = gguf_path(model);
        let mut o = EngineOptions::new(&path);
        o.max_context = 512;
        let min = Engine::minimum_budget(&o).unwrap();
        let plan = Engine::plan(&o, min).unwrap();
        assert!(
            !plan.offloaded().is_empty(),
            "{model}: nothing offloaded at the minimum"
        );
        // The planner counts the GGUF's own (quantized) bytes: at each form's minimum
        // every layer is streamed, and the quantized layers are fewer bytes than f16.
        let mut of16 = EngineOptions::new(common::model_dir(model));
        of16.max_context = 512;
        let f16 = Engine::plan(&of16, Engine::minimum_budget(&of16).unwrap()).unwrap();
        assert_eq!(f16.offloaded(), plan.offloaded(), "{model}");
        assert!(
            plan.bytes.streamed_per_pass * 2 < f16.bytes.streamed_per_pass,
            "{model}: {} streamed per pass from the GGUF vs {} from f16",
            plan.bytes.streamed_per_pass,
            f16.bytes.streamed_per_pass
        );
        let prompt = &prompts(model)[0];
        for budget in [None, Some(min)] {
            let e = load(path.clone(), budget);
            for sampling in [
                SamplingParams::greedy(),
                SamplingParams::new(0.8, 0, 0.95, 5),
            ] {
                let run = |opts: StepOptions| {
                    let mut s = e.new_sequence().unwrap();
                    s.append(prompt).unwrap();
                    s.generate(&opts, 24, |_| true).unwrap()
                };
                let plain = run(StepOptions::plain(sampling));
                let spec = run(StepOptions::speculative(sampling).with_tree(e.default_tree()));
                assert_eq!(spec, plain, "{model}: budget {budget:?}, {sampling:?}");
            }
        }
    }
}

const TEXTS: &[&str] = &[
    "The old lighthouse keeper climbed the narrow stairs every evening.",
    "Emoji 🙂🚀 and CJK 你好，世界 and こんにちは, accents: café naïve e\u{301}",
    "def f(x):\n\treturn x ** 2  # squares\n\nprint(f(12345678))",
    "Numbers 3.14159, 1e-9, 2026-12-02, 1,000,000 and   spaces\n\n\nnewlines",
    "<|im_start|>user\nhi<|im_end|>\n<|endoftext|> special tokens inline",
];

#[test]
fn the_gguf_tokenizer_and_chat_template_match_the_directory() {
    for model in [common::SMOLLM2, common::QWEN2, common::GEMMA3] {
        let g = Tokenizer::load(&gguf_path(model)).unwrap();
        let d = Tokenizer::load(&common::model_dir(model)).unwrap();
        assert_eq!(g.vocab_size(), d.vocab_size(), "{model}");
        for text in TEXTS {
            for special in [false, true] {
                let ids = d.encode(text, special).unwrap();
                assert_eq!(g.encode(text, special).unwrap(), ids, "{model}: {text:?}");
                assert_eq!(g.decode(&ids).unwrap(), d.decode(&ids).unwrap());
            }
        }
        // Gemma 3 270M (a base model) has none: both fall back to ChatML.
        assert_eq!(
            g.chat_template().is_models_own(),
            model != common::GEMMA3,
            "{model}: GGUF template"
        );
        let conv = [
            ChatMessage::new("system", "Be brief."),
            ChatMessage::new("user", "Hello"),
        ];
        assert_eq!(
            g.apply_chat_template(&conv, true).unwrap(),
            d.apply_chat_template(&conv, true).unwrap()
        );
    }
}

/// A copy of a real GGUF with its bytes edited by `f`, for bad-input tests.
fn edited(model: &str, tag: &str, f: impl FnOnce(&mut Vec<u8>)) -> PathBuf {
    let mut bytes = std::fs::read(gguf_path(model)).unwrap();
    f(&mut bytes);
    let p = common::temp_dir(tag).join("model.gguf");
    std::fs::write(&p, bytes).unwrap();
    p
}

fn load_err(path: PathBuf) -> subspec::Error {
    let mut o = EngineOptions::new(path);
    o.max_context = 64;
    Engine::load(&o).expect_err("a broken file must not load")
}

#[test]
fn broken_gguf_files_are_errors_naming_the_file() {
    // Truncated in the middle of the tensor data.
    let p = edited(common::SMOLLM2, "gguf-trunc", |b| b.truncate(b.len() / 2));
    let e = load_err(p.clone());
    assert_eq!(e.kind(), ErrorKind::InvalidModel, "{e}");
    assert!(e.message().contains(&p.display().to_string()), "{e}");
    // Not a GGUF at all.
    let p = edited(common::SMOLLM2, "gguf-magic", |b| {
        b[..4].copy_from_slice(b"GGUX")
    });
    let e = load_err(p.clone());
    assert!(
        e.message().contains("magic") || e.message().contains("GGUF"),
        "{e}"
    );
    // A model key this engine does not know: refused by name, as in config.json. The
    // key `llama.block_count` is renamed to `llama.block_coun!` in place.
    let p = edited(common::SMOLLM2, "gguf-key", |b| {
        let at = b
            .windows(17)
            .position(|w| w == b"llama.block_count")
            .unwrap();
        b[at + 16] = b'!';
    });
    let e = load_err(p);
    assert_eq!(e.kind(), ErrorKind::Unsupported, "{e}");
    assert!(e.message().contains("llama.block_coun!"), "{e}");
    // A missing file and a file of the wrong kind.
    let e = load_err(common::root().join("models/.cache/gguf/none.gguf"));
    assert_eq!(e.kind(), ErrorKind::Io, "{e}");
    let e = load_err(common::root().join("README.md"));
    assert_eq!(e.kind(), ErrorKind::InvalidModel, "{e}");
}
