//! Attention of one query row and head over its KV slots, in one fixed order that every
//! kernel follows, so the bits are the same on every CPU and whatever else is in the batch:
//!
//! 1. `score[j] = d * scale`, `d` one chain over the head's dimensions in order:
//!    `d = fma(q[i], k_j[i], d)` for `i = 0..head_dim`, from `d = 0`;
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
//!
//! Keys are stored in tiles of [`TILE`] slots, dimension-major inside a tile
//! ([`key_at`]), so the AVX2 kernel loads one dimension of 8 keys at once and runs their
//! 8 scores' chains in its lanes: no horizontal sums, and the query heads of a group share
//! each load; the AVX-512 kernel puts two tiles in one register. Values are stored slot
//! after slot. The portable code is the scalar reference.

use super::kv::KvElem;
use super::math::exp;
use crate::util::isa::Isa;

/// Slots in a tile of keys.
pub(crate) const TILE: usize = 8;

/// Where dimension `i` of slot `s`'s key lies in a head's key tiles (`hd` dimensions).
#[inline(always)]
pub(crate) fn key_at(s: usize, i: usize, hd: usize) -> usize {
    (s / TILE * hd + i) * TILE + s % TILE
}

/// One KV head of a layer's cache: its key tiles ([`key_at`]) and its values (slot `s`'s
/// at `v[s * hd..][..hd]`), in the cache's element type (widened to f32 exactly as read).
pub(crate) struct KvHead<'a, T> {
    pub k: &'a [T],
    pub v: &'a [T],
}

impl<T> Clone for KvHead<'_, T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for KvHead<'_, T> {}

/// A task's scratch: the scores of its heads, and keys gathered into a tile.
#[derive(Default)]
pub(crate) struct Scratch {
    pub scores: Vec<f32>,
    tile: Vec<f32>,
}

/// A row of an attention task: its query heads (`heads * hd` values, all reading the
/// same KV head, as grouped-query attention's heads do) and the slots it reads after the
/// task's shared ones (its own: a tree node's ancestors, a prompt row's predecessors in
/// the batch).
#[derive(Clone, Copy)]
pub(crate) struct Row<'a> {
    pub q: &'a [f32],
    pub own: &'a [usize],
}

