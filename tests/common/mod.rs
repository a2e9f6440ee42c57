//! Helpers shared by the integration tests: the fetched test models, and tiny random
//! models written on the fly.
#![allow(dead_code)]

pub mod capi;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use subspec::ffi::{
    subspec_load_params, subspec_load_params_init, subspec_status, subspec_step_params,
    subspec_step_params_init,
};
use subspec::{Engine, EngineOptions, StepOptions};

/// The small Llama-architecture test model (tied embeddings).
pub const SMOLLM2: &str = "smollm2-135m-instruct";
/// The Qwen2-architecture test model (q/k/v bias, untied lm_head).
pub const QWEN2: &str = "qwen2.5-coder-0.5b-instruct";
/// The Gemma 3 test model (base, Q4_K_M GGUF; SentencePiece vocabulary of 262k).
pub const GEMMA3: &str = "gemma-3-270m";

/// Repository root: where the tests were built, or `SUBSPEC_REPO_ROOT` when the test
/// binaries run elsewhere (scripts/gpu-check.sh carries them to a GPU machine).
pub fn root() -> PathBuf {
    std::env::var_os("SUBSPEC_REPO_ROOT")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
}

/// `models/<name>`, which `scripts/fetch-models.sh` creates; fails with instructions if
/// it is missing (the README's test command fetches the models first).
pub fn model_dir(name: &str) -> PathBuf {
    let dir = root().join("models").join(name);
    assert!(
        dir.join("model.safetensors").is_file(),
        "{} is missing: run `bash scripts/fetch-models.sh` first (the README's test command does)",
        dir.display()
    );
    dir
}

/// One engine per test model, shared by all tests of a test binary.
pub fn engine(name: &str) -> Arc<Engine> {
    engine_at(&model_dir(name))
}

/// One engine per model path (a directory or a GGUF file; context 2048), shared by all
/// tests of a test binary.
pub fn engine_at(path: &Path) -> Arc<Engine> {
    static ENGINES: OnceLock<Mutex<HashMap<PathBuf, Arc<Engine>>>> = OnceLock::new();
    let map = ENGINES.get_or_init(|| Mutex::new(HashMap::new()));
    let mut map = map.lock().unwrap();
    map.entry(path.to_path_buf())
        .or_insert_with(|| {
            let mut o = EngineOptions::new(path);
            o.max_context = 2048;
            let e = Engine::load(&o).unwrap_or_else(|e| panic!("loading {}: {e}", path.display()));
            Arc::new(e)
        })
        .clone()
}

/// A deterministic pseudo-random number in [-1, 1) from an index.
pub fn rnd(i: u64) -> f32 {
    let mut x = i
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .wrapping_add(0x2545_F491_4F6C_DD1D);
    x ^= x >> 31;
    x = x.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x ^= x >> 29;
    ((x >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
}

/// Writes `tensors` (name, shape, values) as an f16 safetensors file.
pub fn write_safetensors(path: &Path, tensors: &[(String, Vec<usize>, Vec<f32>)]) {
    let data: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|(n, s, v)| {
            let bytes = v
                .iter()
                .flat_map(|x| half::f16::from_f32(*x).to_le_bytes())
                .collect();
            (n.clone(), s.clone(), bytes)
        })
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView)> = data
        .iter()
        .map(|(n, s, b)| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(safetensors::Dtype::F16, s.clone(), b)
                    .unwrap(),
            )
        })
        .collect();
    safetensors::tensor::serialize_to_file(views, None, path).unwrap();
}

/// Writes a tiny random-weight model (`qwen2`: Qwen2 layout with biases and untied
/// lm_head; otherwise Llama with tied embeddings) into `dir`; no tokenizer.
pub fn write_tiny_model(dir: &Path, qwen2: bool) {
    write_tiny_model_with_head_dim(dir, qwen2, 16);
}

