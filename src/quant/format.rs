//! [`QMatrix`]: the packed storage of a quantized weight matrix.
//!
//! Two planes, each row-major over the `rows` output features:
//!
//! - **codes** (`u8`): row `r` occupies bytes `r * row_bytes .. (r + 1) * row_bytes` with
//!   `row_bytes = cols * bits / 8`; a row is `cols / 32` *blocks* of 32 consecutive codes
//!   (block `b` holds columns `32b .. 32b + 32`), each `4 * bits` bytes:
//!   - 8 bits: byte `j` is code `j`;
//!   - 4 bits: byte `j < 16` is `code[j] | code[j + 16] << 4`;
//!   - 2 bits: byte `j < 8` is `code[j] | code[j + 8] << 2 | code[j + 16] << 4 | code[j + 24] << 6`;
//!   - 3 bits (true 3-bit storage, 12 bytes): bytes `0..8` hold the low two bits of each
//!     code in the 2-bit layout, bytes `8..12` a little-endian `u32` whose bit `j` is bit 2
//!     of `code[j]`.
//!
//!   The layout makes "16 codes in order" a few shifts and masks of one load, on a CPU
//!   (SSE/AVX) as on a GPU (a thread reading one `u32`/`uint4`).
//! - **params** (f16, little-endian): `2 * rows * groups` values; group `g` of row `r` has
//!   `scale` at index `2 * (r * groups + g)` and `min` right after it.
//!
//! A weight is `w = fma(q as f32, scale as f32, min as f32)`, exactly that in f32 (one
//! rounding): [`QMatrix::dequantize`] and every kernel compute it the same way. In HQQ's
//! terms (`W_q = round(W * s + z)`) `scale = 1 / s` and `min = -z / s`; the codes are
//! chosen with the f16-rounded `scale` and `min`, so they are consistent with them.

use half::f16;
use half::slice::HalfFloatSliceExt;

use super::{hqq, QuantConfig};
use crate::checkpoint::{DType, HostTensor};
use crate::error::{Error, Result};

/// Codes per packing block.
pub(crate) const BLOCK: usize = 32;

/// Bytes of the substitute of a `rows x cols` matrix in format `q` (codes plus an f16
/// scale and minimum per group): what [`QMatrix::bytes`] will be, known before quantizing.
pub fn substitute_bytes(rows: u64, cols: u64, q: &QuantConfig) -> u64 {
    rows * cols * q.bits as u64 / 8 + rows * (cols / q.group as u64) * 4
}

/// A quantized weight matrix `[rows = out_features, cols = in_features]`; see the module
/// documentation for the exact byte layout.
#[derive(Clone, PartialEq)]
pub struct QMatrix {
    pub(crate) rows: usize,
    pub(crate) cols: usize,
    pub(crate) bits: u8,
    pub(crate) group: usize,
    /// `rows * cols * bits / 8` bytes.
    pub(crate) codes: Vec<u8>,
    /// `2 * rows * cols / group` f16: `(scale, min)` per group.
    pub(crate) params: Vec<f16>,
}

impl std::fmt::Debug for QMatrix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "QMatrix({}x{}, {} bits, group {})",
            self.rows, self.cols, self.bits, self.group
        )
    }
}

impl QMatrix {
    /// Quantizes `w` (row-major `rows x cols`, f32) with `cfg`. Fails with an
    /// invalid-argument error for a bad `cfg`, a `cols` that is not a multiple of the
    /// group size, a wrong `w.len()`, or non-finite / out-of-f16-range weights.
    pub fn quantize(w: &[f32], rows: usize, cols: usize, cfg: &QuantConfig) -> Result<QMatrix> {
        if w.len() != rows * cols {
            return Err(Error::invalid_argument(format!(
                "quantize: {} weights given for a {rows}x{cols} matrix",
                w.len()
            )));
        }
        hqq::quantize_rows(rows, cols, cfg, |r, buf| {
            buf.copy_from_slice(&w[r * cols..(r + 1) * cols])
        })
    }

