//! The quantizer: per-group min-max scale, zero-point by round-to-nearest or HQQ.
//!
//! HQQ (Badri & Shaji 2023), as the HQQ library's `optimize_weights_proximal_legacy`, with
//! its scale convention `s = (2^bits - 1) / (max - min)`, `z = -min * s`,
//! `W_q = clamp(round(W * s + z), 0, 2^bits - 1)`. Then, with `p = 0.7`, `beta = 10`,
//! `kappa = 1.01`, at most 20 times:
//! `W_r = (W_q - z) / s`; `W_e = shrink_lp(W - W_r, beta)`; `z = mean(W_q - (W - W_e) * s)`;
//! `beta *= kappa`; `W_q` is recomputed from the new `z` at the top of each iteration.
//! `shrink_lp(x) = sign(x) * relu(|x| - (|x| + 1e-8)^(p - 1) / beta)`. The scale stays fixed
//! and the zero stays a float.
//!
//! Differences from the reference, all deliberate:
//! - the iteration and its early stop run **per group** (the reference stops when the
//!   whole matrix's mean absolute error stops improving); each group keeps the zero with
//!   its best error (the reference returns the zero after the first non-improving step);
//! - `(|x| + 1e-8)^(p - 1)` is `exp2((p - 1) * log2(.))` with polynomial `log2`/`exp2`
//!   (relative error below 1e-6, tested against `powf`);
//! - after rounding `scale` and `min` to f16, the group keeps HQQ's result only if its mean
//!   absolute error is not above round-to-nearest's, so HQQ is never worse than RTN.
//!
//! Everything is plain f32 `+ - * /` and comparisons (no fused multiply-add), so the
//! AVX-512, AVX2 and portable builds of the same code give the same codes bit for bit.

use half::f16;
use rayon::prelude::*;

use super::format::{block_bytes, pack_block, QMatrix, BLOCK};
use super::{QuantConfig, QuantMethod};
use crate::error::{Error, Result};
use crate::util::isa::{isa, Isa};
use crate::util::lanes::sum16;

/// HQQ's lp-norm exponent.
const P: f32 = 0.7;
/// HQQ's initial beta.
const BETA: f32 = 10.0;
/// HQQ's beta growth per iteration.
const KAPPA: f32 = 1.01;
/// HQQ's most iterations.
const ITERS: usize = 20;
/// `x + MAGIC - MAGIC` rounds `0 <= x < 2^22` to the nearest integer, ties to even.
const MAGIC: f32 = 12_582_912.0;

/// Quantizes `rows` rows of `cols` weights; `fill(r, buf)` writes row `r` as f32.
pub(crate) fn quantize_rows<F>(
    rows: usize,
    cols: usize,
    cfg: &QuantConfig,
    fill: F,
) -> Result<QMatrix>
where
    F: Fn(usize, &mut [f32]) + Sync,
{
    cfg.validate()?;
    if !cols.is_multiple_of(cfg.group) {
        return Err(Error::invalid_argument(format!(
            "quantize: {cols} columns is not a multiple of the group size {}",
            cfg.group
        )));
    }
    let bits = cfg.bits;
    let rb = cols * bits as usize / 8;
    let gpr = cols / cfg.group;
    let mut codes = vec![0u8; rows * rb];
    let mut params = vec![f16::ZERO; 2 * rows * gpr];
    let isa = isa();
    if rows > 0 && cols > 0 {
        codes
            .par_chunks_mut(rb)
            .zip(params.par_chunks_mut(2 * gpr))
            .enumerate()
            .try_for_each_init(
                || vec![0f32; cols],
                |buf, (r, (c, p))| {
                    fill(r, buf);
                    quantize_row(isa, buf, cfg, c, p)
                        .map_err(|e| Error::invalid_argument(format!("row {r}: {}", e.message())))
                },
            )?;
    }
    Ok(QMatrix {
        rows,
        cols,
        bits,
        group: cfg.group,
        codes,
        params,
    })
}