/// [`write_tiny_model`] with heads of `hd` (the CUDA attention takes multiples of 32): the
/// query and key/value widths follow the heads, the hidden size stays 64.
pub fn write_tiny_model_with_head_dim(dir: &Path, qwen2: bool, hd: usize) {
    std::fs::create_dir_all(dir).unwrap();
    let (h, ff, layers, heads, kv_heads, vocab) =
        (64usize, 128usize, 2usize, 4usize, 2usize, 128usize);
    let arch = if qwen2 {
        "Qwen2ForCausalLM"
    } else {
        "LlamaForCausalLM"
    };
    let config = serde_json::json!({
        "architectures": [arch], "hidden_size": h, "intermediate_size": ff, "num_hidden_layers": layers,
        "num_attention_heads": heads, "num_key_value_heads": kv_heads, "head_dim": hd, "vocab_size": vocab,
        "max_position_embeddings": 256, "rms_norm_eps": 1e-6, "rope_theta": 10000.0,
        "tie_word_embeddings": !qwen2, "eos_token_id": 1, "bos_token_id": 0, "hidden_act": "silu"
    });
    std::fs::write(
        dir.join("config.json"),
        serde_json::to_string_pretty(&config).unwrap(),
    )
    .unwrap();
    let mut seed = 0u64;
    let mut t = |name: String, shape: Vec<usize>, scale: f32, offset: f32| {
        let n: usize = shape.iter().product();
        let v = (0..n)
            .map(|_| {
                seed += 1;
                offset + scale * rnd(seed)
            })
            .collect();
        (name, shape, v)
    };
    let mut ts = vec![
        t("model.embed_tokens.weight".into(), vec![vocab, h], 1.0, 0.0),
        t("model.norm.weight".into(), vec![h], 0.1, 1.0),
    ];
    if qwen2 {
        ts.push(t("lm_head.weight".into(), vec![vocab, h], 0.2, 0.0));
    }
    for l in 0..layers {
        let p = format!("model.layers.{l}");
        let s = 1.0 / (h as f32).sqrt();
        ts.push(t(format!("{p}.input_layernorm.weight"), vec![h], 0.1, 1.0));
        ts.push(t(
            format!("{p}.post_attention_layernorm.weight"),
            vec![h],
            0.1,
            1.0,
        ));
        ts.push(t(
            format!("{p}.self_attn.q_proj.weight"),
            vec![heads * hd, h],
            2.0 * s,
            0.0,
        ));
        ts.push(t(
            format!("{p}.self_attn.k_proj.weight"),
            vec![kv_heads * hd, h],
            2.0 * s,
            0.0,
        ));
        ts.push(t(
            format!("{p}.self_attn.v_proj.weight"),
            vec![kv_heads * hd, h],
            s,
            0.0,
        ));
        ts.push(t(
            format!("{p}.self_attn.o_proj.weight"),
            vec![h, heads * hd],
            s,
            0.0,
        ));
        ts.push(t(format!("{p}.mlp.gate_proj.weight"), vec![ff, h], s, 0.0));
        ts.push(t(format!("{p}.mlp.up_proj.weight"), vec![ff, h], s, 0.0));
        ts.push(t(
            format!("{p}.mlp.down_proj.weight"),
            vec![h, ff],
            1.0 / (ff as f32).sqrt(),
            0.0,
        ));
        if qwen2 {
            ts.push(t(
                format!("{p}.self_attn.q_proj.bias"),
                vec![heads * hd],
                0.1,
                0.0,
            ));
            ts.push(t(
                format!("{p}.self_attn.k_proj.bias"),
                vec![kv_heads * hd],
                0.1,
                0.0,
            ));
            ts.push(t(
                format!("{p}.self_attn.v_proj.bias"),
                vec![kv_heads * hd],
                0.1,
                0.0,
            ));
        }
    }
    write_safetensors(&dir.join("model.safetensors"), &ts);
}

/// A fresh temporary directory for one test.
/// Options of the small engines the tests load: context 256, trees of at most 64 tokens,
/// `budget` (`None`: everything resident), the tokenizer when the model has one.
pub fn small_options(dir: &Path, budget: Option<u64>) -> EngineOptions {
    let mut o = EngineOptions::new(dir);
    o.require_tokenizer = dir.join("tokenizer.json").is_file();
    o.max_context = 256;
    o.max_tree_tokens = 64;
    o.budget = budget;
    o
}

