//! Batch-invariant matrix products `y = x @ w^T` with f16/bf16/f32 weights and f32 math.
//!
//! Every output element is one dot product computed in a single fixed order: 16 lanes,
//! `acc[l] = fma(w[i + l], x[i + l], acc[l])` for ascending blocks `i` of 16, then a fixed
//! pairwise sum of the 16 lanes, then the scalar tail (`k % 16` elements) in order. The
//! AVX-512 kernel keeps the 16 lanes in one register, the AVX2 kernel in two, the portable
//! code in an array: the same operations, so the same bits. Tiles of several rows and
//! tokens only interleave independent dot products to keep the FMA units and memory busy;
//! they never change the order inside one, so a token's output is bit-identical whatever
//! else is in the batch.

use rayon::prelude::*;

use crate::checkpoint::{DType, HostTensor};
use crate::quant::QMatrix;
use crate::util::isa::{isa, packed_at, Isa};

/// A raw output pointer shared by tasks that write disjoint elements.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);

impl OutPtr {
    /// The pointer (a method, so closures capture the `Send` wrapper, not the field).
    fn get(self) -> *mut f32 {
        self.0
    }
}
// SAFETY: tasks write disjoint (row-chunk) columns of the output; see `linear`.
unsafe impl Send for OutPtr {}
// SAFETY: as above: no two tasks write the same element.
unsafe impl Sync for OutPtr {}

/// Rows of `w` handed to one task.
const ROW_CHUNK: usize = 32;
/// Most tokens in one tile.
const MAX_TT: usize = 12;
/// Widened rows taken at a time: one row tile of the widened token tiles and of
/// [`blocked`] (4 x 6 tokens on AVX-512, 4 x 3 on AVX2).
const WIDE_ROWS: usize = 4;
/// Token tile on widened (f32) rows: 4 rows x 6 tokens keeps loads and FMAs balanced.
const WIDE_TT: usize = 6;
/// Batches above this many tokens widen each row chunk to f32 once (see `linear`): more
/// than one token tile. On AVX2 (3-token tiles) a chunk of f16 rows converted again for
/// every tile cost twice the widened product from 4 tokens on (lm_head at 6 and 12
/// tokens: 38 and 65 ms converted per tile, against 56 ms for 17 tokens widened), and at 3
/// tokens one unprefetched `tile_halves` pass lost to the blocked product too (the f16
/// lm_head 20 -> 17 ms, 4864x896 in cache 0.51 -> 0.35 ms): AVX2 widens from 3 tokens on.
/// AVX-512 widens above 12 (one tile of f16 rows converted as it goes), and runs the
/// blocked product there; at 1-12 tokens its tiles (and, for GGUF rows, widened rows in
/// `linear_widened`) win: Qwen2.5-0.5B's Q5_0/Q8_0 GGUF decoded at 238 ms a token through
/// the blocked product against 100 through `linear_widened`, and 4 of its f16 layers at
/// 16 tokens took 39 ms either way.
fn widen_above(isa: Isa) -> usize {
    match isa {
        Isa::Avx2 => 2,
        _ => MAX_TT,
    }
}

/// `out[t * n + o] = dot(w[o], x[t]) (+ bias[o])` for `x` of `t_count` rows of `k`.
///
/// With more tokens than one tile holds (`widen_above`), the f16/bf16 rows are widened
/// to f32 (exact) once (`linear_widened`), so the conversion is not repeated for every
/// token tile; the products are the same FMAs on the same f32 values either way, so this
/// does not change a single bit.
pub fn linear(x: &[f32], t_count: usize, w: &HostTensor, bias: Option<&[f32]>, out: &mut [f32]) {
    linear_on(isa(), x, t_count, w, bias, out)
}

/// [`linear`] with the kernels of `isa` (one the CPU has).
fn linear_on(
    isa: Isa,
    x: &[f32],
    t_count: usize,
    w: &HostTensor,
    bias: Option<&[f32]>,
    out: &mut [f32],
) {
    let (n, k) = (w.shape[0], w.shape[1]);
    assert_eq!(x.len(), t_count * k);
    assert_eq!(out.len(), t_count * n);
    if t_count == 0 {
        return;
    }
    let wb = w.bytes();
    let dtype = w.dtype;
    let row_bytes = w.row_bytes();
    // Quantized rows are always dequantized first (exactly as gguf-py does, so the
    // products are those of the dequantized model's f32 weights).
    if dtype.is_quantized() || (t_count > widen_above(isa) && dtype != DType::F32) {
        if isa == Isa::Avx2 || (isa == Isa::Avx512 && t_count > widen_above(isa)) {
            let rows = Dense {
                dtype,
                wb,
                row_bytes,
                n,
            };
            return blocked(isa, x, t_count, &rows, bias, out);
        }
        return linear_widened(isa, x, t_count, dtype, wb, n, bias, out);
    }
    let ptr = OutPtr(out.as_mut_ptr());
    (0..n.div_ceil(ROW_CHUNK)).into_par_iter().for_each(|c| {
        let rows = c * ROW_CHUNK..((c + 1) * ROW_CHUNK).min(n);
        let bytes = &wb[rows.start * row_bytes..rows.end * row_bytes];
        rows_product(isa, dtype, bytes, rows, x, t_count, bias, ptr, n, false);
    });
}

/// [`linear`] for the `n` rows of `dtype` in `wb` widened to f32: each task widens its
/// chunk a row tile at a time, so that the f32 rows stay in L1 while every token tile
/// passes over them. The products are the f32 kernel's on the widened values.
#[allow(clippy::too_many_arguments)]
fn linear_widened(
    isa: Isa,
    x: &[f32],
    t_count: usize,
    dtype: DType,
    wb: &[u8],
    n: usize,
    bias: Option<&[f32]>,
    out: &mut [f32],
) {
    let ptr = OutPtr(out.as_mut_ptr());
    (0..n.div_ceil(ROW_CHUNK)).into_par_iter().for_each(|c| {
        let end = ((c + 1) * ROW_CHUNK).min(n);
        for r0 in (c * ROW_CHUNK..end).step_by(WIDE_ROWS) {
            let rows = r0..(r0 + WIDE_ROWS).min(end);
            widened_product(isa, x, t_count, dtype, wb, rows, bias, ptr, n);
        }
    });
}

/// [`rows_product`] of the weight rows `rows` (of `dtype`, in `wb`) widened to f32 first.
#[allow(clippy::too_many_arguments)]
fn widened_product(
    isa: Isa,
    x: &[f32],
    t_count: usize,
    dtype: DType,
    wb: &[u8],
    rows: std::ops::Range<usize>,
    bias: Option<&[f32]>,
    ptr: OutPtr,
    n: usize,
) {
    let k = x.len() / t_count;
    let row_bytes = dtype.bytes_for(k).expect("whole blocks");
    SCRATCH.with_borrow_mut(|(scratch, _)| {
        widen_rows(
            isa,
            dtype,
            &wb[rows.start * row_bytes..rows.end * row_bytes],
            k,
            scratch,
        );
        assert_eq!(scratch.len(), rows.len() * k, "widened rows");
        let bytes = f32_bytes(scratch);
        rows_product(isa, DType::F32, bytes, rows, x, t_count, bias, ptr, n, true)
    })
}

/// `out[t * n + o]` for the rows `o` in `range` (whose weights `rows` holds, as `dtype`)
/// and every token `t` of `x`.
#[allow(clippy::too_many_arguments)]
fn rows_product(
    isa: Isa,
    dtype: DType,
    rows: &[u8],
    range: std::ops::Range<usize>,
    x: &[f32],
    t_count: usize,
    bias: Option<&[f32]>,
    ptr: OutPtr,
    n: usize,
    widen: bool,
) {
    let k = x.len() / t_count.max(1);
    let row_bytes = k * dtype.size();
    let count = range.len();
    let mut t = 0;
    while t < t_count {
        let tt = (t_count - t).min(token_tile(isa, widen));
        let xs = &x[t * k..(t + tt) * k];
        let mut r = 0;
        while r < count {
            let rr = tile_rows(isa, tt, count - r);
            let mut res = [0f32; 8 * MAX_TT];
            dot_tile(
                isa,
                dtype,
                &rows[r * row_bytes..(r + rr) * row_bytes],
                rr,
                xs,
                tt,
                k,
                &mut res,
            );
            for i in 0..rr {
                let o = range.start + r + i;
                let b = bias.map_or(0.0, |b| b[o]);
                for j in 0..tt {
                    // SAFETY: (t + j, o) is inside `out` (t + j < t_count, o < n), and only
                    // the task owning row chunk `o / ROW_CHUNK` writes column `o`.
                    unsafe { *ptr.get().add((t + j) * n + o) = res[i * tt + j] + b };
                }
            }
            r += rr;
        }
        t += tt;
    }
}