/// Attention of each row's query heads over the `shared` slots and then its own, in
/// order, into `out` (row after row, each laid out as its `q`). Each head's bits are those
/// of the order in the module documentation over its list, alone or with other heads and
/// rows: rows share only the loads of the shared slots' keys and values.
#[allow(clippy::too_many_arguments)]
pub(crate) fn attend_rows<T: KvElem>(
    isa: Isa,
    rows: &[Row<'_>],
    hd: usize,
    kv: KvHead<'_, T>,
    shared: &[usize],
    scale: f32,
    scratch: &mut Scratch,
    out: &mut [f32],
) {
    let w = rows.first().map_or(0, |r| r.q.len());
    assert!(hd > 0 && w.is_multiple_of(hd) && out.len() == rows.len() * w);
    assert!(rows.iter().all(|r| r.q.len() == w));
    for &s in shared.iter().chain(rows.iter().flat_map(|r| r.own)) {
        assert!(
            (s / TILE + 1) * TILE * hd <= kv.k.len() && (s + 1) * hd <= kv.v.len(),
            "slot {s}"
        );
    }
    let heads = w / hd;
    let scores = &mut scratch.scores;
    scores.clear();
    let total: usize = rows
        .iter()
        .map(|r| heads * (shared.len() + r.own.len()))
        .sum();
    scores.resize(total, 0.0);
    #[cfg(target_arch = "x86_64")]
    if isa != Isa::Portable {
        // SAFETY: every non-portable ISA has AVX2, FMA and F16C, and AVX-512 AVX-512F; the
        // slots were checked to be inside both planes, `scores` holds one value per row,
        // head and slot, and `out` as many values as the rows' queries.
        unsafe {
            let wide = isa == Isa::Avx512;
            avx2::attend_rows(
                wide,
                rows,
                hd,
                kv,
                shared,
                scale,
                scores,
                &mut scratch.tile,
                out,
            )
        };
        return;
    }
    let _ = isa;
    let mut list = Vec::new();
    let mut sc = scores.as_mut_slice();
    for (row, o) in rows.iter().zip(out.chunks_exact_mut(w.max(1))) {
        list.clear();
        list.extend_from_slice(shared);
        list.extend_from_slice(row.own);
        for (qh, oh) in row.q.chunks_exact(hd).zip(o.chunks_exact_mut(hd)) {
            let (mine, rest) = sc.split_at_mut(list.len());
            portable(qh, kv, &list, scale, mine, oh);
            sc = rest;
        }
    }
}

/// [`attend_rows`] for one row reading `slots`.
#[cfg(test)]
#[allow(clippy::too_many_arguments)]
pub(crate) fn attend<T: KvElem>(
    isa: Isa,
    q: &[f32],
    hd: usize,
    kv: KvHead<'_, T>,
    slots: &[usize],
    scale: f32,
    scratch: &mut Scratch,
    out: &mut [f32],
) {
    let row = Row { q, own: &[] };
    attend_rows(isa, &[row], hd, kv, slots, scale, scratch, out)
}

/// The fixed pairwise sum of 8 lanes.
#[inline(always)]
fn sum8(a: &[f32; 8]) -> f32 {
    ((a[0] + a[4]) + (a[2] + a[6])) + ((a[1] + a[5]) + (a[3] + a[7]))
}

/// The scalar reference of [`attend_rows`] for one head over its list of slots.
fn portable<T: KvElem>(
    q: &[f32],
    kv: KvHead<'_, T>,
    slots: &[usize],
    scale: f32,
    scores: &mut [f32],
    out: &mut [f32],
) {
    let hd = q.len();
    for (sc, &s) in scores.iter_mut().zip(slots) {
        let mut d = 0f32;
        for (i, &qi) in q.iter().enumerate() {
            d = qi.mul_add(kv.k[key_at(s, i, hd)].to_f32(), d);
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
        let v = &kv.v[s * hd..][..hd];
        for (o, &vi) in out.iter_mut().zip(v) {
            *o = p.mul_add(vi.to_f32(), *o);
        }
    }
}

/// The query vectors (a row's heads of one KV head's group, or several rows') that go
/// over each key and value together: they share its loads and, in a two-byte cache, its
/// widening to f32, which alone cost as much as the FMAs. `by_heads!(n, [sizes], H =>
/// body)` calls `body(h0)` for vectors `h0..h0 + H`, `H` a const: the largest of `sizes`
/// (descending, ending with 1) that fits what is left, until all `n` have been taken.
/// AVX2 takes up to 3 (its 16 registers hold 3 vectors x 3 tiles of keys or chunks of
/// values), AVX-512 up to 12 (24 of its 32 registers accumulate).
#[cfg(target_arch = "x86_64")]
macro_rules! by_heads {
    ($heads:expr, [$($n:literal),+], $h:ident => $body:expr) => {{
        let heads = $heads;
        let mut h0 = 0;
        while h0 < heads {
            let left = heads - h0;
            $(
                if left >= $n {
                    const $h: usize = $n;
                    $body(h0);
                    h0 += $h;
                    continue;
                }
            )+
            unreachable!("the sizes end with 1");
        }
    }};
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::super::math::avx2::exp8;
    use super::{key_at, KvElem, KvHead, Row, TILE};

    /// The lanes of `v` summed in [`sum8`](super::sum8)'s order: `b = lo + hi` is
    /// `[a0 + a4, a1 + a5, a2 + a6, a3 + a7]`, then `(b0 + b2) + (b1 + b3)`.
    #[inline(always)]
    pub unsafe fn hsum(v: __m256) -> f32 {
        // SAFETY: plain register operations (the caller has AVX2).
        unsafe {
            let b = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
            let c = _mm_add_ps(b, _mm_movehl_ps(b, b));
            _mm_cvtss_f32(_mm_add_ss(c, _mm_shuffle_ps::<1>(c, c)))
        }
    }

    /// Prefetches the `n` elements at `p` (a prefetch never faults).
    #[inline(always)]
    pub unsafe fn prefetch<T>(p: *const T, n: usize) {
        let bytes = n * std::mem::size_of::<T>();
        for off in (0..bytes).step_by(64) {
            // SAFETY: prefetching is a hint: no address is dereferenced.
            unsafe { _mm_prefetch::<_MM_HINT_T0>((p as *const i8).wrapping_add(off)) };
        }
    }

    /// Tiles of keys, and slots of values, prefetched ahead of those being read.
    pub const TILES_AHEAD: usize = 4;
    pub const SLOTS_AHEAD: usize = 16;

    /// Slots a block of the AVX2 kernel takes: their keys and values (128 B each in f16
    /// at a head width of 64) stay in L1 while every query vector passes over them.
    const BLOCK: usize = 64;

    /// See [`super::attend_rows`]: the heads of every row go over the shared slots a block
    /// at a time, several of them (of one row or several) over each key and value
    /// together; then each row's heads over its own slots. With `wide`, the blocks run
    /// [`super::avx512`]'s kernels (the same order, so the same bits).
    ///
    /// # Safety
    /// The CPU has AVX2, FMA and F16C (and AVX-512F with `wide`); every slot's key tile and
    /// value (`hd` wide) lie inside `kv`, every row's `q` holds the same number of heads,
    /// `scores` one value per row, head and slot of its list, and `out` as many values as
    /// the rows' queries.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn attend_rows<T: KvElem>(
        wide: bool,
        rows: &[Row<'_>],
        hd: usize,
        kv: KvHead<'_, T>,
        shared: &[usize],
        scale: f32,
        scores: &mut [f32],
        tile: &mut Vec<f32>,
        out: &mut [f32],
    ) {
        // SAFETY: the caller upholds the contract above.
        unsafe {
            let heads = rows[0].q.len() / hd;
            let ns = shared.len();
            // query vector `v` is head `v % heads` of row `v / heads`: its query at `q[v]`,
            // its output at `o[v]`, its scores from `sp + first[v]` on
            let mut first = Vec::with_capacity(rows.len() * heads);
            let mut at = 0;
            for r in rows {
                for _ in 0..heads {
                    first.push(at);
                    at += ns + r.own.len();
                }
            }
            out.fill(0.0);
            let q: Vec<*const f32> = (0..first.len())
                .map(|v| rows[v / heads].q.as_ptr().add(v % heads * hd))
                .collect();
            let o: Vec<*mut f32> = (0..first.len())
                .map(|v| out.as_mut_ptr().add(v * hd))
                .collect();
            let sp = scores.as_mut_ptr();
            // the scores (or probabilities) of vectors `v0..v1` from slot `from` of their
            // lists, into `c`
            let sc = |c: &mut Vec<*mut f32>, v0: usize, v1: usize, from: usize| {
                c.clear();
                c.extend(first[v0..v1].iter().map(|&f| sp.add(f + from)));
            };
            let mut c = Vec::with_capacity(first.len());
            let (kp, vp) = (kv.k.as_ptr(), kv.v.as_ptr());
            // 1. scores
            for_blocks(rows, heads, shared, |block, v0, v1, from| {
                sc(&mut c, v0, v1, from);
                if wide {
                    super::avx512::scores_block(&q[v0..v1], hd, kp, block, scale, &c, tile);
                } else {
                    scores_block(&q[v0..v1], hd, kp, block, scale, &c, tile);
                }
            });
            // 2.-4. per row and head: max, exponentials, their sum, the probabilities
            for (v, &f) in first.iter().enumerate() {
                let n = ns + rows[v / heads].own.len();
                let s = std::slice::from_raw_parts_mut(sp.add(f), n);
                if wide {
                    super::avx512::probabilities(s);
                } else {
                    probabilities(s);
                }
            }
            // 5. the weighted values, each head's lanes over every slot in order (a block
            // at a time, the partial sums kept in `out` between blocks)
            for_blocks(rows, heads, shared, |block, v0, v1, from| {
                sc(&mut c, v0, v1, from);
                if wide {
                    super::avx512::values_block(&c, block, hd, vp, &o[v0..v1]);
                } else {
                    values_block(&c, block, hd, 0, vp, &o[v0..v1]);
                }
            });
        }
    }

    /// [`scores_of`] for every query vector of `q` (their scores at `sc`), up to three
    /// at a time.
    ///
    /// # Safety
    /// As [`scores_of`] for each vector; the CPU has AVX2, FMA and F16C.
    // A target feature, not `inline(always)`: the closure of `by_heads!` takes its
    // function's features, and without them every intrinsic in it was a call.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn scores_block<T: KvElem>(
        q: &[*const f32],
        hd: usize,
        kp: *const T,
        slots: &[usize],
        scale: f32,
        sc: &[*mut f32],
        tile: &mut Vec<f32>,
    ) {
        by_heads!(q.len(), [3, 2, 1], H => |x0: usize| {
            let qx: [*const f32; H] = std::array::from_fn(|x| q[x0 + x]);
            let c: [*mut f32; H] = std::array::from_fn(|x| sc[x0 + x]);
            // SAFETY: the caller's contract, vector by vector.
            unsafe { scores_of::<T, H>(qx, hd, kp, slots, scale, c, tile) };
        });
    }

    /// [`values_of`] from dimension `c0` on for every vector (probabilities `p`, outputs
    /// `o`), up to three at a time.
    ///
    /// # Safety
    /// As [`values_of`] for each vector; the CPU has AVX2, FMA and F16C (a target feature
    /// for its closure, as [`scores_block`]).
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn values_block<T: KvElem>(
        p: &[*mut f32],
        slots: &[usize],
        hd: usize,
        c0: usize,
        vp: *const T,
        o: &[*mut f32],
    ) {
        by_heads!(p.len(), [3, 2, 1], H => |x0: usize| {
            let px: [*const f32; H] = std::array::from_fn(|x| p[x0 + x] as *const f32);
            let ox: [*mut f32; H] = std::array::from_fn(|x| o[x0 + x]);
            // SAFETY: the caller's contract, vector by vector.
            unsafe { values_of::<T, H>(px, slots, hd, c0, vp, ox) };
        });
    }

    /// Calls `f(block, v0, v1, from)` for the shared slots a block at a time (query
    /// vectors `v0..v1` = every row's heads), then for each row's own slots (its heads),
    /// `from` being the position of the block's first slot in the vectors' lists.
    #[inline(always)]
    fn for_blocks(
        rows: &[Row<'_>],
        heads: usize,
        shared: &[usize],
        mut f: impl FnMut(&[usize], usize, usize, usize),
    ) {
        // The shared slots are a run (a window's may start inside a tile): the first
        // block ends where a tile starts, so the others take whole tiles in place.
        let ns = shared.len();
        let lead = shared.first().map_or(0, |&s| (TILE - s % TILE) % TILE);
        let mut b0 = 0;
        while b0 < ns {
            let end = if b0 == 0 && lead > 0 {
                lead
            } else {
                b0 + BLOCK
            }
            .min(ns);
            f(&shared[b0..end], 0, rows.len() * heads, b0);
            b0 = end;
        }
        for (r, row) in rows.iter().enumerate() {
            for b0 in (0..row.own.len()).step_by(BLOCK) {
                let block = &row.own[b0..(b0 + BLOCK).min(row.own.len())];
                f(block, r * heads, (r + 1) * heads, ns + b0);
            }
        }
    }

    /// `out[x][i] += p[x][j] * value(slots[j])[i]` for `H` heads over `slots` in order
    /// (step 5 of the module's order for one block of slots), for dimensions `c0..hd`
    /// (`c0` a multiple of 8).
    ///
    /// # Safety
    /// As [`attend_rows`]: each `p[x]` holds `slots.len()` values and each `out[x]` `hd`,
    /// every slot's value lies inside the values at `vp`.
    #[inline(always)]
    unsafe fn values_of<T: KvElem, const H: usize>(
        p: [*const f32; H],
        slots: &[usize],
        hd: usize,
        mut c0: usize,
        vp: *const T,
        op: [*mut f32; H],
    ) {
        // SAFETY: the caller upholds the contract above.
        unsafe {
            let body = hd - hd % 8;
            while c0 < body {
                let v = vp.add(c0);
                let o: [*mut f32; H] = std::array::from_fn(|x| op[x].add(c0));
                c0 += 8 * match ((body - c0) / 8, H) {
                    (8.., 1) => weighted::<T, 8, H>(p, slots, hd, v, o),
                    // 3 heads x 4 chunks would need all 16 registers and spill one
                    // accumulator (a store and a load in every slot's chain)
                    (3.., 3) => weighted::<T, 3, H>(p, slots, hd, v, o),
                    (4.., _) => weighted::<T, 4, H>(p, slots, hd, v, o),
                    (2.., _) => weighted::<T, 2, H>(p, slots, hd, v, o),
                    _ => weighted::<T, 1, H>(p, slots, hd, v, o),
                };
            }
            for x in 0..H {
                for (j, &s) in slots.iter().enumerate() {
                    let (e, v) = (*p[x].add(j), vp.add(s * hd));
                    for i in body..hd {
                        let o = op[x].add(i);
                        *o = e.mul_add((*v.add(i)).to_f32(), *o);
                    }
                }
            }
        }
    }

    /// `sc[x][j] = q[x] . key(slots[j]) * scale` for `H` heads (step 1 of the module's
    /// order): 8 slots whose keys fill a tile are read from it in place, up to 4 tiles at
    /// a time; other slots (a tree's, the last few committed, a window's first) are
    /// gathered into `tile` first, the slots up to the next tile's start.
    ///
    /// # Safety
    /// As [`attend_rows`]: each `q[x]` holds `hd` values and each `sc[x]` `slots.len()`, every
    /// slot's key tile lies inside the key tiles at `kp`.
    #[inline(always)]
    unsafe fn scores_of<T: KvElem, const H: usize>(
        qp: [*const f32; H],
        hd: usize,
        kp: *const T,
        slots: &[usize],
        scale: f32,
        sc: [*mut f32; H],
        tile: &mut Vec<f32>,
    ) {
        // SAFETY: the caller upholds the contract above.
        unsafe {
            let n = slots.len();
            let whole = |j: usize| {
                j + TILE <= n
                    && slots[j].is_multiple_of(TILE)
                    && (1..TILE).all(|l| slots[j + l] == slots[j] + l)
            };
            let tile_of = |j: usize| kp.add(slots[j] / TILE * hd * TILE);
            let mut j = 0;
            while j < n {
                let c = sc.map(|p| p.add(j));
                if whole(j) {
                    let mut u = 1;
                    while u < 4 && whole(j + u * TILE) {
                        u += 1;
                    }
                    let t: [*const T; 4] =
                        std::array::from_fn(|x| tile_of(j + x.min(u - 1) * TILE));
                    // the tiles that follow these in the cache (the next ones read)
                    prefetch(t[0].wrapping_add(TILES_AHEAD * hd * TILE), u * hd * TILE);
                    u = match (u, H) {
                        (4, 1 | 2) => tiles::<T, 4, H>(qp, hd, t, scale, c),
                        (3.., _) => tiles::<T, 3, H>(qp, hd, [t[0], t[1], t[2]], scale, c),
                        (2, _) => tiles::<T, 2, H>(qp, hd, [t[0], t[1]], scale, c),
                        _ => tiles::<T, 1, H>(qp, hd, [t[0]], scale, c),
                    };
                    j += u * TILE;
                } else {
                    // up to the next slot that starts a tile
                    let mut m = 1;
                    while m < TILE && j + m < n && !slots[j + m].is_multiple_of(TILE) {
                        m += 1;
                    }
                    tile.clear();
                    tile.resize(hd * TILE, 0.0);
                    for (l, &s) in slots[j..j + m].iter().enumerate() {
                        for i in 0..hd {
                            tile[i * TILE + l] = (*kp.add(key_at(s, i, hd))).to_f32();
                        }
                    }
                    let mut part = [[0f32; TILE]; H];
                    let pc: [*mut f32; H] = std::array::from_fn(|x| part[x].as_mut_ptr());
                    tiles::<f32, 1, H>(qp, hd, [tile.as_ptr()], scale, pc);
                    for x in 0..H {
                        std::ptr::copy_nonoverlapping(part[x].as_ptr(), c[x], m);
                    }
                    j += m;
                }
            }
        }
    }

    /// The scores of the `8 * U` slots in tiles `t` for `H` heads: each lane one slot's
    /// chain over the dimensions in order (see [`scores_of`]). Returns `U`.
    ///
    /// # Safety
    /// As [`scores_of`]; each `t[u]` is a tile of `hd * 8` values, each `sc[x]` holds
    /// `8 * U` values.
    #[inline(always)]
    unsafe fn tiles<T: KvElem, const U: usize, const H: usize>(
        qp: [*const f32; H],
        hd: usize,
        t: [*const T; U],
        scale: f32,
        sc: [*mut f32; H],
    ) -> usize {
        // SAFETY: the caller upholds the contract above.
        unsafe {
            let mut acc = [[_mm256_setzero_ps(); U]; H];
            for i in 0..hd {
                let kv: [__m256; U] = std::array::from_fn(|u| T::load8(t[u].add(i * TILE)));
                for (ax, q) in acc.iter_mut().zip(qp) {
                    let b = _mm256_broadcast_ss(&*q.add(i));
                    for (a, k) in ax.iter_mut().zip(&kv) {
                        *a = _mm256_fmadd_ps(b, *k, *a);
                    }
                }
            }
            let s = _mm256_set1_ps(scale);
            for (ax, c) in acc.iter().zip(sc) {
                for (u, a) in ax.iter().enumerate() {
                    _mm256_storeu_ps(c.add(u * TILE), _mm256_mul_ps(*a, s));
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
                if let Some(&s) = slots.get(j + SLOTS_AHEAD) {
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

/// The AVX-512 kernels of [`avx2::attend_rows`]'s blocks: the same order as every kernel
/// (each score one chain over the dimensions, each output dimension one chain over the
/// slots), with 16 lanes and 32 registers: the scores take two tiles of keys per register,
/// the weighted values 16 dimensions, and up to 12 query vectors go over each load
/// together (24 accumulators). What does not fill 16 lanes (a tile alone, slots gathered
/// from scattered tiles, head widths not a multiple of 16) runs the AVX2 kernels.
#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::super::math::{avx2::exp8, avx512::exp16};
    use super::avx2::{self, hsum, prefetch, SLOTS_AHEAD, TILES_AHEAD};
    use super::{KvElem, TILE};

    /// The scores of the vectors `q` over `slots` into `sc` (as
    /// [`super::avx2::scores_block`]): two tiles that the slots fill in order are one
    /// register of 16 lanes; other slots go to the AVX2 kernel.
    ///
    /// # Safety
    /// The CPU has AVX-512F, AVX2, FMA and F16C; as [`avx2::scores_block`].
    #[target_feature(enable = "avx512f,avx2,fma,f16c")]
    pub unsafe fn scores_block<T: KvElem>(
        q: &[*const f32],
        hd: usize,
        kp: *const T,
        slots: &[usize],
        scale: f32,
        sc: &[*mut f32],
        tile: &mut Vec<f32>,
    ) {
        by_heads!(q.len(), [12, 6, 3, 2, 1], H => |x0: usize| {
            let qx: [*const f32; H] = std::array::from_fn(|x| q[x0 + x]);
            let c: [*mut f32; H] = std::array::from_fn(|x| sc[x0 + x]);
            // SAFETY: the caller's contract, vector by vector.
            unsafe { scores_of_wide::<T, H>(qx, hd, kp, slots, scale, c, tile) };
        });
    }

    /// `avx2::scores_of` for `H` vectors with pairs of whole tiles in 16 lanes.
    ///
    /// # Safety
    /// As [`scores_block`].
    #[inline(always)]
    unsafe fn scores_of_wide<T: KvElem, const H: usize>(
        qp: [*const f32; H],
        hd: usize,
        kp: *const T,
        slots: &[usize],
        scale: f32,
        sc: [*mut f32; H],
        tile: &mut Vec<f32>,
    ) {
        // SAFETY: the caller upholds the contract above.
        unsafe {
            let n = slots.len();
            // the 16 slots from `j` on fill two tiles, each in order
            let pair = |j: usize| {
                j + 2 * TILE <= n
                    && (0..2).all(|h| {
                        let s = slots[j + h * TILE];
                        s.is_multiple_of(TILE)
                            && (1..TILE).all(|l| slots[j + h * TILE + l] == s + l)
                    })
            };
            let tile_of = |j: usize| kp.add(slots[j] / TILE * hd * TILE);
            let mut j = 0;
            while j < n {
                let c = sc.map(|p| p.add(j));
                if pair(j) {
                    let mut u = 1;
                    while u < 4 && pair(j + u * 2 * TILE) {
                        u += 1;
                    }
                    let t: [[*const T; 2]; 4] = std::array::from_fn(|x| {
                        let at = j + x.min(u - 1) * 2 * TILE;
                        [tile_of(at), tile_of(at + TILE)]
                    });
                    prefetch(
                        t[0][0].wrapping_add(TILES_AHEAD * hd * TILE),
                        2 * u * hd * TILE,
                    );
                    // up to 24 accumulators
                    u = match (u, H) {
                        (4, ..=6) => pairs::<T, 4, H>(qp, hd, t, scale, c),
                        (2.., _) => pairs::<T, 2, H>(qp, hd, [t[0], t[1]], scale, c),
                        _ => pairs::<T, 1, H>(qp, hd, [t[0]], scale, c),
                    };
                    j += u * 2 * TILE;
                } else {
                    // up to where two whole tiles start
                    let mut m = 1;
                    while j + m < n && !pair(j + m) {
                        m += 1;
                    }
                    // (up to 3 vectors at a time: AVX2's tiles are sized for those)
                    avx2::scores_block(&qp, hd, kp, &slots[j..j + m], scale, &c, tile);
                    j += m;
                }
            }
        }
    }

    /// The scores of the `16 * U` slots of the tile pairs `t` for `H` vectors: each lane
    /// one slot's chain over the dimensions in order. Returns `U`.
    ///
    /// # Safety
    /// As [`scores_block`]; each `t[u][h]` is a tile of `hd * 8` values, each `sc[x]`
    /// holds `16 * U` values.
    #[inline(always)]
    unsafe fn pairs<T: KvElem, const U: usize, const H: usize>(
        qp: [*const f32; H],
        hd: usize,
        t: [[*const T; 2]; U],
        scale: f32,
        sc: [*mut f32; H],
    ) -> usize {
        // SAFETY: the caller upholds the contract above.
        unsafe {
            let mut acc = [[_mm512_setzero_ps(); U]; H];
            for i in 0..hd {
                let k: [__m512; U] = std::array::from_fn(|u| {
                    T::load8x2(t[u][0].add(i * TILE), t[u][1].add(i * TILE))
                });
                // indexed loops: LLVM keeps the accumulators in registers
                #[allow(clippy::needless_range_loop)]
                for x in 0..H {
                    let b = _mm512_set1_ps(*qp[x].add(i));
                    for u in 0..U {
                        acc[x][u] = _mm512_fmadd_ps(b, k[u], acc[x][u]);
                    }
                }
            }
            let s = _mm512_set1_ps(scale);
            for (ax, c) in acc.iter().zip(sc) {
                for (u, a) in ax.iter().enumerate() {
                    _mm512_storeu_ps(c.add(u * 2 * TILE), _mm512_mul_ps(*a, s));
                }
            }
            U
        }
    }

    /// [`avx2`]'s probabilities (steps 2-4 of the module's order) 16 lanes at a time: the
    /// exponentials of each 16 go into the 8 partial sums as their two blocks of 8, in
    /// order, so the sum is the same.
    ///
    /// # Safety
    /// The CPU has AVX-512F, AVX2 and FMA.
    #[target_feature(enable = "avx512f,avx2,fma")]
    pub unsafe fn probabilities(scores: &mut [f32]) {
        let n = scores.len();
        let (w16, whole) = (n - n % 16, n - n % 8);
        let sp = scores.as_mut_ptr();
        // SAFETY: the loads and stores stay inside `scores`.
        unsafe {
            // the max (exact in any order; a NaN score is passed over, as `f32::max` does)
            let mut mv = _mm512_set1_ps(f32::NEG_INFINITY);
            for c in (0..w16).step_by(16) {
                mv = _mm512_max_ps(_mm512_loadu_ps(sp.add(c)), mv);
            }
            let m = scores[w16..]
                .iter()
                .fold(_mm512_reduce_max_ps(mv), |m, &s| m.max(s));
            let mut part = _mm256_setzero_ps();
            let m16 = _mm512_set1_ps(m);
            for c in (0..w16).step_by(16) {
                let p = sp.add(c);
                let e = exp16(_mm512_sub_ps(_mm512_loadu_ps(p), m16));
                _mm512_storeu_ps(p, e);
                let hi = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(e)));
                part = _mm256_add_ps(_mm256_add_ps(part, _mm512_castps512_ps256(e)), hi);
            }
            if whole > w16 {
                let p = sp.add(w16);
                let e = exp8(_mm256_sub_ps(_mm256_loadu_ps(p), _mm256_set1_ps(m)));
                _mm256_storeu_ps(p, e);
                part = _mm256_add_ps(part, e);
            }
            let mut sum = hsum(part);
            for e in &mut scores[whole..] {
                *e = super::exp(*e - m);
                sum += *e;
            }
            let s16 = _mm512_set1_ps(sum);
            for c in (0..w16).step_by(16) {
                let p = sp.add(c);
                _mm512_storeu_ps(p, _mm512_div_ps(_mm512_loadu_ps(p), s16));
            }
            for e in &mut scores[w16..] {
                *e /= sum;
            }
        }
    }

    /// The weighted values of the vectors with probabilities `p` over `slots` into `o` (as
    /// [`avx2::values_block`]): 16 dimensions per register; the dimensions after
    /// the last 16 go to the AVX2 kernel.
    ///
    /// # Safety
    /// The CPU has AVX-512F, AVX2, FMA and F16C; as [`avx2::values_block`].
    #[target_feature(enable = "avx512f,avx2,fma,f16c")]
    pub unsafe fn values_block<T: KvElem>(
        p: &[*mut f32],
        slots: &[usize],
        hd: usize,
        vp: *const T,
        o: &[*mut f32],
    ) {
        let body = hd - hd % 16;
        by_heads!(p.len(), [12, 6, 3, 2, 1], H => |x0: usize| {
            let px: [*const f32; H] = std::array::from_fn(|x| p[x0 + x] as *const f32);
            let ox: [*mut f32; H] = std::array::from_fn(|x| o[x0 + x]);
            let mut c0 = 0;
            while c0 < body {
                // SAFETY: the caller's contract; dimensions c0.. of `hd`, a 16 at a time
                unsafe {
                    let v = vp.add(c0);
                    let oc: [*mut f32; H] = std::array::from_fn(|x| ox[x].add(c0));
                    // up to 24 accumulators
                    c0 += 16 * match ((body - c0) / 16, H) {
                        (8.., ..=3) => weighted::<T, 8, H>(px, slots, hd, v, oc),
                        (4.., ..=6) => weighted::<T, 4, H>(px, slots, hd, v, oc),
                        (2.., _) => weighted::<T, 2, H>(px, slots, hd, v, oc),
                        _ => weighted::<T, 1, H>(px, slots, hd, v, oc),
                    };
                }
            }
        });
        if body < hd {
            // SAFETY: the caller's contract; dimensions body.. (a multiple of 8)
            unsafe { avx2::values_block(p, slots, hd, body, vp, o) };
        }
    }

    /// `out[x][..16 * N] += sum over slots of p[x] * v` for `H` vectors (the value rows at
    /// `v + s * stride`), `fma` in slot order, each value chunk loaded once for all.
    /// Returns `N`.
    ///
    /// # Safety
    /// As [`values_block`]; every slot's `16 * N` values from `v` are readable, each `p[x]`
    /// holds `slots.len()` values and each `out[x]` is valid for `16 * N`.
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
            let mut o: [[__m512; N]; H] = std::array::from_fn(|x| {
                std::array::from_fn(|u| _mm512_loadu_ps(out[x].add(16 * u)))
            });
            for (j, &s) in slots.iter().enumerate() {
                let row = v.add(s * stride);
                if let Some(&s) = slots.get(j + SLOTS_AHEAD) {
                    prefetch(v.add(s * stride), 16 * N);
                }
                let vv: [__m512; N] = std::array::from_fn(|u| T::load16(row.add(16 * u)));
                #[allow(clippy::needless_range_loop)]
                for x in 0..H {
                    let px = _mm512_set1_ps(*p[x].add(j));
                    for u in 0..N {
                        o[x][u] = _mm512_fmadd_ps(px, vv[u], o[x][u]);
                    }
                }
            }
            for (ox, outx) in o.iter().zip(out) {
                for (u, ou) in ox.iter().enumerate() {
                    _mm512_storeu_ps(outx.add(16 * u), *ou);
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

    /// Key tiles and value rows of one head from keys and values laid out slot after slot
    /// (`hd` each), the tiles padded with zeros to whole tiles.
    fn head_of<T: KvElem>(k: &[f32], v: &[f32], hd: usize) -> (Vec<T>, Vec<T>) {
        let slots = k.len() / hd;
        let mut tiles = vec![T::from_f32(0.0); slots.div_ceil(TILE) * TILE * hd];
        for s in 0..slots {
            for i in 0..hd {
                tiles[key_at(s, i, hd)] = T::from_f32(k[s * hd + i]);
            }
        }
        (tiles, v.iter().map(|&x| T::from_f32(x)).collect())
    }

    /// Slot lists as attention sees them: whole tiles, a run from inside a tile (a
    /// window's), committed slots then a tree's scattered ones, and scattered slots alone.
    fn slot_lists(n: usize, planes: usize) -> Vec<Vec<usize>> {
        let scattered = |n: usize| (0..n).map(|j| (j * 37 + 5) % planes).collect::<Vec<_>>();
        let tree = (0..n / 2).chain((0..n - n / 2).map(|j| n / 2 + 3 * j % (planes - n / 2)));
        vec![
            (0..n).collect(),
            (3..3 + n).collect(),
            tree.collect(),
            scattered(n),
        ]
    }

    #[test]
    fn every_isa_gives_the_portable_bits_and_softmax_attention() {
        // head widths with and without a tail of 8; slot counts around the tiles and blocks
        for hd in [64, 12, 256, 5] {
            let planes = 160;
            let (k, v) = (values(planes * hd, 1), values(planes * hd, 2));
            let (kt, vt) = head_of::<f32>(&k, &v, hd);
            let kv = KvHead { k: &kt, v: &vt };
            let q = values(7 * hd, 3);
            for n in [1, 3, 4, 7, 8, 9, 17, 25, 64, 65, 150] {
                for slots in slot_lists(n, planes) {
                    let mut want = vec![0f32; hd];
                    portable(&q[..hd], kv, &slots, 0.125, &mut vec![0.0; n], &mut want);
                    // softmax attention in f64
                    let s: Vec<f64> = slots
                        .iter()
                        .map(|&s| {
                            (0..hd)
                                .map(|i| q[i] as f64 * k[s * hd + i] as f64)
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
                            .map(|(&sl, x)| (x - m).exp() / z * v[sl * hd + i] as f64)
                            .sum();
                        assert!(
                            (want[i] as f64 - r).abs() < 1e-5,
                            "hd {hd} n {n}: {} {r}",
                            want[i]
                        );
                    }
                    for isa in supported_isas() {
                        let mut got = vec![0f32; hd];
                        let scratch = &mut Scratch::default();
                        attend(isa, &q[..hd], hd, kv, &slots, 0.125, scratch, &mut got);
                        assert_eq!(got, want, "{isa:?} hd {hd} n {n} {slots:?}");
                        // in groups of 2, 3 and 7 heads (taken 2, 3 and 3 + 3 + 1 at a
                        // time over each key and value): every head's bits are its own
                        for heads in [2, 3, 7] {
                            let mut got = vec![0f32; heads * hd];
                            let qs = &q[..heads * hd];
                            attend(isa, qs, hd, kv, &slots, 0.125, scratch, &mut got);
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
    }

    #[test]
    fn rows_sharing_their_committed_slots_give_each_rows_own_bits() {
        // a tree's nodes (each its ancestors among 9 scratch slots) or a prompt chunk's
        // rows over 0-150 committed slots (from 0, or from inside a tile as under a
        // window), 1-5 rows of 1-7 heads, on every ISA
        for hd in [64, 12] {
            let planes = 170;
            let (k, v) = (values(planes * hd, 7), values(planes * hd, 8));
            let (kt, vt) = head_of::<half::f16>(&k, &v, hd);
            let kv = KvHead { k: &kt, v: &vt };
            for (start, committed, heads, n) in [
                (0, 0, 3, 5),
                (0, 37, 2, 4),
                (0, 64, 7, 3),
                (0, 150, 1, 5),
                (0, 9, 3, 1),
                (5, 150, 3, 2),
                (13, 100, 1, 3),
            ] {
                let shared: Vec<usize> = (start..committed).collect();
                let owns: Vec<Vec<usize>> = (0..n)
                    .map(|r| {
                        (0..=r)
                            .filter(|j| j % 2 == 0 || *j == r)
                            .map(|j| committed + j)
                            .collect()
                    })
                    .collect();
                let q = values(n * heads * hd, 9);
                let rows: Vec<Row<'_>> = (0..n)
                    .map(|r| Row {
                        q: &q[r * heads * hd..][..heads * hd],
                        own: &owns[r],
                    })
                    .collect();
                for isa in supported_isas() {
                    let mut got = vec![0f32; q.len()];
                    let scratch = &mut Scratch::default();
                    attend_rows(isa, &rows, hd, kv, &shared, 0.3, scratch, &mut got);
                    for (r, row) in rows.iter().enumerate() {
                        let list: Vec<usize> = shared.iter().chain(row.own).copied().collect();
                        for x in 0..heads {
                            let mut alone = vec![0f32; hd];
                            let qx = &row.q[x * hd..][..hd];
                            portable(qx, kv, &list, 0.3, &mut vec![0.0; list.len()], &mut alone);
                            assert_eq!(
                                got[(r * heads + x) * hd..][..hd],
                                alone[..],
                                "{isa:?} hd {hd} committed {committed}: row {r} head {x}"
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
        let (hd, planes) = (64, 90);
        let round =
            |x: Vec<f32>| -> Vec<f32> { x.iter().map(|&x| T::from_f32(x).to_f32()).collect() };
        let (k, v) = (round(values(planes * hd, 4)), round(values(planes * hd, 5)));
        let (kh, vh) = head_of::<T>(&k, &v, hd);
        let (kw, vw) = head_of::<f32>(&k, &v, hd);
        let half = KvHead { k: &kh, v: &vh };
        let wide = KvHead { k: &kw, v: &vw };
        let q = values(2 * hd, 6);
        let scratch = &mut Scratch::default();
        for n in [1, 7, 8, 9, 64, 80] {
            for slots in slot_lists(n, planes) {
                let mut want = vec![0f32; 2 * hd];
                attend(
                    Isa::Portable,
                    &q,
                    hd,
                    wide,
                    &slots,
                    0.125,
                    scratch,
                    &mut want,
                );
                for isa in supported_isas() {
                    let mut got = vec![0f32; 2 * hd];
                    attend(isa, &q, hd, half, &slots, 0.125, scratch, &mut got);
                    assert_eq!(got, want, "{isa:?} n {n}");
                }
            }
        }
    }

    #[test]
    fn f16_and_bf16_caches_read_as_their_f32_values() {
        two_byte_planes_read_as_their_f32_values::<half::f16>();
        two_byte_planes_read_as_their_f32_values::<half::bf16>();
    }
}
