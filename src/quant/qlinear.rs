//! Batch-invariant `y = x @ dequant(w)^T` straight from a [`QMatrix`].
//!
//! Every output element is one dot product in a single fixed order, the order of
//! `backend::cpu::matmul`: 16 lanes, `acc[l] = fma(w[i + l], x[i + l], acc[l])` for
//! ascending blocks `i` of 16, then a fixed pairwise sum of the 16 lanes (no tail: the
//! columns are a multiple of 32). Each weight is dequantized on the fly as exactly
//! `w = fma(q, scale, min)` in f32, the value [`QMatrix::dequantize`] gives. The AVX-512
//! kernel keeps the 16 lanes in one register and, below 8 bits, computes the group's
//! `fma(c, scale, min)` for all codes `c` once and looks weights up with `vpermps` (the
//! same values); the AVX2 kernel keeps the lanes in two registers and converts codes; the
//! portable code uses an array: the same values and operations, so the same bits. Tiles
//! of several rows and tokens only interleave independent dot products (one dequantized
//! weight vector feeds every token of the tile); they never change the order inside one,
//! so a token's output is bit-identical whatever else is in the batch. [`dequant_tile`]
//! gives the same values to the dense blocked product of `backend::cpu::matmul`, which
//! runs them in that order too.
//!
//! On AVX-512 with VNNI, codes of 2, 4 or 8 bits in groups of a multiple of 64 take int8
//! activations instead, and on AVX2 codes of 2 or 4 bits ([`super::int8`]: another
//! arithmetic, exact to its own portable reference and batch-invariant as well);
//! [`qlinear_isa`] chooses by the kernel and the matrix.

use rayon::prelude::*;

use super::format::{block_bytes, unpack_block, QMatrix, BLOCK};
use super::int8;
use crate::util::isa::{isa, packed_at, Isa};
use crate::util::lanes::sum16;

/// A raw output pointer shared by tasks that write disjoint elements.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
// SAFETY: tasks write disjoint (row-chunk) columns of the output; see `qlinear_isa`.
unsafe impl Send for OutPtr {}
// SAFETY: as above: no two tasks write the same element.
unsafe impl Sync for OutPtr {}

impl OutPtr {
    /// The pointer (a method, so that closures capture the whole `Sync` wrapper).
    fn get(self) -> *mut f32 {
        self.0
    }
}

/// Rows of `w` handed to one task.
const ROW_CHUNK: usize = 32;
/// Most tokens in one tile.
const MAX_TT: usize = 6;

/// `out[t * rows + o] = dot(dequant(w row o), x[t]) (+ bias[o])` for `x` of `t_count` rows
/// of `w.cols()`, with f32 or (AVX-512 VNNI, AVX2) int8 activations. Batch-invariant: see
/// the module documentation. (The CPU backend runs `backend::cpu::matmul::qlinear`, which
/// hands batches of 6 or more tokens on AVX2 with f32 activations to the dense blocked
/// product over `dequant_tile`'s values: the same bits.)
pub fn qlinear(x: &[f32], t_count: usize, w: &QMatrix, bias: Option<&[f32]>, out: &mut [f32]) {
    qlinear_isa(isa(), x, t_count, w, bias, out)
}

/// [`qlinear`] with an explicit kernel (`isa` must be one of `supported_isas()`): int8
/// activations where `int8::applies`, f32 ones elsewhere (the CPU backend, which decides
/// that itself, calls [`qlinear_acts`]).
fn qlinear_isa(
    isa: Isa,
    x: &[f32],
    t_count: usize,
    w: &QMatrix,
    bias: Option<&[f32]>,
    out: &mut [f32],
) {
    qlinear_acts(isa, int8::applies(isa, w), x, t_count, w, bias, out)
}

/// [`qlinear_isa`] with the activations chosen: int8 (`int8`, the arithmetic of the
/// `int8` module, which must support `w`) or f32.
pub(crate) fn qlinear_acts(
    isa: Isa,
    int8: bool,
    x: &[f32],
    t_count: usize,
    w: &QMatrix,
    bias: Option<&[f32]>,
    out: &mut [f32],
) {
    check_shapes(x, t_count, w, bias, out);
    let n = w.rows();
    if n == 0 || t_count == 0 {
        return;
    }
    let quantized = int8.then(|| int8::Acts::new(x, t_count, w));
    let xs = match &quantized {
        Some(a) => Xs::Int8(a),
        None => Xs::F32(x),
    };
    let ptr = OutPtr(out.as_mut_ptr());
    let chunks = n.div_ceil(ROW_CHUNK);
    (0..chunks).into_par_iter().for_each(|c| {
        let rows = c * ROW_CHUNK..((c + 1) * ROW_CHUNK).min(n);
        rows_product(isa, w, rows, xs, t_count, bias, ptr, (n, 0));
    });
}