thread_local! {
    /// Per-thread buffers (kept, so they are not re-faulted per task): widened weight rows,
    /// and the lanes of [`blocked`]'s outputs between its blocks.
    static SCRATCH: std::cell::RefCell<(Vec<f32>, Vec<f32>)> =
        const { std::cell::RefCell::new((Vec::new(), Vec::new())) };
    /// Per-thread dequantized rows before [`pack_tile`].
    static UNPACKED: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Elements `cols` (`s`, from element `cols.start` on: whole blocks of 16 of the body,
/// `body` elements) of row `r` of a tile of `rr` rows, written to the tile's layout for
/// passes of `pass` lanes in `d` ([`packed_at`]): on AVX2 lanes 0-7 of every block of 16
/// with the tile's rows interleaved block by block, then lanes 8-15 likewise; on AVX-512
/// every block's 16 lanes, the rows interleaved. A pass over one part of the lanes
/// ([`avx2::packed_block`], [`avx512_packed::packed_block`]) reads one sequential stream
/// of the tile.
fn pack_tile(
    s: &[f32],
    cols: std::ops::Range<usize>,
    r: usize,
    rr: usize,
    body: usize,
    pass: usize,
    d: &mut [f32],
) {
    for i in (cols.start..cols.end).step_by(pass) {
        let at = packed_at(i, r, rr, body, pass);
        let from = i - cols.start;
        d[at..at + pass].copy_from_slice(&s[from..from + pass]);
    }
}

/// Most elements of a row one pass of [`blocked`] takes: 4 rows' block is 16 KiB.
const KC: usize = 1024;
/// Most tokens one pass of [`blocked`] takes: their activations' block (64 x 1024 f32,
/// 256 KiB) stays in L2 while every row tile of a task passes over it.
const TOKEN_BLOCK: usize = 64;

/// [`TOKEN_BLOCK`] for `isa`: AVX-512 CPUs have 1-2 MiB of L2 per core, which holds a
/// block of 128 tokens (512 KiB), each row tile then widened half as often (Qwen2.5-0.5B's
/// 2k-token prefill 269-276 -> 284-287 tok/s alternated, on 2 MiB); AVX2's (Zen 2: 512
/// KiB) keep 64.
fn token_block(isa: Isa) -> usize {
    match isa {
        Isa::Avx512 => 2 * TOKEN_BLOCK,
        _ => TOKEN_BLOCK,
    }
}

/// Weight rows as [`blocked`] reads them: a row tile's block of elements widened to
/// f32 at a time: f16/bf16/f32 and GGUF rows ([`Dense`]) and the quantized substitutes
/// ([`Quantized`]); the product's order is the same for all.
trait TileRows: Sync {
    /// How many rows.
    fn rows(&self) -> usize;
    /// Blocks of elements start on multiples of this (16, or whole quantization blocks).
    fn align(&self) -> usize;
    /// The bytes prefetched ahead of widening.
    fn raw(&self) -> &[u8];
    /// Where the elements `cols` of row `r` lie in [`raw`](TileRows::raw).
    fn raw_range(&self, r: usize, cols: &std::ops::Range<usize>) -> std::ops::Range<usize>;
    /// Elements `cols` of the [`WIDE_ROWS`] rows from `r0` on widened to f32 in `dst` (4
    /// rows of `k`): the body's elements laid out by [`pack_tile`] for passes of `pass`
    /// lanes, each row's tail (if `cols` reaches it) after the 4 bodies.
    fn widen(&self, r0: usize, cols: std::ops::Range<usize>, pass: usize, dst: &mut [f32]);
    /// The outputs of the rows `rows` (the rows of a chunk after its whole row tiles, or
    /// rows with no block of 16) for every token of `x`, written through `ptr` (a row of
    /// [`rows`](TileRows::rows) outputs per token), each plus its bias.
    fn rest(
        &self,
        x: &[f32],
        t_count: usize,
        rows: std::ops::Range<usize>,
        bias: Option<&[f32]>,
        ptr: OutPtr,
    );
}

/// The `n` rows of `dtype` in `wb` (`row_bytes` each), for [`blocked`].
struct Dense<'a> {
    dtype: DType,
    wb: &'a [u8],
    row_bytes: usize,
    n: usize,
}

impl TileRows for Dense<'_> {
    fn rows(&self) -> usize {
        self.n
    }

    fn align(&self) -> usize {
        match self.dtype {
            DType::Quant(t) => t.block_size().next_multiple_of(16),
            _ => 16,
        }
    }

    fn raw(&self) -> &[u8] {
        self.wb
    }

    fn raw_range(&self, r: usize, cols: &std::ops::Range<usize>) -> std::ops::Range<usize> {
        let at = |c| r * self.row_bytes + self.dtype.bytes_for(c).expect("whole blocks");
        at(cols.start)..at(cols.end)
    }

    fn widen(&self, r0: usize, cols: std::ops::Range<usize>, pass: usize, dst: &mut [f32]) {
        widen_cols(self.dtype, self.wb, self.row_bytes, r0, cols, pass, dst)
    }

    fn rest(
        &self,
        x: &[f32],
        t_count: usize,
        rows: std::ops::Range<usize>,
        bias: Option<&[f32]>,
        ptr: OutPtr,
    ) {
        let (dtype, wb, n) = (self.dtype, self.wb, self.n);
        widened_product(Isa::Avx2, x, t_count, dtype, wb, rows, bias, ptr, n)
    }
}

/// From this many tokens on, AVX2 runs a quantized substitute's product as the dense
/// blocked product ([`Quantized`]): each row tile's block is dequantized once into f32
/// for every token tile instead of once per token tile. Qwen2.5-0.5B's 24 layers of 4-bit
/// substitutes, alternating the two in one process (ms, tiles against blocked): t=4 30 /
/// 37, t=5 35 / 40, t=6 53 / 45, t=8 61 / 53, t=16 136 / 92; 8 bits: t=5 43 / 43, t=6 50
/// / 46. Not for a matrix with int8 activations (`quant::int8`, 2 and 4 bits on AVX2),
/// whose own kernel runs every batch: against the blocked product on an AVX-512 core's
/// AVX2 path, t=6 35 / 49, t=8 52 / 57, t=16 93 / 88 (`cargo bench --bench kernels`).
const QUANT_BLOCKED_FROM: usize = 6;

/// `out[t * n + o] = dot(dequant(w row o), x[t]) (+ bias[o])`: a quantized substitute's
/// product as the CPU backend runs it, the bits of [`crate::quant::qlinear`] (the same
/// values in the same order; batch-invariant).
pub fn qlinear(x: &[f32], t_count: usize, w: &QMatrix, bias: Option<&[f32]>, out: &mut [f32]) {
    qlinear_on(isa(), x, t_count, w, bias, out)
}

/// [`qlinear`] with the kernels of `isa` (one the CPU has).
fn qlinear_on(
    isa: Isa,
    x: &[f32],
    t_count: usize,
    w: &QMatrix,
    bias: Option<&[f32]>,
    out: &mut [f32],
) {
    // (int8 activations have their own arithmetic: the blocked product's f32 one would
    // make a token's bits depend on the batch)
    let int8 = crate::quant::int8_applies(isa, w);
    if isa == Isa::Avx2 && t_count >= QUANT_BLOCKED_FROM && w.rows() > 0 && !int8 {
        crate::quant::check_shapes(x, t_count, w, bias, out);
        return blocked(isa, x, t_count, &Quantized(w), bias, out);
    }
    crate::quant::qlinear_acts(isa, int8, x, t_count, w, bias, out)
}

/// A quantized substitute's rows for [`blocked`]: each row tile's block dequantized
/// by [`crate::quant::dequant_tile`].
struct Quantized<'a>(&'a QMatrix);

impl TileRows for Quantized<'_> {
    fn rows(&self) -> usize {
        self.0.rows()
    }

    fn align(&self) -> usize {
        crate::quant::BLOCK
    }

    fn raw(&self) -> &[u8] {
        &self.0.codes
    }

    fn raw_range(&self, r: usize, cols: &std::ops::Range<usize>) -> std::ops::Range<usize> {
        let (rb, bits) = (self.0.row_bytes(), self.0.bits() as usize);
        r * rb + cols.start * bits / 8..r * rb + cols.end * bits / 8
    }

    fn widen(&self, r0: usize, cols: std::ops::Range<usize>, pass: usize, dst: &mut [f32]) {
        // SAFETY: `blocked` runs on a CPU with AVX2, FMA and F16C only.
        unsafe { crate::quant::dequant_tile(self.0, r0, cols, pass, dst) }
    }

    fn rest(
        &self,
        x: &[f32],
        t_count: usize,
        rows: std::ops::Range<usize>,
        bias: Option<&[f32]>,
        ptr: OutPtr,
    ) {
        let n = self.rows();
        let mut part = vec![0f32; t_count * rows.len()];
        crate::quant::qlinear_rows(Isa::Avx2, x, t_count, self.0, rows.clone(), &mut part);
        for t in 0..t_count {
            for (i, o) in rows.clone().enumerate() {
                let b = bias.map_or(0.0, |b| b[o]);
                // SAFETY: (t, o) is inside `out` (t < t_count, o < n), and only the task
                // owning row `o`'s chunk writes column `o`.
                unsafe { *ptr.get().add(t * n + o) = part[t * rows.len() + i] + b };
            }
        }
    }
}