    /// Quantizes a 2-D checkpoint tensor (`[out_features, in_features]`, any dtype), each
    /// row converted to f32 in the task that quantizes it.
    pub fn quantize_tensor(t: &HostTensor, cfg: &QuantConfig) -> Result<QMatrix> {
        if t.shape.len() != 2 {
            return Err(Error::invalid_argument(format!(
                "quantize: tensor `{}` has shape {:?}, expected a matrix",
                t.name, t.shape
            )));
        }
        let (rows, cols) = (t.shape[0], t.shape[1]);
        let bytes = t.bytes();
        let rb = t.row_bytes();
        let dtype = t.dtype;
        hqq::quantize_rows(rows, cols, cfg, |r, buf| {
            let row = &bytes[r * rb..(r + 1) * rb];
            match dtype {
                DType::Quant(_) => crate::checkpoint::to_f32(dtype, row, buf),
                DType::F32 => {
                    for (v, b) in buf.iter_mut().zip(row.chunks_exact(4)) {
                        *v = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                    }
                }
                DType::BF16 => {
                    for (v, b) in buf.iter_mut().zip(row.chunks_exact(2)) {
                        *v = f32::from_bits((u16::from_le_bytes([b[0], b[1]]) as u32) << 16);
                    }
                }
                DType::F16 => {
                    // through an aligned scratch, so that `half` converts with F16C
                    let mut tmp = [f16::ZERO; 256];
                    for (out, src) in buf.chunks_mut(256).zip(row.chunks(512)) {
                        let tmp = &mut tmp[..out.len()];
                        for (h, b) in tmp.iter_mut().zip(src.chunks_exact(2)) {
                            *h = f16::from_le_bytes([b[0], b[1]]);
                        }
                        tmp.convert_to_f32_slice(out);
                    }
                }
            }
        })
        .map_err(|e| Error::invalid_argument(format!("tensor `{}`: {}", t.name, e.message())))
    }

    /// Output features.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Input features.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Bits per code.
    pub fn bits(&self) -> u8 {
        self.bits
    }

    /// Weights per group.
    pub fn group(&self) -> usize {
        self.group
    }

    /// Groups per row.
    pub fn groups_per_row(&self) -> usize {
        self.cols / self.group
    }

    /// Bytes of one row of codes (`cols * bits / 8`).
    pub fn row_bytes(&self) -> usize {
        self.cols * self.bits as usize / 8
    }

    /// The codes plane (see the module documentation).
    pub fn codes(&self) -> &[u8] {
        &self.codes
    }

    /// The params plane: `(scale, min)` per group, row-major.
    pub fn params(&self) -> &[f16] {
        &self.params
    }

    /// True storage in bytes: codes plus params.
    pub fn bytes(&self) -> usize {
        self.codes.len() + 2 * self.params.len()
    }

    /// The whole matrix reconstructed, row-major f32.
    pub fn dequantize(&self) -> Vec<f32> {
        let mut out = vec![0f32; self.rows * self.cols];
        for (r, row) in out.chunks_exact_mut(self.cols.max(1)).enumerate() {
            self.dequantize_row(r, row);
        }
        out
    }

    /// Row `r` reconstructed into `out` (`cols` values).
    pub fn dequantize_row(&self, r: usize, out: &mut [f32]) {
        assert_eq!(out.len(), self.cols);
        let rb = self.row_bytes();
        let bb = block_bytes(self.bits);
        let codes = &self.codes[r * rb..(r + 1) * rb];
        let gpr = self.groups_per_row();
        let mut q = [0u8; BLOCK];
        for (b, chunk) in out.chunks_exact_mut(BLOCK).enumerate() {
            unpack_block(self.bits, &codes[b * bb..(b + 1) * bb], &mut q);
            let g = r * gpr + b * BLOCK / self.group;
            let (scale, min) = (self.params[2 * g].to_f32(), self.params[2 * g + 1].to_f32());
            for (o, &c) in chunk.iter_mut().zip(&q) {
                *o = (c as f32).mul_add(scale, min);
            }
        }
    }
}

/// Bytes of one block of 32 codes.
pub(crate) const fn block_bytes(bits: u8) -> usize {
    4 * bits as usize
}

