//! The quantized product with int8 activations: `vpdpbusd` (AVX-512 VNNI), or on AVX2
//! `vpmaddubsw` then `vpmaddwd`, multiplies a substitute's unsigned codes by signed 8-bit
//! activations, four pairs a lane, summed in exact i32, so the weights are never widened
//! to f32 (the f32 kernels' `vpmovzxbd` and two `vpermps` per 32 weights and row are what
//! bound them at a draft's 2 tokens).
//!
//! The arithmetic, exactly (the portable [`dot`] and both kernels give the same bits):
//!
//! - Each token's activations are quantized per *pair* of packing blocks (64 columns, a
//!   weight group or part of one): `d = amax / 127`, `q = round_ties_even(x * (127 /
//!   amax))` (0 where `amax` is 0), and stored in the order the pair's codes unpack to in
//!   one 64-byte register ([`pair_col`]): for 4 bits the low nibbles of the pair's 32
//!   bytes, then the high ones; for 2 bits the 16 bytes four times, shifted by 0, 2, 4
//!   and 6; for 8 bits the codes as stored.
//! - A group's exact f32 sum of its activations, `sum16` of 16 sequential lanes, carries
//!   the groups' minimums: `w = c * scale + min` makes `dot(w, x) = scale * dot(c, x) +
//!   min * sum(x)`.
//! - 16 f32 lanes `acc`, from 0. At every 16th group `g`, lane `l` takes
//!   `fma(min[g + l], sum[g + l], acc[l])` (0 past the last group); then for each group,
//!   `gacc` from 0 takes `fma(f32(i[p][l]), d[p], gacc[l])` for each pair `p` of the
//!   group, `i[p][l]` the i32 sum of the four code-activation products in byte lanes `4l
//!   .. 4l + 4`, and `acc[l] = fma(gacc[l], scale, acc[l])`. The result is the fixed
//!   pairwise `sum16` of `acc`.
//!
//! A token's result depends on its own activations alone (batch-invariant). Values differ
//! from the f32 kernels' (an activation keeps 8 bits of its pair's largest): the draft's
//! numbers, never the target's. Used where [`applies`]: AVX-512 with VNNI for 2, 4 or 8
//! bits, AVX2 for 2 or 4, in groups of a multiple of 64.

use super::format::{block_bytes, unpack_block, QMatrix, BLOCK};
use crate::util::isa::Isa;
use crate::util::lanes::sum16;

/// Columns sharing one activation scale: two packing blocks, one 64-byte register of codes.
pub(crate) const PAIR: usize = 2 * BLOCK;

/// Whether the product of `w` on `isa` takes int8 activations (see the module
/// documentation): on AVX-512 with VNNI (unless `SUBSPEC_NO_VNNI` is set) codes of 2, 4 or
/// 8 bits, on AVX2 of 2 or 4 (`vpmaddubsw`'s i16 pair sums are exact only below 8), in
/// groups of a multiple of [`PAIR`]; never with `SUBSPEC_NO_INT8` set.
pub(crate) fn applies(isa: Isa, w: &QMatrix) -> bool {
    let kernel = match isa {
        Isa::Avx512 => crate::util::isa::vnni(),
        Isa::Avx2 => w.bits() < 8,
        Isa::Portable => false,
    };
    kernel && supports(w) && crate::util::isa::int8()
}

/// Whether the int8 arithmetic is defined for `w`: 2, 4 or 8 bits, groups a multiple of
/// [`PAIR`] (the portable [`dot`] runs it on any CPU).
pub(crate) fn supports(w: &QMatrix) -> bool {
    matches!(w.bits(), 2 | 4 | 8) && w.group().is_multiple_of(PAIR)
}

/// Column (inside its pair, `0..64`) whose code lands in byte `z` of the pair's register.
pub(crate) fn pair_col(bits: u8, z: usize) -> usize {
    match bits {
        // register bytes 0..32: the low nibbles of the pair's 32 bytes, columns 0..16 (block
        // 0's bytes) then 32..48 (block 1's); bytes 32..64: the high nibbles, columns 16..32
        // then 48..64
        4 => match z / 16 {
            1 => z + 16,
            2 => z - 16,
            _ => z,
        },
        // 128-bit lane s holds bits 2s of the 16 bytes: block 0's code j + 8s, then block 1's
        2 => {
            let (s, i) = (z / 16, z % 16);
            if i < 8 {
                i + 8 * s
            } else {
                32 + i - 8 + 8 * s
            }
        }
        8 => z,
        b => unreachable!("int8 activations for {b}-bit codes"),
    }
}

