//! 4-bit (and 2/3/8-bit) substitutes of linear weights: HQQ and round-to-nearest
//! quantization, the packed storage format, and the fused dequantizing matrix product.
//!
//! A substitute is a [`QMatrix`]: asymmetric min-max quantization in groups of `group`
//! consecutive weights along the input dimension, `w ≈ q * scale + min` per group with
//! `q` an integer code in `0..2^bits`. [`QuantMethod::Hqq`] refines each group's zero-point
//! with HQQ's half-quadratic solver (training-free, no calibration data), as the SubSpec
//! authors do; [`QuantMethod::Rtn`] is plain round-to-nearest. [`qlinear()`] multiplies
//! activations by a substitute without materialising it, batch-invariantly.

mod format;
mod hqq;
mod int8;
mod qlinear;

pub(crate) use format::BLOCK;
pub use format::{substitute_bytes, QMatrix};
pub(crate) use int8::applies as int8_applies;
#[cfg(test)]
pub(crate) use int8::supports as int8_supports;
pub use qlinear::qlinear;
#[cfg(target_arch = "x86_64")]
pub(crate) use qlinear::{check_shapes, dequant_tile, qlinear_acts, qlinear_rows};

use crate::error::{Error, Result};

/// How a group's zero-point is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum QuantMethod {
    /// Plain round-to-nearest min-max quantization.
    Rtn,
    /// HQQ: min-max scale, zero-point refined by half-quadratic optimisation of an
    /// lp-norm (p = 0.7) error, as in the HQQ library's `optimize_weights_proximal_legacy`.
    #[default]
    Hqq,
}

/// How to quantize a weight matrix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuantConfig {
    /// Bits per code: 2, 3, 4 or 8.
    pub bits: u8,
    /// Consecutive weights along the input dimension sharing a scale and a zero: a
    /// positive multiple of 32 (the packing unit) that divides the matrix's columns.
    pub group: usize,
    /// HQQ (default) or round-to-nearest.
    pub method: QuantMethod,
}

impl Default for QuantConfig {
    /// 4 bits, groups of 64, HQQ: the SubSpec authors' substitute.
    fn default() -> Self {
        QuantConfig {
            bits: 4,
            group: 64,
            method: QuantMethod::Hqq,
        }
    }
}

impl QuantConfig {
    /// Checks `bits` and `group` (not the matrix shape; [`QMatrix::quantize`] does that).
    pub fn validate(&self) -> Result<()> {
        if !matches!(self.bits, 2 | 3 | 4 | 8) {
            return Err(Error::invalid_argument(format!(
                "quantization bits must be 2, 3, 4 or 8, got {}",
                self.bits
            )));
        }
        if self.group == 0 || !self.group.is_multiple_of(format::BLOCK) {
            return Err(Error::invalid_argument(format!(
                "quantization group size must be a positive multiple of {}, got {}",
                format::BLOCK,
                self.group
            )));
        }
        Ok(())
    }
}

/// Mean absolute error between `w` (row-major, `q.rows() x q.cols()`) and the
/// reconstruction of `q`. Deterministic (fixed summation order).
pub fn reconstruction_error(w: &[f32], q: &QMatrix) -> f64 {
    use rayon::prelude::*;
    assert_eq!(w.len(), q.rows() * q.cols(), "matrix size mismatch");
    let cols = q.cols();
    if w.is_empty() {
        return 0.0;
    }
    let per_row: Vec<f64> = (0..q.rows())
        .into_par_iter()
        .map(|r| {
            let mut rec = vec![0f32; cols];
            q.dequantize_row(r, &mut rec);
            let orig = &w[r * cols..(r + 1) * cols];
            orig.iter()
                .zip(&rec)
                .map(|(a, b)| (a - b).abs() as f64)
                .sum::<f64>()
        })
        .collect();
    per_row.iter().sum::<f64>() / w.len() as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;

    #[test]
    fn config_validation() {
        assert!(QuantConfig::default().validate().is_ok());
        for bits in [2, 3, 4, 8] {
            let c = QuantConfig {
                bits,
                ..Default::default()
            };
            assert!(c.validate().is_ok());
        }
        for bits in [0, 1, 5, 6, 7, 16] {
            let c = QuantConfig {
                bits,
                ..Default::default()
            };
            assert_eq!(c.validate().unwrap_err().kind(), ErrorKind::InvalidArgument);
        }
        for group in [0, 16, 48, 100] {
            let c = QuantConfig {
                group,
                ..Default::default()
            };
            assert_eq!(c.validate().unwrap_err().kind(), ErrorKind::InvalidArgument);
        }
        for group in [32, 64, 128, 96] {
            let c = QuantConfig {
                group,
                ..Default::default()
            };
            assert!(c.validate().is_ok());
        }
    }
}
