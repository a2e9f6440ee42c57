//! Elementwise functions of the CPU kernels, each one fixed sequence of operations in
//! its scalar and SIMD forms (so the bits do not depend on the CPU or on where an element
//! falls in a vector): `exp` for `x <= 0` (attention's softmax, SiLU's sigmoid, GeLU's
//! tanh), and the gated MLPs' activations ([`Gate`]: SiLU, GeLU's tanh approximation).

use crate::util::isa::Isa;

/// Below this, `exp` is 0 (the smallest normal result is `2^-126`).
const EXP_LO: f32 = -87.336_55;
const LOG2E: f32 = std::f32::consts::LOG2_E;
/// ln 2 in two parts: `C1` is exact in a few bits, so `n * C1` is exact.
const C1: f32 = 0.693_359_4;
const C2: f32 = -2.121_944_4e-4;
/// Cephes' minimax coefficients of `(exp(r) - 1 - r) / r^2` on `[-ln2/2, ln2/2]`.
const P: [f32; 6] = [
    1.987_569_1e-4,
    1.398_199_9e-3,
    8.333_452e-3,
    4.166_579_6e-2,
    1.666_666_5e-1,
    0.5, // 5.0000001201e-1 in f32
];

/// `e^x` for `x <= 0` (attention's `score - max`): 0 below [`EXP_LO`], NaN for NaN.
pub(crate) fn exp(x: f32) -> f32 {
    if x.is_nan() {
        return x;
    }
    if x < EXP_LO {
        return 0.0;
    }
    let n = (x * LOG2E).round_ties_even();
    let r = n.mul_add(-C2, n.mul_add(-C1, x));
    let mut p = P[0];
    for c in &P[1..] {
        p = p.mul_add(r, *c);
    }
    let y = p.mul_add(r * r, r) + 1.0;
    y * f32::from_bits(((n as i32 + 127) as u32) << 23)
}

/// A gated MLP's activation: `gate[i] = act(gate[i]) * up[i]` ([`gated`]), `act` in a
/// scalar and an 8-lane form that are the same operations.
pub(crate) trait Gate {
    /// What the sizes' assertion names.
    const NAME: &'static str;
    fn one(x: f32) -> f32;
    /// [`Gate::one`] on 8 lanes.
    ///
    /// # Safety
    /// The CPU has AVX2 and FMA.
    #[cfg(target_arch = "x86_64")]
    unsafe fn eight(x: std::arch::x86_64::__m256) -> std::arch::x86_64::__m256;
}

/// SiLU as `g * sigmoid(g)` through `e = exp(-|g|)` (so [`exp`] stays in its domain):
/// `g / (1 + e)` for `g >= 0`, `g * e / (1 + e)` below.
pub(crate) struct Silu;

