//! Substitutes on real weights: HQQ reconstructs every tested layer better than
//! round-to-nearest (4, 3 and 2 bits), the fused product agrees with the dequantized
//! matrix and is batch-invariant, and (printed, not asserted) how long quantizing all of
//! Qwen's substitutes takes and how fast `qlinear` is next to the f16/bf16 `linear`.
//!
//! Timing tests hold one lock so they do not share the CPU with each other.

mod common;

use std::sync::Mutex;
use std::time::Instant;

use subspec::internals::matmul;
use subspec::internals::Weights;
use subspec::internals::{qlinear, reconstruction_error, QMatrix};
use subspec::ModelConfig;
use subspec::{QuantConfig, QuantMethod};

static SERIAL: Mutex<()> = Mutex::new(());

/// `(name, [rows, cols])` of the 7 linears of layer `l`.
fn linears(c: &ModelConfig, l: usize) -> Vec<(String, [usize; 2])> {
    let p = format!("model.layers.{l}");
    let (h, q, kv, ff) = (c.hidden, c.q_dim(), c.kv_dim(), c.intermediate);
    vec![
        (format!("{p}.self_attn.q_proj.weight"), [q, h]),
        (format!("{p}.self_attn.k_proj.weight"), [kv, h]),
        (format!("{p}.self_attn.v_proj.weight"), [kv, h]),
        (format!("{p}.self_attn.o_proj.weight"), [h, q]),
        (format!("{p}.mlp.gate_proj.weight"), [ff, h]),
        (format!("{p}.mlp.up_proj.weight"), [ff, h]),
        (format!("{p}.mlp.down_proj.weight"), [h, ff]),
    ]
}

fn cfg(bits: u8, method: QuantMethod) -> QuantConfig {
    QuantConfig {
        bits,
        method,
        ..Default::default()
    }
}

fn hqq_beats_rtn(model: &str) {
    let _lock = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = common::model_dir(model);
    let c = ModelConfig::from_dir(&dir).unwrap();
    let weights = Weights::open(&dir).unwrap();
    println!("{model}: mean |W - dequant(W)|, RTN vs HQQ, group 64");
    for bits in [4u8, 3, 2] {
        let (mut sum_r, mut sum_h) = (0f64, 0f64);
        for l in [0, c.n_layers / 2, c.n_layers - 1] {
            for (name, shape) in linears(&c, l) {
                let t = weights.get(&name, &shape).unwrap();
                let w = t.to_f32_vec();
                let r = QMatrix::quantize_tensor(&t, &cfg(bits, QuantMethod::Rtn)).unwrap();
                let h = QMatrix::quantize_tensor(&t, &cfg(bits, QuantMethod::Hqq)).unwrap();
                let (er, eh) = (reconstruction_error(&w, &r), reconstruction_error(&w, &h));
                println!(
                    "  {bits} bits {name:45} rtn {er:.6e} hqq {eh:.6e} ({:+.2}%)",
                    100.0 * (eh / er - 1.0)
                );
                assert!(eh < er, "{name} at {bits} bits: hqq {eh} >= rtn {er}");
                sum_r += er;
                sum_h += eh;
            }
        }
        println!(
            "  {bits} bits overall: rtn {:.6e} hqq {:.6e} ({:+.2}%)",
            sum_r / 21.0,
            sum_h / 21.0,
            100.0 * (sum_h / sum_r - 1.0)
        );
    }
}

#[test]
fn hqq_beats_rtn_on_qwen_layers() {
    hqq_beats_rtn(common::QWEN2);
}

#[test]
fn hqq_beats_rtn_on_smollm2_layers() {
    hqq_beats_rtn(common::SMOLLM2);
}

#[test]
fn qlinear_on_real_weights_matches_dequantized_and_is_batch_invariant() {
    let dir = common::model_dir(common::QWEN2);
    let c = ModelConfig::from_dir(&dir).unwrap();
    let weights = Weights::open(&dir).unwrap();
    let (name, [n, k]) = linears(&c, 3).remove(6); // down_proj: the long rows
    let q = QMatrix::quantize_tensor(
        &weights.get(&name, &[n, k]).unwrap(),
        &cfg(4, QuantMethod::Hqq),
    )
    .unwrap();
    let deq = q.dequantize();
    let t_count = 7;
    let x: Vec<f32> = (0..t_count * k).map(|i| common::rnd(i as u64)).collect();
    let mut out = vec![0f32; t_count * n];
    qlinear(&x, t_count, &q, None, &mut out);
    for t in 0..t_count {
        let mut single = vec![0f32; n];
        qlinear(&x[t * k..(t + 1) * k], 1, &q, None, &mut single);
        assert_eq!(&out[t * n..(t + 1) * n], &single[..], "token {t}");
        let xt = &x[t * k..(t + 1) * k];
        for o in (0..n).step_by(7) {
            let wo = &deq[o * k..(o + 1) * k];
            let want: f64 = wo.iter().zip(xt).map(|(a, b)| *a as f64 * *b as f64).sum();
            // f32 activations land within rounding of `want`; int8 ones (AVX-512 VNNI)
            // within half a step of 8 bits of each 64 activations' largest
            let int8: f64 = wo
                .chunks(64)
                .zip(xt.chunks(64))
                .map(|(w, x)| {
                    let amax = x.iter().fold(0f32, |a, v| a.max(v.abs())) as f64;
                    w.iter().map(|w| (*w as f64).abs()).sum::<f64>() * amax / 254.0
                })
                .sum();
            let got = out[t * n + o] as f64;
            assert!(
                (got - want).abs() < 1e-3 * (1.0 + want.abs()) + int8,
                "{got} {want} (int8 bound {int8})"
            );
        }
    }
}

