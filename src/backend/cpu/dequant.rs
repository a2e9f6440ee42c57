//! Fast dequantization of GGUF's block-quantized rows to f32, for the CPU's products: the
//! AVX-512 and AVX2 kernels give the same bits as the reference dequantizers in
//! `checkpoint::gguf::ggml` (and so as gguf-py), which the tests check on random blocks
//! of every type. In these formats every product is exact in f32, so the kernels may
//! fuse the final `+ m` / `- dmin * m` into one FMA and still match.
//!
//! Types without a kernel here (Q4_0, Q5_1 and Q5_K, and every type on a CPU without
//! AVX2) use the reference.

use crate::checkpoint::{to_f32, DType};
use crate::util::isa::Isa;

/// `src` (whole rows of `dtype`) as f32 in `dst`.
pub(crate) fn rows_to_f32(isa: Isa, dtype: DType, src: &[u8], dst: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if let DType::Quant(t) = dtype {
        if isa != Isa::Portable && has_kernel(t) {
            let (bs, bb) = (t.block_size(), t.block_bytes());
            assert_eq!(src.len() / bb * bs, dst.len(), "whole blocks of {t}");
            // SAFETY: the CPU has `isa`'s features (AVX-512, or AVX2, FMA and F16C), `src`
            // is whole blocks of `t` and `dst` holds their elements (asserted above).
            unsafe {
                match isa {
                    Isa::Avx512 => avx512::blocks(t, src, dst),
                    _ => avx2::blocks(t, src, dst),
                }
            }
            return;
        }
    }
    let _ = isa;
    to_f32(dtype, src, dst);
}

/// Whether `t` has SIMD kernels here (the same types on AVX-512 and AVX2).
#[cfg(target_arch = "x86_64")]
fn has_kernel(t: crate::checkpoint::GgmlType) -> bool {
    use crate::checkpoint::GgmlType;
    matches!(
        t,
        GgmlType::Q8_0 | GgmlType::Q5_0 | GgmlType::Q4_1 | GgmlType::Q4_K | GgmlType::Q6_K
    )
}

/// The f16 at `b[i..i + 2]` as f32 (exact for every value).
#[inline(always)]
fn f16_at(b: &[u8], i: usize) -> f32 {
    half::f16::from_bits(u16::from_le_bytes([b[i], b[i + 1]])).to_f32()
}

