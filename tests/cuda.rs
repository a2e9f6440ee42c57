//! The CUDA backend against the CPU backend.
//!
//! Runs where a CUDA device is present (scripts/gpu-check.sh runs it on the GPU machine);
//! elsewhere each test prints a skip line and passes, and `cuda_is_a_clear_error_without_a_gpu`
//! checks the error instead. Models are random-weight ones shaped like the test models
//! (`common::synth_model_dir`), written once per run under `SUBSPEC_SYNTH_DIR` (default: the temp
//! directory); `SUBSPEC_CUDA_SHAPES` picks the shapes (default
//! `tiny,smollm2-135m,qwen2.5-0.5b`).

mod common;

use std::path::Path;
use std::sync::{Arc, OnceLock};

use half::{bf16, f16};
use subspec::internals::CpuBackend;
use subspec::internals::QMatrix;
use subspec::internals::{driver_present, CudaBackend};
use subspec::internals::{AlignedBuf, Storage};
use subspec::internals::{AttnMask, AttnShape, Backend};
use subspec::internals::{DType, GgmlType, HostTensor};
use subspec::Pass;
use subspec::{
    DeviceKind, DraftOptions, Engine, EngineOptions, ErrorKind, KvDtype, SamplingParams,
    StepOptions, TreeParams,
};
use subspec::{QuantConfig, QuantMethod};

/// The CUDA backend on device 0, or `None` (with the reason printed) where there is none.
fn gpu(test: &str) -> Option<CudaBackend> {
    static GPU: OnceLock<Result<CudaBackend, String>> = OnceLock::new();
    match GPU.get_or_init(|| CudaBackend::new(0, None).map_err(|e| e.to_string())) {
        Ok(b) => Some(b.clone()),
        Err(why) => {
            eprintln!("SKIP {test}: no CUDA device ({why})");
            None
        }
    }
}

