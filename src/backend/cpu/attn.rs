//! Attention of one query row and head over its KV slots, in one fixed order that every
//! kernel follows, so the bits are the same on every CPU and whatever else is in the batch:
//!
//! 1. `score[j] = sum8(acc) * scale`, `acc[l] = fma(q[i + l], k_j[i + l], acc[l])` over
//!    ascending blocks `i` of 8 (then the `head_dim % 8` tail, `s = fma(q[i], k_j[i], s)`
//!    in order), `sum8` the fixed pairwise sum `((a0 + a4) + (a2 + a6)) + ((a1 + a5) +
//!    (a3 + a7))`;
//! 2. `m = max(score)` (exact in any order);
//! 3. `e[j] = exp(score[j] - m)` by [`exp`] (Cephes' single-precision polynomial with
//!    FMA steps: within ~1 ulp, and the same operations in every kernel);
//! 4. `sum`: partial sums `part[j % 8] += e[j]` over the whole blocks of 8 slots in order,
//!    `sum8(part)`, then the tail slots added in order;
//! 5. `out[i] = fma(e[j] / sum, v_j[i], out[i])` over the slots in order.
//!
//! A slot's place in the list, not its index in the cache, decides its block, so a row
//! verified in a tree (its ancestors in scratch slots) and the same row decoded alone
//! (its ancestors committed) see the same keys in the same order and give the same bits.
//! The AVX2 kernel runs 8 lanes of the same operations (score blocks of 8 keys only share
//! the query's loads); the portable code is the scalar reference.

use super::kv::KvElem;
use crate::util::isa::Isa;

/// One KV head inside a layer's cache: slot `s`'s key is `k[s * stride + off..][..hd]`,
/// in the cache's element type (widened to f32 exactly as it is read).
pub(crate) struct KvHead<'a, T> {
    pub k: &'a [T],
    pub v: &'a [T],
    pub stride: usize,
    pub off: usize,
}

impl<T> Clone for KvHead<'_, T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for KvHead<'_, T> {}

impl<T> KvHead<'_, T> {
    /// Where slot `s`'s key (and value) starts in its plane.
    fn at(&self, s: usize) -> usize {
        s * self.stride + self.off
    }
}

/// Attention of the query heads in `q` (`q.len() / hd` heads of `hd`, all reading the
/// same KV head, as grouped-query attention's heads do) over the keys and values of
/// `slots` in order, into `out` (the same layout); `scores` is scratch. Each head's bits
/// are those of the order in the module documentation, alone or with others.
#[allow(clippy::too_many_arguments)]
pub(crate) fn attend<T: KvElem>(
    isa: Isa,
    q: &[f32],
    hd: usize,
    kv: KvHead<'_, T>,
    slots: &[usize],
    scale: f32,
    scores: &mut Vec<f32>,
    out: &mut [f32],
) {
    assert!(hd > 0 && q.len().is_multiple_of(hd) && out.len() == q.len());
    for &s in slots {
        assert!(kv.at(s) + hd <= kv.k.len().min(kv.v.len()), "slot {s}");
    }
    let n = slots.len();
    scores.clear();
    scores.resize(q.len() / hd * n, 0.0);
    #[cfg(target_arch = "x86_64")]
    if isa != Isa::Portable {
        // SAFETY: every non-portable ISA has AVX2, FMA and F16C; the slots were checked to be
        // inside both planes, `scores` holds one value per head and slot, and `out` as
        // many values as `q`.
        unsafe { avx2::attend(q, hd, kv, slots, scale, scores, out) };
        return;
    }
    let _ = isa;
    for ((qh, oh), sc) in q
        .chunks_exact(hd)
        .zip(out.chunks_exact_mut(hd))
        .zip(scores.chunks_exact_mut(n.max(1)))
    {
        portable(qh, kv, slots, scale, sc, oh);
    }
}