/// One row: `codes` (`cols * bits / 8` bytes) and `params` (`2 * cols / group`).
pub(crate) fn quantize_row(
    isa: Isa,
    w: &[f32],
    cfg: &QuantConfig,
    codes: &mut [u8],
    params: &mut [f16],
) -> Result<()> {
    #[cfg(target_arch = "x86_64")]
    {
        match isa {
            // SAFETY: `isa` is one of `supported_isas()`, so the CPU has these features.
            Isa::Avx512 => return unsafe { row_avx512(w, cfg, codes, params) },
            // SAFETY: as above.
            Isa::Avx2 => return unsafe { row_avx2(w, cfg, codes, params) },
            Isa::Portable => {}
        }
    }
    let _ = isa;
    row_body(w, cfg, codes, params)
}

/// # Safety
/// The CPU has AVX-512F/BW/VL (the body is plain Rust compiled for them).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
unsafe fn row_avx512(
    w: &[f32],
    cfg: &QuantConfig,
    codes: &mut [u8],
    params: &mut [f16],
) -> Result<()> {
    row_body(w, cfg, codes, params)
}

/// # Safety
/// The CPU has AVX2 and FMA (the body is plain Rust compiled for them).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn row_avx2(
    w: &[f32],
    cfg: &QuantConfig,
    codes: &mut [u8],
    params: &mut [f16],
) -> Result<()> {
    row_body(w, cfg, codes, params)
}

#[inline(always)]
fn row_body(w: &[f32], cfg: &QuantConfig, codes: &mut [u8], params: &mut [f16]) -> Result<()> {
    let bb = block_bytes(cfg.bits);
    let maxq = ((1u32 << cfg.bits) - 1) as f32;
    for (g, wg) in w.chunks_exact(cfg.group).enumerate() {
        let (scale, min) = group_params(wg, maxq, cfg.method)
            .map_err(|e| Error::invalid_argument(format!("group {g}: {}", e.message())))?;
        params[2 * g] = scale;
        params[2 * g + 1] = min;
        let (d, m) = (scale.to_f32(), min.to_f32());
        let inv = if d > 0.0 { 1.0 / d } else { 0.0 };
        let blocks = cfg.group / BLOCK;
        for (b, wb) in wg.chunks_exact(BLOCK).enumerate() {
            let mut q = [0u8; BLOCK];
            for (c, &x) in q.iter_mut().zip(wb) {
                // the low byte of `r + MAGIC` is the integer `r` (0..=255)
                *c = (round_clamp((x - m) * inv, maxq) + MAGIC).to_bits() as u8;
            }
            let o = (g * blocks + b) * bb;
            pack_block(cfg.bits, &q, &mut codes[o..o + bb]);
        }
    }
    Ok(())
}

/// `(scale, min)` of one group, rounded to f16.
#[inline(always)]
fn group_params(w: &[f32], maxq: f32, method: QuantMethod) -> Result<(f16, f16)> {
    let mut lo = [f32::INFINITY; 16];
    let mut hi = [f32::NEG_INFINITY; 16];
    let mut nan = [0f32; 16];
    for c in w.chunks_exact(16) {
        for l in 0..16 {
            lo[l] = if c[l] < lo[l] { c[l] } else { lo[l] };
            hi[l] = if c[l] > hi[l] { c[l] } else { hi[l] };
            nan[l] += c[l] * 0.0; // NaN for an infinite or NaN weight
        }
    }
    if sum16(&nan).is_nan() {
        return Err(Error::invalid_argument("weights are not finite"));
    }
    let lo = lo.iter().fold(f32::INFINITY, |a, &b| a.min(b));
    let hi = hi.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
    let s = maxq / (hi - lo);
    let rtn = (f16::from_f32((hi - lo) / maxq), f16::from_f32(lo));
    let out = if !s.is_finite() {
        // all equal (or a range below f32 resolution): every code 0, w = min
        (f16::ZERO, f16::from_f32(lo))
    } else if method == QuantMethod::Rtn {
        rtn
    } else {
        let z = hqq_zero(w, s, -lo * s, maxq);
        let hqq = (rtn.0, f16::from_f32(-z / s));
        if hqq == rtn || group_error(w, hqq, maxq) <= group_error(w, rtn, maxq) {
            hqq
        } else {
            rtn
        }
    };
    if !out.0.is_finite() || !out.1.is_finite() {
        return Err(Error::invalid_argument(format!(
            "weights in [{lo}, {hi}] are out of the f16 range of scales and zeros"
        )));
    }
    Ok(out)
}