/// `out[t * n + o] = dot(row o, x[t]) (+ bias[o])` on AVX2 or AVX-512 (`isa`) for the `n`
/// rows of `w`, widened to f32. The product is blocked as a GEMM is: the tokens in blocks
/// of at most [`token_block`], each handed out as tasks of a chunk of rows, which takes
/// the rows' elements in blocks of at most [`KC`]; for each, every row tile of 4 widens
/// its block (16 KiB, in L1) and every token tile passes over it, while the activations'
/// block stays in L2 for all the row tiles of all the thread's chunks. Row tiles and token tiles are laid out by [`pack_tile`] for the
/// ISA's passes (AVX2: two of 8 lanes, 4 rows x 3 tokens; AVX-512: one of 16, 4 rows x 6
/// tokens), so each pass over a tile's block is one sequential stream (rows of 4864
/// elements, Qwen's down projection, read as 7 streams of 1.9 KiB per block ran at 58% of
/// the FMA peak where 896 ran at 75%). Each output's 16 lanes wait in memory between
/// blocks; they see the same FMAs in the same order, so the bits are [`rows_product`]'s.
/// The raw bytes of the next row tile's block are prefetched meanwhile, so that widening
/// them does not wait on memory (a forward's weights come from DRAM). Only called on a CPU
/// with AVX2, FMA and F16C (and AVX-512F for [`Isa::Avx512`]).
fn blocked<W: TileRows>(
    isa: Isa,
    x: &[f32],
    t_count: usize,
    w: &W,
    bias: Option<&[f32]>,
    out: &mut [f32],
) {
    const R: usize = WIDE_ROWS;
    let (tt_max, pass) = (blocked_tt(isa), isa.pass_lanes());
    let n = w.rows();
    let k = x.len() / t_count;
    assert_eq!(out.len(), t_count * n, "blocked product: output size");
    let body = k - k % 16;
    // the activations' bodies as token tiles of `tt_max` (the last maybe fewer) laid out
    // by `pack_tile`, tile `i` from token `tt_max * i` on; in parallel only when the copy
    // costs more than handing it out (~1 MB)
    let mut xv = Vec::new();
    let xp = aligned(&mut xv, t_count * body);
    let pack = |(i, d): (usize, &mut [f32])| {
        let tt = d.len() / body;
        for j in 0..tt {
            let from = &x[(tt_max * i + j) * k..][..body];
            pack_tile(from, 0..body, j, tt, body, pass, d);
        }
    };
    if body > 0 && x.len() < 1 << 18 {
        xp.chunks_mut(tt_max * body).enumerate().for_each(pack);
    } else if body > 0 {
        xp.par_chunks_mut(tt_max * body).enumerate().for_each(pack);
    }
    let xp = &*xp;
    // blocks of elements as even as whole 16s (and whole quantization blocks) allow, and
    // of tokens as even as whole token tiles allow
    let align = w.align();
    let kc = body
        .div_ceil(body.div_ceil(KC).max(1))
        .next_multiple_of(align)
        .max(align);
    let blocks: Vec<_> = (0..body)
        .step_by(kc)
        .map(|c| c..(c + kc).min(body))
        .collect();
    let tb = t_count
        .div_ceil(t_count.div_ceil(token_block(isa)))
        .next_multiple_of(tt_max);
    let ptr = OutPtr(out.as_mut_ptr());
    let wb = w.raw();
    // token blocks outermost: a block's activations stay in L2 while each thread's row
    // chunks pass over them (with the chunks outermost, 256 tokens of Qwen's down
    // projection, 5 MB, came from L3 again for every chunk)
    for t0 in (0..t_count).step_by(tb) {
        let tn = tb.min(t_count - t0);
        let span = Tokens {
            isa,
            t0,
            tn,
            xs: &xp[t0 * body..(t0 + tn) * body],
            x: &x[t0 * k..(t0 + tn) * k],
        };
        (0..n.div_ceil(ROW_CHUNK)).into_par_iter().for_each(|c| {
            let rows = c * ROW_CHUNK..((c + 1) * ROW_CHUNK).min(n);
            // whole row tiles go blocked; the rest (and rows without a block of 16) widened,
            // for all the tokens with the first block
            let tiles = if body > 0 { rows.len() / R } else { 0 };
            let rest = rows.start + tiles * R..rows.end;
            if t0 == 0 && !rest.is_empty() {
                w.rest(x, t_count, rest, bias, ptr);
            }
            // the raw bytes of elements `cols` of the row tile from row `r` on
            let raw = |r: usize, cols: &std::ops::Range<usize>| {
                std::array::from_fn(|i| w.raw_range(r + i, cols))
            };
            SCRATCH.with_borrow_mut(|(scratch, lanes)| {
                let scratch = aligned(scratch, R * k);
                lanes.resize(tiles * tb * R * 16, 0.0);
                for (b, block) in blocks.iter().enumerate() {
                    let last = b + 1 == blocks.len();
                    for q in 0..tiles {
                        let r0 = rows.start + q * R;
                        // the block of the row tile, the last one with the rows' tails
                        let cols = block.start..if last { k } else { block.end };
                        w.widen(r0, cols, pass, scratch);
                        // the next row tile's block, or the first row tile's next block
                        let next: Option<[_; R]> = match (q + 1 < tiles, blocks.get(b + 1)) {
                            (true, _) => Some(raw(r0 + R, block)),
                            (false, Some(nb)) => Some(raw(rows.start, nb)),
                            (false, None) => None,
                        };
                        let lines = next.map_or([const { 0..0 }; R], |r| r);
                        let l = &mut lanes[q * tb * R * 16..][..tn * R * 16];
                        let out = Out { ptr, n, r0, bias };
                        // with no tail to add, the last block writes the sums (and bias)
                        let fin = last && body == k;
                        row_tile_block(scratch, &span, block, l, fin.then_some(out), wb, &lines);
                        if last && body < k {
                            finish_tail(scratch, &span, l, out);
                        }
                    }
                }
            });
        });
    }
}

/// `len` elements of `v` (grown as needed) starting on a cache line.
fn aligned(v: &mut Vec<f32>, len: usize) -> &mut [f32] {
    v.resize(len + 16, 0.0);
    let skip = v.as_ptr().align_offset(64).min(16);
    &mut v[skip..skip + len]
}

/// The tokens `t0..t0 + tn` of [`blocked`]: their bodies laid out as its token tiles of
/// [`blocked_tt`]`(isa)` (`xs`), and as they came (`x`, for the tails); `isa`'s kernel runs
/// the tiles.
struct Tokens<'a> {
    isa: Isa,
    t0: usize,
    tn: usize,
    xs: &'a [f32],
    x: &'a [f32],
}

/// Where [`blocked`] writes the outputs of the row tile from row `r0` on.
#[derive(Clone, Copy)]
struct Out<'a> {
    ptr: OutPtr,
    n: usize,
    r0: usize,
    bias: Option<&'a [f32]>,
}

/// [`TileRows::widen`] of the 4 rows from row `r0` on (of `dtype`, `row_bytes` each, in
/// `wb`).
fn widen_cols(
    dtype: DType,
    wb: &[u8],
    row_bytes: usize,
    r0: usize,
    cols: std::ops::Range<usize>,
    pass: usize,
    dst: &mut [f32],
) {
    const R: usize = WIDE_ROWS;
    let k = dst.len() / R;
    let body = k - k % 16;
    let bytes = |r: usize| {
        let at = |c| r * row_bytes + dtype.bytes_for(c).expect("whole blocks");
        &wb[at(cols.start)..at(cols.end)]
    };
    for r in 0..R {
        if dtype.is_quantized() {
            UNPACKED.with_borrow_mut(|u| {
                u.resize(cols.len(), 0.0);
                assert!(cols.end <= body, "quantized rows have no tail");
                super::dequant::rows_to_f32(Isa::Avx2, dtype, bytes(r0 + r), u);
                pack_tile(u, cols.clone(), r, R, body, pass, dst);
            });
            continue;
        }
        #[cfg(target_arch = "x86_64")]
        // SAFETY: only called on AVX2/FMA/F16C (`blocked`); `bytes` holds the elements
        // `cols` of a row of `k`, and `dst` 4 rows of `k`.
        unsafe {
            avx2::widen_cols(dtype, bytes(r0 + r), cols.clone(), r, k, pass, dst)
        };
    }
}

/// One row tile's block of elements (`rows`, widened by [`widen_cols`]) times the tokens
/// of `span`, each output's lanes carried in `lanes` (`[token tile][row][token][lane]`);
/// with `fin`, the last block writes its sums (plus bias) to the output instead. `lines`
/// are byte ranges of `wb` to prefetch, a few lines per token tile.
fn row_tile_block(
    rows: &[f32],
    span: &Tokens,
    block: &std::ops::Range<usize>,
    lanes: &mut [f32],
    fin: Option<Out>,
    wb: &[u8],
    lines: &[std::ops::Range<usize>],
) {
    const R: usize = WIDE_ROWS;
    let body = span.xs.len() / span.tn;
    let tt_max = blocked_tt(span.isa);
    let tiles = span.tn.div_ceil(tt_max);
    let total: usize = lines.iter().map(|l| l.len().div_ceil(64)).sum();
    let (per, mut ahead) = (
        total.div_ceil(tiles),
        lines.iter().flat_map(|l| l.clone().step_by(64)),
    );
    for t in (0..span.tn).step_by(tt_max) {
        for at in ahead.by_ref().take(per) {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: a prefetch never faults (the line is inside `wb` anyway).
            unsafe {
                use std::arch::x86_64::*;
                _mm_prefetch::<_MM_HINT_T0>(wb.as_ptr().add(at) as *const i8)
            };
        }
        let tt = (span.tn - t).min(tt_max);
        let xs = &span.xs[t * body..(t + tt) * body];
        let l = &mut lanes[t * R * 16..(t + tt) * R * 16];
        #[cfg(target_arch = "x86_64")]
        {
            let fin = fin.map(|o| avx2::Fin {
                // SAFETY: (t0 + t, r0) is inside `out` (t0 + t < t_count, r0 < n)
                out: unsafe { o.ptr.get().add((span.t0 + t) * o.n + o.r0) },
                stride: o.n,
                bias: o.bias.map(|b| &b[o.r0..o.r0 + R]),
            });
            let b = block.clone();
            // SAFETY: this is only called on a CPU with the kernels of `span.isa` (AVX-512F,
            // or AVX2/FMA/F16C: `blocked`), the tiles laid out for its pass; `rows` holds R
            // rows' bodies, `xs` tt tokens' bodies, the block is inside the body, `l` R * tt
            // * 16 lanes; `fin` writes outputs (t0 + t.., r0..r0 + R) of `out`, which only
            // the task owning these rows writes.
            unsafe {
                match (span.isa, tt) {
                    (Isa::Avx512, 6) => avx512_packed::packed_block::<6>(rows, xs, body, b, l, fin),
                    (Isa::Avx512, 5) => avx512_packed::packed_block::<5>(rows, xs, body, b, l, fin),
                    (Isa::Avx512, 4) => avx512_packed::packed_block::<4>(rows, xs, body, b, l, fin),
                    (Isa::Avx512, 3) => avx512_packed::packed_block::<3>(rows, xs, body, b, l, fin),
                    (Isa::Avx512, 2) => avx512_packed::packed_block::<2>(rows, xs, body, b, l, fin),
                    (Isa::Avx512, _) => avx512_packed::packed_block::<1>(rows, xs, body, b, l, fin),
                    (_, 3) => avx2::packed_block::<R, 3>(rows, xs, body, b, l, fin),
                    (_, 2) => avx2::packed_block::<R, 2>(rows, xs, body, b, l, fin),
                    _ => avx2::packed_block::<R, 1>(rows, xs, body, b, l, fin),
                }
            }
        }
    }
}

