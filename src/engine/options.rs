//! What an engine is loaded with and how a step runs: [`EngineOptions`] (with the draft's
//! [`DraftOptions`] and a load [`Progress`] callback) and [`StepOptions`].

use std::path::PathBuf;
use std::sync::Arc;

use crate::backend::{DeviceKind, KvDtype};
use crate::error::{Error, ErrorKind, Result};
use crate::quant::QuantConfig;
use crate::sample::SamplingParams;
use crate::spec::TreeParams;

/// How the draft is built from the target.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct DraftOptions {
    /// Quantization of the substitutes (bits, group size, HQQ or RTN).
    pub quant: QuantConfig,
    /// Decoder layers that get substitutes, i.e. that the draft replaces (`None`: every
    /// layer, or only the offloaded ones when `substitute_all_layers` is off).
    pub substitute_layers: Option<Vec<usize>>,
    /// Give the draft its own lm_head, quantized like the substitutes (a departure from
    /// the paper, which shares the target's): a draft step then reads a quarter of the
    /// lm_head bytes. It costs the quantized lm_head's memory, counted by the planner.
    pub quantize_lm_head: bool,
    /// Give every decoder layer a substitute, resident ones too, so that a draft step
    /// reads only quantized weights (the planner counts the extra substitutes). On by
    /// default: with layers offloaded on the CPU it made SubSpec ~5% faster at an equal
    /// budget with the same tau (docs/BENCHMARKS.md); with nothing offloaded every layer
    /// has a substitute anyway.
    pub substitute_all_layers: bool,
    /// The draft proposes only token ids below this (`0`: the whole vocabulary): its
    /// output head is the first `vocab` rows of the target's, a view that costs no memory
    /// (or, with `quantize_lm_head`, a quantized copy of those rows). A draft step then
    /// computes fewer logits; byte-level BPE vocabularies put the frequent tokens first,
    /// so acceptance barely moves. Lossless either way: the target verifies every token.
    pub vocab: usize,
}

impl DraftOptions {
    /// With substitutes quantized as `quant` says.
    pub fn with_quant(self, quant: QuantConfig) -> Self {
        DraftOptions { quant, ..self }
    }

    /// With substitutes for exactly `layers` (`None`: the default choice).
    pub fn with_substitute_layers(self, layers: Option<Vec<usize>>) -> Self {
        DraftOptions {
            substitute_layers: layers,
            ..self
        }
    }

    /// With or without the draft's own quantized lm_head.
    pub fn with_quantize_lm_head(self, on: bool) -> Self {
        DraftOptions {
            quantize_lm_head: on,
            ..self
        }
    }

    /// With the draft's output head over token ids below `vocab` (`0`: all of them).
    pub fn with_vocab(self, vocab: usize) -> Self {
        DraftOptions { vocab, ..self }
    }

    /// With or without substitutes for the resident layers too.
    pub fn with_substitute_all_layers(self, on: bool) -> Self {
        DraftOptions {
            substitute_all_layers: on,
            ..self
        }
    }
}

impl Default for DraftOptions {
    /// 4-bit HQQ substitutes (group 64) for every layer; the target's lm_head shared.
    fn default() -> Self {
        DraftOptions {
            quant: QuantConfig::default(),
            substitute_layers: None,
            quantize_lm_head: false,
            substitute_all_layers: true,
            vocab: 0,
        }
    }
}

/// How one step chooses tokens.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub struct StepOptions {
    /// Greedy or sampled, with which seed.
    pub sampling: SamplingParams,
    /// Draft a tree and verify it (needs an engine loaded with a draft).
    pub speculate: bool,
    /// Shape of the draft tree.
    pub tree: TreeParams,
    /// Most tokens this step may return (`0`: no limit beyond the context).
    pub max_tokens: usize,
}

impl StepOptions {
    /// Plain decoding: one token per step.
    pub fn plain(sampling: SamplingParams) -> Self {
        StepOptions {
            sampling,
            speculate: false,
            tree: TreeParams::default(),
            max_tokens: 0,
        }
    }

    /// Speculative decoding with the default tree.
    pub fn speculative(sampling: SamplingParams) -> Self {
        StepOptions {
            speculate: true,
            ..Self::plain(sampling)
        }
    }

    /// With the tree shape `tree`.
    pub fn with_tree(self, tree: TreeParams) -> Self {
        StepOptions { tree, ..self }
    }