/// HQQ's zero-point refinement of one group with fixed scale `s`, from zero `z0`.
#[inline(always)]
fn hqq_zero(w: &[f32], s: f32, z0: f32, maxq: f32) -> f32 {
    let inv_s = 1.0 / s;
    let inv_n = 1.0 / w.len() as f32;
    let (mut z, mut beta) = (z0, BETA);
    let (mut best_err, mut best_z) = (f32::INFINITY, z0);
    for _ in 0..ITERS {
        let inv_beta = 1.0 / beta;
        let mut err = [0f32; 16];
        let mut zsum = [0f32; 16];
        for c in w.chunks_exact(16) {
            for l in 0..16 {
                let x = c[l];
                let q = round_clamp(x * s + z, maxq);
                let e = x - (q - z) * inv_s;
                let a = e.abs();
                err[l] += a;
                let t = a - pow_fast(a + 1e-8, P - 1.0) * inv_beta;
                let we = if t > 0.0 { t } else { 0.0 }.copysign(e);
                zsum[l] += q - (x - we) * s;
            }
        }
        let err = sum16(&err) * inv_n;
        if err < best_err {
            best_err = err;
            best_z = z;
        } else {
            break;
        }
        z = sum16(&zsum) * inv_n;
        beta *= KAPPA;
    }
    best_z
}

/// Mean absolute reconstruction error of one group with `(scale, min)`.
#[inline(always)]
fn group_error(w: &[f32], (scale, min): (f16, f16), maxq: f32) -> f32 {
    let (d, m) = (scale.to_f32(), min.to_f32());
    let inv = if d > 0.0 { 1.0 / d } else { 0.0 };
    let mut err = [0f32; 16];
    for c in w.chunks_exact(16) {
        for l in 0..16 {
            let q = round_clamp((c[l] - m) * inv, maxq);
            err[l] += (c[l] - (q * d + m)).abs();
        }
    }
    sum16(&err)
}

/// `x` clamped to `[0, maxq]` and rounded to the nearest integer (ties to even); NaN -> 0.
#[inline(always)]
pub(crate) fn round_clamp(x: f32, maxq: f32) -> f32 {
    let x = if x > 0.0 { x } else { 0.0 };
    let x = if x < maxq { x } else { maxq };
    (x + MAGIC) - MAGIC
}

/// `a^e` for a positive normal `a` and moderate `e * log2(a)` (|.| < 126), as
/// `exp2(e * log2(a))` with polynomials (constant divisions written as products: the
/// compiler may not turn them into multiplications); relative error about 1e-7.
#[inline(always)]
pub(crate) fn pow_fast(a: f32, e: f32) -> f32 {
    // log2(a) = k + log2(m), m in [sqrt(1/2), sqrt(2)); ln(m) = 2 atanh(u), u = (m-1)/(m+1)
    let bits = a.to_bits() as i32;
    let k = (bits - 0x3f35_04f3) >> 23;
    let m = f32::from_bits((bits - (k << 23)) as u32);
    let u = (m - 1.0) / (m + 1.0);
    let u2 = u * u;
    let ln_m =
        2.0 * u * (1.0 + u2 * (1.0 / 3.0 + u2 * (1.0 / 5.0 + u2 * (1.0 / 7.0 + u2 * (1.0 / 9.0)))));
    let y = e * (k as f32 + ln_m * std::f32::consts::LOG2_E);
    // 2^y = 2^n * e^(f ln 2), n = round(y), |f| <= 1/2
    // (y + MAGIC) holds round(y) in its low mantissa bits: no float-to-int conversion
    let yb = y + MAGIC;
    let n = yb - MAGIC;
    let ni = yb.to_bits() as i32 - 0x4b40_0000;
    let t = (y - n) * std::f32::consts::LN_2;
    let p = 1.0
        + t * (1.0
            + t * (0.5
                + t * (1.0 / 6.0
                    + t * (1.0 / 24.0
                        + t * (1.0 / 120.0 + t * (1.0 / 720.0 + t * (1.0 / 5040.0)))))));
    p * f32::from_bits(((ni + 127) << 23) as u32)
}

