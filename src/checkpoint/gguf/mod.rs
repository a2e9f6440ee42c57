//! GGUF model files, read natively: for now the ggml tensor types with reference
//! dequantizers. The bottom layer of GGUF support; the loader that builds a model from
//! it sits above.
//!
//! # For the loader
//! - [`ggml::dequantize_row`]`(type, bytes, out)`: any whole number of blocks -> f32,
//!   bit-identical to gguf-py; [`ggml::GgmlType::block_size`] /
//!   [`ggml::GgmlType::block_bytes`] / [`ggml::GgmlType::bytes_for`].

// Temporary: nothing above checkpoint uses GGUF yet; the loader that will is next.
#![allow(dead_code)]

pub(crate) mod ggml;