/// Packs 32 codes (each `< 2^bits`) into `out` (`block_bytes(bits)` bytes).
pub(crate) fn pack_block(bits: u8, q: &[u8; BLOCK], out: &mut [u8]) {
    match bits {
        8 => out.copy_from_slice(q),
        4 => {
            for j in 0..16 {
                out[j] = q[j] | q[j + 16] << 4;
            }
        }
        2 => pack2(q, out),
        3 => {
            pack2(q, &mut out[..8]);
            let mut hi = 0u32;
            for (j, &c) in q.iter().enumerate() {
                hi |= ((c as u32 >> 2) & 1) << j;
            }
            out[8..12].copy_from_slice(&hi.to_le_bytes());
        }
        _ => unreachable!("bits {bits}"),
    }
}

/// The low two bits of 32 codes in the 2-bit layout (8 bytes).
fn pack2(q: &[u8; BLOCK], out: &mut [u8]) {
    for j in 0..8 {
        out[j] = (q[j] & 3) | (q[j + 8] & 3) << 2 | (q[j + 16] & 3) << 4 | (q[j + 24] & 3) << 6;
    }
}

/// Unpacks one block (`block_bytes(bits)` bytes) into 32 codes.
pub(crate) fn unpack_block(bits: u8, b: &[u8], q: &mut [u8; BLOCK]) {
    match bits {
        8 => q.copy_from_slice(&b[..BLOCK]),
        4 => {
            for j in 0..16 {
                q[j] = b[j] & 15;
                q[j + 16] = b[j] >> 4;
            }
        }
        2 | 3 => {
            for j in 0..8 {
                for s in 0..4 {
                    q[j + 8 * s] = (b[j] >> (2 * s)) & 3;
                }
            }
            if bits == 3 {
                let hi = u32::from_le_bytes([b[8], b[9], b[10], b[11]]);
                for (j, c) in q.iter_mut().enumerate() {
                    *c |= (((hi >> j) & 1) as u8) << 2;
                }
            }
        }
        _ => unreachable!("bits {bits}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn substitute_bytes_match_the_format() {
        // 4-bit, group 64: half a byte per weight plus 4 bytes per 64 weights.
        assert_eq!(
            substitute_bytes(10, 128, &QuantConfig::default()),
            10 * 64 + 10 * 2 * 4
        );
        let w: Vec<f32> = (0..10 * 128).map(|i| (i % 17) as f32 * 0.01).collect();
        let m = QMatrix::quantize(&w, 10, 128, &QuantConfig::default()).unwrap();
        assert_eq!(
            m.bytes() as u64,
            substitute_bytes(10, 128, &QuantConfig::default())
        );
    }

    #[test]
    fn pack_unpack_every_position() {
        for bits in [2u8, 3, 4, 8] {
            let maxq = (1u16 << bits) - 1;
            for pos in 0..BLOCK {
                for val in [1u16, maxq / 2 + 1, maxq] {
                    // one non-zero code at `pos`, then all codes distinct-ish
                    let mut q = [0u8; BLOCK];
                    q[pos] = val as u8;
                    let mut b = vec![0u8; block_bytes(bits)];
                    pack_block(bits, &q, &mut b);
                    let mut back = [0u8; BLOCK];
                    unpack_block(bits, &b, &mut back);
                    assert_eq!(back, q, "bits {bits} pos {pos} val {val}");
                }
            }
            let mut q = [0u8; BLOCK];
            for (j, c) in q.iter_mut().enumerate() {
                *c = ((j * 7 + 3) % (maxq as usize + 1)) as u8;
            }
            let mut b = vec![0u8; block_bytes(bits)];
            pack_block(bits, &q, &mut b);
            let mut back = [0u8; BLOCK];
            unpack_block(bits, &b, &mut back);
            assert_eq!(back, q, "bits {bits}");
        }
    }

    #[test]
    fn documented_4bit_and_3bit_bytes() {
        let mut q = [0u8; BLOCK];
        q[0] = 0x3;
        q[16] = 0xA;
        let mut b = [0u8; 16];
        pack_block(4, &q, &mut b);
        assert_eq!(b[0], 0xA3);
        let mut q = [0u8; BLOCK];
        q[1] = 0b111; // low bits 11 at byte 1 bits 0..2, high bit at bit 1 of the u32
        q[9] = 0b010; // byte 1 bits 2..4
        let mut b = [0u8; 12];
        pack_block(3, &q, &mut b);
        assert_eq!(b[1], 0b1011);
        assert_eq!(u32::from_le_bytes([b[8], b[9], b[10], b[11]]), 0b10);
    }
}