/// The fixed pairwise sum of 8 lanes.
#[inline(always)]
fn sum8(a: &[f32; 8]) -> f32 {
    ((a[0] + a[4]) + (a[2] + a[6])) + ((a[1] + a[5]) + (a[3] + a[7]))
}

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
fn exp(x: f32) -> f32 {
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

/// The scalar reference of [`attend`].
fn portable<T: KvElem>(
    q: &[f32],
    kv: KvHead<'_, T>,
    slots: &[usize],
    scale: f32,
    scores: &mut [f32],
    out: &mut [f32],
) {
    let hd = q.len();
    let body = hd - hd % 8;
    for (sc, &s) in scores.iter_mut().zip(slots) {
        let k = &kv.k[kv.at(s)..][..hd];
        let mut acc = [0f32; 8];
        for i in (0..body).step_by(8) {
            for l in 0..8 {
                acc[l] = q[i + l].mul_add(k[i + l].to_f32(), acc[l]);
            }
        }
        let mut d = sum8(&acc);
        for i in body..hd {
            d = q[i].mul_add(k[i].to_f32(), d);
        }
        *sc = d * scale;
    }
    let m = scores.iter().fold(f32::NEG_INFINITY, |m, &s| m.max(s));
    let mut part = [0f32; 8];
    let whole = scores.len() - scores.len() % 8;
    for (j, e) in scores.iter_mut().enumerate() {
        *e = exp(*e - m);
        if j < whole {
            part[j % 8] += *e;
        }
    }
    let mut sum = sum8(&part);
    for e in &scores[whole..] {
        sum += e;
    }
    out.fill(0.0);
    for (e, &s) in scores.iter().zip(slots) {
        let p = e / sum;
        let v = &kv.v[kv.at(s)..][..hd];
        for (o, &vi) in out.iter_mut().zip(v) {
            *o = p.mul_add(vi.to_f32(), *o);
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::{KvElem, KvHead, C1, C2, EXP_LO, LOG2E, P};

    /// The lanes of `v` summed in [`sum8`]'s order: `b = lo + hi` is `[a0 + a4, a1 + a5,
    /// a2 + a6, a3 + a7]`, then `(b0 + b2) + (b1 + b3)`.
    #[inline(always)]
    unsafe fn hsum(v: __m256) -> f32 {
        // SAFETY: plain register operations (the caller has AVX2).
        unsafe {
            let b = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
            let c = _mm_add_ps(b, _mm_movehl_ps(b, b));
            _mm_cvtss_f32(_mm_add_ss(c, _mm_shuffle_ps::<1>(c, c)))
        }
    }

    /// [`super::exp`] on 8 lanes: the same operations.
    #[inline(always)]
    unsafe fn exp8(x: __m256) -> __m256 {
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

    /// Slots ahead whose keys and values are prefetched: a row of each KV head is a few
    /// lines strided by the slot's width, which the hardware prefetcher follows poorly.
    const AHEAD: usize = 16;

    /// Prefetches the `n` elements at `p` (a prefetch never faults).
    #[inline(always)]
    unsafe fn prefetch<T>(p: *const T, n: usize) {
        let bytes = n * std::mem::size_of::<T>();
        for off in (0..bytes).step_by(64) {
            // SAFETY: prefetching is a hint: no address is dereferenced.
            unsafe { _mm_prefetch::<_MM_HINT_T0>((p as *const i8).wrapping_add(off)) };
        }
    }

    /// Slots a block of the AVX2 kernel takes: their keys and values (256 B each at a
    /// head width of 64) stay in L1 while every query head of the group passes over them.
    const BLOCK: usize = 64;

    /// The query heads of a group that go over each key and value together (up to 3): they
    /// share its loads and, in a two-byte cache, its widening to f32, which alone cost as
    /// much as the FMAs (the 16 registers hold 3 heads x 4 keys or value chunks).
    /// `by_heads!(heads, H => body)` calls `body(h0)` for heads `h0..h0 + H`, `H` a const
    /// of 3, 2 or 1, until every head has been taken.
    macro_rules! by_heads {
        ($heads:expr, $h:ident => $body:expr) => {{
            let mut h0 = 0;
            while h0 < $heads {
                h0 += match $heads - h0 {
                    3.. => {
                        const $h: usize = 3;
                        $body(h0);
                        $h
                    }
                    2 => {
                        const $h: usize = 2;
                        $body(h0);
                        $h
                    }
                    _ => {
                        const $h: usize = 1;
                        $body(h0);
                        $h
                    }
                };
            }
        }};
    }

    /// See [`super::attend`]: the group's heads go over the slots a block at a time,
    /// up to three of them over each key and value together.
    ///
    /// # Safety
    /// The CPU has AVX2, FMA and F16C; every slot's key and value (`hd` wide) lies inside
    /// `kv`'s planes, `scores` holds `q.len() / hd * slots.len()` values and `out` `q.len()`.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn attend<T: KvElem>(
        q: &[f32],
        hd: usize,
        kv: KvHead<'_, T>,
        slots: &[usize],
        scale: f32,
        scores: &mut [f32],
        out: &mut [f32],
    ) {
        // SAFETY: the caller upholds the contract above.
        unsafe {
            let (n, heads) = (slots.len(), q.len() / hd);
            let body = hd - hd % 8;
            let (kp, vp) = (kv.k.as_ptr(), kv.v.as_ptr());
            let at = |s: usize| kv.at(s);
            let sp = scores.as_mut_ptr();
            // 1. scores, a block of slots at a time for every head
            for b0 in (0..n).step_by(BLOCK) {
                let block = &slots[b0..(b0 + BLOCK).min(n)];
                by_heads!(heads, H => |h0: usize| {
                    let qp: [*const f32; H] = std::array::from_fn(|x| q.as_ptr().add((h0 + x) * hd));
                    let sc: [*mut f32; H] = std::array::from_fn(|x| sp.add((h0 + x) * n + b0));
                    scores_of::<T, H>(qp, hd, kp, block, at, scale, sc);
                });
            }
            // 2.-4. per head: max, exponentials, their sum, the probabilities
            for sc in scores.chunks_exact_mut(n.max(1)).take(heads) {
                probabilities(sc);
            }
            // 5. the weighted values, each head's lanes over every slot in order (a block
            // at a time, the partial sums kept in `out` between blocks)
            out.fill(0.0);
            let sp = scores.as_ptr();
            for b0 in (0..n).step_by(BLOCK) {
                let block = &slots[b0..(b0 + BLOCK).min(n)];
                by_heads!(heads, H => |h0: usize| {
                    let p: [*const f32; H] = std::array::from_fn(|x| sp.add((h0 + x) * n + b0));
                    let op: [*mut f32; H] = std::array::from_fn(|x| out.as_mut_ptr().add((h0 + x) * hd));
                    let mut c0 = 0;
                    while c0 < body {
                        let v = vp.add(kv.off + c0);
                        let o: [*mut f32; H] = std::array::from_fn(|x| op[x].add(c0));
                        c0 += 8 * match ((body - c0) / 8, H) {
                            (8.., 1) => weighted::<T, 8, H>(p, block, kv.stride, v, o),
                            (4.., _) => weighted::<T, 4, H>(p, block, kv.stride, v, o),
                            (2.., _) => weighted::<T, 2, H>(p, block, kv.stride, v, o),
                            _ => weighted::<T, 1, H>(p, block, kv.stride, v, o),
                        };
                    }
                    for x in 0..H {
                        for (j, &s) in block.iter().enumerate() {
                            let (e, v) = (*p[x].add(j), vp.add(at(s)));
                            for i in body..hd {
                                let o = op[x].add(i);
                                *o = e.mul_add((*v.add(i)).to_f32(), *o);
                            }
                        }
                    }
                });
            }
        }
    }

    /// `sc[x][j] = q[x] . key(slots[j]) * scale` for `H` heads (step 1 of the module's
    /// order).
    ///
    /// # Safety
    /// As [`attend`]: each `q[x]` holds `hd` values and each `sc[x]` `slots.len()`, every
    /// slot's key lies inside `k`.
    #[inline(always)]
    unsafe fn scores_of<T: KvElem, const H: usize>(
        qp: [*const f32; H],
        hd: usize,
        kp: *const T,
        slots: &[usize],
        at: impl Fn(usize) -> usize,
        scale: f32,
        sc: [*mut f32; H],
    ) {
        // SAFETY: the caller upholds the contract above.
        unsafe {
            let body = hd - hd % 8;
            let tail = |q: *const f32, k: *const T, mut d: f32| {
                for i in body..hd {
                    d = (*q.add(i)).mul_add((*k.add(i)).to_f32(), d);
                }
                d
            };
            // Several keys at a time: each key's lanes are one chain of FMAs, so eight
            // chains (four keys of two or three heads, or eight of one) keep both FMA
            // units busy past their latency (four left them half idle).
            let mut j = 0;
            while j < slots.len() {
                let (s, c) = (&slots[j..], sc.map(|p| p.add(j)));
                j += match (slots.len() - j, H) {
                    (8.., 1) => keys::<T, 8, H>(qp, body, kp, s, &at, scale, c, &tail),
                    (4.., _) => keys::<T, 4, H>(qp, body, kp, s, &at, scale, c, &tail),
                    _ => keys::<T, 1, H>(qp, body, kp, s, &at, scale, c, &tail),
                };
            }
        }
    }

    /// The scores of the first `U` slots for `H` heads (see [`scores_of`]). Returns `U`.
    ///
    /// # Safety
    /// As [`scores_of`], with at least `U` slots and scores.
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    unsafe fn keys<T: KvElem, const U: usize, const H: usize>(
        qp: [*const f32; H],
        body: usize,
        kp: *const T,
        slots: &[usize],
        at: &impl Fn(usize) -> usize,
        scale: f32,
        sc: [*mut f32; H],
        tail: &impl Fn(*const f32, *const T, f32) -> f32,
    ) -> usize {
        // SAFETY: the caller upholds the contract above.
        unsafe {
            let k: [*const T; U] = std::array::from_fn(|u| kp.add(at(slots[u])));
            for u in 0..U {
                if let Some(&s) = slots.get(u + AHEAD) {
                    prefetch(kp.add(at(s)), body);
                }
            }
            let mut acc = [[_mm256_setzero_ps(); U]; H];
            for i in (0..body).step_by(8) {
                let qv: [__m256; H] = std::array::from_fn(|x| _mm256_loadu_ps(qp[x].add(i)));
                for u in 0..U {
                    let kv = T::load8(k[u].add(i));
                    for x in 0..H {
                        acc[x][u] = _mm256_fmadd_ps(qv[x], kv, acc[x][u]);
                    }
                }
            }
            for x in 0..H {
                for u in 0..U {
                    *sc[x].add(u) = tail(qp[x], k[u], hsum(acc[x][u])) * scale;
                }
            }
            U
        }
    }

    /// Scores to probabilities in place: max, `exp(s - max)`, the blocked sum, `e / sum`
    /// (steps 2-4 of the module's order).
    ///
    /// # Safety
    /// The CPU has AVX2 and FMA.
    #[inline(always)]
    unsafe fn probabilities(scores: &mut [f32]) {
        // SAFETY: the loads and stores stay inside `scores`.
        unsafe {
            let m = scores.iter().fold(f32::NEG_INFINITY, |m, &s| m.max(s));
            let whole = scores.len() - scores.len() % 8;
            let mut part = _mm256_setzero_ps();
            let mv = _mm256_set1_ps(m);
            for c in (0..whole).step_by(8) {
                let p = scores.as_mut_ptr().add(c);
                let e = exp8(_mm256_sub_ps(_mm256_loadu_ps(p), mv));
                _mm256_storeu_ps(p, e);
                part = _mm256_add_ps(part, e);
            }
            let mut sum = hsum(part);
            for e in &mut scores[whole..] {
                *e = super::exp(*e - m);
                sum += *e;
            }
            let sv = _mm256_set1_ps(sum);
            for c in (0..whole).step_by(8) {
                let p = scores.as_mut_ptr().add(c);
                _mm256_storeu_ps(p, _mm256_div_ps(_mm256_loadu_ps(p), sv));
            }
            for e in &mut scores[whole..] {
                *e /= sum;
            }
        }
    }

    /// `out[x][..8 * N] += sum over slots of p[x] * v` for `H` heads (the value rows at
    /// `v + s * stride`), `fma` in slot order, the `8 * N` lanes of each head in registers,
    /// each value chunk loaded once for all. Returns `N`.
    ///
    /// # Safety
    /// The CPU has AVX2, FMA and F16C; every slot's `8 * N` values from `v` are readable,
    /// each `p[x]` holds `slots.len()` values and each `out[x]` is valid for `8 * N`.
    #[inline(always)]
    unsafe fn weighted<T: KvElem, const N: usize, const H: usize>(
        p: [*const f32; H],
        slots: &[usize],
        stride: usize,
        v: *const T,
        out: [*mut f32; H],
    ) -> usize {
        // SAFETY: the caller upholds the contract above.
        unsafe {
            let mut o: [[__m256; N]; H] = std::array::from_fn(|x| {
                std::array::from_fn(|u| _mm256_loadu_ps(out[x].add(8 * u)))
            });
            for (j, &s) in slots.iter().enumerate() {
                let pv: [__m256; H] = std::array::from_fn(|x| _mm256_set1_ps(*p[x].add(j)));
                let row = v.add(s * stride);
                if let Some(&s) = slots.get(j + AHEAD) {
                    prefetch(v.add(s * stride), 8 * N);
                }
                for u in 0..N {
                    let vv = T::load8(row.add(8 * u));
                    for (ox, px) in o.iter_mut().zip(&pv) {
                        ox[u] = _mm256_fmadd_ps(*px, vv, ox[u]);
                    }
                }
            }
            for (ox, outx) in o.iter().zip(out) {
                for (u, ou) in ox.iter().enumerate() {
                    _mm256_storeu_ps(outx.add(8 * u), *ou);
                }
            }
            N
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::util::isa::supported_isas;

    fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x % 20_001) as f32 / 10_000.0 - 1.0
            })
            .collect()
    }

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
    fn every_isa_gives_the_portable_bits_and_softmax_attention() {
        // head widths with and without a tail; slot counts around the blocks of 4 and 8
        for (hd, stride, off) in [(64, 128, 64), (64, 64, 0), (12, 24, 0), (256, 256, 0)] {
            let planes = 160;
            let (k, v) = (values(planes * stride, 1), values(planes * stride, 2));
            let q = values(7 * hd, 3);
            let kv = KvHead {
                k: &k,
                v: &v,
                stride,
                off,
            };
            for n in [1, 3, 4, 7, 8, 9, 17, 64, 65, 150] {
                // scattered slots, as a tree row's ancestors are
                let slots: Vec<usize> = (0..n).map(|j| (j * 37 + 5) % planes).collect();
                let mut want = vec![0f32; hd];
                portable(&q[..hd], kv, &slots, 0.125, &mut vec![0.0; n], &mut want);
                // softmax attention in f64
                let s: Vec<f64> = slots
                    .iter()
                    .map(|&s| {
                        (0..hd)
                            .map(|i| q[i] as f64 * k[s * stride + off + i] as f64)
                            .sum::<f64>()
                            * 0.125
                    })
                    .collect();
                let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let z: f64 = s.iter().map(|x| (x - m).exp()).sum();
                for i in 0..hd {
                    let r: f64 = slots
                        .iter()
                        .zip(&s)
                        .map(|(&sl, x)| (x - m).exp() / z * v[sl * stride + off + i] as f64)
                        .sum();
                    assert!(
                        (want[i] as f64 - r).abs() < 1e-5,
                        "hd {hd} n {n}: {} {r}",
                        want[i]
                    );
                }
                for isa in supported_isas() {
                    let mut got = vec![0f32; hd];
                    attend(
                        isa,
                        &q[..hd],
                        hd,
                        kv,
                        &slots,
                        0.125,
                        &mut Vec::new(),
                        &mut got,
                    );
                    assert_eq!(got, want, "{isa:?} hd {hd} n {n}");
                    // in groups of 2, 3 and 7 heads (taken 3, 2 and 1 at a time over each
                    // key and value): every head's bits are its own alone
                    for heads in [2, 3, 7] {
                        let mut got = vec![0f32; heads * hd];
                        let qs = &q[..heads * hd];
                        attend(isa, qs, hd, kv, &slots, 0.125, &mut Vec::new(), &mut got);
                        for (x, (qx, gx)) in qs.chunks(hd).zip(got.chunks(hd)).enumerate() {
                            let mut alone = vec![0f32; hd];
                            portable(qx, kv, &slots, 0.125, &mut vec![0.0; n], &mut alone);
                            assert_eq!(
                                gx,
                                &alone[..],
                                "{isa:?} hd {hd} n {n}, head {x} of {heads}"
                            );
                        }
                    }
                }
            }
        }
    }

    /// An f16 or bf16 cache gives the bits of an f32 cache holding the rounded values,
    /// on every ISA (the widening is exact and the order of the arithmetic the same).
    fn two_byte_planes_read_as_their_f32_values<T: KvElem>() {
        let (hd, stride, off, planes) = (64, 128, 64, 90);
        let round = |x: Vec<f32>| -> (Vec<T>, Vec<f32>) {
            let t: Vec<T> = x.iter().map(|&x| T::from_f32(x)).collect();
            let w = t.iter().map(|&t| t.to_f32()).collect();
            (t, w)
        };
        let ((k, kw), (v, vw)) = (
            round(values(planes * stride, 4)),
            round(values(planes * stride, 5)),
        );
        let q = values(2 * hd, 6);
        let half = KvHead {
            k: &k,
            v: &v,
            stride,
            off,
        };
        let wide = KvHead {
            k: &kw,
            v: &vw,
            stride,
            off,
        };
        for n in [1, 7, 8, 9, 64, 89] {
            let slots: Vec<usize> = (0..n).map(|j| (j * 13 + 2) % planes).collect();
            let mut want = vec![0f32; 2 * hd];
            attend(
                Isa::Portable,
                &q,
                hd,
                wide,
                &slots,
                0.125,
                &mut Vec::new(),
                &mut want,
            );
            for isa in supported_isas() {
                let mut got = vec![0f32; 2 * hd];
                attend(isa, &q, hd, half, &slots, 0.125, &mut Vec::new(), &mut got);
                assert_eq!(got, want, "{isa:?} n {n}");
            }
        }
    }

    #[test]
    fn f16_and_bf16_caches_read_as_their_f32_values() {
        two_byte_planes_read_as_their_f32_values::<half::f16>();
        two_byte_planes_read_as_their_f32_values::<half::bf16>();
    }
}