impl Gate for Silu {
    const NAME: &'static str = "silu_mul";
    fn one(g: f32) -> f32 {
        let e = exp(-g.abs());
        let num = if g >= 0.0 { g } else { g * e };
        num / (1.0 + e)
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn eight(g: std::arch::x86_64::__m256) -> std::arch::x86_64::__m256 {
        use std::arch::x86_64::*;
        // SAFETY: plain register operations (the caller has AVX2 and FMA).
        unsafe {
            let e = avx2::exp8(_mm256_or_ps(g, _mm256_set1_ps(-0.0))); // exp(-|g|)
            let neg = _mm256_cmp_ps::<_CMP_LT_OQ>(g, _mm256_setzero_ps());
            let num = _mm256_blendv_ps(g, _mm256_mul_ps(g, e), neg);
            _mm256_div_ps(num, _mm256_add_ps(_mm256_set1_ps(1.0), e))
        }
    }
}

/// GeLU's tanh approximation's constants, as PyTorch's: `sqrt(2 / pi)` and the cube's.
const BETA: f32 = (std::f64::consts::SQRT_2 * std::f64::consts::FRAC_2_SQRT_PI * 0.5) as f32;
const KAPPA: f32 = 0.044715;

/// GeLU's tanh approximation, `0.5 * x * (1 + tanh(y))`, `y = BETA * (x + KAPPA * x^3)`
/// (PyTorch's order), with `tanh(y) = sign(y) * (1 - t) / (1 + t)` for `t = exp(-2|y|)`
/// (so [`exp`] stays in its domain).
pub(crate) struct GeluTanh;

impl Gate for GeluTanh {
    const NAME: &'static str = "gelu_tanh_mul";
    fn one(x: f32) -> f32 {
        let y = BETA * (x + KAPPA * (x * x * x));
        let t = exp(-2.0 * y.abs());
        let th = ((1.0 - t) / (1.0 + t)).copysign(y);
        0.5 * x * (1.0 + th)
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn eight(x: std::arch::x86_64::__m256) -> std::arch::x86_64::__m256 {
        use std::arch::x86_64::*;
        // SAFETY: plain register operations (the caller has AVX2 and FMA).
        unsafe {
            let (sign, one) = (_mm256_set1_ps(-0.0), _mm256_set1_ps(1.0));
            let cube = _mm256_mul_ps(_mm256_mul_ps(x, x), x);
            let inner = _mm256_add_ps(x, _mm256_mul_ps(_mm256_set1_ps(KAPPA), cube));
            let y = _mm256_mul_ps(_mm256_set1_ps(BETA), inner);
            // exp(-2|y|): -2 * |y| is -(2 * |y|), exact either way
            let t = avx2::exp8(_mm256_mul_ps(
                _mm256_set1_ps(-2.0),
                _mm256_andnot_ps(sign, y),
            ));
            let th = _mm256_div_ps(_mm256_sub_ps(one, t), _mm256_add_ps(one, t));
            let th = _mm256_or_ps(th, _mm256_and_ps(sign, y)); // copysign (th >= 0)
            _mm256_mul_ps(
                _mm256_mul_ps(_mm256_set1_ps(0.5), x),
                _mm256_add_ps(one, th),
            )
        }
    }
}

/// `gate[i] = G::one(gate[i]) * up[i]`: whole blocks of 8 on AVX2 where the CPU has it,
/// the rest in scalar code (the same bits either way).
pub(crate) fn gated<G: Gate>(isa: Isa, gate: &mut [f32], up: &[f32]) {
    assert_eq!(
        gate.len(),
        up.len(),
        "{}: gate and up differ in size",
        G::NAME
    );
    let mut done = 0;
    #[cfg(target_arch = "x86_64")]
    if isa != Isa::Portable {
        // SAFETY: AVX2 and FMA are present (isa); the lengths are equal (asserted).
        done = unsafe { avx2::gated::<G>(gate, up) };
    }
    let _ = isa;
    for (g, &u) in gate[done..].iter_mut().zip(&up[done..]) {
        *g = G::one(*g) * u;
    }
}

#[cfg(target_arch = "x86_64")]
pub(crate) mod avx2 {
    use std::arch::x86_64::*;

    use super::{C1, C2, EXP_LO, LOG2E, P};

    /// [`super::exp`] on 8 lanes: the same operations.
    ///
    /// # Safety
    /// The CPU has AVX2 and FMA.
    #[inline(always)]
    pub(crate) unsafe fn exp8(x: __m256) -> __m256 {
        // SAFETY: plain register operations (the caller has AVX2 and FMA).
        unsafe {
            let n = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
                _mm256_mul_ps(x, _mm256_set1_ps(LOG2E)),
            );
            let r = _mm256_fmadd_ps(n, _mm256_set1_ps(-C1), x);
            let r = _mm256_fmadd_ps(n, _mm256_set1_ps(-C2), r);
            let mut p = _mm256_set1_ps(P[0]);
            for c in &P[1..] {
                p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(*c));
            }
            let y = _mm256_add_ps(
                _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), r),
                _mm256_set1_ps(1.0),
            );
            // 2^n; lanes below EXP_LO (n may be far below -126 there) are zeroed after
            let bits = _mm256_slli_epi32::<23>(_mm256_add_epi32(
                _mm256_cvtps_epi32(n),
                _mm256_set1_epi32(127),
            ));
            let e = _mm256_mul_ps(y, _mm256_castsi256_ps(bits));
            let low = _mm256_cmp_ps::<_CMP_LT_OQ>(x, _mm256_set1_ps(EXP_LO));
            let e = _mm256_andnot_ps(low, e);
            let nan = _mm256_cmp_ps::<_CMP_UNORD_Q>(x, x);
            _mm256_blendv_ps(e, x, nan)
        }
    }

    /// [`super::gated`] on the whole blocks of 8; returns how many elements it did.
    ///
    /// # Safety
    /// The CPU has AVX2 and FMA; `up` is as long as `gate`.
    #[target_feature(enable = "avx2,fma")]
    pub(crate) unsafe fn gated<G: super::Gate>(gate: &mut [f32], up: &[f32]) -> usize {
        let whole = gate.len() - gate.len() % 8;
        // SAFETY: the loads and stores stay below `whole`, inside both slices; the CPU has
        // AVX2 and FMA (this function's contract) for `G::eight`.
        unsafe {
            for i in (0..whole).step_by(8) {
                let (gp, up) = (gate.as_mut_ptr().add(i), up.as_ptr().add(i));
                let v = G::eight(_mm256_loadu_ps(gp));
                _mm256_storeu_ps(gp, _mm256_mul_ps(v, _mm256_loadu_ps(up)));
            }
        }
        whole
    }
}