/// A batch of activations quantized for the int8 product of one matrix's shape.
pub(crate) struct Acts {
    /// Columns per token.
    pub k: usize,
    /// Sums per token: the groups, padded with zeros to a multiple of 16.
    pub gpad: usize,
    /// `k` codes per token, each pair in [`pair_col`]'s order.
    pub q: Vec<i8>,
    /// `k / PAIR` scales per token.
    pub d: Vec<f32>,
    /// `gpad` group sums per token.
    pub sums: Vec<f32>,
}

impl Acts {
    /// Quantizes `t_count` tokens of `x` (rows of `w.cols()`) for the product of `w`
    /// ([`supports`] must hold).
    pub fn new(x: &[f32], t_count: usize, w: &QMatrix) -> Acts {
        let (k, bits, group) = (w.cols(), w.bits(), w.group());
        debug_assert!(supports(w) && x.len() == t_count * k);
        let gpr = k / group;
        let gpad = gpr.next_multiple_of(16);
        let mut a = Acts {
            k,
            gpad,
            q: vec![0; t_count * k],
            d: vec![0.0; t_count * k / PAIR],
            sums: vec![0.0; t_count * gpad],
        };
        // where byte z of a pair comes from, in runs of 8 (the orders move 8 or 16 at a time)
        let from: [usize; PAIR / 8] = std::array::from_fn(|r| pair_col(bits, 8 * r));
        let mut nat = [0i8; PAIR];
        for t in 0..t_count {
            let xt = &x[t * k..(t + 1) * k];
            for (p, xp) in xt.chunks_exact(PAIR).enumerate() {
                let mut m = [0f32; 16];
                for c in xp.chunks_exact(16) {
                    for (m, v) in m.iter_mut().zip(c) {
                        *m = m.max(v.abs());
                    }
                }
                let amax = m.iter().fold(0f32, |a, &b| a.max(b));
                let id = if amax > 0.0 { 127.0 / amax } else { 0.0 };
                for (n, v) in nat.iter_mut().zip(xp) {
                    *n = round_ties_even(v * id) as i8;
                }
                let dst = &mut a.q[t * k + p * PAIR..t * k + (p + 1) * PAIR];
                for (r, &f) in from.iter().enumerate() {
                    dst[8 * r..8 * r + 8].copy_from_slice(&nat[f..f + 8]);
                }
                a.d[t * (k / PAIR) + p] = amax / 127.0;
            }
            for (g, xg) in xt.chunks_exact(group).enumerate() {
                let mut s = [0f32; 16];
                for c in xg.chunks_exact(16) {
                    for (s, v) in s.iter_mut().zip(c) {
                        *s += v;
                    }
                }
                a.sums[t * gpad + g] = sum16(&s);
            }
        }
        a
    }
}

/// `v` rounded to the nearest integer, ties to even, for `|v| <= 127` (NaN: 0): adding and
/// subtracting 1.5 * 2^23 leaves no fraction bits, so the FPU's rounding does it, in code
/// the compiler vectorizes on any x86-64 (`f32::round_ties_even` is a libm call without
/// SSE4.1).
#[inline(always)]
fn round_ties_even(v: f32) -> i32 {
    const MAGIC: f32 = 12_582_912.0;
    ((v + MAGIC) - MAGIC) as i32
}