#[cfg(test)]
mod tests {
    use super::super::reconstruction_error;
    use super::*;
    use crate::error::ErrorKind;
    use crate::util::isa::supported_isas;

    fn cfg(bits: u8, group: usize, method: QuantMethod) -> QuantConfig {
        QuantConfig {
            bits,
            group,
            method,
        }
    }

    #[test]
    fn pow_fast_matches_powf() {
        let mut worst = 0f64;
        let mut a = 1e-8f32;
        while a < 1e4 {
            for e in [-0.3f32, 0.5, -1.0] {
                let want = (a as f64).powf(e as f64);
                let got = pow_fast(a, e) as f64;
                worst = worst.max(((got - want) / want).abs());
            }
            a *= 1.0007;
        }
        assert!(worst < 1e-6, "worst relative error {worst}");
    }

    #[test]
    fn round_clamp_ties_even_and_clamps() {
        assert_eq!(round_clamp(2.5, 15.0), 2.0);
        assert_eq!(round_clamp(3.5, 15.0), 4.0);
        assert_eq!(round_clamp(3.49, 15.0), 3.0);
        assert_eq!(round_clamp(-3.0, 15.0), 0.0);
        assert_eq!(round_clamp(99.0, 15.0), 15.0);
        assert_eq!(round_clamp(f32::NAN, 15.0), 0.0);
        assert_eq!(round_clamp(254.6, 255.0), 255.0);
    }

    /// A group on the grid `min + k * step` round-trips exactly, with either method.
    #[test]
    fn on_grid_values_round_trip_exactly() {
        for bits in [2u8, 3, 4, 8] {
            let maxq = (1usize << bits) - 1;
            for method in [QuantMethod::Rtn, QuantMethod::Hqq] {
                let (min, step) = (-0.75f32, 0.0625f32);
                let mut w: Vec<f32> = (0..128)
                    .map(|i| min + step * ((i * 5 + i / 3) % (maxq + 1)) as f32)
                    .collect();
                // each group of 32 spans the whole grid
                for g in 0..4 {
                    w[32 * g] = min;
                    w[32 * g + 1] = min + step * maxq as f32;
                }
                let q = QMatrix::quantize(&w, 2, 64, &cfg(bits, 32, method)).unwrap();
                assert_eq!(q.dequantize(), w, "bits {bits} {method:?}");
                assert_eq!(reconstruction_error(&w, &q), 0.0);
            }
        }
    }

