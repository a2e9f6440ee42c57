//! `cargo bench --bench kernels`: throughput of the CPU products a draft step runs, at
//! Qwen2.5-0.5B's shapes and a draft's token counts (1, 2 and 6 rows): the 4-bit
//! substitute product (`qlinear`) and the f16 dense product (`linear`, the lm_head).
//! Prints GB/s of weight bytes read (the figure that matters when a draft step is
//! bandwidth-bound) and GFLOP/s. Deterministic inputs; median of `REPS` timed calls
//! after warm-up. No assertions: a ratio between two rows of one run is the result.

mod common;

use std::sync::Arc;

use common::values;

use subspec::internals::matmul::linear;
use subspec::internals::matmul::qlinear;
use subspec::internals::substitute_bytes;
use subspec::internals::QMatrix;
use subspec::internals::{AlignedBuf, Storage};
use subspec::internals::{DType, HostTensor};
use subspec::{QuantConfig, QuantMethod};

const REPS: usize = 15;

/// Timed calls of `f`: the median of `REPS` after 3 untimed.
fn median_s(f: impl FnMut()) -> f64 {
    common::median_s(3, REPS, f)
}

fn report(what: &str, rows: usize, cols: usize, t: usize, bytes: usize, s: f64) {
    println!("{}", line(what, rows, cols, t, bytes, s));
}

/// One product's timing: ms, GB/s of weights and GFLOP/s.
fn line(what: &str, rows: usize, cols: usize, t: usize, bytes: usize, s: f64) -> String {
    format!(
        "{what:<22} {rows:>6}x{cols:<5} t={t:<2} {:>8.3} ms {:>7.2} GB/s {:>7.2} GFLOP/s",
        s * 1e3,
        bytes as f64 / s / 1e9,
        2.0 * (rows * cols * t) as f64 / s / 1e9
    )
}

fn main() {
    // `cargo bench --bench kernels -- dense`: only the dense products against the FMA peak
    if std::env::args().skip(1).any(|a| a == "dense") {
        return dense();
    }
    // `-- draft`: only a draft step's substitutes from memory, at a draft's 1 and 2 tokens
    if std::env::args().skip(1).any(|a| a == "draft") {
        return draft_layers(&[1, 2]);
    }
    // (rows, cols): gate/up, down, q/o, the lm_head
    let shapes = [(4864, 896), (896, 4864), (896, 896)];
    for bits in [4u8, 8] {
        let cfg = QuantConfig {
            bits,
            group: 64,
            method: QuantMethod::Rtn,
        };
        for &(rows, cols) in &shapes {
            let q = QMatrix::quantize(&values(rows * cols, 1), rows, cols, &cfg).unwrap();
            let bytes = substitute_bytes(rows as u64, cols as u64, &cfg) as usize;
            for t in [1, 2, 6, 8, 16] {
                let x = values(t * cols, 2);
                let mut out = vec![0f32; t * rows];
                let s = median_s(|| qlinear(&x, t, &q, None, &mut out));
                report(&format!("qlinear {bits}-bit g64"), rows, cols, t, bytes, s);
            }
        }
    }
    draft_layers(&[1, 2, 6, 8, 16]);
    let (rows, cols) = (151936, 896);
    let w = f16_matrix("lm_head.weight", rows, cols);
    // 1-2: a draft step (8: a batch of 8 sequences'); 12-33: verifying a tree's rows
    for t in [1, 2, 6, 8, 12, 17, 33] {
        let x = values(t * cols, 3);
        let mut out = vec![0f32; t * rows];
        let s = median_s(|| linear(&x, t, &w, None, &mut out));
        report("linear f16 (lm_head)", rows, cols, t, rows * cols * 2, s);
    }
}

/// A draft step's linears from memory, not cache: 24 layers of 4-bit (and 8-bit)
/// substitutes (q, k, v, o, gate, up, down of Qwen2.5-0.5B: ~201 MB), run in order, and
/// the 2-bit ranking head, at `tokens` tokens.
fn draft_layers(tokens: &[usize]) {
    let layer = [
        (896, 896),
        (128, 896),
        (128, 896),
        (896, 896),
        (4864, 896),
        (4864, 896),
        (896, 4864),
    ];
    for bits in [4u8, 8] {
        let cfg = QuantConfig {
            bits,
            group: 64,
            method: QuantMethod::Rtn,
        };
        let mats: Vec<QMatrix> = (0..24)
            .flat_map(|l| layer.iter().map(move |&s| (l, s)))
            .map(|(l, (r, c))| QMatrix::quantize(&values(r * c, l), r, c, &cfg).unwrap())
            .collect();
        let bytes: usize = mats
            .iter()
            .map(|m| substitute_bytes(m.rows() as u64, m.cols() as u64, &cfg) as usize)
            .sum();
        for &t in tokens {
            let x = values(t * 4864, 2);
            let mut out = vec![0f32; t * 4864];
            let s = median_s(|| {
                for m in &mats {
                    qlinear(&x[..t * m.cols()], t, m, None, &mut out[..t * m.rows()]);
                }
            });
            let flops_cols: usize = mats.iter().map(|m| m.rows() * m.cols()).sum();
            report(
                &format!("24 layers {bits}-bit"),
                flops_cols / 896,
                896,
                t,
                bytes,
                s,
            );
        }
    }
    // the draft's ranking head: Qwen2.5-0.5B's lm_head at 2 bits (~42 MB)
    let (rows, cols) = (151936, 896);
    let cfg = QuantConfig {
        bits: 2,
        group: 64,
        method: QuantMethod::Rtn,
    };
    let q = QMatrix::quantize(&values(rows * cols, 9), rows, cols, &cfg).unwrap();
    let bytes = substitute_bytes(rows as u64, cols as u64, &cfg) as usize;
    for &t in tokens {
        let x = values(t * cols, 2);
        let mut out = vec![0f32; t * rows];
        let s = median_s(|| qlinear(&x, t, &q, None, &mut out));
        report("ranking head 2-bit", rows, cols, t, bytes, s);
    }
}

