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
    /// the paper, which shares the target's), whose logits are the draft's (unless a
    /// `shortlist` makes it a ranking head): a draft step then reads a quarter of the
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
    /// How the draft's own lm_head is quantized (`None`: a ranking head, below, at 2
    /// bits in groups of 64; otherwise like the substitutes, `quant`).
    pub head_quant: Option<QuantConfig>,
    /// A ranking head: the draft gets its own quantized lm_head, which only ranks the
    /// vocabulary, and the `shortlist` tokens it ranks first in a draft row get their
    /// logits from the target's own head (a few of its rows, read per step). The draft
    /// proposes what the full-precision head would (a quantized head's own logits change
    /// its choices: `quantize_lm_head` alone) while a step reads the ranking head's bytes,
    /// at 2 bits a seventh of an f16 head's; it costs their memory, counted by the
    /// planner. `Some(0)`: none. `None` (default): none with `quantize_lm_head` (its
    /// logits are the draft's) or a vocabulary under 16 x [`DEFAULT_SHORTLIST`] tokens,
    /// otherwise [`DEFAULT_SHORTLIST`] on the CPU and none on CUDA (not measured there
    /// yet).
    pub shortlist: Option<usize>,
}

/// The draft shortlist on the CPU by default ([`DraftOptions::shortlist`]): with 2-bit
/// ranking heads, 128 kept the f16 head's acceptance on Qwen2.5-Coder-0.5B where 64
/// and 16 lost some (docs/BENCHMARKS.md).
pub const DEFAULT_SHORTLIST: usize = 128;

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

    /// With the draft's own lm_head quantized as `quant` (`None`: like the substitutes).
    pub fn with_head_quant(self, quant: Option<QuantConfig>) -> Self {
        DraftOptions {
            head_quant: quant,
            ..self
        }
    }

    /// With a ranking head and `shortlist` tokens per draft row rescored by the target's
    /// head (`Some(0)`: none; `None`: the device's default).
    pub fn with_shortlist(self, shortlist: Option<usize>) -> Self {
        DraftOptions { shortlist, ..self }
    }

    /// Tokens per draft row the target's head rescores on `device` for a model of
    /// `vocab` tokens (`0`: none). By default a vocabulary under 16 shortlists has none:
    /// ranking it would save little.
    pub fn shortlist_on(&self, device: DeviceKind, vocab: usize) -> usize {
        let rows = match self.vocab {
            0 => vocab,
            v => v.min(vocab),
        };
        match (self.shortlist, device) {
            (Some(k), _) => k,
            (None, _) if self.quantize_lm_head || rows < 16 * DEFAULT_SHORTLIST => 0,
            (None, DeviceKind::Cpu) => DEFAULT_SHORTLIST,
            (None, DeviceKind::Cuda(_)) => 0,
        }
    }

    /// How the draft's own lm_head is quantized on `device` for a model of `vocab`
    /// tokens, if it has one: `None` when it shares the target's.
    pub fn lm_head_quant_on(&self, device: DeviceKind, vocab: usize) -> Option<QuantConfig> {
        let ranking = self.shortlist_on(device, vocab) > 0;
        let default = if ranking {
            QuantConfig {
                bits: 2,
                ..QuantConfig::default()
            }
        } else {
            self.quant
        };
        (ranking || self.quantize_lm_head).then(|| self.head_quant.unwrap_or(default))
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
            head_quant: None,
            shortlist: None,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_draft_head_by_device_vocabulary_and_options() {
        let (cpu, cuda, big) = (DeviceKind::Cpu, DeviceKind::Cuda(0), 151_936);
        let two_bits = QuantConfig {
            bits: 2,
            ..QuantConfig::default()
        };
        let d = DraftOptions::default();
        // A ranking head on the CPU for a large vocabulary; none on CUDA or for a small one.
        assert_eq!(d.shortlist_on(cpu, big), DEFAULT_SHORTLIST);
        assert_eq!(d.lm_head_quant_on(cpu, big), Some(two_bits));
        assert_eq!(
            (d.shortlist_on(cuda, big), d.lm_head_quant_on(cuda, big)),
            (0, None)
        );
        assert_eq!(d.lm_head_quant_on(cpu, 2000), None);
        assert_eq!(d.clone().with_vocab(1000).shortlist_on(cpu, big), 0);
        // quantize_lm_head alone: its logits are the draft's, quantized as the substitutes.
        let own = d.clone().with_quantize_lm_head(true);
        assert_eq!(own.shortlist_on(cpu, big), 0);
        assert_eq!(own.lm_head_quant_on(cpu, big), Some(QuantConfig::default()));
        // Asked for: a ranking head anywhere; its bits as given.
        let asked = d.clone().with_shortlist(Some(64));
        assert_eq!(asked.shortlist_on(cuda, 2000), 64);
        assert_eq!(asked.lm_head_quant_on(cuda, 2000), Some(two_bits));
        let eight = QuantConfig {
            bits: 8,
            ..QuantConfig::default()
        };
        let asked = asked.with_head_quant(Some(eight));
        assert_eq!(asked.lm_head_quant_on(cpu, big), Some(eight));
        // None at all: the target's head, shared.
        let none = d.with_shortlist(Some(0));
        assert_eq!(none.lm_head_quant_on(cpu, big), None);
    }
}
