//! ggml tensor types as GGUF stores them: the numbering, the block layout (elements and
//! bytes per block) and reference dequantizers, row of blocks -> f32.
//!
//! The dequantizers are the definition of "the dequantized model": each is bit-identical
//! to gguf-py's `gguf.quants.dequantize` (0.17.1), which the golden tests check on every
//! tensor of both test files and on synthetic blocks of every supported type. They follow
//! numpy's float32 arithmetic step by step: the f16 scales widen to f32 exactly (NaN
//! payloads kept, as numpy does), and each product and sum is one f32 operation in
//! numpy's order (Q4_K: `(d * sc) * q - (dmin * m)`). In these formats every product is
//! exact in f32 (an 11-bit f16 significand times integers of at most 12 bits together),
//! so the only rounding anywhere is the final `+ m` / `- dmin * m` of Q4_1, Q5_1, Q4_K and
//! Q5_K; Q4_0, Q5_0, Q8_0 and Q6_K dequantize exactly. A kernel that reorders the
//! products, or fuses the last step into an FMA, therefore gets the same bits, as long as
//! it computes in f32. The code is plain scalar: the reference faster kernels are tested
//! against, and what load-time dequantization can use directly.

use crate::error::{Error, Result};

/// Elements per block of the K-quants.
pub(crate) const QK_K: usize = 256;

/// A ggml tensor type this crate reads. Other types are refused when a file is parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[allow(non_camel_case_types)]
pub enum GgmlType {
    /// IEEE single precision.
    F32,
    /// IEEE half precision.
    F16,
    /// bfloat16.
    BF16,
    /// 32 x 4 bits, one f16 scale, offset -8.
    Q4_0,
    /// 32 x 4 bits, f16 scale and f16 minimum.
    Q4_1,
    /// 32 x 5 bits, one f16 scale, offset -16.
    Q5_0,
    /// 32 x 5 bits, f16 scale and f16 minimum.
    Q5_1,
    /// 32 x int8, one f16 scale.
    Q8_0,
    /// 256 x 4 bits in 8 sub-blocks with 6-bit scales and minimums.
    Q4_K,
    /// 256 x 5 bits in 8 sub-blocks with 6-bit scales and minimums.
    Q5_K,
    /// 256 x 6 bits in 16 sub-blocks with int8 scales.
    Q6_K,
}

impl GgmlType {
    /// Every supported type.
    pub const ALL: [GgmlType; 11] = [
        GgmlType::F32,
        GgmlType::F16,
        GgmlType::BF16,
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q5_0,
        GgmlType::Q5_1,
        GgmlType::Q8_0,
        GgmlType::Q4_K,
        GgmlType::Q5_K,
        GgmlType::Q6_K,
    ];

    /// The ggml type id (`enum ggml_type`), as stored in a GGUF tensor info.
    pub(crate) fn id(self) -> u32 {
        match self {
            GgmlType::F32 => 0,
            GgmlType::F16 => 1,
            GgmlType::Q4_0 => 2,
            GgmlType::Q4_1 => 3,
            GgmlType::Q5_0 => 6,
            GgmlType::Q5_1 => 7,
            GgmlType::Q8_0 => 8,
            GgmlType::Q4_K => 12,
            GgmlType::Q5_K => 13,
            GgmlType::Q6_K => 14,
            GgmlType::BF16 => 30,
        }
    }

    /// The supported type with ggml id `id`, or why not: [`TypeRefusal`].
    pub(crate) fn from_id(id: u32) -> std::result::Result<GgmlType, TypeRefusal> {
        match GgmlType::ALL.into_iter().find(|t| t.id() == id) {
            Some(t) => Ok(t),
            None => match ggml_type_name(id) {
                Some(name) => Err(TypeRefusal::Unsupported(name)),
                None => Err(TypeRefusal::Unknown(id)),
            },
        }
    }