fn shapes() -> Vec<String> {
    std::env::var("SUBSPEC_CUDA_SHAPES")
        .unwrap_or_else(|_| "tiny,smollm2-135m,qwen2.5-0.5b".into())
        .split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

fn options(dir: &Path, device: DeviceKind, draft: bool, budget: Option<u64>) -> EngineOptions {
    let mut o = EngineOptions::new(dir);
    o.require_tokenizer = false;
    o.max_context = 512;
    o.max_tree_tokens = 64;
    o.device = device;
    o.budget = budget;
    o.draft = draft.then(DraftOptions::default);
    // the CPU reference with the CUDA backend's cache type (the CPU's default is f16)
    o.kv_dtype = Some(KvDtype::F32);
    o
}

fn load(dir: &Path, device: DeviceKind, draft: bool, budget: Option<u64>) -> Arc<Engine> {
    Arc::new(
        Engine::load(&options(dir, device, draft, budget))
            .unwrap_or_else(|e| panic!("loading {} on {device}: {e}", dir.display())),
    )
}

fn prompt(vocab: usize, n: usize, salt: u64) -> Vec<u32> {
    (0..n as u64)
        .map(|i| ((i * 7919 + salt * 104_729 + 13) % vocab as u64) as u32)
        .collect()
}

fn generate(engine: &Engine, prompt: &[u32], opts: &StepOptions, n: usize) -> Vec<u32> {
    let mut seq = engine.new_sequence().unwrap();
    seq.append(prompt).unwrap();
    seq.generate(opts, n, |_| true).unwrap()
}

/// ‖a − b‖ / ‖b‖ in f64; infinite when either holds a NaN.
fn rel_err(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    if a.iter().chain(b).any(|v| !v.is_finite()) {
        return f64::INFINITY;
    }
    let num: f64 = a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum();
    let den: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
    (num / den.max(1e-30)).sqrt()
}

/// Deterministic values in [-1, 1), a different sequence per seed.
fn rnd(n: usize, seed: u64) -> Vec<f32> {
    (0..n as u64)
        .map(|i| common::rnd((seed << 32) | i))
        .collect()
}

fn tensor(name: &str, dtype: DType, shape: Vec<usize>, v: &[f32]) -> HostTensor {
    let bytes: Vec<u8> = match dtype {
        DType::F32 => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        DType::F16 => v
            .iter()
            .flat_map(|x| f16::from_f32(*x).to_le_bytes())
            .collect(),
        DType::BF16 => v
            .iter()
            .flat_map(|x| bf16::from_f32(*x).to_le_bytes())
            .collect(),
        d => panic!("test tensors are float, not {d:?}"),
    };
    let mut buf = AlignedBuf::new(bytes.len());
    buf.as_mut_slice()[..bytes.len()].copy_from_slice(&bytes);
    let len = bytes.len();
    HostTensor::view(name, dtype, shape, Arc::new(Storage::Owned(buf)), 0, len)
}

/// An activation holding `v` (through `embed` of an f32 table, the one way in).
fn act<B: Backend>(b: &B, rows: usize, cols: usize, v: &[f32]) -> B::Act {
    let w = b
        .upload(&tensor("x", DType::F32, vec![rows, cols], v))
        .unwrap();
    let mut a = b.act(rows, cols).unwrap();
    let ids: Vec<u32> = (0..rows as u32).collect();
    b.embed(&w, &ids, &mut a).unwrap();
    a
}

/// Every leaf operation on random inputs; named outputs, copied to the host.
/// `rows x cols` random weights of GGUF block type `t` (finite f16 scales of mixed
/// magnitude, random codes).
fn gguf_tensor(name: &str, t: GgmlType, rows: usize, cols: usize, seed: u64) -> HostTensor {
    let (bs, bb) = (t.block_size(), t.block_bytes());
    let n = rows * cols / bs;
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut bytes = vec![0u8; n * bb];
    let scales: &[usize] = match t {
        GgmlType::Q4_0 | GgmlType::Q5_0 | GgmlType::Q8_0 => &[0],
        GgmlType::Q4_1 | GgmlType::Q5_1 | GgmlType::Q4_K | GgmlType::Q5_K => &[0, 2],
        GgmlType::Q6_K => &[208],
        _ => &[],
    };
    for b in bytes.chunks_exact_mut(bb) {
        for v in b.iter_mut() {
            *v = next() as u8;
        }
        for &f in scales {
            // Exponents 2^-10 .. 2^-3: scales of trained weights.
            let r = next();
            let h = (r as u16 & 0x8000) | ((5 + (r >> 20) as u16 % 8) << 10) | (r as u16 & 0x3ff);
            b[f..f + 2].copy_from_slice(&h.to_le_bytes());
        }
    }
    let len = bytes.len();
    let mut buf = AlignedBuf::new(len);
    buf.as_mut_slice()[..len].copy_from_slice(&bytes);
    HostTensor::view(
        name,
        DType::Quant(t),
        vec![rows, cols],
        Arc::new(Storage::Owned(buf)),
        0,
        len,
    )
}

fn ops<B: Backend>(b: &B) -> Vec<(String, Vec<f32>)> {
    let mut out = Vec::new();
    let (n, h, ff) = (7usize, 256usize, 512usize);
    let x = act(b, n, h, &rnd(n * h, 1));
    let norm = b
        .upload(&tensor("norm", DType::F32, vec![h], &rnd(h, 2)))
        .unwrap();
    let mut y = b.act(n, h).unwrap();
    b.rms_norm(&x, &norm, 1e-6, &mut y).unwrap();
    out.push(("rms_norm".into(), b.to_host(&y).unwrap()));
    // Dense products in each dtype, with a bias, and the same rows one token at a time.
    let bias = b
        .upload(&tensor("bias", DType::F32, vec![ff], &rnd(ff, 3)))
        .unwrap();
    for (i, dt) in [DType::F32, DType::F16, DType::BF16]
        .into_iter()
        .enumerate()
    {
        let w = b
            .upload(&tensor("w", dt, vec![ff, h], &rnd(ff * h, 10 + i as u64)))
            .unwrap();
        let mut o = b.act(n, ff).unwrap();
        b.linear(&x, &w, Some(&bias), &mut o).unwrap();
        out.push((format!("linear {dt:?}"), b.to_host(&o).unwrap()));
        // A view of some of its rows (the draft's output head in parts during a pass).
        let part = b.weight_row_range(&w, 128, 256).unwrap();
        let mut o = b.act(n, 256).unwrap();
        b.linear(&x, &part, None, &mut o).unwrap();
        out.push((
            format!("linear {dt:?}, rows 128..384"),
            b.to_host(&o).unwrap(),
        ));
    }
    // GGUF block types: products (resident weights) and embeddings (a device-resident
    // table, as a tied lm_head is, and a host-side one).
    for (i, t) in [
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q5_0,
        GgmlType::Q5_1,
        GgmlType::Q8_0,
        GgmlType::Q4_K,
        GgmlType::Q5_K,
        GgmlType::Q6_K,
    ]
    .into_iter()
    .enumerate()
    {
        let wt = gguf_tensor("wq", t, ff, h, 40 + i as u64);
        let w = b.upload(&wt).unwrap();
        let mut o = b.act(n, ff).unwrap();
        b.linear(&x, &w, None, &mut o).unwrap();
        out.push((format!("linear {t:?}"), b.to_host(&o).unwrap()));
        let mut e = b.act(3, h).unwrap();
        b.embed(&w, &[ff as u32 - 1, 0, 7], &mut e).unwrap();
        out.push((format!("embed {t:?}"), b.to_host(&e).unwrap()));
        let host = b.host_matrix(&wt).unwrap();
        b.embed(&host, &[3, 1, 2], &mut e).unwrap();
        out.push((format!("embed {t:?} (host table)"), b.to_host(&e).unwrap()));
    }
    // Quantized substitutes, every width.
    for bits in [2u8, 3, 4, 8] {
        let cfg = QuantConfig {
            bits,
            group: 64,
            method: QuantMethod::Rtn,
        };
        let q = QMatrix::quantize(&rnd(384 * h, 20 + bits as u64), 384, h, &cfg).unwrap();
        let w = b.upload_quant(q).unwrap();
        let mut o = b.act(n, 384).unwrap();
        b.linear(&x, &w, None, &mut o).unwrap();
        out.push((format!("qlinear {bits}-bit"), b.to_host(&o).unwrap()));
    }
    // Rotary, SiLU-multiply, add, gather.
    let inv_freq: Vec<f32> = (0..32)
        .map(|i| 1.0 / 10000f32.powf(2.0 * i as f32 / 64.0))
        .collect();
    let mut r = act(b, n, h, &rnd(n * h, 4));
    b.rope(&mut r, &[5, 6, 7, 100, 1000, 4096, 30000], &inv_freq)
        .unwrap();
    out.push(("rope".into(), b.to_host(&r).unwrap()));
    let mut g = act(b, n, h, &rnd(n * h, 5));
    b.silu_mul(&mut g, &x).unwrap();
    out.push(("silu_mul".into(), b.to_host(&g).unwrap()));
    // Gemma's: GeLU-tanh times up (on inputs spread over +-4), the embedding scale.
    let mut gg = act(
        b,
        n,
        h,
        &rnd(n * h, 15).iter().map(|v| 4.0 * v).collect::<Vec<_>>(),
    );
    b.gelu_tanh_mul(&mut gg, &x).unwrap();
    out.push(("gelu_tanh_mul".into(), b.to_host(&gg).unwrap()));
    b.scale(&mut gg, 25.298_221).unwrap();
    out.push(("scale".into(), b.to_host(&gg).unwrap()));
    b.add(&mut g, &x).unwrap();
    out.push(("add".into(), b.to_host(&g).unwrap()));
    let mut sel = b.act(3, h).unwrap();
    b.gather_rows(&g, &[6, 0, 3], &mut sel).unwrap();
    out.push(("gather_rows".into(), b.to_host(&sel).unwrap()));
    let mut into = act(b, 7, h, &rnd(7 * h, 17));
    b.set_rows(&mut into, 2, &sel).unwrap();
    out.push(("set_rows".into(), b.to_host(&into).unwrap()));
    // Embedding from a host-side f16 table.
    let table = b
        .host_matrix(&tensor("embed", DType::F16, vec![50, h], &rnd(50 * h, 6)))
        .unwrap();
    let mut e = b.act(3, h).unwrap();
    b.embed(&table, &[49, 0, 7], &mut e).unwrap();
    out.push(("embed (host table)".into(), b.to_host(&e).unwrap()));
    // Attention: 10 committed slots, then a 7-node tree in scratch; then compaction.
    // The last shape is Gemma 3 270M's: 4 heads sharing one of width 256, scores scaled
    // by query_pre_attn_scalar ** -0.5 (here 1/sqrt(168), not 1/sqrt(256)).
    for (heads, kv_heads, hd, committed, scale) in [
        (4usize, 2usize, 64usize, 10usize, 0.125f32),
        (8, 1, 128, 300, 1.0 / 128f32.sqrt()),
        (4, 1, 256, 40, (1.0 / 168f64.sqrt()) as f32),
    ] {
        let (qd, kvd) = (heads * hd, kv_heads * hd);
        let shape = AttnShape {
            n_heads: heads,
            n_kv_heads: kv_heads,
            head_dim: hd,
            scale,
        };
        let mut kv = b
            .kv_new(2, kv_heads, hd, committed + 32, KvDtype::F32)
            .unwrap();
        let k0 = act(b, committed, kvd, &rnd(committed * kvd, 7));
        let v0 = act(b, committed, kvd, &rnd(committed * kvd, 8));
        b.kv_write(&mut kv, 1, 0, &k0, &v0).unwrap();
        let k1 = act(b, n, kvd, &rnd(n * kvd, 9));
        let v1 = act(b, n, kvd, &rnd(n * kvd, 10));
        b.kv_write(&mut kv, 1, committed, &k1, &v1).unwrap();
        let q = act(b, n, qd, &rnd(n * qd, 11));
        let parents = [None, Some(0), Some(0), Some(1), Some(1), Some(2), Some(5)];
        let mask = AttnMask::from_parents(&parents).unwrap();
        let mut o = b.act(n, qd).unwrap();
        b.attention(&q, &kv, 1, committed, &mask, shape, &mut o)
            .unwrap();
        out.push((format!("attention hd {hd}"), b.to_host(&o).unwrap()));
        // The same under a sliding window of 5 positions (the tree's queries at positions
        // committed + depth; committed slot j at position j).
        let depth = [0usize, 1, 1, 2, 2, 2, 3];
        let pos: Vec<usize> = depth.iter().map(|d| committed + d).collect();
        let win = mask.windowed(&pos, 5, committed);
        b.attention(&q, &kv, 1, committed, &win, shape, &mut o)
            .unwrap();
        out.push((
            format!("attention hd {hd}, window 5"),
            b.to_host(&o).unwrap(),
        ));
        // Keep the path 0 -> 2 -> 5 -> 6 and read it back through one more token.
        b.kv_compact(
            &mut kv,
            &[committed, committed + 2, committed + 5, committed + 6],
            committed,
        )
        .unwrap();
        let k2 = act(b, 1, kvd, &rnd(kvd, 12));
        let v2 = act(b, 1, kvd, &rnd(kvd, 13));
        b.kv_write(&mut kv, 1, committed + 4, &k2, &v2).unwrap();
        let q2 = act(b, 1, qd, &rnd(qd, 14));
        let mut o2 = b.act(1, qd).unwrap();
        b.attention(
            &q2,
            &kv,
            1,
            committed + 4,
            &AttnMask::causal(1),
            shape,
            &mut o2,
        )
        .unwrap();
        out.push((
            format!("compacted attention hd {hd}"),
            b.to_host(&o2).unwrap(),
        ));
    }
    out
}

#[test]
fn the_parity_operations_run_on_the_cpu() {
    // The reference half of every_operation_matches_the_cpu, so a broken case shows here
    // on machines without a GPU too.
    let ops = ops(&CpuBackend);
    assert!(ops.len() > 30);
    for (name, v) in &ops {
        assert!(v.iter().all(|x| x.is_finite()), "{name}: non-finite output");
    }
}

#[test]
fn every_operation_matches_the_cpu() {
    let Some(cuda) = gpu("every_operation_matches_the_cpu") else {
        return;
    };
    let want = ops(&CpuBackend);
    let got = ops(&cuda);
    let cublas = std::env::var("SUBSPEC_CUDA_GEMM").is_ok_and(|v| v == "cublas");
    let mut worst = Vec::new();
    for ((name, w), (_, g)) in want.iter().zip(&got) {
        let e = rel_err(g, w);
        // Our kernels differ from the CPU's only in summation order; cuBLAS rounds the
        // activations to the weight's type first.
        let tol = if cublas && name.starts_with("linear") {
            1e-2
        } else {
            1e-5
        };
        println!("{name:28} rel err {e:.2e} (tolerance {tol:.0e})");
        if e.is_nan() || e > tol {
            worst.push(format!("{name}: {e:.2e}"));
        }
    }
    assert!(worst.is_empty(), "outside tolerance: {worst:?}");
}

#[test]
fn a_token_computes_the_same_bits_alone_and_in_a_batch() {
    let Some(cuda) = gpu("a_token_computes_the_same_bits_alone_and_in_a_batch") else {
        return;
    };
    if std::env::var("SUBSPEC_CUDA_GEMM").is_ok_and(|v| v == "cublas") {
        eprintln!("SKIP batch invariance: cuBLAS products are not batch-invariant");
        return;
    }
    let (n, h, o) = (37usize, 896usize, 640usize);
    let xs = rnd(n * h, 30);
    let x = act(&cuda, n, h, &xs);
    for dt in [DType::F16, DType::BF16] {
        let w = cuda
            .upload(&tensor("w", dt, vec![o, h], &rnd(o * h, 31)))
            .unwrap();
        let mut all = cuda.act(n, o).unwrap();
        cuda.linear(&x, &w, None, &mut all).unwrap();
        let all = cuda.to_host(&all).unwrap();
        for i in [0usize, 15, 16, 36] {
            let xi = act(&cuda, 1, h, &xs[i * h..(i + 1) * h]);
            let mut one = cuda.act(1, o).unwrap();
            cuda.linear(&xi, &w, None, &mut one).unwrap();
            let one = cuda.to_host(&one).unwrap();
            assert!(
                one.iter()
                    .zip(&all[i * o..(i + 1) * o])
                    .all(|(a, b)| a.to_bits() == b.to_bits()),
                "{dt:?}: token {i} alone differs from the same token in a batch of {n}"
            );
        }
    }
}

#[test]
fn logits_and_greedy_continuations_match_the_cpu() {
    if gpu("logits_and_greedy_continuations_match_the_cpu").is_none() {
        return;
    }
    for name in shapes() {
        let dir = common::synth_model_dir(&name);
        let cpu = load(&dir, DeviceKind::Cpu, false, None);
        let cuda = load(&dir, DeviceKind::Cuda(0), false, None);
        let vocab = cpu.config().vocab;
        let p = prompt(vocab, 24, 1);
        let rows: Vec<usize> = (0..p.len()).collect();
        let pos = rows.clone();
        let logits = |e: &Engine| {
            let m = e.model();
            let mut c = m.new_cache(p.len()).unwrap();
            e.install(|| m.forward(&mut c, &p, &pos, &AttnMask::causal(p.len()), &rows))
                .unwrap()
        };
        let (want, got) = (logits(&cpu), logits(&cuda));
        let e = rel_err(&got, &want);
        let max_abs = got
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        println!(
            "{name}: logits rel err {e:.2e}, max abs diff {max_abs:.2e} over {} rows",
            p.len()
        );
        assert!(e < 1e-3, "{name}: logits differ from the CPU's by {e:.2e}");
        let greedy = StepOptions::plain(SamplingParams::greedy());
        let want = generate(&cpu, &p, &greedy, 32);
        let got = generate(&cuda, &p, &greedy, 32);
        println!("{name}: greedy CPU  {want:?}\n{name}: greedy CUDA {got:?}");
        assert_eq!(
            got, want,
            "{name}: greedy continuation differs from the CPU's"
        );
    }
}

#[test]
fn gguf_and_windowed_models_match_the_cpu() {
    // The tiny transformers-built fixtures whose heads the CUDA kernels take (head_dim
    // 32): GGUF files in f16 and in Q8_0/Q4_0/Q4_1/Q5_0/Q5_1 (permuted q/k, llama3
    // rope_freqs), Mistral with a window shorter than the prompt, Qwen3's q/k norms, Gemma
    // 3 (GeLU-tanh, sandwich norms, scaled embedding, local and global RoPE, windows).
    if gpu("gguf_and_windowed_models_match_the_cpu").is_none() {
        return;
    }
    let arch = common::root().join("tests/golden/arch");
    let cases = [
        arch.join("llama3.1-hd32/model.gguf"),
        arch.join("llama3.1-hd32/model-q.gguf"),
        arch.join("mistral-window-hd32"),
        arch.join("qwen3"),
        arch.join("qwen3/model.gguf"),
        arch.join("gemma3"),
        arch.join("gemma3/model.gguf"),
        arch.join("gemma3-scalar"),
    ];
    for path in cases {
        let name = path.display().to_string();
        let cpu = load(&path, DeviceKind::Cpu, true, None);
        let cuda = load(&path, DeviceKind::Cuda(0), true, None);
        let p = prompt(cpu.config().vocab, 40, 3);
        let rows: Vec<usize> = (0..p.len()).collect();
        let logits = |e: &Engine| {
            let m = e.model();
            let mut c = m.new_cache(p.len()).unwrap();
            e.install(|| m.forward(&mut c, &p, &rows, &AttnMask::causal(p.len()), &rows))
                .unwrap()
        };
        let e = rel_err(&logits(&cuda), &logits(&cpu));
        println!("{name}: logits rel err {e:.2e}");
        assert!(e < 1e-3, "{name}: logits differ from the CPU's by {e:.2e}");
        let greedy = StepOptions::plain(SamplingParams::greedy());
        let want = generate(&cpu, &p, &greedy, 16);
        assert_eq!(generate(&cuda, &p, &greedy, 16), want, "{name}: greedy");
        for sampling in [
            SamplingParams::greedy(),
            SamplingParams::new(0.9, 0, 0.95, 4),
        ] {
            let plain = generate(&cuda, &p, &StepOptions::plain(sampling), 24);
            let spec = generate(&cuda, &p, &StepOptions::speculative(sampling), 24);
            assert_eq!(
                spec, plain,
                "{name}: CUDA speculative != plain ({sampling:?})"
            );
        }
    }
    // The quantized GGUF streamed from pinned memory at its minimum budget.
    let q = arch.join("llama3.1-hd32/model-q.gguf");
    let min = Engine::minimum_budget(&options(&q, DeviceKind::Cuda(0), true, None)).unwrap();
    let streamed = load(&q, DeviceKind::Cuda(0), true, Some(min));
    let resident = load(&q, DeviceKind::Cuda(0), true, None);
    let p = prompt(resident.config().vocab, 20, 5);
    let opts = StepOptions::speculative(SamplingParams::greedy());
    assert_eq!(
        generate(&streamed, &p, &opts, 24),
        generate(&resident, &p, &opts, 24),
        "streamed quantized GGUF on CUDA"
    );
}

#[test]
fn speculative_output_equals_plain_output() {
    if gpu("speculative_output_equals_plain_output").is_none() {
        return;
    }
    let samplings = [
        SamplingParams::greedy(),
        SamplingParams::new(0.8, 0, 0.95, 11),
        SamplingParams::new(1.3, 40, 1.0, 3),
    ];
    let trees = [
        TreeParams::default(),
        TreeParams::default()
            .with_width(2)
            .with_depth(16)
            .with_max_tokens(64),
        TreeParams::default()
            .with_width(4)
            .with_depth(6)
            .with_max_tokens(48),
    ];
    for name in shapes() {
        let dir = common::synth_model_dir(&name);
        let engine = load(&dir, DeviceKind::Cuda(0), true, None);
        let vocab = engine.config().vocab;
        for (k, s) in samplings.iter().enumerate() {
            let p = prompt(vocab, 12 + k, 2 + k as u64);
            let want = generate(&engine, &p, &StepOptions::plain(*s), 40);
            for t in &trees {
                let opts = StepOptions::speculative(*s).with_tree(*t);
                let mut seq = engine.new_sequence().unwrap();
                seq.append(&p).unwrap();
                let got = seq.generate(&opts, 40, |_| true).unwrap();
                println!(
                    "{name}: {s:?} tree {}x{}: tau {:.2}",
                    t.width,
                    t.depth,
                    seq.stats().tau()
                );
                assert_eq!(
                    got, want,
                    "{name}: speculative ({t:?}) differs from plain, {s:?}"
                );
            }
        }
    }
}

/// Batched steps on CUDA (segments' rows gathered and set, one pass for all; the trees
/// drafted together): each sequence's tokens are its solo plain tokens, resident and at
/// the minimum budget.
#[test]
fn batched_steps_equal_solo_steps() {
    if gpu("batched_steps_equal_solo_steps").is_none() {
        return;
    }
    let tree = TreeParams::default()
        .with_width(2)
        .with_depth(6)
        .with_max_tokens(32);
    for name in shapes() {
        let dir = common::synth_model_dir(&name);
        let min = Engine::minimum_budget(&options(&dir, DeviceKind::Cuda(0), true, None)).unwrap();
        for budget in [None, Some(min + min / 2)] {
            let engine = load(&dir, DeviceKind::Cuda(0), true, budget);
            let vocab = engine.config().vocab;
            let samplings = [
                SamplingParams::greedy(),
                SamplingParams::new(0.9, 0, 0.9, 4),
            ];
            let prompts: Vec<Vec<u32>> =
                (0..4).map(|k| prompt(vocab, 5 + 3 * k, k as u64)).collect();
            let opts: Vec<StepOptions> = (0..4)
                .map(|k| match k {
                    3 => StepOptions::plain(samplings[1]),
                    // Its depth chosen by the batch's measured cost (CUDA's own costs).
                    2 => {
                        StepOptions::speculative(samplings[0]).with_tree(tree.with_auto_depth(true))
                    }
                    k => StepOptions::speculative(samplings[k % 2]).with_tree(tree),
                })
                .collect();
            let want: Vec<Vec<u32>> = prompts
                .iter()
                .zip(&opts)
                .map(|(p, o)| generate(&engine, p, &StepOptions::plain(o.sampling), 16))
                .collect();
            // Each job leaves the batch at 16 tokens or an end token, as `generate` does.
            let jobs: Vec<common::Job> = prompts
                .iter()
                .zip(&opts)
                .map(|(p, o)| common::Job {
                    prompt: p.clone(),
                    opts: *o,
                    n: 16,
                    join: 0,
                })
                .collect();
            let (got, _) = common::batched(&engine, &jobs);
            assert_eq!(got, want, "{name}, budget {budget:?}");
            println!("{name}, budget {budget:?}: 4 batched sequences equal their solo output");
        }
    }
}

#[test]
fn streamed_layers_give_the_resident_output() {
    if gpu("streamed_layers_give_the_resident_output").is_none() {
        return;
    }
    for name in shapes() {
        let dir = common::synth_model_dir(&name);
        let opts = options(&dir, DeviceKind::Cuda(0), true, None);
        let min = Engine::minimum_budget(&opts).unwrap();
        let resident = load(&dir, DeviceKind::Cuda(0), true, None);
        let vocab = resident.config().vocab;
        let p = prompt(vocab, 16, 9);
        let sampled = SamplingParams::new(0.9, 0, 0.9, 5);
        let want: Vec<Vec<u32>> = [SamplingParams::greedy(), sampled]
            .iter()
            .map(|s| generate(&resident, &p, &StepOptions::plain(*s), 24))
            .collect();
        for budget in [min, min + min / 4] {
            let engine = load(&dir, DeviceKind::Cuda(0), true, Some(budget));
            let streamed = engine.placement().unwrap().offloaded().len();
            // A quarter over the minimum may hold a small model whole (the tiny shape's
            // two layers); the minimum itself always streams.
            assert!(
                budget > min || streamed > 0,
                "{name}: the minimum budget streams layers"
            );
            let mut overlapped = 0;
            for (s, want) in [SamplingParams::greedy(), sampled].iter().zip(&want) {
                for opts in [StepOptions::plain(*s), StepOptions::speculative(*s)] {
                    let mut seq = engine.new_sequence().unwrap();
                    seq.append(&p).unwrap();
                    let got = seq.generate(&opts, 24, |_| true).unwrap();
                    assert_eq!(
                        &got, want,
                        "{name}: budget {budget} ({streamed} layers streamed), {opts:?}"
                    );
                    overlapped += seq.stats().overlapped_steps;
                }
            }
            // While a layer's copy is in flight and the compute stream has drained, the
            // draft runs on it (the tiny shape's copies may land before it could).
            println!("{name}: budget {budget}: {overlapped} draft steps during target passes");
            if streamed > 0 && name != "tiny" {
                assert!(overlapped > 0, "{name}: no draft step ran during a pass");
            }
            let (used, peak, limit) = engine.model().backend().as_cuda().unwrap().memory();
            println!(
                "{name}: budget {budget}: {streamed} layers streamed, peak {peak} of {limit} (in use {used}), {} bytes streamed",
                engine.model().stream_stats().map_or(0, |s| s.bytes)
            );
            assert!(peak <= limit);
        }
        let err = Engine::load(&options(&dir, DeviceKind::Cuda(0), true, Some(min - 1)))
            .expect_err("a budget under the minimum is refused");
        assert_eq!(err.kind(), ErrorKind::OutOfMemory, "{err}");
    }
}

#[test]
fn the_draft_pass_matches_the_cpu() {
    if gpu("the_draft_pass_matches_the_cpu").is_none() {
        return;
    }
    let dir = common::synth_model_dir("tiny");
    let cpu = load(&dir, DeviceKind::Cpu, true, None);
    let cuda = load(&dir, DeviceKind::Cuda(0), true, None);
    let vocab = cpu.config().vocab;
    let p = prompt(vocab, 10, 4);
    let rows: Vec<usize> = (0..p.len()).collect();
    let run = |e: &Engine| {
        let m = e.model();
        let mut c = m.new_cache(p.len()).unwrap();
        e.install(|| {
            m.forward_at(
                &mut c,
                Pass::Draft,
                0,
                &p,
                &rows,
                &AttnMask::causal(p.len()),
                &rows,
            )
        })
        .unwrap()
    };
    let full = run(&cuda);
    let e = rel_err(&full, &run(&cpu));
    println!("draft pass rel err {e:.2e}");
    assert!(e < 1e-4, "draft logits differ from the CPU's by {e:.2e}");
    // A draft over the first half of the vocabulary (a view of the device lm_head): the
    // first columns of the full draft's logits, bit for bit, and the CPU's values.
    let half = |device| {
        let mut o = options(&dir, device, true, None);
        o.draft = Some(DraftOptions::default().with_vocab(vocab / 2));
        Engine::load(&o).unwrap()
    };
    let (cuda_half, cpu_half) = (run(&half(DeviceKind::Cuda(0))), run(&half(DeviceKind::Cpu)));
    let firsts: Vec<f32> = full
        .chunks_exact(vocab)
        .flat_map(|r| r[..vocab / 2].to_vec())
        .collect();
    assert_eq!(cuda_half, firsts, "the half-vocabulary draft's logits");
    let e = rel_err(&cuda_half, &cpu_half);
    assert!(
        e < 1e-4,
        "half-vocabulary draft logits differ from the CPU's by {e:.2e}"
    );
}

#[test]
fn cuda_is_a_clear_error_without_a_gpu() {
    let dir = common::synth_model_dir("tiny");
    let opts = options(&dir, DeviceKind::Cuda(0), false, None);
    if !driver_present() {
        let err = Engine::load(&opts).expect_err("no driver, no engine");
        assert_eq!(err.kind(), ErrorKind::DeviceUnavailable);
        assert!(err.to_string().contains("no CUDA driver found"), "{err}");
    }
    // A device that does not exist, with or without a driver.
    let err = Engine::load(&options(&dir, DeviceKind::Cuda(97), false, None))
        .expect_err("no such device");
    assert_eq!(err.kind(), ErrorKind::DeviceUnavailable, "{err}");
    assert!(err.to_string().contains("cuda:97"), "{err}");
    assert!(DeviceKind::parse("gpu").is_err());
    assert_eq!(DeviceKind::parse("cuda:2").unwrap(), DeviceKind::Cuda(2));
}