#[test]
fn quantize_time_all_qwen_substitutes() {
    let _lock = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = common::model_dir(common::QWEN2);
    let c = ModelConfig::from_dir(&dir).unwrap();
    let weights = Weights::open(&dir).unwrap();
    let tensors: Vec<_> = (0..c.n_layers)
        .flat_map(|l| linears(&c, l))
        .map(|(name, shape)| weights.get(&name, &shape).unwrap())
        .collect();
    // touch the pages first so that the timing is the quantizer's, not the disk's
    let touched: u64 = tensors
        .iter()
        .map(|t| {
            t.bytes()
                .iter()
                .step_by(4096)
                .map(|&b| b as u64)
                .sum::<u64>()
        })
        .sum();
    let numel: usize = tensors.iter().map(|t| t.numel()).sum();
    let src_bytes: usize = tensors.iter().map(|t| t.bytes().len()).sum();
    for method in [QuantMethod::Rtn, QuantMethod::Hqq] {
        let start = Instant::now();
        let qs: Vec<QMatrix> = tensors
            .iter()
            .map(|t| QMatrix::quantize_tensor(t, &cfg(4, method)).unwrap())
            .collect();
        let secs = start.elapsed().as_secs_f64();
        let bytes: usize = qs.iter().map(|q| q.bytes()).sum();
        println!(
            "{method:?} 4-bit: {} linears, {:.1}M weights in {secs:.2} s on {} threads \
             ({:.1} M weights/s); {:.1} MB -> {:.1} MB ({:.4} bytes/weight){}",
            qs.len(),
            numel as f64 / 1e6,
            rayon::current_num_threads(),
            numel as f64 / 1e6 / secs,
            src_bytes as f64 / 1e6,
            bytes as f64 / 1e6,
            bytes as f64 / numel as f64,
            if touched == u64::MAX { "!" } else { "" },
        );
        assert_eq!(qs.len(), 7 * c.n_layers);
    }
}

#[test]
fn qlinear_speed_vs_linear() {
    let _lock = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = common::model_dir(common::QWEN2);
    let c = ModelConfig::from_dir(&dir).unwrap();
    let weights = Weights::open(&dir).unwrap();
    let layer = linears(&c, 5);
    for (name, [n, k]) in [layer[4].clone(), layer[6].clone()] {
        let t = weights.get(&name, &[n, k]).unwrap();
        let q = QMatrix::quantize_tensor(&t, &QuantConfig::default()).unwrap();
        for t_count in [1usize, 2, 4, 6, 8] {
            let x: Vec<f32> = (0..t_count * k).map(|i| common::rnd(i as u64)).collect();
            let mut out = vec![0f32; t_count * n];
            let time = |f: &mut dyn FnMut(&mut [f32])| {
                let mut out = out.clone();
                for _ in 0..5 {
                    f(&mut out);
                }
                let iters = 50;
                let start = Instant::now();
                for _ in 0..iters {
                    f(&mut out);
                }
                start.elapsed().as_secs_f64() / iters as f64
            };
            let tq = time(&mut |o| qlinear(&x, t_count, &q, None, o));
            let tf = time(&mut |o| matmul::linear(&x, t_count, &t, None, o));
            println!(
                "{n}x{k} t={t_count}: qlinear 4-bit {:.3} ms ({:.1} GB/s of {:.2} MB), \
                 linear {:?} {:.3} ms ({:.1} GB/s of {:.2} MB): {:.2}x",
                tq * 1e3,
                q.bytes() as f64 / tq / 1e9,
                q.bytes() as f64 / 1e6,
                t.dtype,
                tf * 1e3,
                t.bytes().len() as f64 / tf / 1e9,
                t.bytes().len() as f64 / 1e6,
                tf / tq
            );
            qlinear(&x, t_count, &q, None, &mut out);
        }
    }
}