pub fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("subspec-test-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A random-weight f16 model shaped like `name` (`subspec::synth`), written once under
/// `SUBSPEC_SYNTH_DIR` (default: the temp directory) and shared by the tests that use it.
pub fn synth_model_dir(name: &str) -> PathBuf {
    static LOCK: Mutex<()> = Mutex::new(());
    let _g = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let root = std::env::var_os("SUBSPEC_SYNTH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let dir = root.join(format!("subspec-synth-{name}-f16"));
    if !dir.join("model.safetensors").is_file() {
        let shape = subspec::internals::SynthShape::named(name).unwrap();
        subspec::internals::write_model(&dir, &shape, subspec::internals::DType::F16, 7).unwrap();
    }
    dir
}

/// The C ABI's default load parameters, as `subspec_load_params_init` writes them.
pub fn c_load_params() -> subspec_load_params {
    let mut p = std::mem::MaybeUninit::<subspec_load_params>::uninit();
    // SAFETY: the library initialises the whole struct when it returns `Ok`.
    let st = unsafe {
        subspec_load_params_init(p.as_mut_ptr(), std::mem::size_of::<subspec_load_params>())
    };
    assert_eq!(st, subspec_status::Ok);
    unsafe { p.assume_init() }
}

/// The C ABI's default step parameters, as `subspec_step_params_init` writes them.
pub fn c_step_params() -> subspec_step_params {
    let mut p = std::mem::MaybeUninit::<subspec_step_params>::uninit();
    // SAFETY: the library initialises the whole struct when it returns `Ok`.
    let st = unsafe {
        subspec_step_params_init(p.as_mut_ptr(), std::mem::size_of::<subspec_step_params>())
    };
    assert_eq!(st, subspec_status::Ok);
    unsafe { p.assume_init() }
}

/// One request of a batch run: its prompt, options, how many tokens, and the iteration
/// at which it joins.
pub struct Job {
    pub prompt: Vec<u32>,
    pub opts: StepOptions,
    pub n: usize,
    pub join: usize,
}

/// Runs `jobs` through batched steps: a job joins at its iteration and leaves when it
/// has its tokens (or an end token), as `Sequence::generate` stops. Returns each job's
/// tokens and the most sequences stepped together.
pub fn batched(engine: &Engine, jobs: &[Job]) -> (Vec<Vec<u32>>, usize) {
    let mut seqs: Vec<_> = jobs
        .iter()
        .map(|_| engine.new_sequence().unwrap())
        .collect();
    let mut out = vec![Vec::new(); jobs.len()];
    let mut done = vec![false; jobs.len()];
    let mut widest = 0;
    for it in 0.. {
        let mut active: Vec<usize> = Vec::new();
        for (i, job) in jobs.iter().enumerate() {
            if job.join == it {
                seqs[i].append(&job.prompt).unwrap();
            }
            if job.join <= it && !done[i] {
                active.push(i);
            }
        }
        if active.is_empty() && jobs.iter().all(|j| j.join < it) {
            break;
        }
        widest = widest.max(active.len());
        let opts: Vec<StepOptions> = active
            .iter()
            .map(|&i| jobs[i].opts.with_max_tokens(jobs[i].n - out[i].len()))
            .collect();
        let mut batch: Vec<&mut subspec::Sequence> = seqs
            .iter_mut()
            .enumerate()
            .filter(|(i, _)| active.contains(i))
            .map(|(_, s)| s)
            .collect();
        let results = engine.step_batch(&mut batch, &opts).unwrap();
        for (&i, r) in active.iter().zip(results) {
            let new = r.unwrap_or_else(|e| panic!("job {i}: {e}"));
            let eos = new.iter().any(|&t| engine.is_eos(t));
            out[i].extend_from_slice(&new);
            done[i] = eos || out[i].len() >= jobs[i].n;
        }
    }
    (out, widest)
}

/// SmolLM2 with a context of `max_context` and trees of up to `max_tree_tokens`, under
/// `budget` (`None`: everything resident).
pub fn smollm2_options(
    max_context: usize,
    max_tree_tokens: usize,
    budget: Option<u64>,
) -> EngineOptions {
    let mut o = EngineOptions::new(model_dir(SMOLLM2));
    o.max_context = max_context;
    o.max_tree_tokens = max_tree_tokens;
    o.budget = budget;
    o
}

/// SmolLM2 at the minimum budget of [`smollm2_options`]: every decoder layer streamed
/// from disk on every target pass.
pub fn smollm2_all_streamed(max_context: usize, max_tree_tokens: usize) -> Engine {
    let opts = |b| smollm2_options(max_context, max_tree_tokens, b);
    let min = Engine::minimum_budget(&opts(None)).unwrap();
    let e = Engine::load(&opts(Some(min))).unwrap();
    assert_eq!(
        e.placement().unwrap().offloaded().len(),
        e.config().n_layers,
        "every layer streamed at the minimum"
    );
    e
}
