//! subspec: lossless speculative decoding for LLMs whose weights do not fit on the device.
//!
//! The target model's weights are *offloaded* (streamed from a slower tier on every
//! forward pass); a *draft* is built from the target itself by replacing decoder layers
//! with 4-bit quantized *substitutes* that stay resident, sharing everything else and the
//! KV cache; the draft grows a token *tree* and the target verifies it in one pass,
//! *accepting* the longest path it agrees with. Output is exactly the target's.
//!
//! # Using it
//! Load an [`Engine`] with [`EngineOptions`] (a memory budget makes the planner offload
//! layers), make a [`Sequence`], append a prompt and [`Sequence::step`] or
//! [`Sequence::generate`] with [`StepOptions`]. C, C++, Go and Node programs use the
//! same engine through the C ABI (`include/subspec.h`, module [`ffi`]).
//!
//! # Layers
//! Modules import only downward, in this order (`tests/layers.rs` checks it):
//!
//! ```text
//! error                 the one error type
//! util                  byte sizes, CPU features
//! checkpoint            config.json, safetensors, tensor names, host tensors, direct reads
//! tokenizer, sample     text <-> ids; logits -> tokens (counter-based RNG)
//! quant                 HQQ/RTN substitutes and their fused product
//! synth                 random-weight checkpoints shaped like real models
//! backend               the Backend trait; CPU (disk slow tier) and CUDA (pinned slow tier)
//! plan                  the memory planner: a pure function of sizes and a budget
//! model                 weights on a backend, the KV cache, the one forward pass
//! spec                  the tree, the draft loop, the acceptance walk
//! engine                Engine and Sequence
//! ffi                   the C ABI
//! ```
//!
//! The command-line tool (`cli/`) and the tests sit on top and use the public API plus
//! the hidden [`internals`] module.

#![warn(missing_docs, unsafe_op_in_unsafe_fn)]

mod backend;
mod checkpoint;
mod engine;
mod error;
pub mod ffi;
mod model;
mod plan;
mod quant;
mod sample;
mod spec;
mod synth;
mod tokenizer;
mod util;

pub use backend::{DeviceKind, KvDtype};
pub use checkpoint::{Activation, Arch, ModelConfig, RopeScaling};
pub use engine::{
    DraftOptions, Engine, EngineOptions, ModelInfo, Progress, Sequence, StepOptions,
    DEFAULT_MAX_TREE_TOKENS, DEFAULT_SHORTLIST,
};
pub use error::{Error, ErrorKind, Result};
pub use model::{Pass, SubstituteStats};
pub use plan::{Placement, PlanBytes, Residency};
pub use quant::{QuantConfig, QuantMethod};
pub use sample::SamplingParams;
pub use spec::{SpecStats, TreeParams};
pub use tokenizer::{ChatMessage, ChatTemplate, TextStream, Tokenizer};
pub use util::AbortHandle;

/// The library version (from Cargo.toml).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// What the tests, the benchmarks and the command-line tool's measuring commands need
/// beyond the public API: the model and its backends, checkpoints, kernels, the planner's
/// parts. Not part of the stable API: it changes whenever the internals do.
#[doc(hidden)]
pub mod internals {
    pub use crate::backend::cpu::{matmul, CpuBackend, Streamer};
    pub use crate::backend::cuda::{
        driver_present, CudaBackend, KernelAbi, ParamAbi, ParamKind, KERNELS_PTX, KERNEL_ABI,
    };
    pub use crate::backend::{AttnMask, AttnShape, Backend, Device, TierStats};
    pub use crate::checkpoint::faults;
    pub use crate::checkpoint::names::linear_names;
    pub use crate::checkpoint::{
        AlignedBuf, DType, GgmlType, HostTensor, Linear, Storage, Weights,
    };
    pub use crate::engine::measure;
    pub use crate::model::{KvCache, Model};
    pub use crate::quant::{qlinear, reconstruction_error, substitute_bytes, QMatrix};
    pub use crate::sample::distribution;
    pub use crate::synth::{write_model, SynthShape};