/// The int8 product of one row (`codes`, `params` of `bits` and `group`) with token `t` of
/// `a`, in scalar code: the reference the AVX-512 kernel equals.
pub(crate) fn dot(
    bits: u8,
    group: usize,
    codes: &[u8],
    params: &[half::f16],
    a: &Acts,
    t: usize,
) -> f32 {
    let k = a.k;
    let (gpr, ppg, bb) = (k / group, group / PAIR, block_bytes(bits));
    let xq = &a.q[t * k..(t + 1) * k];
    let d = &a.d[t * (k / PAIR)..(t + 1) * (k / PAIR)];
    let sums = &a.sums[t * a.gpad..(t + 1) * a.gpad];
    let mut acc = [0f32; 16];
    let mut q = [[0u8; BLOCK]; 2];
    for g in 0..gpr {
        if g % 16 == 0 {
            for (l, a) in acc.iter_mut().enumerate() {
                let m = params.get(2 * (g + l) + 1).map_or(0.0, |m| m.to_f32());
                *a = m.mul_add(sums[g + l], *a);
            }
        }
        let mut gacc = [0f32; 16];
        for p in g * ppg..(g + 1) * ppg {
            for (h, q) in q.iter_mut().enumerate() {
                let b = 2 * p + h;
                unpack_block(bits, &codes[b * bb..(b + 1) * bb], q);
            }
            let mut lanes = [0i32; 16];
            for z in 0..PAIR {
                let c = pair_col(bits, z);
                lanes[z / 4] += q[c / BLOCK][c % BLOCK] as i32 * xq[p * PAIR + z] as i32;
            }
            for (ga, &i) in gacc.iter_mut().zip(&lanes) {
                *ga = (i as f32).mul_add(d[p], *ga);
            }
        }
        let scale = params[2 * g].to_f32();
        for (a, ga) in acc.iter_mut().zip(gacc) {
            *a = ga.mul_add(scale, *a);
        }
    }
    sum16(&acc)
}

// AVX-512 (VNNI included) intrinsics are stable since Rust 1.89.
#[cfg(target_arch = "x86_64")]
pub(crate) mod avx512 {
    use std::arch::x86_64::*;

    use super::super::qlinear::avx512::{group_params, GC};
    use super::{Acts, PAIR};
    use crate::util::lanes::avx512::hsum16;

    /// The 64 codes of the pair of blocks at `p` as bytes, in [`super::pair_col`]'s order.
    ///
    /// # Safety
    /// The CPU has AVX-512F/BW; `B` is 2, 4 or 8 and `p` points to `8 * B` bytes.
    #[inline(always)]
    unsafe fn pair_codes<const B: u8>(p: *const u8) -> __m512i {
        // SAFETY: the caller upholds the contract above.
        unsafe {
            match B {
                4 => {
                    let v = _mm512_broadcast_i64x4(_mm256_loadu_si256(p as *const __m256i));
                    let v = _mm512_srlv_epi64(v, _mm512_set_epi64(4, 4, 4, 4, 0, 0, 0, 0));
                    _mm512_and_si512(v, _mm512_set1_epi8(15))
                }
                2 => {
                    let v = _mm512_broadcast_i32x4(_mm_loadu_si128(p as *const __m128i));
                    let v = _mm512_srlv_epi64(v, _mm512_set_epi64(6, 6, 4, 4, 2, 2, 0, 0));
                    _mm512_and_si512(v, _mm512_set1_epi8(3))
                }
                8 => _mm512_loadu_si512(p as *const __m512i),
                _ => unreachable!(),
            }
        }
    }

    /// Tiles of `R` rows times `T` tokens (`a`'s tokens `t0..t0 + T`), as many as `codes`
    /// holds rows for, the bits of [`super::dot`]: `res[i * T + j] = dot(row i, token t0 +
    /// j)` (one call for a run of tiles: a tile of a draft's 2 tokens is ~0.1 us of work).
    ///
    /// # Safety
    /// The CPU has AVX-512F/BW/VL, AVX-512 VNNI, FMA and F16C; `B` is 2, 4 or 8; `codes`
    /// holds a multiple of `R` packed rows of `a.k` codes, `pars` their `a.k / group`
    /// (scale, min) pairs a row; `a` holds tokens `t0..t0 + T` of a matrix of this shape;
    /// `group` is a multiple of 64 dividing `a.k`; `res` holds `T` values a row.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,fma,f16c")]
    pub unsafe fn tile<const B: u8, const R: usize, const T: usize>(
        codes: &[u8],
        pars: &[half::f16],
        a: &Acts,
        t0: usize,
        group: usize,
        res: &mut [f32],
    ) {
        let k = a.k;
        let rb = k * B as usize / 8;
        debug_assert!(codes.len().is_multiple_of(R * rb));
        for (n, res) in res
            .chunks_exact_mut(R * T)
            .take(codes.len() / (R * rb))
            .enumerate()
        {
            let pr = 2 * (k / group);
            let (codes, pars) = (&codes[n * R * rb..], &pars[n * R * pr..]);
            // SAFETY: the caller's contract, for the tile's rows.
            unsafe { one::<B, R, T>(codes, pars, a, t0, group, res) };
        }
    }