/// A product's activations: f32 rows, or quantized for the int8 arithmetic.
#[derive(Clone, Copy)]
enum Xs<'a> {
    F32(&'a [f32]),
    Int8(&'a int8::Acts),
}

/// Panics unless `x` holds `t_count` rows of `w.cols()`, `out` `t_count` rows of
/// `w.rows()` and `bias` (if any) `w.rows()` values: the shapes of a [`qlinear`] call.
pub(crate) fn check_shapes(
    x: &[f32],
    t_count: usize,
    w: &QMatrix,
    bias: Option<&[f32]>,
    out: &[f32],
) {
    let (n, k) = (w.rows(), w.cols());
    assert_eq!(x.len(), t_count * k, "qlinear: activations size");
    assert_eq!(out.len(), t_count * n, "qlinear: output size");
    if let Some(b) = bias {
        assert_eq!(b.len(), n, "qlinear: bias size");
    }
}

/// [`qlinear_isa`] of the rows `rows` of `w` alone: `out[t * rows.len() + i] = dot(row
/// rows.start + i, x[t])`, no bias. One task.
pub(crate) fn qlinear_rows(
    isa: Isa,
    x: &[f32],
    t_count: usize,
    w: &QMatrix,
    rows: std::ops::Range<usize>,
    out: &mut [f32],
) {
    assert!(
        rows.end <= w.rows(),
        "qlinear_rows: rows outside the matrix"
    );
    assert_eq!(
        x.len(),
        t_count * w.cols(),
        "qlinear_rows: activations size"
    );
    assert_eq!(out.len(), t_count * rows.len(), "qlinear_rows: output size");
    let layout = (rows.len(), rows.start);
    rows_product(
        isa,
        w,
        rows,
        Xs::F32(x),
        t_count,
        None,
        OutPtr(out.as_mut_ptr()),
        layout,
    );
}

/// The outputs of the rows `rows` of `w` for every token of `x`, in tiles of rows and
/// tokens: row `o`, token `t` is written at `ptr + t * stride + o - first` for `(stride,
/// first) = layout`.
#[allow(clippy::too_many_arguments)]
fn rows_product(
    isa: Isa,
    w: &QMatrix,
    rows: std::ops::Range<usize>,
    xs: Xs,
    t_count: usize,
    bias: Option<&[f32]>,
    ptr: OutPtr,
    (stride, first): (usize, usize),
) {
    // Token tiles of equal size: 8 tokens as 4 + 4, not 6 + 2 (a 2-token tile converts
    // codes for little work; the draft's 24 layers at 8 tokens on AVX2: 83 -> 73 ms,
    // `cargo bench --bench kernels`). Tiles of at most 4 lost at 6 tokens (51 -> 61 ms).
    let even = t_count.div_ceil(t_count.div_ceil(MAX_TT));
    let mut t = 0;
    while t < t_count {
        let tt = (t_count - t).min(even);
        let mut r = rows.start;
        while r < rows.end {
            let rr = tile_rows(isa, tt, rows.end - r);
            // the int8 kernel takes a run of whole tiles in one call
            let span = match xs {
                Xs::Int8(_) => ((rows.end - r) / rr).min(ROW_CHUNK / rr) * rr,
                Xs::F32(_) => rr,
            };
            let mut res = [0f32; ROW_CHUNK * MAX_TT];
            dot_tile(isa, w, r, rr, span, xs, t, tt, &mut res);
            for i in 0..span {
                let o = r + i;
                let b = bias.map_or(0.0, |b| b[o]);
                for j in 0..tt {
                    // SAFETY: the callers hand a `ptr` with room for `t_count` rows of
                    // `stride` from column `first` (`qlinear_isa`: the whole output, whose
                    // column `o` only the task owning row chunk `o / ROW_CHUNK` writes).
                    unsafe { *ptr.get().add((t + j) * stride + o - first) = res[i * tt + j] + b };
                }
            }
            r += span;
        }
        t += tt;
    }
}

/// Elements `cols` (whole blocks of 32) of the 4 rows of `w` from `r0` on, dequantized to
/// the values [`dot_portable`] uses (`fma(q, scale, min)`) into `dst` in the layout of
/// `backend::cpu::matmul`'s blocked product for passes of `pass` lanes: element `i` of row
/// `r` at [`packed_at`]`(i, r, 4, k, pass)`. The rows have no tail (`k` is a multiple of
/// 32).
///
/// # Safety
/// The CPU has AVX2, FMA and F16C.
pub(crate) unsafe fn dequant_tile(
    w: &QMatrix,
    r0: usize,
    cols: std::ops::Range<usize>,
    pass: usize,
    dst: &mut [f32],
) {
    assert!(cols.start.is_multiple_of(BLOCK) && cols.end.is_multiple_of(BLOCK));
    assert!(pass == 8 || pass == 16);
    assert!(cols.start <= cols.end && cols.end <= w.cols());
    assert!(r0 + 4 <= w.rows() && dst.len() >= 4 * w.cols());
    #[cfg(target_arch = "x86_64")]
    // SAFETY: the caller says the CPU has AVX2, FMA and F16C; the rows and blocks are
    // inside the matrix and `dst` holds 4 rows (asserted).
    unsafe {
        match w.bits() {
            2 => avx2::dequant_cols::<2>(w, r0, cols, pass, dst),
            3 => avx2::dequant_cols::<3>(w, r0, cols, pass, dst),
            4 => avx2::dequant_cols::<4>(w, r0, cols, pass, dst),
            8 => avx2::dequant_cols::<8>(w, r0, cols, pass, dst),
            b => unreachable!("bits {b}"),
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    unreachable!("AVX2 only ({r0}, {cols:?}, {pass}, {})", dst.len());
}

/// Invokes `$m!($args (rows, tokens), ...)` with every AVX-512 tile shape [`tile_rows`]
/// gives: the one list the f32 and the int8 kernels' dispatches share.
macro_rules! avx512_shapes {
    ($m:ident!($($args:tt)*)) => {
        $m!($($args)* (8, 1), (4, 2), (4, 3), (2, 4), (2, 5), (2, 6),
            (1, 1), (1, 2), (1, 3), (1, 4), (1, 5), (1, 6))
    };
}

/// How many weight rows one tile takes for `tt` tokens (`remaining` rows left): as many
/// as keep the tile's accumulators in registers (32 on AVX-512, 16 on AVX2).
fn tile_rows(isa: Isa, tt: usize, remaining: usize) -> usize {
    let want = match (isa, tt) {
        (Isa::Avx512, 1) => 8,
        (Isa::Avx512, 2 | 3) => 4,
        (Isa::Avx512, _) => 2,
        (Isa::Avx2, 1) => 4,
        (Isa::Avx2, 2) => 2,
        _ => 1,
    };
    if remaining >= want {
        want
    } else {
        1
    }
}

/// Dot products of `span` rows of `w` from `row` on, in tiles of `rr` rows (`span` is
/// `rr` but for int8 activations), with the `tt` tokens of `xs` from `t0` on: `res[i * tt +
/// j] = dot(row + i, token t0 + j)`.
#[allow(clippy::too_many_arguments)]
fn dot_tile(
    isa: Isa,
    w: &QMatrix,
    row: usize,
    rr: usize,
    span: usize,
    xs: Xs,
    t0: usize,
    tt: usize,
    res: &mut [f32],
) {
    let (k, group) = (w.cols(), w.group());
    let (rb, pr) = (w.row_bytes(), 2 * w.groups_per_row());
    let codes = &w.codes[row * rb..(row + span) * rb];
    let params = &w.params[row * pr..(row + span) * pr];
    let xs = match xs {
        Xs::F32(x) => &x[t0 * k..(t0 + tt) * k],
        Xs::Int8(a) => return dot_tile_int8(isa, w, rr, codes, params, a, t0, tt, res),
    };
    debug_assert_eq!(rr, span);
    #[cfg(target_arch = "x86_64")]
    {
        macro_rules! tiles {
            ($m:ident, $b:literal, $(($r:literal, $t:literal)),*) => {
                match (rr, tt) {
                    $(($r, $t) => $m::tile::<$b, $r, $t>(codes, params, xs, k, group, res),)*
                    _ => unreachable!("tile {rr}x{tt}"),
                }
            };
        }
        macro_rules! dispatch {
            ($m:ident, $($shape:tt),*) => {
                // SAFETY: `isa` was checked to have the CPU features of kernel `$m`; the
                // slices hold `rr` rows of codes and params and `tt` rows of `k` values.
                unsafe {
                    match w.bits() {
                        2 => tiles!($m, 2, $($shape),*),
                        3 => tiles!($m, 3, $($shape),*),
                        4 => tiles!($m, 4, $($shape),*),
                        8 => tiles!($m, 8, $($shape),*),
                        b => unreachable!("bits {b}"),
                    }
                }
            };
        }
        match isa {
            Isa::Avx512 => return avx512_shapes!(dispatch!(avx512,)),
            Isa::Avx2 => {
                return dispatch!(
                    avx2,
                    (4, 1),
                    (2, 2),
                    (1, 1),
                    (1, 2),
                    (1, 3),
                    (1, 4),
                    (1, 5),
                    (1, 6)
                )
            }
            Isa::Portable => {}
        }
    }
    let _ = isa;
    for i in 0..rr {
        for j in 0..tt {
            res[i * tt + j] = dot_portable(
                w.bits(),
                group,
                &codes[i * rb..(i + 1) * rb],
                &params[i * pr..(i + 1) * pr],
                &xs[j * k..(j + 1) * k],
            );
        }
    }
}

/// [`dot_tile`] for int8 activations (`a`) over the rows of `codes` (whole tiles of `rr`):
/// the AVX-512 VNNI kernel where `isa` is AVX-512 and the CPU has VNNI, the AVX2 one for 2
/// and 4 bits, else the portable arithmetic of the `int8` module (the same bits).
#[allow(clippy::too_many_arguments)]
fn dot_tile_int8(
    isa: Isa,
    w: &QMatrix,
    rr: usize,
    codes: &[u8],
    params: &[half::f16],
    a: &int8::Acts,
    t0: usize,
    tt: usize,
    res: &mut [f32],
) {
    let group = w.group();
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx512 && crate::util::isa::vnni() {
        use int8::avx512::tile;
        macro_rules! tiles {
            ($b:literal, $(($r:literal, $t:literal)),*) => {
                match (rr, tt) {
                    $(($r, $t) => tile::<$b, $r, $t>(codes, params, a, t0, group, res),)*
                    _ => unreachable!("tile {rr}x{tt}"),
                }
            };
        }
        macro_rules! shapes {
            ($b:literal) => {
                avx512_shapes!(tiles!($b,))
            };
        }
        // SAFETY: the CPU has AVX-512 (`isa`) with VNNI (checked), FMA and F16C; the slices
        // hold whole tiles of `rr` rows of codes and params, `res` `tt` values a row, `a`
        // tokens `t0..t0 + tt` of this matrix's shape, and `int8::supports(w)` (the
        // caller's choice of int8).
        unsafe {
            return match w.bits() {
                2 => shapes!(2),
                4 => shapes!(4),
                8 => shapes!(8),
                b => unreachable!("int8 activations for {b}-bit codes"),
            };
        }
    }
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx2 && w.bits() < 8 {
        use int8::avx2::rows;
        // SAFETY: the CPU has AVX2, FMA and F16C (`isa`); the slices hold whole rows of
        // codes and params, `res` `tt` values a row, `a` tokens `t0..t0 + tt` of this
        // matrix's shape, and `int8::supports(w)` (the caller's choice of int8).
        unsafe {
            return match w.bits() {
                2 => rows::<2>(codes, params, a, t0, tt, group, res),
                4 => rows::<4>(codes, params, a, t0, tt, group, res),
                b => unreachable!("int8 activations for {b}-bit codes on AVX2"),
            };
        }
    }
    let _ = (isa, rr);
    let (rb, pr) = (w.row_bytes(), 2 * w.groups_per_row());
    for i in 0..codes.len() / rb {
        for j in 0..tt {
            res[i * tt + j] = int8::dot(
                w.bits(),
                group,
                &codes[i * rb..(i + 1) * rb],
                &params[i * pr..(i + 1) * pr],
                a,
                t0 + j,
            );
        }
    }
}

/// The canonical dot product of one quantized row with `x`, in scalar code (the
/// reference the SIMD kernels equal).
pub(crate) fn dot_portable(
    bits: u8,
    group: usize,
    codes: &[u8],
    params: &[half::f16],
    x: &[f32],
) -> f32 {
    let bb = block_bytes(bits);
    let mut acc = [0f32; 16];
    let mut q = [0u8; BLOCK];
    for (b, xb) in x.chunks_exact(BLOCK).enumerate() {
        unpack_block(bits, &codes[b * bb..(b + 1) * bb], &mut q);
        let g = b * BLOCK / group;
        let (d, m) = (params[2 * g].to_f32(), params[2 * g + 1].to_f32());
        for h in 0..2 {
            for (l, a) in acc.iter_mut().enumerate() {
                let wv = (q[16 * h + l] as f32).mul_add(d, m);
                *a = wv.mul_add(xb[16 * h + l], *a);
            }
        }
    }
    sum16(&acc)
}

// AVX-512 intrinsics are stable since Rust 1.89: Cargo.toml's `rust-version` must say so.
#[cfg(target_arch = "x86_64")]
pub(super) mod avx512 {
    use std::arch::x86_64::*;

    use crate::util::lanes::avx512::hsum16;

    /// The 32 weights of the block at `p`, dequantized. For `B < 8`, `lut` holds the
    /// group's `fma(c, scale, min)` for every code `c`, repeated to fill 16 lanes (entry
    /// `i` is code `i mod 2^B`), and `vpermps` looks weights up by the low 4 bits of each
    /// lane; for `B = 8`, `lut` is the scale and `min` the min, and codes are converted.
    ///
    /// # Safety
    /// The CPU has AVX-512F/BW, `B` is 2, 3, 4 or 8, and `p` points to a whole packed
    /// block of `4 * B` bytes.
    #[inline(always)]
    unsafe fn weights<const B: u8>(p: *const u8, lut: __m512, min: __m512) -> [__m512; 2] {
        // SAFETY: the caller upholds the contract above.
        unsafe {
            match B {
                4 => {
                    // lane j: byte j = code j | code (j + 16) << 4
                    let z = _mm512_cvtepu8_epi32(_mm_loadu_si128(p as *const __m128i));
                    [
                        _mm512_permutexvar_ps(z, lut),
                        _mm512_permutexvar_ps(_mm512_srli_epi32(z, 4), lut),
                    ]
                }
                2 | 3 => {
                    // lanes 0..8 and 8..16 both hold bytes 0..8: code j + 8s is at bit 2s
                    let v = (p as *const u64).read_unaligned();
                    let z = _mm512_cvtepu8_epi32(_mm_set1_epi64x(v as i64));
                    let s0 = _mm512_set_epi32(2, 2, 2, 2, 2, 2, 2, 2, 0, 0, 0, 0, 0, 0, 0, 0);
                    let s1 = _mm512_set_epi32(6, 6, 6, 6, 6, 6, 6, 6, 4, 4, 4, 4, 4, 4, 4, 4);
                    let mut i0 = _mm512_srlv_epi32(z, s0);
                    let mut i1 = _mm512_srlv_epi32(z, s1);
                    if B == 3 {
                        // bit 2 of code j is bit j of the u32 at byte 8: moved to bit 2
                        let hb = _mm512_set1_epi32((p.add(8) as *const i32).read_unaligned());
                        let lane =
                            _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0);
                        let h0 = _mm512_slli_epi32(_mm512_srlv_epi32(hb, lane), 2);
                        let lane16 = _mm512_add_epi32(lane, _mm512_set1_epi32(16));
                        let h1 = _mm512_slli_epi32(_mm512_srlv_epi32(hb, lane16), 2);
                        let (three, four) = (_mm512_set1_epi32(3), _mm512_set1_epi32(4));
                        i0 = _mm512_or_si512(
                            _mm512_and_si512(i0, three),
                            _mm512_and_si512(h0, four),
                        );
                        i1 = _mm512_or_si512(
                            _mm512_and_si512(i1, three),
                            _mm512_and_si512(h1, four),
                        );
                    }
                    [
                        _mm512_permutexvar_ps(i0, lut),
                        _mm512_permutexvar_ps(i1, lut),
                    ]
                }
                8 => {
                    let q0 = _mm512_cvtepu8_epi32(_mm_loadu_si128(p as *const __m128i));
                    let q1 = _mm512_cvtepu8_epi32(_mm_loadu_si128(p.add(16) as *const __m128i));
                    [
                        _mm512_fmadd_ps(_mm512_cvtepi32_ps(q0), lut, min),
                        _mm512_fmadd_ps(_mm512_cvtepi32_ps(q1), lut, min),
                    ]
                }
                _ => unreachable!(),
            }
        }
    }

    /// `R` rows times `T` tokens; see `super::dot_tile`.
    ///
    /// # Safety
    /// The CPU has AVX-512F/BW/VL, FMA and F16C; `B` is 2, 3, 4 or 8; `codes` holds `R`
    /// packed rows of `k` codes, `pars` their `R * k / group` (scale, min) pairs, `xs`
    /// holds `T` rows of `k` f32, `group` divides `k` into whole blocks, and `res` holds
    /// `R * T` values.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,fma,f16c")]
    pub unsafe fn tile<const B: u8, const R: usize, const T: usize>(
        codes: &[u8],
        pars: &[half::f16],
        xs: &[f32],
        k: usize,
        group: usize,
        res: &mut [f32],
    ) {
        // SAFETY: the caller upholds the contract above.
        unsafe {
            let rb = k * B as usize / 8;
            let gpr = k / group;
            let bb = 4 * B as usize;
            let (cp, pp, xp) = (codes.as_ptr(), pars.as_ptr(), xs.as_ptr());
            let mut acc = [[_mm512_setzero_ps(); T]; R];
            let bpg = group / 32;
            let mask = (1i32 << B.min(4)) - 1;
            let iota = _mm512_and_si512(
                _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
                _mm512_set1_epi32(mask),
            );
            let iota = _mm512_cvtepi32_ps(iota);
            // (scale, min) of `GC` groups of each row, converted to f32 16 values at a time
            let mut dm = [[0f32; 2 * GC]; R];
            for g in 0..gpr {
                let gc = g % GC;
                if gc == 0 {
                    group_params(pp, gpr, g, &mut dm);
                }
                // The next tile's rows at the same place (codes here, params above): with
                // only the hardware prefetcher the kernel waits on memory when the matrix is
                // not in cache (24 layers at t=2: 29 -> 19 ms, benches/kernels.rs). A
                // prefetch never faults, so running past the matrix's end is harmless.
                for r in 0..R {
                    let ahead = cp.wrapping_add((r + R) * rb + g * bpg * bb);
                    _mm_prefetch::<_MM_HINT_T0>(ahead as *const i8);
                }
                let mut lut = [_mm512_setzero_ps(); R];
                let mut min = [_mm512_setzero_ps(); R];
                for r in 0..R {
                    let (d, m) = (
                        _mm512_set1_ps(dm[r][2 * gc]),
                        _mm512_set1_ps(dm[r][2 * gc + 1]),
                    );
                    if B == 8 {
                        (lut[r], min[r]) = (d, m);
                    } else {
                        lut[r] = _mm512_fmadd_ps(iota, d, m);
                    }
                }
                for b in g * bpg..(g + 1) * bpg {
                    let i = 32 * b;
                    for (r, acc_r) in acc.iter_mut().enumerate() {
                        let [w0, w1] = weights::<B>(cp.add(r * rb + b * bb), lut[r], min[r]);
                        for (j, a) in acc_r.iter_mut().enumerate() {
                            let x = xp.add(j * k + i);
                            *a = _mm512_fmadd_ps(w0, _mm512_loadu_ps(x), *a);
                            *a = _mm512_fmadd_ps(w1, _mm512_loadu_ps(x.add(16)), *a);
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

    /// Groups whose (scale, min) [`group_params`] converts at a time.
    pub(in crate::quant) const GC: usize = 16;

    /// The (scale, min) pairs of groups `g..g + GC` of each of a tile's `R` rows (params
    /// from `pp`, `gpr` groups a row) into `dm` as f32, zeros past a row's last group; and
    /// a prefetch of the next tile's rows' pairs at the same place.
    ///
    /// # Safety
    /// The CPU has AVX-512F/BW/VL and F16C; `pp` holds `R` rows of `gpr` pairs and `g <
    /// gpr`.
    #[inline(always)]
    pub(in crate::quant) unsafe fn group_params<const R: usize>(
        pp: *const half::f16,
        gpr: usize,
        g: usize,
        dm: &mut [[f32; 2 * GC]; R],
    ) {
        // SAFETY: the caller upholds the contract above; a prefetch never faults, and a
        // masked load reads only the lanes its mask sets (inside the row).
        unsafe {
            for r in 0..R {
                let ahead = pp.wrapping_add(2 * ((r + R) * gpr + g));
                _mm_prefetch::<_MM_HINT_T0>(ahead as *const i8);
            }
            let vals = 2 * (gpr - g).min(GC);
            for (r, dm_r) in dm.iter_mut().enumerate() {
                let src = pp.add(2 * (r * gpr + g)) as *const i16;
                for c in 0..2 {
                    let n = vals.saturating_sub(16 * c).min(16);
                    let mask = (((1u32 << n) - 1) & 0xffff) as u16;
                    let h = _mm256_maskz_loadu_epi16(mask, src.wrapping_add(16 * c));
                    _mm512_storeu_ps(dm_r.as_mut_ptr().add(16 * c), _mm512_cvtph_ps(h));
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::packed_at;
    use crate::util::lanes::avx2::hsum16;

    /// `(scale, min)` of the group at `p` (two f16), as f32.
    ///
    /// # Safety
    /// The CPU has F16C and `p` is valid for reads of two `f16`.
    #[inline(always)]
    unsafe fn params(p: *const half::f16) -> [f32; 2] {
        // SAFETY: the caller upholds the contract above.
        unsafe {
            let v = _mm_cvtph_ps(_mm_cvtsi32_si128((p as *const i32).read_unaligned()));
            let mut t = [0f32; 4];
            _mm_storeu_ps(t.as_mut_ptr(), v);
            [t[0], t[1]]
        }
    }

    /// Codes `8v .. 8v + 8` of the block at `p` as 8 lanes of `i32`, for `v` in `0..4`.
    /// Each is one 8-byte load widened by `vpmovzxbd`, then a shift or mask: no code is
    /// widened twice, and for 4 bits `v` and `v + 2` share a load (low and high nibbles).
    ///
    /// # Safety
    /// The CPU has AVX2, `B` is 2, 3 or 4, and `p` points to a whole packed block of
    /// `4 * B` bytes.
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn codes8<const B: u8>(p: *const u8, v: usize) -> __m256i {
        // SAFETY: the caller upholds the contract above; every load is inside the block.
        unsafe {
            let load = |at: usize| _mm256_cvtepu8_epi32(_mm_loadl_epi64(p.add(at).cast()));
            // Below 8 bits the widened bytes are shifted and masked as i32: LLVM would
            // otherwise shift and mask the bytes before widening them (`vpsrlw`, `vpand`
            // and a register `vpmovzxbd`: one instruction more per vector).
            let widen = |at: usize| {
                let mut z = load(at);
                std::arch::asm!(
                    "/* {0} */",
                    inout(ymm_reg) z,
                    options(pure, nomem, nostack, preserves_flags)
                );
                z
            };
            match B {
                // byte j < 16: code j in the low nibble, code j + 16 in the high one
                4 if v < 2 => _mm256_and_si256(widen(8 * v), _mm256_set1_epi32(15)),
                4 => _mm256_srli_epi32::<4>(widen(8 * (v - 2))),
                2 | 3 => {
                    // byte j < 8: codes j, j + 8, j + 16, j + 24 at bits 0, 2, 4, 6
                    let z = _mm256_srlv_epi32(widen(0), _mm256_set1_epi32(2 * v as i32));
                    let low = _mm256_and_si256(z, _mm256_set1_epi32(3));
                    if B == 2 {
                        return low;
                    }
                    // bit 2 of code j is bit j of the u32 at byte 8
                    let hb = _mm256_set1_epi32((p.add(8) as *const i32).read_unaligned());
                    let at = _mm256_add_epi32(
                        _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
                        _mm256_set1_epi32(8 * v as i32),
                    );
                    let high = _mm256_and_si256(_mm256_srlv_epi32(hb, at), _mm256_set1_epi32(1));
                    _mm256_or_si256(low, _mm256_slli_epi32::<2>(high))
                }
                _ => unreachable!(),
            }
        }
    }

    /// Elements `cols` (whole blocks) of the 4 rows of `w` from `r0` on, dequantized into
    /// `dst` as `backend::cpu::matmul`'s `pack_tile` lays 4 rows out for passes of `pass`
    /// lanes: element `i` of row `r` at `packed_at(i, r, 4, k, pass)` (the rows have no
    /// tail: `k` is a multiple of 32). Each weight is `fma(q, scale, min)`, the value of
    /// [`super::dot_portable`].
    ///
    /// # Safety
    /// The CPU has AVX2, FMA and F16C; `B` is `w.bits()`; rows `r0..r0 + 4` exist, `cols`
    /// is made of whole blocks inside a row, and `dst` holds `4 * w.cols()` values.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dequant_cols<const B: u8>(
        w: &super::QMatrix,
        r0: usize,
        cols: std::ops::Range<usize>,
        pass: usize,
        dst: &mut [f32],
    ) {
        let (k, group) = (w.cols(), w.group());
        let (rb, gpr, bb) = (w.row_bytes(), w.groups_per_row(), 4 * B as usize);
        // SAFETY: the caller upholds the contract above; every index stays in the rows
        // `r0..r0 + 4` of the codes and params and below `4 * k` in `dst`.
        unsafe {
            let d = dst.as_mut_ptr();
            for r in 0..4 {
                let cp = w.codes.as_ptr().add((r0 + r) * rb);
                let pp = w.params.as_ptr().add(2 * (r0 + r) * gpr);
                for b in cols.start / 32..cols.end / 32 {
                    let [sc, mn] = params(pp.add(2 * (32 * b / group)));
                    let (sc, mn) = (_mm256_set1_ps(sc), _mm256_set1_ps(mn));
                    let p = cp.add(b * bb);
                    for v in 0..4 {
                        let q = if B == 8 {
                            _mm256_cvtepu8_epi32(_mm_loadl_epi64(p.add(8 * v).cast()))
                        } else {
                            codes8::<B>(p, v)
                        };
                        let wv = _mm256_fmadd_ps(_mm256_cvtepi32_ps(q), sc, mn);
                        let at = packed_at(32 * b + 8 * v, r, 4, k, pass);
                        _mm256_storeu_ps(d.add(at), wv);
                    }
                }
            }
        }
    }

    /// `(scale, min)` of group `g` of each of the `R` rows, as f32; prefetches the next
    /// tile's rows at that group (as in the AVX-512 kernel) and, every 16 groups, their
    /// parameters.
    ///
    /// # Safety
    /// The CPU has F16C; `codes` and `pars` hold `R` rows of `k` codes of `B` bits in
    /// groups of `group`, and `g < k / group`.
    #[inline(always)]
    unsafe fn group_params<const B: u8, const R: usize>(
        codes: &[u8],
        pars: &[half::f16],
        k: usize,
        group: usize,
        g: usize,
    ) -> [[f32; 2]; R] {
        let (rb, gpr) = (k * B as usize / 8, k / group);
        let (cp, pp) = (codes.as_ptr(), pars.as_ptr());
        let mut dm = [[0f32; 2]; R];
        for (r, v) in dm.iter_mut().enumerate() {
            // SAFETY: the caller upholds the contract above; a prefetch never faults, so
            // running past the matrix's end is harmless.
            unsafe {
                *v = params(pp.add(2 * (r * gpr + g)));
                let ahead = cp.wrapping_add((r + R) * rb + g * group * B as usize / 8);
                _mm_prefetch::<_MM_HINT_T0>(ahead as *const i8);
                if g.is_multiple_of(16) {
                    let ahead = pp.wrapping_add(2 * ((r + R) * gpr + g));
                    _mm_prefetch::<_MM_HINT_T0>(ahead as *const i8);
                }
            }
        }
        dm
    }

    /// `p` itself, hidden from the optimiser (an empty `asm!` block it must assume may
    /// change the pointer and memory): loads through it are not merged with the same loads
    /// of an earlier row. Merged, every row's activations and (scale, min) stay in
    /// registers for the next row, and with the accumulators they no longer fit the 16
    /// registers: the accumulators were spilled, a store and a load in every FMA chain.
    #[inline(always)]
    fn opaque<T>(mut p: *const T) -> *const T {
        // SAFETY: the block is empty: it leaves the register and memory as they are.
        unsafe { std::arch::asm!("/* {0} */", inout(reg) p, options(nostack, preserves_flags)) };
        p
    }

    /// `R` rows times `T` tokens, each 16-lane accumulator in two registers (lanes 0-7,
    /// 8-15). A block's 32 weights are 4 vectors of 8: vector `v` feeds lanes `8(v % 2)`
    /// onwards, so vectors 0 and 2 go into the first register in that order and 1 and 3
    /// into the second, the canonical order; they are taken as 0, 2, 1, 3 (the 4-bit
    /// nibbles of one load together). Each vector is dequantized and used at once, and a
    /// row's (scale, min) and activations are loaded again for every row ([`opaque`]), so
    /// the accumulators and a few temporaries fit the 16 registers. Before (every weight
    /// vector of a block live at once, activations kept across rows) the accumulators were
    /// spilled: the 4-bit substitutes of Qwen2.5-0.5B's 24 layers 23.5 -> 16.3 ms at t=1,
    /// 31.4 -> 23.2 ms at t=2 (docs/BENCHMARKS.md). 8 bits and 3 or more tokens go to
    /// [`tile_wide`].
    ///
    /// # Safety
    /// The CPU has AVX2, FMA and F16C; otherwise as the AVX-512 `tile`: `codes` holds `R`
    /// packed rows of `k` codes, `pars` their (scale, min) pairs, `xs` `T` rows of `k` f32,
    /// and `res` `R * T` values.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn tile<const B: u8, const R: usize, const T: usize>(
        codes: &[u8],
        pars: &[half::f16],
        xs: &[f32],
        k: usize,
        group: usize,
        res: &mut [f32],
    ) {
        // SAFETY: the caller upholds the contract above.
        unsafe {
            if B == 8 || T >= 3 {
                return tile_wide::<B, R, T>(codes, pars, xs, k, group, res);
            }
            let rb = k * B as usize / 8;
            let gpr = k / group;
            let bb = 4 * B as usize;
            let (cp, xp) = (codes.as_ptr(), xs.as_ptr());
            let mut acc = [[[_mm256_setzero_ps(); 2]; T]; R];
            let bpg = group / 32;
            for g in 0..gpr {
                let dm = group_params::<B, R>(codes, pars, k, group, g);
                for b in g * bpg..(g + 1) * bpg {
                    let i = 32 * b;
                    for (r, acc_r) in acc.iter_mut().enumerate() {
                        let p = cp.add(r * rb + b * bb);
                        let s = opaque(dm[r].as_ptr());
                        let (d, m) = (_mm256_broadcast_ss(&*s), _mm256_broadcast_ss(&*s.add(1)));
                        let x = opaque(xp.add(i));
                        for v in [0, 2, 1, 3] {
                            let q = _mm256_cvtepi32_ps(codes8::<B>(p, v));
                            let w = _mm256_fmadd_ps(q, d, m);
                            for (j, a) in acc_r.iter_mut().enumerate() {
                                let xv = _mm256_loadu_ps(x.add(j * k + 8 * v));
                                a[v % 2] = _mm256_fmadd_ps(w, xv, a[v % 2]);
                            }
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

    /// [`tile`] with a block's four weight vectors dequantized first and then multiplied
    /// (the same values in the same order): for 8-bit codes, whose weight stream is
    /// memory-bound, and for 3 or more tokens, where the multiplications outnumber the
    /// dequantization. Measured against [`tile`]'s order (24 layers of Qwen2.5-0.5B's
    /// shapes, alternating builds): 8 bits 19.5 against 23.4 ms at t=1 and 24.0 against
    /// 27.7 ms at t=2; 4 bits at t=6 53 against 65 ms; 4 bits at t=1, 2 the other way.
    ///
    /// # Safety
    /// As [`tile`].
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn tile_wide<const B: u8, const R: usize, const T: usize>(
        codes: &[u8],
        pars: &[half::f16],
        xs: &[f32],
        k: usize,
        group: usize,
        res: &mut [f32],
    ) {
        // SAFETY: the caller upholds the contract above.
        unsafe {
            let rb = k * B as usize / 8;
            let gpr = k / group;
            let bb = 4 * B as usize;
            let (cp, xp) = (codes.as_ptr(), xs.as_ptr());
            let mut acc = [[[_mm256_setzero_ps(); 2]; T]; R];
            let bpg = group / 32;
            for g in 0..gpr {
                let dm = group_params::<B, R>(codes, pars, k, group, g);
                for b in g * bpg..(g + 1) * bpg {
                    let i = 32 * b;
                    for (r, acc_r) in acc.iter_mut().enumerate() {
                        let p = cp.add(r * rb + b * bb);
                        let (d, m) = (_mm256_set1_ps(dm[r][0]), _mm256_set1_ps(dm[r][1]));
                        // w[4h + e]: weights 16h + 8e .. 16h + 8e + 8
                        let mut w = [_mm256_setzero_ps(); 4];
                        for h in 0..2 {
                            let (q0, q1) = if B == 8 {
                                let q = _mm_loadu_si128(p.add(16 * h).cast());
                                let q1 = _mm256_cvtepu8_epi32(_mm_unpackhi_epi64(q, q));
                                (_mm256_cvtepu8_epi32(q), q1)
                            } else {
                                (codes8::<B>(p, 2 * h), codes8::<B>(p, 2 * h + 1))
                            };
                            w[2 * h] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(q0), d, m);
                            w[2 * h + 1] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(q1), d, m);
                        }
                        for (j, a) in acc_r.iter_mut().enumerate() {
                            let x = xp.add(j * k + i);
                            for h in 0..2 {
                                for (e, a) in a.iter_mut().enumerate() {
                                    let xv = _mm256_loadu_ps(x.add(16 * h + 8 * e));
                                    *a = _mm256_fmadd_ps(w[2 * h + e], xv, *a);
                                }
                            }
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

#[cfg(test)]
mod tests {
    use super::super::{QuantConfig, QuantMethod};
    use super::*;
    use crate::util::isa::{isa, supported_isas};

    fn matrix(rows: usize, cols: usize, bits: u8, group: usize) -> (Vec<f32>, QMatrix) {
        let w: Vec<f32> = (0..rows * cols)
            .map(|i| ((i * 7919 % 1000) as f32 / 500.0 - 1.0) * 0.3)
            .collect();
        let cfg = QuantConfig {
            bits,
            group,
            method: QuantMethod::Hqq,
        };
        let q = QMatrix::quantize(&w, rows, cols, &cfg).unwrap();
        (w, q)
    }

    fn acts(t_count: usize, k: usize) -> Vec<f32> {
        (0..t_count * k)
            .map(|i| (i * 104729 % 997) as f32 / 498.5 - 1.0)
            .collect()
    }

    #[test]
    fn matches_dequantized_reference() {
        for bits in [2u8, 3, 4, 8] {
            // 37 rows: full tiles and single-row tails; groups of 64 and 32
            for (cols, group) in [(128, 64), (96, 32)] {
                let (_, q) = matrix(37, cols, bits, group);
                let deq = q.dequantize();
                // 3: one tile of tokens; 8: two of 4
                for t_count in [3, 8] {
                    let x = acts(t_count, cols);
                    let bias: Vec<f32> = (0..37).map(|i| i as f32 * 0.01).collect();
                    let mut out = vec![0f32; t_count * 37];
                    qlinear_acts(isa(), false, &x, t_count, &q, Some(&bias), &mut out);
                    for t in 0..t_count {
                        for o in 0..37 {
                            let xr = &x[t * cols..(t + 1) * cols];
                            let wr = &deq[o * cols..(o + 1) * cols];
                            let want: f64 =
                                wr.iter().zip(xr).map(|(a, b)| *a as f64 * *b as f64).sum();
                            let got = out[t * 37 + o] as f64 - bias[o] as f64;
                            assert!(
                                (got - want).abs() < 1e-4,
                                "bits {bits} t {t} o {o}: {got} {want}"
                            );
                            // and exactly the canonical order over dequantize()'s values
                            let mut acc = [0f32; 16];
                            for i in (0..cols).step_by(16) {
                                for l in 0..16 {
                                    acc[l] = wr[i + l].mul_add(xr[i + l], acc[l]);
                                }
                            }
                            assert_eq!(out[t * 37 + o], sum16(&acc) + bias[o]);
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn every_isa_equals_portable_and_is_batch_invariant() {
        // 37 rows: full tiles and row tails; 40 groups of 32 (20 of 64): params chunks of 16
        // and a tail; f32 activations, and int8 where the arithmetic is defined
        for ((n, k, group), bits) in [(37, 192, 64), (13, 1280, 32), (13, 1280, 64)]
            .into_iter()
            .flat_map(|s| [2u8, 3, 4, 8].map(|b| (s, b)))
        {
            let (_, q) = matrix(n, k, bits, group);
            let t_max = 13; // two full 6-token tiles and a 1-token tail
            let x = acts(t_max, k);
            for int8 in [false, true] {
                if int8 && !int8::supports(&q) {
                    continue;
                }
                // every token alone, with the portable kernel
                let single: Vec<Vec<f32>> = (0..t_max)
                    .map(|t| {
                        let mut o = vec![0f32; n];
                        let x = &x[t * k..(t + 1) * k];
                        qlinear_acts(Isa::Portable, int8, x, 1, &q, None, &mut o);
                        o
                    })
                    .collect();
                for isa in supported_isas() {
                    for t_count in 1..=t_max {
                        for start in 0..=t_max - t_count {
                            let xs = &x[start * k..(start + t_count) * k];
                            let mut out = vec![0f32; t_count * n];
                            qlinear_acts(isa, int8, xs, t_count, &q, None, &mut out);
                            for t in 0..t_count {
                                assert_eq!(
                                    &out[t * n..(t + 1) * n],
                                    &single[start + t][..],
                                    "{isa:?} int8 {int8} bits {bits} group {group} batch \
                                     {t_count} at {start}, token {t}"
                                );
                            }
                        }
                    }
                }
            }
        }
    }

    /// Int8 activations move a product by at most what rounding each activation to 8 bits
    /// of its pair's largest can: `sum |w| * d / 2` (a wrong code order or scale would not).
    #[test]
    fn int8_activations_stay_within_their_rounding() {
        for bits in [2u8, 4, 8] {
            for (cols, group) in [(256, 64), (384, 128)] {
                let (_, q) = matrix(21, cols, bits, group);
                let deq = q.dequantize();
                let mut x = acts(3, cols);
                x[5] = 40.0; // an outlier: its pair's other activations keep fewer bits
                let mut out = vec![0f32; 3 * 21];
                qlinear_acts(isa(), true, &x, 3, &q, None, &mut out);
                for t in 0..3 {
                    let xr = &x[t * cols..(t + 1) * cols];
                    for o in 0..21 {
                        let wr = &deq[o * cols..(o + 1) * cols];
                        let (mut want, mut bound) = (0f64, 1e-4);
                        for (wp, xp) in wr.chunks(int8::PAIR).zip(xr.chunks(int8::PAIR)) {
                            let amax = xp.iter().fold(0f32, |a, v| a.max(v.abs())) as f64;
                            for (w, x) in wp.iter().zip(xp) {
                                want += *w as f64 * *x as f64;
                                bound += (*w as f64).abs() * amax / 127.0 * 0.5001;
                            }
                        }
                        let got = out[t * 21 + o] as f64;
                        assert!(
                            (got - want).abs() <= bound,
                            "bits {bits} group {group} t {t} o {o}: {got} vs {want} (bound {bound})"
                        );
                        // and not by chance: f32 activations land much closer
                        assert!(bound > 1e-3, "{bound}");
                    }
                }
            }
        }
    }

    #[test]
    fn int8_code_orders_are_permutations_and_apply_where_defined() {
        for bits in [2u8, 4, 8] {
            let mut seen = [false; int8::PAIR];
            for z in 0..int8::PAIR {
                let c = int8::pair_col(bits, z);
                assert!(!seen[c], "bits {bits}: column {c} twice");
                seen[c] = true;
            }
        }
        let (_, q4) = matrix(4, 128, 4, 64);
        let (_, q3) = matrix(4, 128, 3, 64);
        let (_, g32) = matrix(4, 128, 4, 32);
        assert!(int8::supports(&q4) && !int8::supports(&q3) && !int8::supports(&g32));
        let (_, q8) = matrix(4, 128, 8, 64);
        let on = crate::util::isa::int8();
        assert_eq!(
            int8::applies(Isa::Avx512, &q4),
            crate::util::isa::vnni() && on,
            "AVX-512 with VNNI takes int8 activations"
        );
        assert_eq!(
            int8::applies(Isa::Avx2, &q4),
            on,
            "AVX2 takes them below 8 bits"
        );
        assert!(
            !int8::applies(Isa::Avx2, &q8),
            "vpmaddubsw's pair sums overflow at 8 bits"
        );
        assert!(!int8::applies(Isa::Avx512, &q3) && !int8::applies(Isa::Portable, &q4));
    }
}
