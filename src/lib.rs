//! subspec: lossless speculative decoding for LLMs whose weights do not fit on the device.
//!
//! The crate is organised by responsibility, data flowing one way:
//! - [`model`]: config, weights (memory-mapped safetensors), KV cache, the forward pass;
//! - [`backend`]: the narrow device interface and the CPU reference backend;
//! - [`quant`]: HQQ/RTN low-bit substitutes and their fused matrix product;
//! - [`spec`]: the token tree, its growth, and lossless verification (pure logic);
//! - [`sample`]: greedy and seeded sampling with a counter-based RNG;
//! - [`tokenizer`]: tokenizer.json through the `tokenizers` crate;
//! - [`engine`]: engines and sequences, the API the C ABI wraps;
//! - [`ffi`]: the C ABI (`include/subspec.h`), the only place with `extern "C"`.

pub mod backend;
pub mod engine;
pub mod error;
pub mod ffi;
pub mod model;
pub mod offload;
pub mod quant;
pub mod sample;
pub mod spec;
pub mod synth;
pub mod tokenizer;

pub use backend::device::DeviceKind;
pub use engine::{DraftOptions, Engine, EngineOptions, Progress, Sequence, StepOptions};
pub use error::{Error, ErrorKind, Result};
pub use sample::SamplingParams;
pub use spec::{SpecStats, TreeParams};

/// The library version (from Cargo.toml).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