    /// One tile of [`tile`] (the first `R` rows of `codes`).
    ///
    /// # Safety
    /// As [`tile`].
    #[inline(always)]
    unsafe fn one<const B: u8, const R: usize, const T: usize>(
        codes: &[u8],
        pars: &[half::f16],
        a: &Acts,
        t0: usize,
        group: usize,
        res: &mut [f32],
    ) {
        // SAFETY: the caller upholds the contract of `tile`.
        unsafe {
            let k = a.k;
            let (rb, kp, gpr) = (k * B as usize / 8, k / PAIR, k / group);
            let (pb, ppg) = (8 * B as usize, group / PAIR);
            let (cp, pp) = (codes.as_ptr(), pars.as_ptr());
            let xq = a.q.as_ptr().add(t0 * k);
            let dp = a.d.as_ptr().add(t0 * kp);
            let sp = a.sums.as_ptr().add(t0 * a.gpad);
            let odd = _mm512_set_epi32(31, 29, 27, 25, 23, 21, 19, 17, 15, 13, 11, 9, 7, 5, 3, 1);
            let mut acc = [[_mm512_setzero_ps(); T]; R];
            // (scale, min) of 16 groups of each row, converted to f32 (zero past the row)
            let mut dm = [[0f32; 2 * GC]; R];
            for g in 0..gpr {
                let gc = g % GC;
                if gc == 0 {
                    group_params(pp, gpr, g, &mut dm);
                    for (r, dm_r) in dm.iter().enumerate() {
                        let mins = _mm512_permutex2var_ps(
                            _mm512_loadu_ps(dm_r.as_ptr()),
                            odd,
                            _mm512_loadu_ps(dm_r.as_ptr().add(16)),
                        );
                        for (j, acc) in acc[r].iter_mut().enumerate() {
                            let s = _mm512_loadu_ps(sp.add(j * a.gpad + g));
                            *acc = _mm512_fmadd_ps(mins, s, *acc);
                        }
                    }
                }
                // the next tile's rows at the same place, as the f32 kernel does
                for r in 0..R {
                    let ahead = cp.wrapping_add((r + R) * rb + g * ppg * pb);
                    _mm_prefetch::<_MM_HINT_T0>(ahead as *const i8);
                }
                let mut gacc = [[_mm512_setzero_ps(); T]; R];
                for p in g * ppg..(g + 1) * ppg {
                    for (r, gacc_r) in gacc.iter_mut().enumerate() {
                        let c = pair_codes::<B>(cp.add(r * rb + p * pb));
                        for (j, ga) in gacc_r.iter_mut().enumerate() {
                            let x = _mm512_loadu_si512(xq.add(j * k + p * PAIR) as *const __m512i);
                            let i = _mm512_dpbusd_epi32(_mm512_setzero_si512(), c, x);
                            let d = _mm512_set1_ps(*dp.add(j * kp + p));
                            *ga = _mm512_fmadd_ps(_mm512_cvtepi32_ps(i), d, *ga);
                        }
                    }
                }
                for r in 0..R {
                    let scale = _mm512_set1_ps(dm[r][2 * gc]);
                    for j in 0..T {
                        acc[r][j] = _mm512_fmadd_ps(gacc[r][j], scale, acc[r][j]);
                    }
                }
            }
            for r in 0..R {
                for j in 0..T {
                    res[r * T + j] = hsum16(acc[r][j]);
                }
            }
        }
    }
}

// AVX2 has no `vpdpbusd`: `vpmaddubsw` multiplies the unsigned codes by the signed
// activations and adds adjacent pairs into i16 (exact below 8 bits: |2 * 15 * 127| fits),
// `vpmaddwd` by ones adds adjacent i16 pairs into i32: the same four-byte lane sums.
#[cfg(target_arch = "x86_64")]
pub(crate) mod avx2 {
    use std::arch::x86_64::*;

    use super::{Acts, PAIR};
    use crate::util::lanes::avx2::hsum16;