    /// Returning at most `max_tokens` tokens per step (`0`: no limit beyond the context).
    pub fn with_max_tokens(self, max_tokens: usize) -> Self {
        StepOptions { max_tokens, ..self }
    }
}

/// Default of [`EngineOptions::max_tree_tokens`].
pub const DEFAULT_MAX_TREE_TOKENS: usize = 128;

/// Settings for loading an engine.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct EngineOptions {
    /// The model: a Hugging Face directory (config.json, safetensors, tokenizer.json) or
    /// a GGUF file (any shard of a split `-00001-of-0000N.gguf` set).
    pub model_path: PathBuf,
    /// Worker threads (`0`: one per core).
    pub threads: usize,
    /// Context length per sequence (`0`: the model's `max_position_embeddings`).
    pub max_context: usize,
    /// Whether a missing tokenizer.json is an error (a host that tokenizes itself can say no).
    pub require_tokenizer: bool,
    /// The draft to build (`None`: no draft, plain decoding only).
    pub draft: Option<DraftOptions>,
    /// Device memory budget in bytes (`None`: everything resident). The planner decides
    /// which decoder layers stay resident and which are streamed from the slow tier (the
    /// model file for the CPU, pinned host memory for CUDA) each target pass.
    pub budget: Option<u64>,
    /// The device to run on.
    pub device: DeviceKind,
    /// Largest tree (root included) a step may verify: sizes the KV scratch and the
    /// activations the planner reserves.
    pub max_tree_tokens: usize,
    /// Called during loading with the fraction done (0.0 to 1.0); returning `false`
    /// aborts the load with [`ErrorKind::Aborted`].
    pub progress: Option<Progress>,
    /// Sequences alive at once: the planner reserves a KV cache and activations for each
    /// (a budget too small says how many it holds), and [`Engine::new_sequence`](super::Engine::new_sequence) refuses
    /// one more with [`ErrorKind::OutOfMemory`] until one is dropped. `0` (default): the
    /// plan is for one sequence and their number is not limited (each further live
    /// sequence's KV cache is then beyond the budget).
    pub max_sequences: usize,
    /// Element type of the KV caches (`None`: the device's default, see
    /// [`EngineOptions::kv_dtype`]); the planner counts its bytes.
    pub kv_dtype: Option<KvDtype>,
}

/// A load-progress callback: fraction done in, `false` out to abort.
#[derive(Clone)]
pub struct Progress(pub Arc<dyn Fn(f32) -> bool + Send + Sync>);

impl std::fmt::Debug for Progress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Progress(..)")
    }
}

impl Progress {
    /// A callback from a closure.
    pub fn new(f: impl Fn(f32) -> bool + Send + Sync + 'static) -> Progress {
        Progress(Arc::new(f))
    }

    /// Reports `fraction`; an error if the callback asks to abort.
    pub(crate) fn report(p: &Option<Progress>, fraction: f32) -> Result<()> {
        match p {
            Some(Progress(f)) if !f(fraction) => Err(Error::new(
                ErrorKind::Aborted,
                format!(
                    "loading aborted by the progress callback at {:.0}%",
                    fraction * 100.0
                ),
            )),
            _ => Ok(()),
        }
    }
}

impl EngineOptions {
    /// Defaults for the model at `model_path`: all cores, the model's context, tokenizer
    /// required.
    pub fn new(model_path: impl Into<PathBuf>) -> Self {
        EngineOptions {
            model_path: model_path.into(),
            threads: 0,
            max_context: 0,
            require_tokenizer: true,
            draft: Some(DraftOptions::default()),
            budget: None,
            device: DeviceKind::Cpu,
            max_tree_tokens: DEFAULT_MAX_TREE_TOKENS,
            progress: None,
            max_sequences: 0,
            kv_dtype: None,
        }
    }

    /// The KV cache's element type: the one set, else f16 on the CPU (half the memory
    /// and bandwidth of f32, faster attention over long contexts; docs/BENCHMARKS.md)
    /// and f32 on CUDA (its attention kernel reads f32).
    pub fn kv_dtype(&self) -> KvDtype {
        self.kv_dtype.unwrap_or(match self.device {
            DeviceKind::Cpu => KvDtype::F16,
            DeviceKind::Cuda(_) => KvDtype::F32,
        })
    }
}