    /// The ggml name (`Q4_K`, `BF16`, ...).
    pub fn name(self) -> &'static str {
        ggml_type_name(self.id()).expect("every supported type has a name")
    }

    /// Elements per block (1 for the float types).
    pub fn block_size(self) -> usize {
        match self {
            GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 => 1,
            GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q5_0 | GgmlType::Q5_1 | GgmlType::Q8_0 => {
                32
            }
            GgmlType::Q4_K | GgmlType::Q5_K | GgmlType::Q6_K => QK_K,
        }
    }

    /// Bytes per block.
    pub fn block_bytes(self) -> usize {
        match self {
            GgmlType::F32 => 4,
            GgmlType::F16 | GgmlType::BF16 => 2,
            GgmlType::Q4_0 => 18,
            GgmlType::Q4_1 => 20,
            GgmlType::Q5_0 => 22,
            GgmlType::Q5_1 => 24,
            GgmlType::Q8_0 => 34,
            GgmlType::Q4_K => 144,
            GgmlType::Q5_K => 176,
            GgmlType::Q6_K => 210,
        }
    }

    /// Bytes of `n` elements, or `None` when `n` is not a whole number of blocks (or the
    /// size overflows).
    pub fn bytes_for(self, n: usize) -> Option<usize> {
        if !n.is_multiple_of(self.block_size()) {
            return None;
        }
        (n / self.block_size()).checked_mul(self.block_bytes())
    }
}