    /// The 64 codes of the pair of blocks at `p` as bytes `0..32` and `32..64`, in
    /// [`super::pair_col`]'s order.
    ///
    /// # Safety
    /// The CPU has AVX2; `B` is 2 or 4 and `p` points to `8 * B` bytes.
    #[inline(always)]
    unsafe fn pair_codes<const B: u8>(p: *const u8) -> [__m256i; 2] {
        // SAFETY: the caller upholds the contract above.
        unsafe {
            match B {
                4 => {
                    let v = _mm256_loadu_si256(p as *const __m256i);
                    let m = _mm256_set1_epi8(15);
                    [
                        _mm256_and_si256(v, m),
                        _mm256_and_si256(_mm256_srli_epi16::<4>(v), m),
                    ]
                }
                2 => {
                    let v = _mm256_broadcastsi128_si256(_mm_loadu_si128(p as *const __m128i));
                    let m = _mm256_set1_epi8(3);
                    let lo = _mm256_srlv_epi64(v, _mm256_set_epi64x(2, 2, 0, 0));
                    let hi = _mm256_srlv_epi64(v, _mm256_set_epi64x(6, 6, 4, 4));
                    [_mm256_and_si256(lo, m), _mm256_and_si256(hi, m)]
                }
                _ => unreachable!(),
            }
        }
    }