/// [`exp`] on 16 lanes: the same operations as [`avx2::exp8`], lane for lane.
#[cfg(target_arch = "x86_64")]
pub(crate) mod avx512 {
    use std::arch::x86_64::*;

    use super::{C1, C2, EXP_LO, LOG2E, P};

    /// [`super::exp`] on 16 lanes.
    ///
    /// # Safety
    /// The CPU has AVX-512F.
    #[inline(always)]
    pub(crate) unsafe fn exp16(x: __m512) -> __m512 {
        // SAFETY: plain register operations (the caller has AVX-512F).
        unsafe {
            let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
                _mm512_mul_ps(x, _mm512_set1_ps(LOG2E)),
            );
            let r = _mm512_fmadd_ps(n, _mm512_set1_ps(-C1), x);
            let r = _mm512_fmadd_ps(n, _mm512_set1_ps(-C2), r);
            let mut p = _mm512_set1_ps(P[0]);
            for c in &P[1..] {
                p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(*c));
            }
            let y = _mm512_add_ps(
                _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), r),
                _mm512_set1_ps(1.0),
            );
            // 2^n; lanes below EXP_LO are zeroed after, NaN lanes give x
            let bits = _mm512_slli_epi32::<23>(_mm512_add_epi32(
                _mm512_cvtps_epi32(n),
                _mm512_set1_epi32(127),
            ));
            let e = _mm512_mul_ps(y, _mm512_castsi512_ps(bits));
            let low = _mm512_cmp_ps_mask::<_CMP_LT_OQ>(x, _mm512_set1_ps(EXP_LO));
            let e = _mm512_maskz_mov_ps(!low, e);
            let nan = _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(x, x);
            _mm512_mask_blend_ps(nan, e, x)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_accurate_and_total() {
        let mut worst = 0f64;
        for i in 0..200_000 {
            let x = -(i as f32) * 4.4e-4; // 0 down to -88
            let (got, want) = (exp(x) as f64, (x as f64).exp());
            if want > 1.2e-38 {
                worst = worst.max(((got - want) / want).abs());
            }
        }
        assert!(worst < 3e-7, "worst relative error {worst:e}");
        assert_eq!(exp(0.0), 1.0);
        assert_eq!(exp(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp(-100.0), 0.0);
        assert!(exp(f32::NAN).is_nan());
    }

    #[test]
    fn exp_has_the_same_bits_in_8_and_16_lanes() {
        let mut xs: Vec<f32> = (0..4000).map(|i| -(i as f32) * 0.0223).collect();
        xs.extend([
            0.0,
            -0.0,
            EXP_LO,
            EXP_LO - 1e-5,
            f32::NEG_INFINITY,
            f32::NAN,
            -1e-30,
        ]);
        xs.resize(xs.len().next_multiple_of(16), -1.5);
        let want: Vec<u32> = xs.iter().map(|&x| exp(x).to_bits()).collect();
        #[cfg(target_arch = "x86_64")]
        for isa in crate::util::isa::supported_isas() {
            use std::arch::x86_64::*;
            let mut got = vec![0f32; xs.len()];
            for (x, g) in xs.chunks(16).zip(got.chunks_mut(16)) {
                // SAFETY: the ISA's features; 16 values in each chunk.
                unsafe {
                    match isa {
                        Isa::Avx512 => {
                            let e = avx512::exp16(_mm512_loadu_ps(x.as_ptr()));
                            _mm512_storeu_ps(g.as_mut_ptr(), e);
                        }
                        Isa::Avx2 => {
                            for h in 0..2 {
                                let e = avx2::exp8(_mm256_loadu_ps(x[8 * h..].as_ptr()));
                                _mm256_storeu_ps(g[8 * h..].as_mut_ptr(), e);
                            }
                        }
                        Isa::Portable => g.iter_mut().zip(x).for_each(|(g, &x)| *g = exp(x)),
                    }
                }
            }
            let bits: Vec<u32> = got.iter().map(|v| v.to_bits()).collect();
            assert_eq!(bits, want, "{isa:?}");
        }
    }

    #[test]
    fn silu_is_accurate_and_the_same_on_every_isa() {
        let n = 1003;
        let gate: Vec<f32> = (0..n)
            .map(|i| (i as f32 - 500.0) * 0.37)
            .chain([0.0, -0.0, 1e-30, -1e-30, 88.5, -88.5, -1e4, 1e4])
            .collect();
        let up: Vec<f32> = (0..gate.len())
            .map(|i| 1.0 + (i % 7) as f32 * 0.25)
            .collect();
        let mut want = None;
        for isa in crate::util::isa::supported_isas() {
            let mut g = gate.clone();
            gated::<Silu>(isa, &mut g, &up);
            for (i, (&x, &y)) in gate.iter().zip(&g).enumerate() {
                let exact = x as f64 / (1.0 + (-x as f64).exp()) * up[i] as f64;
                let err = (y as f64 - exact).abs();
                assert!(
                    err <= 4e-7 * exact.abs() + 1e-35,
                    "{isa:?} silu({x}) = {y}, not {exact}"
                );
            }
            let bits: Vec<u32> = g.iter().map(|v| v.to_bits()).collect();
            assert_eq!(want.get_or_insert(bits.clone()), &bits, "{isa:?}");
        }
        let (mut g, u) = (vec![f32::NAN; 9], vec![1.0; 9]);
        gated::<Silu>(crate::util::isa::isa(), &mut g, &u);
        assert!(g.iter().all(|v| v.is_nan()));
    }

    #[test]
    fn gelu_tanh_is_pytorchs_and_the_same_on_every_isa() {
        // torch.nn.functional.gelu(x, approximate="tanh") in float32
        let known = [
            (1.0f32, 0.841_192_f32),
            (-2.5, -0.015_084_296),
            (0.0, 0.0),
            (6.0, 6.0),
        ];
        let mut gate: Vec<f32> = (0..1003).map(|i| (i as f32 - 500.0) * 0.021).collect();
        gate.extend(known.iter().map(|k| k.0));
        gate.extend([1e-30, -1e-30, 30.0, -30.0, 1e4, -1e4]);
        let up: Vec<f32> = (0..gate.len())
            .map(|i| 1.0 + (i % 5) as f32 * 0.5)
            .collect();
        let mut want = None;
        for isa in crate::util::isa::supported_isas() {
            let mut g = gate.clone();
            gated::<GeluTanh>(isa, &mut g, &up);
            for (i, (&x, &y)) in gate.iter().zip(&g).enumerate() {
                let xd = x as f64;
                let inner = (2.0 / std::f64::consts::PI).sqrt() * (xd + 0.044715 * xd.powi(3));
                let exact = 0.5 * xd * (1.0 + inner.tanh()) * up[i] as f64;
                let err = (y as f64 - exact).abs();
                let tol = 1e-6 * (exact.abs() + up[i] as f64 * xd.abs().min(1.0));
                assert!(
                    err <= tol,
                    "{isa:?} gelu({x}) * {} = {y}, not {exact}",
                    up[i]
                );
            }
            for (k, (x, w)) in known.iter().enumerate() {
                let got = g[1003 + k] / up[1003 + k];
                assert!(
                    (got - w).abs() < 1e-6,
                    "{isa:?} gelu({x}) = {got}, torch {w}"
                );
            }
            let bits: Vec<u32> = g.iter().map(|v| v.to_bits()).collect();
            assert_eq!(want.get_or_insert(bits.clone()), &bits, "{isa:?}");
        }
    }
}