impl std::fmt::Display for GgmlType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Why a ggml type id is not a [`GgmlType`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TypeRefusal {
    /// A ggml type this crate does not read (its name).
    Unsupported(&'static str),
    /// An id ggml (as of gguf-py 0.17.1) does not define, or one since removed.
    Unknown(u32),
}

/// The ggml name of type id `id`, for every type gguf-py 0.17.1 knows (and MXFP4), or
/// `None` for ids never assigned or since removed.
pub(crate) fn ggml_type_name(id: u32) -> Option<&'static str> {
    Some(match id {
        0 => "F32",
        1 => "F16",
        2 => "Q4_0",
        3 => "Q4_1",
        6 => "Q5_0",
        7 => "Q5_1",
        8 => "Q8_0",
        9 => "Q8_1",
        10 => "Q2_K",
        11 => "Q3_K",
        12 => "Q4_K",
        13 => "Q5_K",
        14 => "Q6_K",
        15 => "Q8_K",
        16 => "IQ2_XXS",
        17 => "IQ2_XS",
        18 => "IQ3_XXS",
        19 => "IQ1_S",
        20 => "IQ4_NL",
        21 => "IQ3_S",
        22 => "IQ2_S",
        23 => "IQ4_XS",
        24 => "I8",
        25 => "I16",
        26 => "I32",
        27 => "I64",
        28 => "F64",
        29 => "IQ1_M",
        30 => "BF16",
        34 => "TQ1_0",
        35 => "TQ2_0",
        39 => "MXFP4",
        _ => return None,
    })
}

/// The names of the supported types, for error messages.
pub(crate) fn supported_names() -> String {
    GgmlType::ALL.map(|t| t.name()).join(", ")
}

/// IEEE half -> single, exactly as numpy's `npy_halfbits_to_floatbits`: every finite
/// value and infinity converts exactly, and a NaN keeps its sign and payload (a
/// signalling NaN stays signalling). Software, so the result never depends on the CPU.
pub(crate) fn f16_to_f32(h: u16) -> f32 {
    let sign = ((h as u32) & 0x8000) << 16;
    let exp = (h >> 10) & 0x1f;
    let mant = (h & 0x03ff) as u32;
    let bits = match exp {
        0 if mant == 0 => sign,
        0 => {
            // Subnormal: mant * 2^-24, exact in f32.
            let v = mant as f32 * f32::from_bits(0x3380_0000);
            sign | v.to_bits()
        }
        0x1f => sign | 0x7f80_0000 | (mant << 13),
        _ => sign | ((((h & 0x7fff) as u32) + 0x1_c000) << 13),
    };
    f32::from_bits(bits)
}

/// bfloat16 -> single (exact: the bits move up).
pub(crate) fn bf16_to_f32(h: u16) -> f32 {
    f32::from_bits((h as u32) << 16)
}

fn f16_at(b: &[u8], i: usize) -> f32 {
    f16_to_f32(u16::from_le_bytes([b[i], b[i + 1]]))
}

/// Dequantizes `bytes`, a whole number of `t` blocks (one row, several rows or a whole
/// tensor: blocks never straddle rows), into `out`, bit-identical to gguf-py.
///
/// Errors (`Internal`: a caller's bug, never the file's) when `bytes` is not exactly the
/// size of `out.len()` elements of `t`.
pub(crate) fn dequantize_row(t: GgmlType, bytes: &[u8], out: &mut [f32]) -> Result<()> {
    if t.bytes_for(out.len()) != Some(bytes.len()) {
        return Err(Error::internal(format!(
            "dequantize {t}: {} bytes for {} elements (block {} elements, {} bytes)",
            bytes.len(),
            out.len(),
            t.block_size(),
            t.block_bytes()
        )));
    }
    let (bs, bb) = (t.block_size(), t.block_bytes());
    let blocks = bytes.chunks_exact(bb).zip(out.chunks_exact_mut(bs));
    match t {
        GgmlType::F32 => {
            for (b, y) in blocks {
                y[0] = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            }
        }
        GgmlType::F16 => {
            for (b, y) in blocks {
                y[0] = f16_at(b, 0);
            }
        }
        GgmlType::BF16 => {
            for (b, y) in blocks {
                y[0] = bf16_to_f32(u16::from_le_bytes([b[0], b[1]]));
            }
        }
        GgmlType::Q4_0 => blocks.for_each(|(b, y)| q4_0(b, y)),
        GgmlType::Q4_1 => blocks.for_each(|(b, y)| q4_1(b, y)),
        GgmlType::Q5_0 => blocks.for_each(|(b, y)| q5_0(b, y)),
        GgmlType::Q5_1 => blocks.for_each(|(b, y)| q5_1(b, y)),
        GgmlType::Q8_0 => blocks.for_each(|(b, y)| q8_0(b, y)),
        GgmlType::Q4_K => blocks.for_each(|(b, y)| q4_k(b, y)),
        GgmlType::Q5_K => blocks.for_each(|(b, y)| q5_k(b, y)),
        GgmlType::Q6_K => blocks.for_each(|(b, y)| q6_k(b, y)),
    }
    Ok(())
}

/// Q4_0: `[d: f16][qs: 16 bytes]`; element `j < 16` is the low nibble of `qs[j]`,
/// element `16 + j` the high one; `d * (q - 8)`.
fn q4_0(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    let qs = &b[2..18];
    for j in 0..16 {
        y[j] = d * ((qs[j] & 0x0f) as i32 - 8) as f32;
        y[j + 16] = d * ((qs[j] >> 4) as i32 - 8) as f32;
    }
}

/// Q4_1: `[d: f16][m: f16][qs: 16 bytes]`; `(d * q) + m`.
fn q4_1(b: &[u8], y: &mut [f32]) {
    let (d, m) = (f16_at(b, 0), f16_at(b, 2));
    let qs = &b[4..20];
    for j in 0..16 {
        y[j] = d * (qs[j] & 0x0f) as f32 + m;
        y[j + 16] = d * (qs[j] >> 4) as f32 + m;
    }
}

/// The 5-bit values of a Q5_0/Q5_1 block: low nibbles as Q4, bit j of the little-endian
/// u32 `qh` is bit 4 of element j.
fn q5_values(qh: &[u8], qs: &[u8]) -> [u8; 32] {
    let qh = u32::from_le_bytes([qh[0], qh[1], qh[2], qh[3]]);
    let mut q = [0u8; 32];
    for j in 0..16 {
        q[j] = (qs[j] & 0x0f) | ((((qh >> j) & 1) as u8) << 4);
        q[j + 16] = (qs[j] >> 4) | ((((qh >> (j + 16)) & 1) as u8) << 4);
    }
    q
}

/// Q5_0: `[d: f16][qh: 4 bytes][qs: 16 bytes]`; `d * (q - 16)`.
fn q5_0(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    let q = q5_values(&b[2..6], &b[6..22]);
    for (y, q) in y.iter_mut().zip(q) {
        *y = d * (q as i32 - 16) as f32;
    }
}

/// Q5_1: `[d: f16][m: f16][qh: 4 bytes][qs: 16 bytes]`; `(d * q) + m`.
fn q5_1(b: &[u8], y: &mut [f32]) {
    let (d, m) = (f16_at(b, 0), f16_at(b, 2));
    let q = q5_values(&b[4..8], &b[8..24]);
    for (y, q) in y.iter_mut().zip(q) {
        *y = d * q as f32 + m;
    }
}

/// Q8_0: `[d: f16][qs: 32 x i8]`; `q * d`.
fn q8_0(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    for (y, &q) in y.iter_mut().zip(&b[2..34]) {
        *y = (q as i8) as f32 * d;
    }
}

/// The 8 six-bit scales and minimums packed in the 12 bytes of a Q4_K/Q5_K block
/// (gguf-py `Q4_K.get_scale_min`, ggml `get_scale_min_k4`).
fn k4_scale_min(s: &[u8]) -> ([u8; 8], [u8; 8]) {
    let (mut sc, mut mn) = ([0u8; 8], [0u8; 8]);
    for j in 0..4 {
        sc[j] = s[j] & 0x3f;
        mn[j] = s[j + 4] & 0x3f;
        sc[j + 4] = (s[j + 8] & 0x0f) | ((s[j] >> 2) & 0x30);
        mn[j + 4] = (s[j + 8] >> 4) | ((s[j + 4] >> 2) & 0x30);
    }
    (sc, mn)
}

/// Q4_K: `[d: f16][dmin: f16][scales: 12][qs: 128]`. Sub-block `j` (32 elements) takes
/// nibble `j % 2` of `qs[32 * (j / 2)..][..32]`; `(d * sc[j]) * q - (dmin * m[j])`.
fn q4_k(b: &[u8], y: &mut [f32]) {
    let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
    let (sc, mn) = k4_scale_min(&b[4..16]);
    let qs = &b[16..144];
    for j in 0..8 {
        let dj = d * sc[j] as f32;
        let mj = dmin * mn[j] as f32;
        let shift = 4 * (j % 2);
        let src = &qs[32 * (j / 2)..32 * (j / 2) + 32];
        for (y, &q) in y[32 * j..32 * j + 32].iter_mut().zip(src) {
            *y = dj * ((q >> shift) & 0x0f) as f32 - mj;
        }
    }
}

/// Q5_K: `[d: f16][dmin: f16][scales: 12][qh: 32][qs: 128]`; as Q4_K, with bit `j` of
/// `qh[l]` as bit 4 of element `l` of sub-block `j`.
fn q5_k(b: &[u8], y: &mut [f32]) {
    let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
    let (sc, mn) = k4_scale_min(&b[4..16]);
    let qh = &b[16..48];
    let qs = &b[48..176];
    for j in 0..8 {
        let dj = d * sc[j] as f32;
        let mj = dmin * mn[j] as f32;
        let shift = 4 * (j % 2);
        let src = &qs[32 * (j / 2)..32 * (j / 2) + 32];
        for l in 0..32 {
            let q = ((src[l] >> shift) & 0x0f) | (((qh[l] >> j) & 1) << 4);
            y[32 * j + l] = dj * q as f32 - mj;
        }
    }
}

/// Q6_K: `[ql: 128][qh: 64][scales: 16 x i8][d: f16]`. Element `e = 128 h + r` takes
/// nibble `r / 64` of `ql[64 h + r % 64]` and the two bits at `2 (r / 32)` of
/// `qh[32 h + r % 32]`; `(d * scales[e / 16]) * (q - 32)`.
fn q6_k(b: &[u8], y: &mut [f32]) {
    let (ql, qh, scales) = (&b[0..128], &b[128..192], &b[192..208]);
    let d = f16_at(b, 208);
    let mut dk = [0f32; 16];
    for (dk, &s) in dk.iter_mut().zip(scales) {
        *dk = d * (s as i8) as f32;
    }
    for (e, y) in y.iter_mut().enumerate().take(QK_K) {
        let (h, r) = (e / 128, e % 128);
        let lo = (ql[64 * h + r % 64] >> (4 * (r / 64))) & 0x0f;
        let hi = (qh[32 * h + r % 32] >> (2 * (r / 32))) & 0x03;
        let q = (lo | (hi << 4)) as i32 - 32;
        *y = dk[e / 16] * q as f32;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f16b(x: f32) -> [u8; 2] {
        half::f16::from_f32(x).to_bits().to_le_bytes()
    }

    fn deq(t: GgmlType, b: &[u8]) -> Vec<f32> {
        let mut out = vec![0f32; b.len() / t.block_bytes() * t.block_size()];
        dequantize_row(t, b, &mut out).unwrap();
        out
    }

    #[test]
    fn sizes_and_ids_match_ggml() {
        let expect = [
            (GgmlType::F32, 0, 1, 4),
            (GgmlType::F16, 1, 1, 2),
            (GgmlType::Q4_0, 2, 32, 18),
            (GgmlType::Q4_1, 3, 32, 20),
            (GgmlType::Q5_0, 6, 32, 22),
            (GgmlType::Q5_1, 7, 32, 24),
            (GgmlType::Q8_0, 8, 32, 34),
            (GgmlType::Q4_K, 12, 256, 144),
            (GgmlType::Q5_K, 13, 256, 176),
            (GgmlType::Q6_K, 14, 256, 210),
            (GgmlType::BF16, 30, 1, 2),
        ];
        for (t, id, bs, bb) in expect {
            assert_eq!(
                (t.id(), t.block_size(), t.block_bytes()),
                (id, bs, bb),
                "{t}"
            );
            assert_eq!(GgmlType::from_id(id), Ok(t));
        }
        assert_eq!(GgmlType::from_id(10), Err(TypeRefusal::Unsupported("Q2_K")));
        assert_eq!(GgmlType::from_id(99), Err(TypeRefusal::Unknown(99)));
        assert_eq!(GgmlType::from_id(4), Err(TypeRefusal::Unknown(4)));
        assert_eq!(GgmlType::Q4_K.bytes_for(512), Some(288));
        assert_eq!(GgmlType::Q4_K.bytes_for(100), None);
        assert_eq!(GgmlType::Q8_0.bytes_for(usize::MAX / 2 - 15), None);
    }

    #[test]
    fn f16_conversion_is_exact_and_keeps_nan_payloads() {
        for h in 0..=u16::MAX {
            let ours = f16_to_f32(h);
            let theirs = half::f16::from_bits(h).to_f32();
            if theirs.is_nan() {
                assert!(ours.is_nan());
                let exp =
                    0x7f80_0000 | (((h & 0x3ff) as u32) << 13) | (((h & 0x8000) as u32) << 16);
                assert_eq!(ours.to_bits(), exp, "{h:#06x}");
            } else {
                assert_eq!(ours.to_bits(), theirs.to_bits(), "{h:#06x}");
            }
        }
        assert_eq!(bf16_to_f32(0x3f80), 1.0);
        assert_eq!(bf16_to_f32(0xff81).to_bits(), 0xff81_0000);
    }

    /// What the module header claims: for every finite f16 scale and the largest integer
    /// factors the formats use (6-bit scale x 5-bit value for Q4_K/Q5_K, int8 scale x
    /// 6-bit value for Q6_K, int8 for Q8_0), the f32 products are exact.
    #[test]
    fn products_of_f16_scales_and_quant_integers_are_exact_in_f32() {
        let factors: [(f32, f32); 8] = [
            (63.0, 31.0),
            (63.0, 15.0),
            (61.0, 29.0),
            (-127.0, -32.0),
            (-128.0, 31.0),
            (-125.0, 27.0),
            (127.0, 1.0),
            (1.0, -128.0),
        ];
        for h in 0..=u16::MAX {
            let d = f16_to_f32(h);
            if !d.is_finite() {
                continue;
            }
            for (sc, q) in factors {
                let f32_result = (d * sc) * q;
                assert_eq!(
                    f32_result as f64,
                    d as f64 * sc as f64 * q as f64,
                    "{h:#06x}"
                );
            }
        }
    }

    #[test]
    fn float_types_decode_little_endian() {
        let mut b = Vec::new();
        b.extend_from_slice(&1.5f32.to_le_bytes());
        b.extend_from_slice(&(-2.0f32).to_le_bytes());
        assert_eq!(deq(GgmlType::F32, &b), [1.5, -2.0]);
        assert_eq!(deq(GgmlType::F16, &[0x00, 0x3c, 0x00, 0xc0]), [1.0, -2.0]);
        assert_eq!(deq(GgmlType::BF16, &[0x80, 0x3f, 0x40, 0xc0]), [1.0, -3.0]);
    }

    #[test]
    fn q4_0_and_q4_1_hand_made_blocks() {
        let mut b = f16b(0.5).to_vec();
        b.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
        let y = deq(GgmlType::Q4_0, &b);
        for j in 0..16 {
            assert_eq!(y[j], 0.5 * (j as f32 - 8.0));
            assert_eq!(y[j + 16], 0.5 * (7.0 - j as f32));
        }
        let mut b = f16b(0.25).to_vec();
        b.extend_from_slice(&f16b(-1.0));
        b.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
        let y = deq(GgmlType::Q4_1, &b);
        for j in 0..16 {
            assert_eq!(y[j], 0.25 * j as f32 - 1.0);
            assert_eq!(y[j + 16], 0.25 * (15 - j) as f32 - 1.0);
        }
    }

    #[test]
    fn q5_hand_made_blocks_take_the_high_bit_from_qh() {
        // qh bit j set for odd j: element j = low nibble + 16.
        let qh = 0xAAAA_AAAAu32.to_le_bytes();
        let qs: Vec<u8> = (0..16u8).map(|j| j | (j << 4)).collect();
        let mut b = f16b(2.0).to_vec();
        b.extend_from_slice(&qh);
        b.extend_from_slice(&qs);
        let y = deq(GgmlType::Q5_0, &b);
        for (j, y) in y.iter().enumerate() {
            let q = (j % 16) as i32 + if j % 2 == 1 { 16 } else { 0 };
            assert_eq!(*y, 2.0 * (q - 16) as f32, "element {j}");
        }
        let mut b = f16b(2.0).to_vec();
        b.extend_from_slice(&f16b(0.5));
        b.extend_from_slice(&qh);
        b.extend_from_slice(&qs);
        let y = deq(GgmlType::Q5_1, &b);
        for (j, y) in y.iter().enumerate() {
            let q = (j % 16) as i32 + if j % 2 == 1 { 16 } else { 0 };
            assert_eq!(*y, 2.0 * q as f32 + 0.5, "element {j}");
        }
    }

    #[test]
    fn q8_0_hand_made_block() {
        let mut b = f16b(0.125).to_vec();
        b.extend((0..32).map(|j| (j as i8 - 16) as u8));
        let y = deq(GgmlType::Q8_0, &b);
        for (j, y) in y.iter().enumerate() {
            assert_eq!(*y, (j as f32 - 16.0) * 0.125);
        }
    }

    /// Packs 8 six-bit scales and minimums the way ggml's Q4_K/Q5_K store them.
    fn pack_k4(sc: [u8; 8], mn: [u8; 8]) -> [u8; 12] {
        let mut s = [0u8; 12];
        for j in 0..4 {
            s[j] = sc[j] | ((sc[j + 4] >> 4) << 6);
            s[j + 4] = mn[j] | ((mn[j + 4] >> 4) << 6);
            s[j + 8] = (sc[j + 4] & 0x0f) | ((mn[j + 4] & 0x0f) << 4);
        }
        s
    }

    #[test]
    fn k4_scales_round_trip() {
        let sc = [1, 63, 17, 32, 5, 40, 63, 0];
        let mn = [0, 2, 63, 9, 33, 47, 1, 62];
        assert_eq!(k4_scale_min(&pack_k4(sc, mn)), (sc, mn));
    }

    #[test]
    fn q4_k_and_q5_k_hand_made_blocks() {
        let sc = [1, 2, 3, 4, 5, 6, 7, 63];
        let mn = [8, 0, 1, 2, 3, 4, 5, 6];
        let mut b = f16b(0.5).to_vec();
        b.extend_from_slice(&f16b(0.25));
        b.extend_from_slice(&pack_k4(sc, mn));
        let qs: Vec<u8> = (0..128)
            .map(|i| (i % 16) as u8 | ((15 - i % 16) << 4) as u8)
            .collect();
        let mut b4 = b.clone();
        b4.extend_from_slice(&qs);
        let y = deq(GgmlType::Q4_K, &b4);
        for j in 0..8 {
            for l in 0..32 {
                let byte = qs[32 * (j / 2) + l];
                let q = if j % 2 == 0 { byte & 15 } else { byte >> 4 };
                let want = 0.5 * sc[j] as f32 * q as f32 - 0.25 * mn[j] as f32;
                assert_eq!(y[32 * j + l], want, "sub-block {j} element {l}");
            }
        }
        let qh: Vec<u8> = (0..32)
            .map(|l| if l % 3 == 0 { 0xff } else { 0x81 })
            .collect();
        let mut b5 = b;
        b5.extend_from_slice(&qh);
        b5.extend_from_slice(&qs);
        let y = deq(GgmlType::Q5_K, &b5);
        for j in 0..8 {
            for l in 0..32 {
                let byte = qs[32 * (j / 2) + l];
                let lo = if j % 2 == 0 { byte & 15 } else { byte >> 4 };
                let q = lo | (((qh[l] >> j) & 1) << 4);
                let want = 0.5 * sc[j] as f32 * q as f32 - 0.25 * mn[j] as f32;
                assert_eq!(y[32 * j + l], want, "sub-block {j} element {l}");
            }
        }
    }

    #[test]
    fn q6_k_hand_made_block_follows_ggml_loop() {
        let ql: Vec<u8> = (0..128).map(|i| (i * 7 % 256) as u8).collect();
        let qh: Vec<u8> = (0..64).map(|i| (i * 13 % 256) as u8).collect();
        let scales: Vec<i8> = (0..16).map(|i| i as i8 * 9 - 70).collect();
        let mut b = ql.clone();
        b.extend_from_slice(&qh);
        b.extend(scales.iter().map(|&s| s as u8));
        b.extend_from_slice(&f16b(0.0625));
        let y = deq(GgmlType::Q6_K, &b);
        // ggml's dequantize_row_q6_K, transcribed.
        let d = 0.0625f32;
        let mut want = [0f32; 256];
        for n in 0..2 {
            let (ql, qh, sc, y) = (
                &ql[64 * n..],
                &qh[32 * n..],
                &scales[8 * n..],
                &mut want[128 * n..],
            );
            for l in 0..32 {
                let is = l / 16;
                let q1 = ((ql[l] & 0xf) | ((qh[l] & 3) << 4)) as i32 - 32;
                let q2 = ((ql[l + 32] & 0xf) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
                let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
                let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
                y[l] = d * sc[is] as f32 * q1 as f32;
                y[l + 32] = d * sc[is + 2] as f32 * q2 as f32;
                y[l + 64] = d * sc[is + 4] as f32 * q3 as f32;
                y[l + 96] = d * sc[is + 6] as f32 * q4 as f32;
            }
        }
        assert_eq!(y, want);
    }

    #[test]
    fn several_blocks_at_once_and_size_mismatch() {
        let mut b = Vec::new();
        for k in 0..3 {
            b.extend_from_slice(&f16b(k as f32));
            b.extend(std::iter::repeat_n(1u8, 32));
        }
        let y = deq(GgmlType::Q8_0, &b);
        assert_eq!(y.len(), 96);
        assert_eq!((y[0], y[32], y[95]), (0.0, 1.0, 2.0));
        let mut out = vec![0f32; 64];
        let e = dequantize_row(GgmlType::Q8_0, &b, &mut out).unwrap_err();
        assert_eq!(e.kind(), crate::error::ErrorKind::Internal);
        let mut out = vec![0f32; 33];
        assert!(dequantize_row(GgmlType::Q8_0, &b[..68], &mut out).is_err());
    }
}
