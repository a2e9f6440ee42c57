//! The one order in which every CPU kernel sums the 16 lanes of an accumulator: lane `i`
//! and `i + 8`, then `i` and `i + 4`, then `(0 + 2) + (1 + 3)`. The dense products
//! (`backend::cpu::matmul`), the quantized ones (`quant::qlinear`, `quant::int8`) and the
//! quantizer (`quant::hqq`) all reduce through [`sum16`] or its in-register twins below, so a
//! row's result is the same bits whichever kernel (AVX-512, AVX2 or portable) produced it.

/// The fixed pairwise sum of 16 lanes.
#[inline(always)]
pub(crate) fn sum16(acc: &[f32; 16]) -> f32 {
    let mut b = [0f32; 8];
    for i in 0..8 {
        b[i] = acc[i] + acc[i + 8];
    }
    let c = [b[0] + b[4], b[1] + b[5], b[2] + b[6], b[3] + b[7]];
    (c[0] + c[2]) + (c[1] + c[3])
}

#[cfg(target_arch = "x86_64")]
pub(crate) mod avx512 {
    use std::arch::x86_64::*;

    /// [`super::sum16`] of the 16 lanes of `v` in registers (the same additions); stored to
    /// memory and summed as scalars it took a quarter of a 2-token tile over 896 columns.
    ///
    /// # Safety
    /// The CPU has AVX-512F.
    #[inline(always)]
    pub(crate) unsafe fn hsum16(v: __m512) -> f32 {
        // SAFETY: the caller says the CPU has AVX-512F (and so AVX and SSE).
        unsafe {
            let hi = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(v)));
            let b = _mm256_add_ps(_mm512_castps512_ps256(v), hi);
            let c = _mm_add_ps(_mm256_castps256_ps128(b), _mm256_extractf128_ps::<1>(b));
            let d = _mm_add_ps(c, _mm_movehl_ps(c, c));
            _mm_cvtss_f32(_mm_add_ss(d, _mm_shuffle_ps::<1>(d, d)))
        }
    }
}

#[cfg(target_arch = "x86_64")]
pub(crate) mod avx2 {
    use std::arch::x86_64::*;

    /// [`super::sum16`] of lanes `0..8` in `v[0]` and `8..16` in `v[1]`, in registers (the
    /// same additions).
    ///
    /// # Safety
    /// The CPU has AVX.
    #[inline(always)]
    pub(crate) unsafe fn hsum16(v: [__m256; 2]) -> f32 {
        // SAFETY: the caller says the CPU has AVX (and so SSE).
        unsafe {
            let b = _mm256_add_ps(v[0], v[1]);
            let c = _mm_add_ps(_mm256_castps256_ps128(b), _mm256_extractf128_ps::<1>(b));
            let d = _mm_add_ps(c, _mm_movehl_ps(c, c));
            _mm_cvtss_f32(_mm_add_ss(d, _mm_shuffle_ps::<1>(d, d)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Lanes of mixed signs and magnitudes (1e-4 to 1e4), whose sum depends on the order
    /// of the additions.
    fn lanes(seed: u32) -> [f32; 16] {
        let mut s = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
        std::array::from_fn(|_| {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            let mantissa = 1.0 + (s % 1000) as f32 * 1e-3;
            let sign = if s & (1 << 20) == 0 { 1.0 } else { -1.0 };
            sign * mantissa * 10f32.powi((s >> 24) as i32 % 9 - 4)
        })
    }

    #[test]
    fn sum16_adds_in_its_documented_order() {
        for seed in 0..64 {
            let a = lanes(seed);
            let b: [f32; 8] = std::array::from_fn(|i| a[i] + a[i + 8]);
            let c: [f32; 4] = std::array::from_fn(|i| b[i] + b[i + 4]);
            assert_eq!(
                sum16(&a).to_bits(),
                ((c[0] + c[2]) + (c[1] + c[3])).to_bits()
            );
        }
        // the order matters for these lanes: a plain left-to-right sum differs somewhere
        assert!((0..64).any(|s| {
            let a = lanes(s);
            a.iter().sum::<f32>().to_bits() != sum16(&a).to_bits()
        }));
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn the_register_sums_are_sum16_bit_for_bit() {
        use std::arch::x86_64::*;
        for seed in 0..256 {
            let a = lanes(seed);
            if is_x86_feature_detected!("avx") {
                // SAFETY: AVX detected; the loads read 8 floats of `a` each.
                let got = unsafe {
                    avx2::hsum16([
                        _mm256_loadu_ps(a.as_ptr()),
                        _mm256_loadu_ps(a[8..].as_ptr()),
                    ])
                };
                assert_eq!(got.to_bits(), sum16(&a).to_bits(), "avx2, seed {seed}");
            }
            if is_x86_feature_detected!("avx512f") {
                // SAFETY: AVX-512F detected; the load reads the 16 floats of `a`.
                let got = unsafe { avx512::hsum16(_mm512_loadu_ps(a.as_ptr())) };
                assert_eq!(got.to_bits(), sum16(&a).to_bits(), "avx512, seed {seed}");
            }
        }
    }
}
