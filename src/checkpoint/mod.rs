//! The bottom of the stack: what a model file holds, in either format. Config parsing
//! (config.json, or a GGUF file's metadata: `gguf_model.rs`), the tensor table
//! ([`Weights`]) over memory maps of safetensors or GGUF files (the parser, the ggml types
//! and their reference dequantizers in `gguf/`), tensor names and the one order of a
//! layer's linears, element types and host tensors, and direct (O_DIRECT) reads.
//!
//! Nothing here knows about devices, quantization or decoding; every layer above reads
//! checkpoints through this module only.

pub(crate) mod config;
pub(crate) mod direct;
pub mod faults;
pub(crate) mod gguf;
mod gguf_model;
pub(crate) mod names;
pub(crate) mod safetensors;
pub(crate) mod tensor;
mod weights;

pub(crate) use config::read_json_object;
pub use config::{Activation, Arch, ModelConfig, RopeScaling};
pub use gguf::GgmlType;
pub use names::Linear;
pub(crate) use tensor::to_f32;
pub use tensor::{AlignedBuf, DType, HostTensor, Storage};
pub use weights::Weights;