    #[test]
    fn rtn_known_answers() {
        // 4 bits, one group of 32: min -1, max 2.75 -> scale 3.75 / 15 = 0.25 (exact in
        // f16), code = round((w + 1) / 0.25) with ties to even
        let mut w = vec![0f32; 32];
        let cases = [
            (-1.0, -1.0),   // code 0
            (2.75, 2.75),   // code 15
            (0.0, 0.0),     // 4
            (0.3, 0.25),    // 5.2 -> 5
            (-0.875, -1.0), // 0.5 -> 0
            (0.625, 0.5),   // 6.5 -> 6
            (-0.625, -0.5), // 1.5 -> 2
            (2.7, 2.75),    // 14.8 -> 15
            (0.12, 0.0),    // 4.48 -> 4
        ];
        for (i, (x, _)) in cases.iter().enumerate() {
            w[i] = *x;
        }
        let q = QMatrix::quantize(&w, 1, 32, &cfg(4, 32, QuantMethod::Rtn)).unwrap();
        assert_eq!(q.params(), &[f16::from_f32(0.25), f16::from_f32(-1.0)]);
        let rec = q.dequantize();
        for (i, (x, want)) in cases.iter().enumerate() {
            assert_eq!(rec[i], *want, "w = {x}");
        }
        // byte j = code j | code (j + 16) << 4; w[16..] = 0 -> code 4
        assert_eq!(&q.codes()[..4], &[0x40, 0x4f, 0x44, 0x45]);
    }

    #[test]
    fn degenerate_groups() {
        for bits in [2u8, 3, 4, 8] {
            for method in [QuantMethod::Rtn, QuantMethod::Hqq] {
                let mut w = vec![0.375f32; 64];
                w[32..].iter_mut().for_each(|v| *v = -2.0);
                let q = QMatrix::quantize(&w, 1, 64, &cfg(bits, 32, method)).unwrap();
                assert_eq!(q.dequantize(), w);
                let z = vec![0f32; 64];
                let q = QMatrix::quantize(&z, 2, 32, &cfg(bits, 32, method)).unwrap();
                assert_eq!(q.dequantize(), z);
            }
        }
    }

    #[test]
    fn clamping_and_bounds() {
        // every reconstruction lies within [min, max] of its group up to f16 rounding,
        // and codes never overflow their bit width (checked by unpacking)
        for bits in [2u8, 3, 4, 8] {
            let w: Vec<f32> = (0..256)
                .map(|i| ((i * 7919 % 1000) as f32 / 500.0 - 1.0).powi(3))
                .collect();
            for method in [QuantMethod::Rtn, QuantMethod::Hqq] {
                let q = QMatrix::quantize(&w, 2, 128, &cfg(bits, 64, method)).unwrap();
                let rec = q.dequantize();
                // (HQQ may move the zero, and so the whole grid, past the group's range)
                let rtn = method == QuantMethod::Rtn;
                for (g, (a, b)) in w.chunks(64).zip(rec.chunks(64)).enumerate().filter(|_| rtn) {
                    let lo = a.iter().fold(f32::INFINITY, |x, &y| x.min(y));
                    let hi = a.iter().fold(f32::NEG_INFINITY, |x, &y| x.max(y));
                    let slack = (hi - lo) * 0.02 + 1e-3;
                    for &v in b {
                        assert!(v >= lo - slack && v <= hi + slack, "g {g} {v} {lo} {hi}");
                    }
                }
                let mut codes = [0u8; BLOCK];
                for blk in q.codes().chunks(block_bytes(bits)) {
                    super::super::format::unpack_block(bits, blk, &mut codes);
                    assert!(codes.iter().all(|&c| (c as u32) < 1 << bits));
                }
            }
        }
    }