/// Q4_K's 6-bit scale and minimum of sub-block `j` (0..8) from the 12 packed bytes `s`.
#[inline(always)]
fn q4k_scale_min(s: &[u8], j: usize) -> (u8, u8) {
    if j < 4 {
        (s[j] & 0x3f, s[j + 4] & 0x3f)
    } else {
        (
            (s[j + 4] & 0x0f) | ((s[j - 4] >> 2) & 0x30),
            (s[j + 4] >> 4) | ((s[j] >> 2) & 0x30),
        )
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::{f16_at as f16, q4k_scale_min};
    use crate::checkpoint::GgmlType;

    /// 16 bytes at `p` widened to 16 i32 lanes.
    ///
    /// # Safety
    /// AVX-512F; `p` valid for 16 bytes.
    #[inline(always)]
    unsafe fn u8x16(p: *const u8) -> __m512i {
        // SAFETY: the caller's guarantee.
        unsafe { _mm512_cvtepu8_epi32(_mm_loadu_si128(p as *const __m128i)) }
    }

    /// Dequantizes whole blocks of `t` from `src` into `dst`.
    ///
    /// # Safety
    /// The CPU has AVX-512F/BW and F16C; `t` is one [`super::has_kernel`] accepts; `src` is a whole
    /// number of blocks of `t` and `dst` holds exactly their elements.
    #[target_feature(enable = "avx512f,avx512bw,f16c")]
    pub(super) unsafe fn blocks(t: GgmlType, src: &[u8], dst: &mut [f32]) {
        let (bs, bb) = (t.block_size(), t.block_bytes());
        for (b, y) in src.chunks_exact(bb).zip(dst.chunks_exact_mut(bs)) {
            let yp = y.as_mut_ptr();
            // SAFETY: every load below stays inside the block `b` (its layout is the
            // type's, `bb` bytes) and every store inside `y` (`bs` elements).
            unsafe {
                match t {
                    GgmlType::Q8_0 => {
                        // [d][32 x i8]: q * d.
                        let d = _mm512_set1_ps(f16(b, 0));
                        for h in 0..2 {
                            let q = _mm512_cvtepi8_epi32(_mm_loadu_si128(
                                b.as_ptr().add(2 + 16 * h) as *const __m128i,
                            ));
                            _mm512_storeu_ps(
                                yp.add(16 * h),
                                _mm512_mul_ps(_mm512_cvtepi32_ps(q), d),
                            );
                        }
                    }
                    GgmlType::Q5_0 => {
                        // [d][qh: u32][qs: 16]: d * (q - 16), bit 4 of element j in qh's bit j.
                        let d = _mm512_set1_ps(f16(b, 0));
                        let qh = _mm512_set1_epi32(i32::from_le_bytes([b[2], b[3], b[4], b[5]]));
                        let z = u8x16(b.as_ptr().add(6));
                        let lanes =
                            _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0);
                        let one = _mm512_set1_epi32(1);
                        let nib = _mm512_set1_epi32(0x0f);
                        let sixteen = _mm512_set1_epi32(16);
                        for h in 0..2 {
                            let low = if h == 0 {
                                _mm512_and_si512(z, nib)
                            } else {
                                _mm512_srli_epi32(z, 4)
                            };
                            let shift = _mm512_add_epi32(lanes, _mm512_set1_epi32(16 * h as i32));
                            let bit = _mm512_and_si512(_mm512_srlv_epi32(qh, shift), one);
                            let q = _mm512_or_si512(low, _mm512_slli_epi32(bit, 4));
                            let q = _mm512_cvtepi32_ps(_mm512_sub_epi32(q, sixteen));
                            _mm512_storeu_ps(yp.add(16 * h), _mm512_mul_ps(d, q));
                        }
                    }
                    GgmlType::Q4_1 => {
                        // [d][m][qs: 16]: d * q + m (d * q is exact: one rounding either way).
                        let (d, m) = (_mm512_set1_ps(f16(b, 0)), _mm512_set1_ps(f16(b, 2)));
                        let z = u8x16(b.as_ptr().add(4));
                        let lo = _mm512_and_si512(z, _mm512_set1_epi32(0x0f));
                        let hi = _mm512_srli_epi32(z, 4);
                        for (h, q) in [lo, hi].into_iter().enumerate() {
                            let q = _mm512_cvtepi32_ps(q);
                            _mm512_storeu_ps(yp.add(16 * h), _mm512_fmadd_ps(d, q, m));
                        }
                    }
                    GgmlType::Q4_K => {
                        // [d][dmin][scales: 12][qs: 128]: (d * sc) * q - dmin * m.
                        let (d, dmin) = (f16(b, 0), f16(b, 2));
                        let s = &b[4..16];
                        let qs = b.as_ptr().add(16);
                        let nib = _mm512_set1_epi32(0x0f);
                        for j in 0..8 {
                            let (sc, mn) = q4k_scale_min(s, j);
                            let dj = _mm512_set1_ps(d * sc as f32);
                            let mj = _mm512_set1_ps(dmin * mn as f32);
                            let shift = 4 * (j % 2) as u32;
                            for h in 0..2 {
                                let z = u8x16(qs.add(32 * (j / 2) + 16 * h));
                                let q = _mm512_and_si512(
                                    _mm512_srlv_epi32(z, _mm512_set1_epi32(shift as i32)),
                                    nib,
                                );
                                let w = _mm512_fmsub_ps(dj, _mm512_cvtepi32_ps(q), mj);
                                _mm512_storeu_ps(yp.add(32 * j + 16 * h), w);
                            }
                        }
                    }
                    GgmlType::Q6_K => {
                        // [ql: 128][qh: 64][scales: 16 x i8][d]: (d * sc) * (q - 32).
                        let d = f16(b, 208);
                        let (ql, qh) = (b.as_ptr(), b.as_ptr().add(128));
                        let thirty_two = _mm512_set1_epi32(32);
                        for g in 0..16 {
                            // Elements e = 16 g ..: e = 128 h + r, r = 16 (g % 8) + lane.
                            let (h, r0) = (g / 8, 16 * (g % 8));
                            let lo = u8x16(ql.add(64 * h + r0 % 64));
                            let lo = _mm512_and_si512(
                                _mm512_srlv_epi32(lo, _mm512_set1_epi32(4 * (r0 / 64) as i32)),
                                _mm512_set1_epi32(0x0f),
                            );
                            let hi = u8x16(qh.add(32 * h + r0 % 32));
                            let hi = _mm512_and_si512(
                                _mm512_srlv_epi32(hi, _mm512_set1_epi32(2 * (r0 / 32) as i32)),
                                _mm512_set1_epi32(0x03),
                            );
                            let q = _mm512_sub_epi32(
                                _mm512_or_si512(lo, _mm512_slli_epi32(hi, 4)),
                                thirty_two,
                            );
                            let dk = _mm512_set1_ps(d * (b[192 + g] as i8) as f32);
                            _mm512_storeu_ps(
                                yp.add(16 * g),
                                _mm512_mul_ps(dk, _mm512_cvtepi32_ps(q)),
                            );
                        }
                    }
                    _ => unreachable!("has_kernel() said {t} has one"),
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::{f16_at as f16, q4k_scale_min};
    use crate::checkpoint::GgmlType;

    /// 8 bytes at `p` widened to 8 i32 lanes.
    ///
    /// # Safety
    /// AVX2; `p` valid for 8 bytes.
    #[inline(always)]
    unsafe fn u8x8(p: *const u8) -> __m256i {
        // SAFETY: the caller's guarantee.
        unsafe { _mm256_cvtepu8_epi32(_mm_loadl_epi64(p as *const __m128i)) }
    }

    /// Dequantizes whole blocks of `t` from `src` into `dst`: the AVX-512 kernels' steps
    /// on 8 lanes (the same operations per element, so the same bits).
    ///
    /// # Safety
    /// The CPU has AVX2, FMA and F16C; `t` is one [`super::has_kernel`] accepts; `src` is a whole
    /// number of blocks of `t` and `dst` holds exactly their elements.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn blocks(t: GgmlType, src: &[u8], dst: &mut [f32]) {
        let (bs, bb) = (t.block_size(), t.block_bytes());
        let nib = _mm256_set1_epi32(0x0f);
        let lanes = _mm256_set_epi32(7, 6, 5, 4, 3, 2, 1, 0);
        for (b, y) in src.chunks_exact(bb).zip(dst.chunks_exact_mut(bs)) {
            let yp = y.as_mut_ptr();
            // SAFETY: every load below stays inside the block `b` (its layout is the
            // type's, `bb` bytes) and every store inside `y` (`bs` elements).
            unsafe {
                match t {
                    GgmlType::Q8_0 => {
                        // [d][32 x i8]: q * d.
                        let d = _mm256_set1_ps(f16(b, 0));
                        for h in 0..4 {
                            let q = _mm256_cvtepi8_epi32(_mm_loadl_epi64(
                                b.as_ptr().add(2 + 8 * h) as *const __m128i,
                            ));
                            _mm256_storeu_ps(
                                yp.add(8 * h),
                                _mm256_mul_ps(_mm256_cvtepi32_ps(q), d),
                            );
                        }
                    }
                    GgmlType::Q5_0 => {
                        // [d][qh: u32][qs: 16]: d * (q - 16), bit 4 of element j in qh's bit j.
                        let d = _mm256_set1_ps(f16(b, 0));
                        let qh = _mm256_set1_epi32(i32::from_le_bytes([b[2], b[3], b[4], b[5]]));
                        for h in 0..4 {
                            let z = u8x8(b.as_ptr().add(6 + 8 * (h % 2)));
                            let low = if h < 2 {
                                _mm256_and_si256(z, nib)
                            } else {
                                _mm256_srli_epi32(z, 4)
                            };
                            let shift = _mm256_add_epi32(lanes, _mm256_set1_epi32(8 * h as i32));
                            let bit = _mm256_and_si256(
                                _mm256_srlv_epi32(qh, shift),
                                _mm256_set1_epi32(1),
                            );
                            let q = _mm256_or_si256(low, _mm256_slli_epi32(bit, 4));
                            let q = _mm256_cvtepi32_ps(_mm256_sub_epi32(q, _mm256_set1_epi32(16)));
                            _mm256_storeu_ps(yp.add(8 * h), _mm256_mul_ps(d, q));
                        }
                    }
                    GgmlType::Q4_1 => {
                        // [d][m][qs: 16]: d * q + m (d * q is exact: one rounding either way).
                        let (d, m) = (_mm256_set1_ps(f16(b, 0)), _mm256_set1_ps(f16(b, 2)));
                        for h in 0..4 {
                            let z = u8x8(b.as_ptr().add(4 + 8 * (h % 2)));
                            let q = if h < 2 {
                                _mm256_and_si256(z, nib)
                            } else {
                                _mm256_srli_epi32(z, 4)
                            };
                            let w = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(q), m);
                            _mm256_storeu_ps(yp.add(8 * h), w);
                        }
                    }
                    GgmlType::Q4_K => {
                        // [d][dmin][scales: 12][qs: 128]: (d * sc) * q - dmin * m.
                        let (d, dmin) = (f16(b, 0), f16(b, 2));
                        let qs = b.as_ptr().add(16);
                        for j in 0..8 {
                            let (sc, mn) = q4k_scale_min(&b[4..16], j);
                            let dj = _mm256_set1_ps(d * sc as f32);
                            let mj = _mm256_set1_ps(dmin * mn as f32);
                            let shift = _mm256_set1_epi32(4 * (j % 2) as i32);
                            for h in 0..4 {
                                let z = u8x8(qs.add(32 * (j / 2) + 8 * h));
                                let q = _mm256_and_si256(_mm256_srlv_epi32(z, shift), nib);
                                let w = _mm256_fmsub_ps(dj, _mm256_cvtepi32_ps(q), mj);
                                _mm256_storeu_ps(yp.add(32 * j + 8 * h), w);
                            }
                        }
                    }
                    GgmlType::Q6_K => {
                        // [ql: 128][qh: 64][scales: 16 x i8][d]: (d * sc) * (q - 32), one
                        // scale per 16 elements.
                        let d = f16(b, 208);
                        let (ql, qh) = (b.as_ptr(), b.as_ptr().add(128));
                        for g in 0..32 {
                            // Elements e = 8 g ..: e = 128 h + r, r = 8 (g % 16) + lane.
                            let (h, r0) = (g / 16, 8 * (g % 16));
                            let lo = u8x8(ql.add(64 * h + r0 % 64));
                            let lo = _mm256_and_si256(
                                _mm256_srlv_epi32(lo, _mm256_set1_epi32(4 * (r0 / 64) as i32)),
                                nib,
                            );
                            let hi = u8x8(qh.add(32 * h + r0 % 32));
                            let hi = _mm256_and_si256(
                                _mm256_srlv_epi32(hi, _mm256_set1_epi32(2 * (r0 / 32) as i32)),
                                _mm256_set1_epi32(0x03),
                            );
                            let q = _mm256_sub_epi32(
                                _mm256_or_si256(lo, _mm256_slli_epi32(hi, 4)),
                                _mm256_set1_epi32(32),
                            );
                            let dk = _mm256_set1_ps(d * (b[192 + g / 2] as i8) as f32);
                            _mm256_storeu_ps(
                                yp.add(8 * g),
                                _mm256_mul_ps(dk, _mm256_cvtepi32_ps(q)),
                            );
                        }
                    }
                    _ => unreachable!("has_kernel() said {t} has one"),
                }
            }
        }
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::checkpoint::GgmlType;
    use crate::util::isa::supported_isas;

    /// Random bytes for `n` blocks of `t` with finite f16 scales (of mixed magnitude).
    pub(crate) fn random_blocks(t: GgmlType, n: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let bb = t.block_bytes();
        let mut out = vec![0u8; n * bb];
        for b in out.chunks_exact_mut(bb) {
            for v in b.iter_mut() {
                *v = next() as u8;
            }
            // Finite scales: f16 fields at the type's offsets.
            let scale = |x: u64| {
                let e = 5 + (x % 20) as u16; // exponents from tiny to large
                ((x as u16 & 0x8000) | (e << 10) | (x as u16 & 0x3ff)).to_le_bytes()
            };
            let fields: &[usize] = match t {
                GgmlType::Q8_0 | GgmlType::Q5_0 => &[0],
                GgmlType::Q4_1 | GgmlType::Q4_K => &[0, 2],
                GgmlType::Q6_K => &[208],
                _ => &[],
            };
            for &f in fields {
                let s = scale(next());
                b[f..f + 2].copy_from_slice(&s);
            }
        }
        out
    }

    #[test]
    fn simd_dequantization_is_bit_identical_to_the_reference() {
        for isa in supported_isas() {
            check_isa(isa);
        }
    }

    fn check_isa(isa: Isa) {
        for t in [
            GgmlType::Q8_0,
            GgmlType::Q5_0,
            GgmlType::Q4_1,
            GgmlType::Q4_K,
            GgmlType::Q6_K,
        ] {
            for seed in 1..20 {
                let src = random_blocks(t, 7, seed * 7919);
                let n = 7 * t.block_size();
                let (mut fast, mut want) = (vec![0f32; n], vec![0f32; n]);
                rows_to_f32(isa, DType::Quant(t), &src, &mut fast);
                to_f32(DType::Quant(t), &src, &mut want);
                for (i, (a, b)) in fast.iter().zip(&want).enumerate() {
                    assert_eq!(
                        a.to_bits(),
                        b.to_bits(),
                        "{isa:?} {t} seed {seed} element {i}: {a} vs {b}"
                    );
                }
            }
        }
    }
}