/// An f16 matrix of `rows x cols` deterministic weights, as the loader would hold it.
fn f16_matrix(name: &str, rows: usize, cols: usize) -> HostTensor {
    let mut buf = AlignedBuf::new(rows * cols * 2);
    for (i, b) in buf.as_mut_slice().chunks_exact_mut(2).enumerate() {
        let v = half::f16::from_f32(((i * 7919) % 2001) as f32 / 1000.0 - 1.0);
        b.copy_from_slice(&v.to_le_bytes());
    }
    HostTensor::view(
        name,
        DType::F16,
        vec![rows, cols],
        Arc::new(Storage::Owned(buf)),
        0,
        rows * cols * 2,
    )
}

/// The dense f16 product at Qwen2.5-0.5B's layer shapes and a verification's token counts,
/// as a share of the machine's f32 FMA peak (measured here: independent FMA chains on
/// every thread of the pool).
fn dense() {
    let peak = fma_peak_flops();
    println!(
        "f32 FMA peak, {} threads: {:.1} GFLOP/s",
        rayon::current_num_threads(),
        peak / 1e9
    );
    for (rows, cols) in [(4864, 896), (896, 4864), (896, 896)] {
        let w = f16_matrix("w", rows, cols);
        for t in [1, 16, 64, 256] {
            let x = values(t * cols, 2);
            let mut out = vec![0f32; t * rows];
            let s = median_s(|| linear(&x, t, &w, None, &mut out));
            let share = 100.0 * 2.0 * (rows * cols * t) as f64 / s / peak;
            let timing = line("linear f16", rows, cols, t, rows * cols * 2, s);
            println!("{timing}    {share:.0}% of peak");
        }
    }
}

/// Floating-point operations per second of 12 independent 8-lane FMA chains per thread,
/// on every thread of rayon's pool at once (the best of 5 runs).
fn fma_peak_flops() -> f64 {
    const ITERS: usize = 20_000_000;
    let threads = rayon::current_num_threads();
    (0..5)
        .map(|_| {
            let t0 = std::time::Instant::now();
            let runs = rayon::broadcast(|_| fma_chains(ITERS));
            let s = t0.elapsed().as_secs_f64();
            std::hint::black_box(runs.iter().map(|r| r.0).sum::<f32>());
            (threads * ITERS * 12 * 2 * runs[0].1) as f64 / s
        })
        .fold(0.0, f64::max)
}

/// `iters` rounds of 12 independent FMAs on the widest vectors the kernels use (16 lanes
/// with AVX-512 unless `SUBSPEC_NO_AVX512` is set, else 8); returns a value that depends
/// on all, and the lanes.
fn fma_chains(iters: usize) -> (f32, usize) {
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx512f") && std::env::var_os("SUBSPEC_NO_AVX512").is_none() {
        // SAFETY: the feature was just detected.
        return (unsafe { fma_chains_avx512(iters) }, 16);
    }
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
        // SAFETY: the features were just detected.
        return (unsafe { fma_chains_avx2(iters) }, 8);
    }
    let mut acc = [1f32; 96];
    for _ in 0..iters {
        for a in acc.iter_mut() {
            *a = a.mul_add(0.999_999, 1e-7);
        }
    }
    (acc.iter().sum(), 8)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn fma_chains_avx2(iters: usize) -> f32 {
    use std::arch::x86_64::*;
    let m = _mm256_set1_ps(0.999_999);
    let c = _mm256_set1_ps(1e-7);
    let mut acc = [_mm256_set1_ps(1.0); 12];
    for _ in 0..iters {
        for a in acc.iter_mut() {
            *a = _mm256_fmadd_ps(*a, m, c);
        }
    }
    let mut lanes = [0f32; 8];
    let mut sum = 0.0;
    for a in acc {
        _mm256_storeu_ps(lanes.as_mut_ptr(), a);
        sum += lanes.iter().sum::<f32>();
    }
    sum
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn fma_chains_avx512(iters: usize) -> f32 {
    use std::arch::x86_64::*;
    let m = _mm512_set1_ps(0.999_999);
    let c = _mm512_set1_ps(1e-7);
    let mut acc = [_mm512_set1_ps(1.0); 12];
    for _ in 0..iters {
        for a in acc.iter_mut() {
            *a = _mm512_fmadd_ps(*a, m, c);
        }
    }
    acc.iter().map(|a| _mm512_reduce_add_ps(*a)).sum()
}
