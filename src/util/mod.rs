//! Small shared utilities with no model knowledge: byte sizes for people and the CPU's
//! SIMD features (detected once, used by the CPU kernels and the quantizer).

pub(crate) mod bytes;
pub(crate) mod isa;

pub use bytes::{human, parse_bytes};
