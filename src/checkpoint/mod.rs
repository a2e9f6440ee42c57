//! The bottom of the stack: what a model file holds. Config parsing, the safetensors
//! tensor table over memory maps, GGUF files (parser, ggml types and their reference
//! dequantizers), tensor names and the one order of a layer's linears, element types and
//! host tensors, and direct (O_DIRECT) reads of tensors from disk.
//!
//! Nothing here knows about devices, quantization or decoding; every layer above reads
//! checkpoints through this module only.

pub(crate) mod config;
pub(crate) mod direct;
pub(crate) mod gguf;
pub(crate) mod names;
pub(crate) mod safetensors;
pub(crate) mod tensor;

pub(crate) use config::read_json_object;
pub use config::{Arch, ModelConfig, RopeScaling};
pub use names::Linear;
pub use safetensors::Weights;
pub use tensor::{AlignedBuf, DType, HostTensor, Storage};