    #[test]
    fn hqq_not_worse_than_rtn_with_outliers() {
        for bits in [2u8, 3, 4, 8] {
            for seed in 0..20usize {
                // gaussian-ish bulk with a few outliers per group
                let w: Vec<f32> = (0..4 * 64)
                    .map(|i| {
                        let h = (i * 2654435761 + seed * 40503) % 10007;
                        let v = (h as f32 / 10007.0 - 0.5) * 0.1;
                        if (i + seed) % 29 == 0 {
                            v * 20.0
                        } else {
                            v
                        }
                    })
                    .collect();
                let r = QMatrix::quantize(&w, 2, 128, &cfg(bits, 64, QuantMethod::Rtn)).unwrap();
                let h = QMatrix::quantize(&w, 2, 128, &cfg(bits, 64, QuantMethod::Hqq)).unwrap();
                let (er, eh) = (reconstruction_error(&w, &r), reconstruction_error(&w, &h));
                assert!(eh <= er, "bits {bits} seed {seed}: hqq {eh} rtn {er}");
                // and per group
                let (rr, hr) = (r.dequantize(), h.dequantize());
                for g in 0..4 {
                    let s = g * 64..(g + 1) * 64;
                    let e = |rec: &[f32]| -> f32 {
                        w[s.clone()]
                            .iter()
                            .zip(&rec[s.clone()])
                            .map(|(a, b)| (a - b).abs())
                            .sum()
                    };
                    assert!(e(&hr) <= e(&rr), "bits {bits} seed {seed} group {g}");
                }
            }
        }
        // on such groups HQQ is strictly better at 4 bits overall
        let w: Vec<f32> = (0..64 * 64)
            .map(|i| {
                let v = ((i * 7919 % 1013) as f32 / 1013.0 - 0.5) * 0.1;
                if i % 37 == 0 {
                    v * 15.0
                } else {
                    v
                }
            })
            .collect();
        let r = QMatrix::quantize(&w, 64, 64, &cfg(4, 64, QuantMethod::Rtn)).unwrap();
        let h = QMatrix::quantize(&w, 64, 64, &cfg(4, 64, QuantMethod::Hqq)).unwrap();
        assert!(reconstruction_error(&w, &h) < reconstruction_error(&w, &r));
    }

    #[test]
    fn invalid_arguments() {
        let w = vec![0.5f32; 96];
        let bad = |e: Error| assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{e}");
        bad(QMatrix::quantize(&w, 1, 96, &cfg(5, 32, QuantMethod::Hqq)).unwrap_err());
        bad(QMatrix::quantize(&w, 1, 96, &cfg(4, 64, QuantMethod::Hqq)).unwrap_err());
        bad(QMatrix::quantize(&w, 1, 96, &cfg(4, 24, QuantMethod::Hqq)).unwrap_err());
        bad(QMatrix::quantize(&w, 2, 96, &cfg(4, 32, QuantMethod::Hqq)).unwrap_err());
        let mut w2 = w.clone();
        w2[40] = f32::NAN;
        let e = QMatrix::quantize(&w2, 1, 96, &cfg(4, 32, QuantMethod::Hqq)).unwrap_err();
        assert!(
            e.message().contains("row 0") && e.message().contains("group 1"),
            "{e}"
        );
        w2[40] = f32::INFINITY;
        bad(QMatrix::quantize(&w2, 1, 96, &cfg(4, 32, QuantMethod::Rtn)).unwrap_err());
        w2[40] = 1e6;
        bad(QMatrix::quantize(&w2, 1, 96, &cfg(4, 32, QuantMethod::Rtn)).unwrap_err());
        assert!(QMatrix::quantize(&w, 1, 96, &cfg(4, 96, QuantMethod::Hqq)).is_ok());
    }

    #[test]
    fn every_isa_quantizes_identically() {
        let (rows, cols) = (4, 256);
        let w: Vec<f32> = (0..rows * cols)
            .map(|i| ((i * 7919 % 1009) as f32 / 1009.0 - 0.5).powi(3))
            .collect();
        for bits in [2u8, 3, 4, 8] {
            let c = cfg(bits, 64, QuantMethod::Hqq);
            let rb = cols * bits as usize / 8;
            let run = |isa| {
                let mut codes = vec![0u8; rows * rb];
                let mut params = vec![f16::ZERO; 2 * rows * cols / 64];
                for r in 0..rows {
                    quantize_row(
                        isa,
                        &w[r * cols..(r + 1) * cols],
                        &c,
                        &mut codes[r * rb..(r + 1) * rb],
                        &mut params[r * 2 * cols / 64..(r + 1) * 2 * cols / 64],
                    )
                    .unwrap();
                }
                (codes, params)
            };
            let want = run(Isa::Portable);
            for isa in supported_isas() {
                assert!(run(isa) == want, "{isa:?} bits {bits}");
            }
        }
    }
}