/// The outputs of a row tile (`rows`, widened by [`widen_cols`]) whose rows have a tail,
/// for the tokens of `span`: `finish` sums the lanes and adds the tail.
fn finish_tail(rows: &[f32], span: &Tokens, lanes: &[f32], out: Out) {
    const R: usize = WIDE_ROWS;
    let k = span.x.len() / span.tn;
    let body = k - k % 16;
    let tt_max = blocked_tt(span.isa);
    for t in (0..span.tn).step_by(tt_max) {
        let tt = (span.tn - t).min(tt_max);
        for i in 0..R {
            let o = out.r0 + i;
            let b = out.bias.map_or(0.0, |b| b[o]);
            let tail = f32_bytes(&rows[R * body + i * (k - body)..][..k - body]);
            for j in 0..tt {
                let at = t * R * 16 + (i * tt + j) * 16;
                let acc: &[f32; 16] = lanes[at..at + 16].try_into().unwrap();
                let x = &span.x[(t + j) * k + body..(t + j + 1) * k];
                let v = finish(acc, DType::F32, tail, x, 0);
                // SAFETY: as in `rows_product`: (t0 + t + j, o) is inside `out`, and only
                // the task owning row `o`'s chunk writes column `o`.
                unsafe { *out.ptr.get().add((span.t0 + t + j) * out.n + o) = v + b };
            }
        }
    }
}

/// An f32 slice's bytes.
fn f32_bytes(v: &[f32]) -> &[u8] {
    // SAFETY: any f32 slice may be viewed as its bytes (u8 has no alignment or validity
    // requirements), for as long as the slice is borrowed.
    unsafe { std::slice::from_raw_parts(v.as_ptr() as *const u8, v.len() * 4) }
}

/// Widens the whole rows of `k` weights in `src` (little-endian) to f32 in `dst`: exact
/// for f16/bf16, gguf-py's dequantization for the quantized types.
fn widen_rows(isa: Isa, dtype: DType, src: &[u8], k: usize, dst: &mut Vec<f32>) {
    let n = src.len() / dtype.bytes_for(k).expect("whole blocks") * k;
    dst.resize(n, 0.0);
    if dtype.is_quantized() {
        return super::dequant::rows_to_f32(isa, dtype, src, dst);
    }
    #[cfg(target_arch = "x86_64")]
    if isa != Isa::Portable {
        // SAFETY: AVX2/F16C are present (isa); `src` holds the `n` elements `dst` does.
        return unsafe { avx2::widen(dtype, src, dst) };
    }
    let _ = isa;
    for (i, d) in dst.iter_mut().enumerate() {
        *d = weight(dtype, src, i);
    }
}

/// Tokens in one tile. AVX2 has 16 registers, and a 16-lane accumulator takes two: its
/// batched tiles run the lanes' two halves one after the other (`avx2::tile_halves`, 12
/// accumulators of 4 rows x 3 tokens; the tiles of the AVX-512 shape spilled, and a
/// 64-token forward cost 28 single-token ones).
fn token_tile(isa: Isa, widen: bool) -> usize {
    match (isa, widen) {
        (Isa::Avx2, _) => AVX2_TT,
        (_, true) => WIDE_TT,
        (_, false) => MAX_TT,
    }
}

/// Token tile of the AVX2 kernel (see [`token_tile`]).
const AVX2_TT: usize = 3;

/// Token tile of [`blocked`]'s kernel on `isa`: AVX2's 3 (4 rows x 3 tokens, 12
/// accumulators of 8 lanes); AVX-512's 6 (24 accumulators of 16 lanes).
fn blocked_tt(isa: Isa) -> usize {
    match isa {
        Isa::Avx512 => 6,
        _ => AVX2_TT,
    }
}

/// How many weight rows one tile takes for `tt` tokens (`remaining` rows left): as many
/// as keep the tile's accumulators in registers (32 on AVX-512, 16 on AVX2). Two tokens on
/// AVX2 take 4 rows in `avx2::tile` (16 accumulators, the next tile's rows prefetched), not
/// 6 in `tile_halves` (12): the draft's f16 lm_head over a width-2 frontier streams 272 MB
/// from memory, 15.5 -> 13.0 ms (`examples`-style loop, alternating builds); in cache,
/// compute-bound, the halves were faster (4864x896: 0.17 against 0.23 ms), but a forward's
/// weights come from memory.
fn tile_rows(isa: Isa, tt: usize, remaining: usize) -> usize {
    let want = match (isa, tt) {
        (Isa::Avx2, 1) => 8,
        (Isa::Avx2, _) => 4,
        (_, 1) => 8,
        (_, 2..=6) => 4,
        _ => 2,
    };
    match remaining {
        r if r >= want => want,
        // a row tile of widened rows (`WIDE_ROWS`) at 1 or 2 tokens: 4 rows, not 1
        4.. if tt <= 6 => 4,
        _ => 1,
    }
}

/// Dot products of `rr` weight rows (`rows`, `rr * k` elements of `dtype`) with `tt` token
/// rows (`xs`): `res[i * tt + j] = dot(row i, token j)`.
#[allow(clippy::too_many_arguments)]
fn dot_tile(
    isa: Isa,
    dtype: DType,
    rows: &[u8],
    rr: usize,
    xs: &[f32],
    tt: usize,
    k: usize,
    res: &mut [f32],
) {
    #[cfg(target_arch = "x86_64")]
    {
        macro_rules! dispatch {
            ($m:ident) => {
                // SAFETY: `isa()` checked the CPU features of kernel `$m`; the slices have
                // the lengths the kernel reads (rr * k weights, tt * k activations).
                unsafe {
                    match (rr, tt) {
                        (8, 1) => $m::tile::<8, 1>(dtype, rows, xs, k, res),
                        (4, 2) => $m::tile::<4, 2>(dtype, rows, xs, k, res),
                        (4, 1) => $m::tile::<4, 1>(dtype, rows, xs, k, res),
                        (4, 3) => $m::tile::<4, 3>(dtype, rows, xs, k, res),
                        (4, 4) => $m::tile::<4, 4>(dtype, rows, xs, k, res),
                        (4, 5) => $m::tile::<4, 5>(dtype, rows, xs, k, res),
                        (4, 6) => $m::tile::<4, 6>(dtype, rows, xs, k, res),
                        (2, 7) => $m::tile::<2, 7>(dtype, rows, xs, k, res),
                        (2, 8) => $m::tile::<2, 8>(dtype, rows, xs, k, res),
                        (2, 9) => $m::tile::<2, 9>(dtype, rows, xs, k, res),
                        (2, 10) => $m::tile::<2, 10>(dtype, rows, xs, k, res),
                        (2, 11) => $m::tile::<2, 11>(dtype, rows, xs, k, res),
                        (2, 12) => $m::tile::<2, 12>(dtype, rows, xs, k, res),
                        (1, 1) => $m::tile::<1, 1>(dtype, rows, xs, k, res),
                        (1, 2) => $m::tile::<1, 2>(dtype, rows, xs, k, res),
                        (1, 3) => $m::tile::<1, 3>(dtype, rows, xs, k, res),
                        (1, 4) => $m::tile::<1, 4>(dtype, rows, xs, k, res),
                        (1, 5) => $m::tile::<1, 5>(dtype, rows, xs, k, res),
                        (1, 6) => $m::tile::<1, 6>(dtype, rows, xs, k, res),
                        (1, 7) => $m::tile::<1, 7>(dtype, rows, xs, k, res),
                        (1, 8) => $m::tile::<1, 8>(dtype, rows, xs, k, res),
                        (1, 9) => $m::tile::<1, 9>(dtype, rows, xs, k, res),
                        (1, 10) => $m::tile::<1, 10>(dtype, rows, xs, k, res),
                        (1, 11) => $m::tile::<1, 11>(dtype, rows, xs, k, res),
                        (1, 12) => $m::tile::<1, 12>(dtype, rows, xs, k, res),
                        _ => unreachable!("tile {rr}x{tt}"),
                    }
                }
            };
        }
        macro_rules! halves {
            ($r:literal, $t:literal) => {
                // SAFETY: as in `dispatch!`.
                unsafe { avx2::tile_halves::<$r, $t>(dtype, rows, xs, k, res) }
            };
        }
        match (isa, rr, tt) {
            (Isa::Avx512, ..) => return dispatch!(avx512),
            (Isa::Avx2, 4, 3) => return halves!(4, 3),
            (Isa::Avx2, 4, 1) => return halves!(4, 1),
            (Isa::Avx2, ..) => return dispatch!(avx2),
            (Isa::Portable, ..) => {}
        }
    }
    let _ = isa;
    let rb = k * dtype.size();
    for i in 0..rr {
        for j in 0..tt {
            res[i * tt + j] =
                dot_portable(dtype, &rows[i * rb..(i + 1) * rb], &xs[j * k..(j + 1) * k]);
        }
    }
}