    /// Every row of `codes` times `a`'s tokens `t0..t0 + tt`, the bits of [`super::dot`]:
    /// `res[i * tt + j] = dot(row i, token t0 + j)`. A row at a time, its tokens in runs of
    /// at most 3 (16 lanes are two registers here, and each token keeps two sums); two rows
    /// at a time for one token, sharing each load of its activations.
    ///
    /// # Safety
    /// The CPU has AVX2, FMA and F16C; `B` is 2 or 4; `codes` holds whole packed rows of
    /// `a.k` codes, `pars` their `a.k / group` (scale, min) pairs a row; `a` holds tokens
    /// `t0..t0 + tt` of a matrix of this shape; `group` is a multiple of 64 dividing
    /// `a.k`; `res` holds `tt` values a row.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn rows<const B: u8>(
        codes: &[u8],
        pars: &[half::f16],
        a: &Acts,
        t0: usize,
        tt: usize,
        group: usize,
        res: &mut [f32],
    ) {
        let rb = a.k * B as usize / 8;
        let pr = 2 * (a.k / group);
        let n = codes.len() / rb;
        let mut i = 0;
        while i < n {
            // one token: two rows share each load of its activations
            let r = if tt == 1 && i + 2 <= n { 2 } else { 1 };
            let (row, pars) = (&codes[i * rb..], &pars[i * pr..]);
            let res = &mut res[i * tt..(i + r) * tt];
            let mut j = 0;
            while j < tt {
                let m = (tt - j).min(3);
                // SAFETY: the caller's contract, for these rows and tokens `t0 + j..`.
                unsafe {
                    match (r, m) {
                        (2, _) => one::<B, 2, 1>(row, pars, a, t0, group, rb, res),
                        (_, 3) => one::<B, 1, 3>(row, pars, a, t0 + j, group, rb, &mut res[j..]),
                        (_, 2) => one::<B, 1, 2>(row, pars, a, t0 + j, group, rb, &mut res[j..]),
                        _ => one::<B, 1, 1>(row, pars, a, t0 + j, group, rb, &mut res[j..]),
                    }
                }
                j += m;
            }
            i += r;
        }
    }

    /// Rows `0..R` of `codes` (`rb` bytes each, their pairs in `pars`) times tokens `t0..t0
    /// + T` of `a` into `res[r * T + j]`.
    ///
    /// # Safety
    /// As [`rows`], for these rows.
    #[inline(always)]
    #[allow(clippy::needless_range_loop)] // r, j, h are the tile's coordinates
    unsafe fn one<const B: u8, const R: usize, const T: usize>(
        codes: &[u8],
        pars: &[half::f16],
        a: &Acts,
        t0: usize,
        group: usize,
        rb: usize,
        res: &mut [f32],
    ) {
        // SAFETY: the caller upholds the contract of `rows`.
        unsafe {
            let k = a.k;
            let (kp, gpr) = (k / PAIR, k / group);
            let (pb, ppg) = (8 * B as usize, group / PAIR);
            let cp = codes.as_ptr();
            let xq = a.q.as_ptr().add(t0 * k);
            let dp = a.d.as_ptr().add(t0 * kp);
            let sp = a.sums.as_ptr().add(t0 * a.gpad);
            let ones = _mm256_set1_epi16(1);
            let mut acc = [[[_mm256_setzero_ps(); 2]; T]; R];
            // (scale, min) of groups g..g + 16 of each row as f32, converted 8 at a time
            // (zero past the row)
            let mut dm = [[0f32; 32]; R];
            for g in 0..gpr {
                if g % 16 == 0 {
                    for (r, dm) in dm.iter_mut().enumerate() {
                        // a (scale, min) pair is 32 bits: masked loads of the row's pairs
                        let n = (gpr - g).min(16) as i32;
                        let src = pars.as_ptr().add(2 * (r * gpr + g)) as *const i32;
                        for c in 0..2usize {
                            let lanes = _mm256_sub_epi32(
                                _mm256_set1_epi32(n - 8 * c as i32),
                                _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
                            );
                            // lanes with a pair left have a positive count
                            let mask = _mm256_cmpgt_epi32(lanes, _mm256_setzero_si256());
                            let v = _mm256_maskload_epi32(src.wrapping_add(8 * c), mask);
                            for q in 0..2 {
                                let h = if q == 0 {
                                    _mm256_castsi256_si128(v)
                                } else {
                                    _mm256_extracti128_si256::<1>(v)
                                };
                                let at = dm.as_mut_ptr().add(16 * c + 8 * q);
                                _mm256_storeu_ps(at, _mm256_cvtph_ps(h));
                            }
                        }
                        for h in 0..2 {
                            // lanes 8h..8h + 8 of the minimums: the odd entries of
                            // dm[16h..16h + 16]
                            let lo = _mm256_loadu_ps(dm.as_ptr().add(16 * h));
                            let hi = _mm256_loadu_ps(dm.as_ptr().add(16 * h + 8));
                            let odd = _mm256_shuffle_ps::<0b11_01_11_01>(lo, hi);
                            let m = _mm256_castpd_ps(_mm256_permute4x64_pd::<0b11_01_10_00>(
                                _mm256_castps_pd(odd),
                            ));
                            for (j, acc) in acc[r].iter_mut().enumerate() {
                                let s = _mm256_loadu_ps(sp.add(j * a.gpad + g + 8 * h));
                                acc[h] = _mm256_fmadd_ps(m, s, acc[h]);
                            }
                        }
                    }
                }
                let mut gacc = [[[_mm256_setzero_ps(); 2]; T]; R];
                for p in g * ppg..(g + 1) * ppg {
                    let mut c = [[_mm256_setzero_si256(); 2]; R];
                    for (r, c) in c.iter_mut().enumerate() {
                        let ahead = cp.wrapping_add((r + 2) * rb + p * pb);
                        _mm_prefetch::<_MM_HINT_T0>(ahead as *const i8);
                        *c = pair_codes::<B>(cp.add(r * rb + p * pb));
                    }
                    for j in 0..T {
                        let x = xq.add(j * k + p * PAIR);
                        let d = _mm256_set1_ps(*dp.add(j * kp + p));
                        for h in 0..2 {
                            let xv = _mm256_loadu_si256(x.add(32 * h) as *const __m256i);
                            for r in 0..R {
                                let pairs = _mm256_maddubs_epi16(c[r][h], xv);
                                let i = _mm256_madd_epi16(pairs, ones);
                                let ga = &mut gacc[r][j][h];
                                *ga = _mm256_fmadd_ps(_mm256_cvtepi32_ps(i), d, *ga);
                            }
                        }
                    }
                }
                for r in 0..R {
                    let scale = _mm256_set1_ps(dm[r][2 * (g % 16)]);
                    for (acc, ga) in acc[r].iter_mut().zip(&gacc[r]) {
                        for (acc, ga) in acc.iter_mut().zip(ga) {
                            *acc = _mm256_fmadd_ps(*ga, scale, *acc);
                        }
                    }
                }
            }
            for r in 0..R {
                for j in 0..T {
                    res[r * T + j] = hsum16(acc[r][j]);
                }
            }
        }
    }
}