    /// Nodes of the tree `seq`'s last step drafted during its target pass and kept for the
    /// next step (0: none kept).
    pub fn carried_nodes(seq: &crate::Sequence) -> usize {
        seq.carried_nodes()
    }
    pub use crate::util::{human, parse_bytes};

    /// The entry points the fuzz targets (`fuzz/fuzz_targets/`) call, and the corpus
    /// replay test (`tests/fuzz_corpus.rs`) feeds every committed seed and crash
    /// regression through: each takes untrusted bytes and returns an error or `Ok`,
    /// never panics.
    pub mod fuzz {
        use std::path::Path;
        use std::sync::Arc;

        use crate::checkpoint::{AlignedBuf, ModelConfig, Storage};
        use crate::error::{Error, Result};

        pub use crate::ffi::fuzz::capi;

        /// Parses `bytes` as a config.json and validates it as [`ModelConfig::from_json`]
        /// does; returns the config.
        pub fn config(bytes: &[u8]) -> Result<ModelConfig> {
            let file = Path::new("fuzz/config.json");
            match serde_json::from_slice::<serde_json::Value>(bytes) {
                Ok(serde_json::Value::Object(m)) => {
                    let cfg = ModelConfig::from_json(&m, file)?;
                    // What the loader derives from a config must not panic either.
                    let _ = (cfg.q_dim(), cfg.kv_dim(), cfg.rope_inv_freq());
                    Ok(cfg)
                }
                Ok(_) => Err(Error::invalid_model(format!(
                    "{}: expected a JSON object",
                    file.display()
                ))),
                Err(e) => Err(Error::invalid_model(format!(
                    "{}: invalid JSON: {e}",
                    file.display()
                ))),
            }
        }

        /// Parses `bytes` as a safetensors file: the header and the tensor table checked
        /// against the length of `bytes`, then every tensor read as f32. Returns the
        /// number of tensors.
        pub fn safetensors(bytes: &[u8]) -> Result<usize> {
            let mut buf = AlignedBuf::new(bytes.len());
            buf.as_mut_slice()[..bytes.len()].copy_from_slice(bytes);
            let tensors = crate::checkpoint::safetensors::tensors_of(
                Arc::new(Storage::Owned(buf)),
                bytes.len(),
                Path::new("fuzz/model.safetensors"),
            )?;
            for t in &tensors {
                let mut out = vec![0f32; t.numel()];
                crate::checkpoint::tensor::to_f32(t.dtype, t.bytes(), &mut out);
            }
            Ok(tensors.len())
        }

        /// Parses `bytes` as a GGUF file (header, metadata, tensor table checked against
        /// the length) and dequantizes every tensor. Returns the number of tensors.
        pub fn gguf(bytes: &[u8]) -> Result<usize> {
            let p = crate::checkpoint::gguf::parse::parse_bytes(bytes, "fuzz.gguf")?;
            for t in &p.tensors {
                let mut out = vec![0f32; t.numel()];
                crate::checkpoint::gguf::dequantize_row(
                    t.ggml_type,
                    &bytes[t.offset..t.offset + t.len],
                    &mut out,
                )?;
            }
            // A vocabulary in the metadata becomes a tokenizer (BPE or SentencePiece).
            if p.meta.get("tokenizer.ggml.model").is_some() {
                crate::tokenizer::fuzz_gguf_vocab(&p.meta)?;
            }
            Ok(p.tensors.len())
        }

        /// Loads `bytes` as a tokenizer.json, then encodes and decodes a short text with
        /// it. Returns the vocabulary size.
        pub fn tokenizer(bytes: &[u8]) -> Result<usize> {
            crate::tokenizer::fuzz_load(bytes)
        }
    }
}