/// Weight element `i` of a row, as f32.
#[inline(always)]
fn weight(dtype: DType, row: &[u8], i: usize) -> f32 {
    match dtype {
        DType::F32 => f32::from_le_bytes(row[4 * i..4 * i + 4].try_into().unwrap()),
        DType::F16 => {
            half::f16::from_bits(u16::from_le_bytes([row[2 * i], row[2 * i + 1]])).to_f32()
        }
        DType::BF16 => {
            f32::from_bits((u16::from_le_bytes([row[2 * i], row[2 * i + 1]]) as u32) << 16)
        }
        DType::Quant(_) => unreachable!("quantized rows are widened to f32 before the dot"),
    }
}

/// The canonical dot product in scalar code (the reference the SIMD kernels equal).
pub(crate) fn dot_portable(dtype: DType, row: &[u8], x: &[f32]) -> f32 {
    let k = x.len();
    let mut acc = [0f32; 16];
    let body = k - k % 16;
    for i in (0..body).step_by(16) {
        for (l, a) in acc.iter_mut().enumerate() {
            *a = weight(dtype, row, i + l).mul_add(x[i + l], *a);
        }
    }
    finish(&acc, dtype, row, x, body)
}

/// The dtype a kernel's const parameter stands for (0: f32, 1: f16, 2: bf16).
#[inline(always)]
#[cfg(target_arch = "x86_64")]
fn dtype_of(d: u8) -> DType {
    match d {
        0 => DType::F32,
        1 => DType::F16,
        _ => DType::BF16,
    }
}

/// The fixed pairwise sum of 16 lanes, then the scalar tail from `body` on.
#[inline(always)]
fn finish(acc: &[f32; 16], dtype: DType, row: &[u8], x: &[f32], body: usize) -> f32 {
    let mut s = crate::util::lanes::sum16(acc);
    for (i, &xi) in x.iter().enumerate().skip(body) {
        s = weight(dtype, row, i).mul_add(xi, s);
    }
    s
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::finish;
    use crate::checkpoint::DType;

    /// 16 weights starting at element `i` of the row at `row`.
    ///
    /// # Safety
    /// The CPU has AVX-512F/BW and F16C, and `row` is valid for reads of 16 elements of
    /// `dtype` from element `i` on.
    #[inline(always)]
    pub unsafe fn load16(dtype: DType, row: *const u8, i: usize) -> __m512 {
        // SAFETY: the caller upholds the contract above.
        unsafe {
            match dtype {
                DType::F32 => _mm512_loadu_ps(row.add(4 * i) as *const f32),
                DType::F16 => _mm512_cvtph_ps(_mm256_loadu_si256(row.add(2 * i) as *const __m256i)),
                DType::BF16 => {
                    let h = _mm256_loadu_si256(row.add(2 * i) as *const __m256i);
                    _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16))
                }
                DType::Quant(_) => unreachable!("quantized rows are widened first"),
            }
        }
    }

    /// `R` weight rows times `T` token rows; see `super::dot_tile`.
    ///
    /// # Safety
    /// The CPU has AVX-512F/BW, FMA and F16C; `rows` holds `R` rows of `k` elements of
    /// `dtype`, `xs` holds `T` rows of `k` f32, and `res` holds `R * T` values.
    #[target_feature(enable = "avx512f,avx512bw,fma,f16c")]
    pub unsafe fn tile<const R: usize, const T: usize>(
        dtype: DType,
        rows: &[u8],
        xs: &[f32],
        k: usize,
        res: &mut [f32],
    ) {
        // SAFETY: the caller upholds the contract above.
        unsafe {
            // One body per dtype, so the loads in the hot loop do not test it.
            match dtype {
                DType::F32 => tile_of::<0, R, T>(rows, xs, k, res),
                DType::F16 => tile_of::<1, R, T>(rows, xs, k, res),
                DType::BF16 => tile_of::<2, R, T>(rows, xs, k, res),
                DType::Quant(_) => unreachable!("quantized rows are widened first"),
            }
        }
    }

    /// # Safety
    /// As [`tile`] with `dtype = dtype_of(D)`.
    #[target_feature(enable = "avx512f,avx512bw,fma,f16c")]
    unsafe fn tile_of<const D: u8, const R: usize, const T: usize>(
        rows: &[u8],
        xs: &[f32],
        k: usize,
        res: &mut [f32],
    ) {
        // SAFETY: the caller upholds the contract above.
        unsafe {
            let dtype = super::dtype_of(D);
            let row_bytes = k * dtype.size();
            let wp = rows.as_ptr();
            let xp = xs.as_ptr();
            let mut acc = [[_mm512_setzero_ps(); T]; R];
            let body = k - k % 16;
            let mut i = 0;
            while i < body {
                let mut xv = [_mm512_setzero_ps(); T];
                for (j, v) in xv.iter_mut().enumerate() {
                    *v = _mm512_loadu_ps(xp.add(j * k + i));
                }
                // The next tile's rows at the same place: with only the hardware prefetcher
                // the kernel waits on memory (lm_head at t=2: 23 -> 15 ms, benches/kernels.rs).
                // A prefetch never faults, so running past the matrix's end is harmless.
                for r in 0..R {
                    let ahead = wp.wrapping_add((r + R) * row_bytes + i * dtype.size());
                    _mm_prefetch::<_MM_HINT_T0>(ahead as *const i8);
                }
                for (r, acc_r) in acc.iter_mut().enumerate() {
                    let w = load16(dtype, wp.add(r * row_bytes), i);
                    for j in 0..T {
                        acc_r[j] = _mm512_fmadd_ps(w, xv[j], acc_r[j]);
                    }
                }
                i += 16;
            }
            for r in 0..R {
                let row = &rows[r * row_bytes..(r + 1) * row_bytes];
                for j in 0..T {
                    // `finish`'s additions in registers where the row has no tail
                    res[r * T + j] = if body == k {
                        crate::util::lanes::avx512::hsum16(acc[r][j])
                    } else {
                        let mut lanes = [0f32; 16];
                        _mm512_storeu_ps(lanes.as_mut_ptr(), acc[r][j]);
                        finish(&lanes, dtype, row, &xs[j * k..(j + 1) * k], body)
                    };
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512_packed {
    use std::arch::x86_64::*;

    use super::avx2::{check_block, sum_rows, Fin};
    use crate::checkpoint::DType;

    /// The body elements `cols` (whole 16s) of row `r` of a tile of 4 rows, f16/bf16/f32
    /// bytes from `src` on (element `cols.start` first), widened to f32 in AVX-512's layout
    /// at `dst` ([`super::packed_at`] with passes of 16: block `i / 16` of the 4 rows, row
    /// after row). The dtype is matched once, not per block (the generic loop spent 40% of
    /// a 16-token product there).
    ///
    /// # Safety
    /// The CPU has AVX-512F and F16C; `src` holds the elements of `cols`, `dst` the tile's
    /// bodies.
    #[target_feature(enable = "avx512f,avx2,fma,f16c")]
    pub unsafe fn widen_body(
        dtype: DType,
        src: *const u8,
        cols: std::ops::Range<usize>,
        r: usize,
        dst: *mut f32,
    ) {
        // SAFETY: the caller's contract.
        unsafe {
            match dtype {
                DType::F32 => widen_as::<0>(src, cols, r, dst),
                DType::F16 => widen_as::<1>(src, cols, r, dst),
                DType::BF16 => widen_as::<2>(src, cols, r, dst),
                DType::Quant(_) => unreachable!("quantized rows are dequantized first"),
            }
        }
    }

    /// [`widen_body`] for the dtype `D` stands for ([`super::dtype_of`]).
    ///
    /// # Safety
    /// As [`widen_body`].
    #[inline(always)]
    unsafe fn widen_as<const D: u8>(
        src: *const u8,
        cols: std::ops::Range<usize>,
        r: usize,
        dst: *mut f32,
    ) {
        // SAFETY: the caller's contract.
        unsafe {
            for i in cols.clone().step_by(16) {
                let v = super::avx512::load16(super::dtype_of(D), src, i - cols.start);
                _mm512_storeu_ps(dst.add((i / 16 * 4 + r) * 16), v);
            }
        }
    }

    /// [`super::avx2::packed_block`] on AVX-512 for 4 rows and `T` tokens whose bodies are
    /// laid out for passes of 16 lanes (`super::pack_tile`): each output's 16 lanes are one
    /// register, and each block of 16 elements is one load per row and per token and `4 *
    /// T` FMAs (24 accumulators at T = 6, no shuffles). The same FMAs per lane in the same
    /// order as every other kernel, so the same bits.
    ///
    /// # Safety
    /// The CPU has AVX-512F, AVX2 and FMA; with `fin`, `out + j * stride + i` (j < T, i <
    /// 4) may be written.
    #[target_feature(enable = "avx512f,avx2,fma")]
    pub unsafe fn packed_block<const T: usize>(
        rows: &[f32],
        xs: &[f32],
        body: usize,
        range: std::ops::Range<usize>,
        lanes: &mut [f32],
        fin: Option<Fin>,
    ) {
        const R: usize = 4;
        check_block(R, T, rows, xs, body, &range, lanes, fin.as_ref());
        // SAFETY: every index stays below the asserted bounds.
        unsafe {
            let lp = lanes.as_mut_ptr();
            // the lanes of output (r, j)
            let at = |r: usize, j: usize| lp.add((r * T + j) * 16);
            let mut acc = [[_mm512_setzero_ps(); T]; R];
            if range.start > 0 {
                for (r, acc_r) in acc.iter_mut().enumerate() {
                    for (j, a) in acc_r.iter_mut().enumerate() {
                        *a = _mm512_loadu_ps(at(r, j));
                    }
                }
            }
            let mut wp = rows.as_ptr().add(range.start * R);
            let mut xp = xs.as_ptr().add(range.start * T);
            for _ in 0..(range.end - range.start) / 16 {
                let w: [__m512; R] = std::array::from_fn(|r| _mm512_loadu_ps(wp.add(16 * r)));
                // indexed loops: with iterators over `acc`, LLVM kept some on the stack
                #[allow(clippy::needless_range_loop)]
                for j in 0..T {
                    let x = _mm512_loadu_ps(xp.add(16 * j));
                    for r in 0..R {
                        acc[r][j] = _mm512_fmadd_ps(w[r], x, acc[r][j]);
                    }
                }
                (wp, xp) = (wp.add(16 * R), xp.add(16 * T));
            }
            for (r, acc_r) in acc.iter().enumerate() {
                for (j, a) in acc_r.iter().enumerate() {
                    _mm512_storeu_ps(at(r, j), *a);
                }
            }
            // (the sums read the lanes back: with the accumulators used after the loop,
            // LLVM kept a third of them on the stack inside it)
            if let Some(fin) = &fin {
                for j in 0..T {
                    // per row: lanes 0-7 + lanes 8-15
                    let b = std::array::from_fn(|r| {
                        _mm256_add_ps(_mm256_loadu_ps(at(r, j)), _mm256_loadu_ps(at(r, j).add(8)))
                    });
                    sum_rows(b, fin, j);
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::finish;
    use crate::checkpoint::DType;
    use crate::util::isa::packed_at;

    /// 8 weights starting at element `i` of the row at `row`.
    ///
    /// # Safety
    /// The CPU has AVX2 and F16C, and `row` is valid for reads of 8 elements of `dtype`
    /// from element `i` on.
    #[inline(always)]
    unsafe fn load8(dtype: DType, row: *const u8, i: usize) -> __m256 {
        // SAFETY: the caller upholds the contract above.
        unsafe {
            match dtype {
                DType::F32 => _mm256_loadu_ps(row.add(4 * i) as *const f32),
                DType::F16 => _mm256_cvtph_ps(_mm_loadu_si128(row.add(2 * i) as *const __m128i)),
                DType::BF16 => {
                    let h = _mm_loadu_si128(row.add(2 * i) as *const __m128i);
                    _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16))
                }
                DType::Quant(_) => unreachable!("quantized rows are widened first"),
            }
        }
    }

    /// Widens the f16/bf16/f32 values in `src` to f32 in `dst` (as many as it holds).
    ///
    /// # Safety
    /// The CPU has AVX2 and F16C.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn widen(dtype: DType, src: &[u8], dst: &mut [f32]) {
        assert!(src.len() >= dst.len() * dtype.size());
        let vec = dst.len() - dst.len() % 8;
        // SAFETY: the caller upholds the contract above; every index is below `dst.len()`.
        unsafe {
            for i in (0..vec).step_by(8) {
                _mm256_storeu_ps(dst.as_mut_ptr().add(i), load8(dtype, src.as_ptr(), i));
            }
        }
        for (i, v) in dst.iter_mut().enumerate().skip(vec) {
            *v = super::weight(dtype, src, i);
        }
    }

    /// Elements `cols` of row `r` (`src`, from element `cols.start` on) of f16/bf16/f32
    /// widened to f32 in `dst`, 4 rows of `k` as `super::widen_cols` lays them out: the
    /// body's elements by `super::pack_tile` for passes of `pass` lanes, the tail (if
    /// `cols` reaches it) after the 4 bodies. `cols` starts on a block of 16 and ends on
    /// one or at `k`.
    ///
    /// # Safety
    /// The CPU has AVX2 and F16C.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn widen_cols(
        dtype: DType,
        src: &[u8],
        cols: std::ops::Range<usize>,
        r: usize,
        k: usize,
        pass: usize,
        dst: &mut [f32],
    ) {
        const R: usize = 4;
        let body = k - k % 16;
        let (c0, mid) = (cols.start, cols.end.min(body));
        assert!(r < R && dst.len() >= R * k && cols.end <= k);
        assert!(c0.is_multiple_of(16) && mid >= c0 && (mid - c0).is_multiple_of(16));
        assert!(src.len() >= cols.len() * dtype.size());
        // SAFETY: the caller upholds the contract above; the indices stay in `src` (below
        // `cols.len()`) and `dst` (below `R * body`, asserted).
        unsafe {
            let (s, d) = (src.as_ptr(), dst.as_mut_ptr());
            if pass == 16 {
                // SAFETY: passes of 16 are AVX-512's (`Isa::pass_lanes`): the CPU has
                // AVX-512F; the same elements to the same places as `packed_at`.
                super::avx512_packed::widen_body(dtype, s, c0..mid, r, d);
                return widen_tail(dtype, src, cols, r, k, dst);
            }
            // the dtype matched once, not for every 8 elements
            match dtype {
                DType::F32 => widen_as::<0>(s, c0..mid, r, body, d),
                DType::F16 => widen_as::<1>(s, c0..mid, r, body, d),
                DType::BF16 => widen_as::<2>(s, c0..mid, r, body, d),
                DType::Quant(_) => unreachable!("quantized rows are dequantized first"),
            }
        }
        widen_tail(dtype, src, cols, r, k, dst)
    }

    /// [`widen_cols`]' body elements `cols` (whole 16s, bytes from `s` on) for the dtype
    /// `D` stands for ([`super::dtype_of`]), in AVX2's layout ([`packed_at`] with passes
    /// of 8): lanes 0-7 of block `i / 16` at `(i / 16 * 4 + r) * 8`, lanes 8-15 as far
    /// again as the 4 rows' first halves take (`body * 2`).
    ///
    /// # Safety
    /// As [`widen_cols`].
    #[inline(always)]
    unsafe fn widen_as<const D: u8>(
        s: *const u8,
        cols: std::ops::Range<usize>,
        r: usize,
        body: usize,
        d: *mut f32,
    ) {
        // SAFETY: the caller's contract.
        unsafe {
            let dtype = super::dtype_of(D);
            for i in cols.clone().step_by(16) {
                let at = (i / 16 * 4 + r) * 8;
                debug_assert_eq!(at + 2 * body, packed_at(i + 8, r, 4, body, 8));
                _mm256_storeu_ps(d.add(at), load8(dtype, s, i - cols.start));
                _mm256_storeu_ps(d.add(at + 2 * body), load8(dtype, s, i + 8 - cols.start));
            }
        }
    }

    /// The elements of `cols` past the last whole 16 of a row of `k` (row `r` of a tile
    /// of 4, bytes `src` from `cols.start` on), after the tile's 4 bodies in `dst`.
    fn widen_tail(
        dtype: DType,
        src: &[u8],
        cols: std::ops::Range<usize>,
        r: usize,
        k: usize,
        dst: &mut [f32],
    ) {
        let body = k - k % 16;
        let tail = &mut dst[4 * body + r * (k - body)..][..k - body];
        for i in cols.start.max(body)..cols.end {
            tail[i - body] = super::weight(dtype, src, i - cols.start);
        }
    }

    /// `R` weight rows times `T` token rows, each 16-lane accumulator in two registers.
    ///
    /// # Safety
    /// The CPU has AVX2, FMA and F16C; `rows` holds `R` rows of `k` elements of `dtype`,
    /// `xs` holds `T` rows of `k` f32, and `res` holds `R * T` values.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn tile<const R: usize, const T: usize>(
        dtype: DType,
        rows: &[u8],
        xs: &[f32],
        k: usize,
        res: &mut [f32],
    ) {
        // SAFETY: the caller upholds the contract above.
        unsafe {
            let row_bytes = k * dtype.size();
            let wp = rows.as_ptr();
            let xp = xs.as_ptr();
            let mut acc = [[[_mm256_setzero_ps(); 2]; T]; R];
            let body = k - k % 16;
            let mut i = 0;
            while i < body {
                for r in 0..R {
                    // as in the AVX-512 kernel
                    let ahead = wp.wrapping_add((r + R) * row_bytes + i * dtype.size());
                    _mm_prefetch::<_MM_HINT_T0>(ahead as *const i8);
                }
                for h in 0..2 {
                    let mut xv = [_mm256_setzero_ps(); T];
                    for (j, v) in xv.iter_mut().enumerate() {
                        *v = _mm256_loadu_ps(xp.add(j * k + i + 8 * h));
                    }
                    for (r, acc_r) in acc.iter_mut().enumerate() {
                        let w = load8(dtype, wp.add(r * row_bytes), i + 8 * h);
                        for j in 0..T {
                            acc_r[j][h] = _mm256_fmadd_ps(w, xv[j], acc_r[j][h]);
                        }
                    }
                }
                i += 16;
            }
            if body == k {
                // `finish`'s additions in registers: the row has no tail
                for r in 0..R {
                    for j in 0..T {
                        res[r * T + j] = crate::util::lanes::avx2::hsum16(acc[r][j]);
                    }
                }
                return;
            }
            let mut lanes = [[[0f32; 16]; T]; R];
            for r in 0..R {
                for j in 0..T {
                    _mm256_storeu_ps(lanes[r][j].as_mut_ptr(), acc[r][j][0]);
                    _mm256_storeu_ps(lanes[r][j].as_mut_ptr().add(8), acc[r][j][1]);
                }
            }
            finish_tile(&lanes, dtype, rows, xs, k, res);
        }
    }

    /// `res[r * T + j]`: the lanes of row `r` and token `j` summed, then the row's tail.
    fn finish_tile<const R: usize, const T: usize>(
        lanes: &[[[f32; 16]; T]; R],
        dtype: DType,
        rows: &[u8],
        xs: &[f32],
        k: usize,
        res: &mut [f32],
    ) {
        let (row_bytes, body) = (k * dtype.size(), k - k % 16);
        for r in 0..R {
            let row = &rows[r * row_bytes..(r + 1) * row_bytes];
            for j in 0..T {
                res[r * T + j] = finish(&lanes[r][j], dtype, row, &xs[j * k..(j + 1) * k], body);
            }
        }
    }

    /// [`tile`] with the 16 lanes' two halves run one after the other: lanes 0-7 over the
    /// whole row, then lanes 8-15. Each lane's FMAs are the same in the same order (the
    /// halves never mix before `finish`), so the bits are; the tile needs `R * T`
    /// accumulator registers instead of `2 * R * T`, and its rows and activations stay in
    /// L1 for the second half.
    ///
    /// # Safety
    /// As for [`tile`].
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn tile_halves<const R: usize, const T: usize>(
        dtype: DType,
        rows: &[u8],
        xs: &[f32],
        k: usize,
        res: &mut [f32],
    ) {
        // SAFETY: the caller upholds the contract above.
        unsafe {
            let row_bytes = k * dtype.size();
            let wp = rows.as_ptr();
            let xp = xs.as_ptr();
            let body = k - k % 16;
            let mut lanes = [[[0f32; 16]; T]; R];
            for h in 0..2 {
                let mut acc = [[_mm256_setzero_ps(); T]; R];
                let mut i = 8 * h;
                while i < body {
                    let mut xv = [_mm256_setzero_ps(); T];
                    for (j, v) in xv.iter_mut().enumerate() {
                        *v = _mm256_loadu_ps(xp.add(j * k + i));
                    }
                    for (r, acc_r) in acc.iter_mut().enumerate() {
                        let w = load8(dtype, wp.add(r * row_bytes), i);
                        for j in 0..T {
                            acc_r[j] = _mm256_fmadd_ps(w, xv[j], acc_r[j]);
                        }
                    }
                    i += 16;
                }
                for r in 0..R {
                    for j in 0..T {
                        _mm256_storeu_ps(lanes[r][j].as_mut_ptr().add(8 * h), acc[r][j]);
                    }
                }
            }
            finish_tile(&lanes, dtype, rows, xs, k, res);
        }
    }

    /// Where the last block of [`packed_block`] writes its outputs' sums: token `j`'s 4
    /// rows at `out + j * stride`, each plus its `bias`.
    pub struct Fin<'a> {
        pub out: *mut f32,
        pub stride: usize,
        pub bias: Option<&'a [f32]>,
    }

    /// The bounds both `packed_block` kernels (this one's and AVX-512's) index within: `r`
    /// rows' and `t` tokens' bodies (`body` elements each) and their outputs' lanes, a
    /// range of whole blocks of 16 inside the body, and `fin` only with 4 rows, at the
    /// body's last block, with 4 biases if any.
    #[allow(clippy::too_many_arguments)]
    pub fn check_block(
        r: usize,
        t: usize,
        rows: &[f32],
        xs: &[f32],
        body: usize,
        range: &std::ops::Range<usize>,
        lanes: &[f32],
        fin: Option<&Fin>,
    ) {
        assert!(
            fin.is_none_or(|f| r == 4 && range.end == body && f.bias.is_none_or(|b| b.len() == 4))
        );
        assert!(rows.len() >= r * body && xs.len() >= t * body && lanes.len() >= r * t * 16);
        assert!(
            range.end <= body && range.start.is_multiple_of(16) && range.end.is_multiple_of(16)
        );
    }

    /// The outputs of token `j` for 4 rows, written at `fin.out + j * fin.stride` (plus
    /// bias): `b[r]` is row `r`'s lanes 0-7 plus its lanes 8-15 (`finish`'s first step);
    /// each is summed on in `finish`'s order, the 4 rows at once.
    ///
    /// # Safety
    /// The CPU has AVX2; `fin.out + j * fin.stride + i` (i < 4) may be written.
    #[inline(always)]
    pub unsafe fn sum_rows(b: [__m256; 4], fin: &Fin, j: usize) {
        // SAFETY: register operations, and the store the caller allows.
        unsafe {
            // per row: c = b's quarters added
            let c: [__m128; 4] = std::array::from_fn(|r| {
                _mm_add_ps(_mm256_castps256_ps128(b[r]), _mm256_extractf128_ps(b[r], 1))
            });
            // the rows' c transposed: (c0 + c2) + (c1 + c3) for 4 rows at once
            let (t0, t1) = (_mm_unpacklo_ps(c[0], c[1]), _mm_unpacklo_ps(c[2], c[3]));
            let (t2, t3) = (_mm_unpackhi_ps(c[0], c[1]), _mm_unpackhi_ps(c[2], c[3]));
            let (c0, c1) = (_mm_movelh_ps(t0, t1), _mm_movehl_ps(t1, t0));
            let (c2, c3) = (_mm_movelh_ps(t2, t3), _mm_movehl_ps(t3, t2));
            let mut sum = _mm_add_ps(_mm_add_ps(c0, c2), _mm_add_ps(c1, c3));
            if let Some(b) = fin.bias {
                sum = _mm_add_ps(sum, _mm_loadu_ps(b.as_ptr()));
            }
            _mm_storeu_ps(fin.out.add(j * fin.stride), sum);
        }
    }

    /// The FMAs of [`tile_halves`] over the elements `range` of the body only, on `R` rows
    /// and `T` tokens whose bodies (`body` elements each) are laid out by
    /// `super::pack_tile`, carrying each output's 16 lanes in `lanes` (`[row][token][lane]`,
    /// loaded before, stored after): blocks run in ascending order give the bits of one
    /// pass over the body. With `fin` (4 rows, the last block of a row with no tail), each
    /// output's lanes are summed instead in `finish`'s order, 4 rows at a time, and written
    /// there.
    ///
    /// # Safety
    /// The CPU has AVX2 and FMA; with `fin`, `out + j * stride + i` (j < T, i < 4) may be
    /// written.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn packed_block<const R: usize, const T: usize>(
        rows: &[f32],
        xs: &[f32],
        body: usize,
        range: std::ops::Range<usize>,
        lanes: &mut [f32],
        fin: Option<Fin>,
    ) {
        check_block(R, T, rows, xs, body, &range, lanes, fin.as_ref());
        // SAFETY: every index stays below the asserted bounds.
        unsafe {
            let lp = lanes.as_mut_ptr();
            for h in 0..2 {
                let mut acc = [[_mm256_setzero_ps(); T]; R];
                // the lanes of output (r, j) for this half
                let at = |r: usize, j: usize| lp.add((r * T + j) * 16 + 8 * h);
                if range.start > 0 {
                    for (r, acc_r) in acc.iter_mut().enumerate() {
                        for (j, a) in acc_r.iter_mut().enumerate() {
                            *a = _mm256_loadu_ps(at(r, j));
                        }
                    }
                }
                // this half's blocks of 8, each the rows' (tokens') in turn
                let (g0, g1) = (
                    h * body / 16 + range.start / 16,
                    h * body / 16 + range.end / 16,
                );
                let mut wp = rows.as_ptr().add(g0 * R * 8);
                let mut xp = xs.as_ptr().add(g0 * T * 8);
                for _ in g0..g1 {
                    let mut xv = [_mm256_setzero_ps(); T];
                    for (j, v) in xv.iter_mut().enumerate() {
                        *v = _mm256_loadu_ps(xp.add(j * 8));
                    }
                    for (r, acc_r) in acc.iter_mut().enumerate() {
                        let w = _mm256_loadu_ps(wp.add(r * 8));
                        for j in 0..T {
                            acc_r[j] = _mm256_fmadd_ps(w, xv[j], acc_r[j]);
                        }
                    }
                    (wp, xp) = (wp.add(R * 8), xp.add(T * 8));
                }
                if let (1, Some(fin)) = (h, &fin) {
                    #[allow(clippy::needless_range_loop)] // acc[r][j] over rows r
                    for j in 0..T {
                        // per row: lanes 0-7 + lanes 8-15
                        let b = std::array::from_fn(|r| {
                            _mm256_add_ps(_mm256_loadu_ps(at(r, j).sub(8)), acc[r][j])
                        });
                        sum_rows(b, fin, j);
                    }
                    continue;
                }
                for (r, acc_r) in acc.iter().enumerate() {
                    for (j, a) in acc_r.iter().enumerate() {
                        _mm256_storeu_ps(at(r, j), *a);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn simd_matches_portable_and_is_batch_invariant() {
        // odd sizes: row tails and a scalar tail; rows longer than one block of the AVX2
        // kernel (`KC`), split into three, with a tail and without (where the last block
        // writes the outputs itself)
        for (n, k) in [(37, 75), (37, 2 * KC + 52), (37, 2 * KC + 64)] {
            matches_portable(n, k);
        }
    }

    /// Quantized rows (dequantized a row tile at a time, laid out for the AVX2 kernel)
    /// give the bits of the f32 rows they dequantize to, in a batch and alone.
    #[test]
    fn quantized_rows_give_their_f32_products() {
        use crate::checkpoint::{AlignedBuf, GgmlType, Storage};
        use std::sync::Arc;
        let tensor = |dtype: DType, bytes: &[u8], shape: Vec<usize>| {
            let mut buf = AlignedBuf::new(bytes.len());
            buf.as_mut_slice()[..bytes.len()].copy_from_slice(bytes);
            HostTensor::view(
                "w",
                dtype,
                shape,
                Arc::new(Storage::Owned(buf)),
                0,
                bytes.len(),
            )
        };
        for (t, k) in [(GgmlType::Q8_0, 96), (GgmlType::Q4_K, 2304)] {
            let n = 37;
            let blocks = n * k / t.block_size();
            let src = super::super::dequant::tests::random_blocks(t, blocks, 7);
            let mut f32s = vec![0f32; n * k];
            super::super::dequant::rows_to_f32(Isa::Portable, DType::Quant(t), &src, &mut f32s);
            let f32_bytes: Vec<u8> = f32s.iter().flat_map(|v| v.to_le_bytes()).collect();
            let q = tensor(DType::Quant(t), &src, vec![n, k]);
            let f = tensor(DType::F32, &f32_bytes, vec![n, k]);
            let t_count = 71; // two blocks of tokens on AVX2
            let x: Vec<f32> = (0..t_count * k)
                .map(|i| (i * 104729 % 997) as f32 / 498.5 - 1.0)
                .collect();
            let isas = crate::util::isa::supported_isas();
            for (isa, tokens) in isas.into_iter().flat_map(|i| [(i, t_count), (i, 1)]) {
                let x = &x[..tokens * k];
                let (mut a, mut b) = (vec![0f32; tokens * n], vec![0f32; tokens * n]);
                linear_on(isa, x, tokens, &q, None, &mut a);
                linear_on(isa, x, tokens, &f, None, &mut b);
                for (i, (a, b)) in a.iter().zip(&b).enumerate() {
                    let what = format!("{isa:?} {t} t={tokens} element {i}: {a} vs {b}");
                    assert_eq!(a.to_bits(), b.to_bits(), "{what}");
                }
            }
        }
    }

    /// A quantized substitute's product as the backend runs it (tiles, or from
    /// `QUANT_BLOCKED_FROM` tokens on AVX2 the blocked product over dequantized row tiles)
    /// gives every token the bits of the portable `quant::qlinear` of that token alone.
    #[test]
    fn substitutes_give_the_bits_of_the_portable_product() {
        use crate::quant::{QuantConfig, QuantMethod};
        // 37 rows: whole row tiles and a chunk's rest; rows of 2,000+ elements: blocks of
        // elements (`KC`); groups of 64 and 32; up to 71 tokens: two blocks of tokens
        for ((n, k, group), bits) in [(37, 192, 64), (13, 2 * KC + 64, 32)]
            .into_iter()
            .flat_map(|s| [2u8, 3, 4, 8].map(|b| (s, b)))
        {
            let w: Vec<f32> = (0..n * k)
                .map(|i| ((i * 7919 % 1000) as f32 / 500.0 - 1.0) * 0.3)
                .collect();
            let method = QuantMethod::Rtn;
            let q = QMatrix::quantize(
                &w,
                n,
                k,
                &QuantConfig {
                    bits,
                    group,
                    method,
                },
            )
            .unwrap();
            let t_max = 71;
            let x: Vec<f32> = (0..t_max * k)
                .map(|i| (i * 104729 % 997) as f32 / 498.5 - 1.0)
                .collect();
            let bias: Vec<f32> = (0..n).map(|o| o as f32 * 0.37 - 5.0).collect();
            // the portable arithmetic of the activations `isa` takes (int8 on AVX-512 VNNI)
            let single = |int8: bool| -> Vec<Vec<f32>> {
                (0..t_max)
                    .map(|t| {
                        let mut o = vec![0f32; n];
                        let x = &x[t * k..(t + 1) * k];
                        let b = Some(&bias[..]);
                        crate::quant::qlinear_acts(Isa::Portable, int8, x, 1, &q, b, &mut o);
                        o
                    })
                    .collect()
            };
            let singles = [single(false), single(crate::quant::int8_supports(&q))];
            for isa in crate::util::isa::supported_isas() {
                let single = &singles[crate::quant::int8_applies(isa, &q) as usize];
                for t_count in [1, 2, 5, 6, 7, 8, 13, 71] {
                    let mut out = vec![0f32; t_count * n];
                    qlinear_on(isa, &x[..t_count * k], t_count, &q, Some(&bias), &mut out);
                    for (t, want) in single.iter().enumerate().take(t_count) {
                        assert_eq!(
                            &out[t * n..(t + 1) * n],
                            &want[..],
                            "{isa:?} bits {bits} k {k} batch {t_count}, token {t}"
                        );
                    }
                }
            }
        }
    }

    fn matches_portable(n: usize, k: usize) {
        let dir = std::env::temp_dir().join(format!("subspec-mm-{}-{k}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let w: Vec<f32> = (0..n * k)
            .map(|i| ((i * 7919 % 1000) as f32 / 500.0 - 1.0) * 0.3)
            .collect();
        let path = dir.join("model.safetensors");
        crate::checkpoint::safetensors::testutil::write_f16(
            &path,
            &[("w".into(), vec![n, k], w.clone())],
        );
        let weights = crate::checkpoint::Weights::open(&dir).unwrap();
        let wt = weights.get("w", &[n, k]).unwrap();
        // 139 tokens: three blocks of tokens in the AVX2 kernel (`token_block`: 64), of
        // 48, 48 and 43, so token tiles of 3 and 1; two on AVX-512 (128), of 72 and 67,
        // tiles of 6 and 1; 13: one block, tiles of 3 and 1 (on AVX-512, two full 6-token
        // tiles and a 1-token tail)
        let t_count = 139;
        let x: Vec<f32> = (0..t_count * k)
            .map(|i| (i * 104729 % 997) as f32 / 498.5 - 1.0)
            .collect();
        let bias: Vec<f32> = (0..n).map(|o| o as f32 * 0.37 - 5.0).collect();
        // every ISA this CPU has (an AVX-512 machine runs the AVX2 kernels too)
        for isa in crate::util::isa::supported_isas() {
            let mut batch = vec![0f32; t_count * n];
            linear_on(isa, &x, t_count, &wt, Some(&bias), &mut batch);
            // 2 and 3 tokens: the smallest batches, one row-tile kernel and the blocked one
            for tn in [2, 3, 13] {
                let mut first = vec![0f32; tn * n];
                linear_on(isa, &x[..tn * k], tn, &wt, Some(&bias), &mut first);
                assert_eq!(&batch[..tn * n], &first[..], "{isa:?} {tn} tokens");
            }
            for t in 0..t_count {
                let mut single = vec![0f32; n];
                linear_on(
                    isa,
                    &x[t * k..(t + 1) * k],
                    1,
                    &wt,
                    Some(&bias),
                    &mut single,
                );
                assert_eq!(&batch[t * n..(t + 1) * n], &single[..], "{isa:?} token {t}");
                #[allow(clippy::needless_range_loop)]
                for o in 0..n {
                    let p = dot_portable(
                        DType::F16,
                        &wt.bytes()[o * k * 2..(o + 1) * k * 2],
                        &x[t * k..(t + 1) * k],
                    );
                    assert_eq!(p + bias[o], single[o], "{isa:?} row {o} token {t}");
                }
            }
        }
        // Every kernel this CPU can run gives the portable bits, for every tile shape and
        // weight dtype.
        let f16_rows = wt.bytes().to_vec();
        let f32_rows: Vec<u8> = w.iter().flat_map(|v| v.to_le_bytes()).collect();
        let bf16_rows: Vec<u8> = w
            .iter()
            .flat_map(|v| ((v.to_bits() >> 16) as u16).to_le_bytes())
            .collect();
        for (dtype, bytes) in [
            (DType::F16, &f16_rows),
            (DType::F32, &f32_rows),
            (DType::BF16, &bf16_rows),
        ] {
            let rb = k * dtype.size();
            for isa in crate::util::isa::supported_isas() {
                for (rr, tt) in [
                    (8, 1),
                    (4, 1),
                    (4, 2),
                    (4, 3),
                    (4, 6),
                    (2, 9),
                    (2, 12),
                    (1, 1),
                    (1, 7),
                ] {
                    let mut res = [0f32; 8 * MAX_TT];
                    dot_tile(
                        isa,
                        dtype,
                        &bytes[..rr * rb],
                        rr,
                        &x[..tt * k],
                        tt,
                        k,
                        &mut res,
                    );
                    for i in 0..rr {
                        for j in 0..tt {
                            let p = dot_portable(
                                dtype,
                                &bytes[i * rb..(i + 1) * rb],
                                &x[j * k..(j + 1) * k],
                            );
                            assert_eq!(res[i * tt + j], p, "{isa:?} {dtype:?} tile {rr}x{tt}");
                        }
                    }
                }
            }
        }
        std::fs::remove_dir_all(&dir).ok();
    }
}
