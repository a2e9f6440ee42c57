//! `config.json` of a Hugging Face model directory, validated.
//!
//! Only what the engine implements is accepted: `LlamaForCausalLM` (Llama 2/3.x, SmolLM2),
//! `MistralForCausalLM`, `Qwen2ForCausalLM` and `Qwen3ForCausalLM`, with RoPE (plain,
//! `linear` or `llama3` scaling), SiLU MLP, RMSNorm, grouped-query attention and, for
//! Mistral, a sliding window. Both the transformers 4 form (`rope_theta`, `rope_scaling`)
//! and the transformers 5 form (`rope_parameters`) are read.
//!
//! No key is silently ignored: every key is either read (and validated) or listed in
//! [`HARMLESS_KEYS`] as not changing the maths (metadata, training-only settings,
//! generation defaults). Any other key is refused at load, naming it: a setting we do not
//! know could change the logits, and plausible text from wrong logits is worse than an
//! error.

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::path::Path;

use serde_json::{Map, Value};

use crate::error::{Error, ErrorKind, Result};

mod rope;

use rope::rope_object;
pub use rope::RopeScaling;

/// The supported architectures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Arch {
    /// `LlamaForCausalLM` (Llama 2/3.x, SmolLM2): no attention bias.
    Llama,
    /// `Qwen2ForCausalLM`: bias on q, k and v projections.
    Qwen2,
    /// `Qwen3ForCausalLM`: per-head RMSNorm of q and k before RoPE, no bias.
    Qwen3,
    /// `MistralForCausalLM`: Llama with an optional sliding attention window.
    Mistral,
    /// `Gemma3ForCausalLM` (Gemma 3 text): GeLU-tanh MLP, `(1 + w)` RMSNorms before and
    /// after attention and the MLP, q/k norms, a scaled embedding, sliding-window layers
    /// with their own RoPE base between full-attention ones.
    Gemma3,
}

impl Arch {
    /// The Hugging Face class name.
    pub fn hf_name(self) -> &'static str {
        self.hf_name_c().to_str().unwrap_or("")
    }

    /// The Hugging Face class name as a static C string (for the C ABI).
    pub(crate) fn hf_name_c(self) -> &'static std::ffi::CStr {
        match self {
            Arch::Llama => c"LlamaForCausalLM",
            Arch::Qwen2 => c"Qwen2ForCausalLM",
            Arch::Qwen3 => c"Qwen3ForCausalLM",
            Arch::Mistral => c"MistralForCausalLM",
            Arch::Gemma3 => c"Gemma3ForCausalLM",
        }
    }
}

/// The MLP's activation: `down(act(gate(x)) * up(x))`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Activation {
    /// SiLU (`silu`): Llama, Qwen, Mistral.
    Silu,
    /// GeLU with the tanh approximation (`gelu_pytorch_tanh`): Gemma.
    GeluTanh,
}

/// The shape and hyper-parameters of a decoder-only transformer.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct ModelConfig {
    /// Architecture.
    pub arch: Arch,
    /// Model width (`hidden_size`).
    pub hidden: usize,
    /// MLP width (`intermediate_size`).
    pub intermediate: usize,
    /// Number of decoder layers.
    pub n_layers: usize,
    /// Number of query heads.
    pub n_heads: usize,
    /// Number of key/value heads (grouped-query attention when below `n_heads`).
    pub n_kv_heads: usize,
    /// Width of one attention head.
    pub head_dim: usize,
    /// Vocabulary size (rows of the embedding and of lm_head).
    pub vocab: usize,
    /// RMSNorm epsilon.
    pub rms_eps: f32,
    /// RoPE base.
    pub rope_theta: f32,
    /// RoPE frequency scaling.
    pub rope_scaling: RopeScaling,
    /// The RoPE base of the sliding-window layers when they have their own (Gemma 3's
    /// local layers, unscaled); `None`: every layer uses `rope_theta` and `rope_scaling`.
    pub rope_local_theta: Option<f32>,
    /// Longest context the model was trained for.
    pub max_position: usize,
    /// Whether lm_head shares the embedding matrix.
    pub tie_embeddings: bool,
    /// Whether q, k and v projections carry a bias.
    pub qkv_bias: bool,
    /// Whether q and k get a per-head RMSNorm before RoPE (Qwen3).
    pub qk_norm: bool,
    /// Per decoder layer: the sliding attention window (a query at position `p` sees keys
    /// at positions `p - window + 1 ..= p`), or `None` for full attention.
    pub attn_window: Vec<Option<usize>>,
    /// The MLP's activation.
    pub hidden_act: Activation,
    /// The attention score scale: `1 / sqrt(head_dim)`, or Gemma 3's
    /// `query_pre_attn_scalar ** -0.5`.
    pub attn_scale: f32,
    /// Multiplies every embedding row as it is read (Gemma: `sqrt(hidden)`, in f32).
    pub embed_scale: Option<f32>,
    /// Added to every RMSNorm weight as the checkpoint stores it: Gemma's norms compute
    /// `x * (1 + w)`, so a Hugging Face directory's weights get `1`; llama.cpp's GGUF
    /// converter already added it, so a GGUF file's get `0`.
    pub norm_weight_offset: f32,
    /// Gemma 3's extra norms: the attention output and the MLP output are each
    /// RMS-normalised before joining the residual stream (`post_attention_layernorm`,
    /// `post_feedforward_layernorm`; the MLP's input norm is `pre_feedforward_layernorm`).
    pub sandwich_norms: bool,
    /// End-of-sequence token ids (from config.json and generation_config.json).
    pub eos_ids: Vec<u32>,
    /// Beginning-of-sequence token id, if any.
    pub bos_id: Option<u32>,
}

/// config.json keys that do not change the forward pass (metadata, training-only
/// settings, generation defaults older transformers stored in the config): accepted and
/// ignored. Every other key must be read by [`ModelConfig::from_json`], or it is refused.
pub const HARMLESS_KEYS: &[&str] = &[
    // Metadata.
    "_name_or_path",
    "model_type",
    "transformers_version",
    "torch_dtype",
    "dtype",
    "id2label",
    "label2id",
    "tokenizer_class",
    "problem_type",
    "finetuning_task",
    "task_specific_params",
    "prefix",
    // Token ids used by tokenizers and generation, not by the forward.
    "pad_token_id",
    "sep_token_id",
    "decoder_start_token_id",
    // Training-only or implementation settings.
    "attention_dropout",
    "hidden_dropout",
    "initializer_range",
    "use_cache",
    "pretraining_tp",
    "output_attentions",
    "output_hidden_states",
    "output_router_logits",
    "return_dict",
    "torchscript",
    "use_bfloat16",
    "tie_encoder_decoder",
    "is_encoder_decoder",
    "is_decoder",
    "add_cross_attention",
    "chunk_size_feed_forward",
    "pruned_heads",
    "cross_attention_hidden_size",
    "_attn_implementation_autoset",
    // Generation defaults (transformers before 4.41 wrote them into config.json).
    "max_length",
    "min_length",
    "do_sample",
    "early_stopping",
    "num_beams",
    "num_beam_groups",
    "diversity_penalty",
    "temperature",
    "top_k",
    "top_p",
    "typical_p",
    "repetition_penalty",
    "length_penalty",
    "no_repeat_ngram_size",
    "encoder_no_repeat_ngram_size",
    "bad_words_ids",
    "num_return_sequences",
    "output_scores",
    "return_dict_in_generate",
    "forced_bos_token_id",
    "forced_eos_token_id",
    "remove_invalid_values",
    "exponential_decay_length_penalty",
    "suppress_tokens",
    "begin_suppress_tokens",
    "tf_legacy_loss",
];

/// A config.json object that remembers which keys were read.
struct Fields<'a> {
    obj: &'a Map<String, Value>,
    file: &'a Path,
    read: RefCell<BTreeSet<&'a str>>,
}

impl<'a> Fields<'a> {
    fn new(obj: &'a Map<String, Value>, file: &'a Path) -> Self {
        Fields {
            obj,
            file,
            read: RefCell::new(BTreeSet::new()),
        }
    }

    /// The value of `name` (marked read), `None` when absent or null.
    fn get(&self, name: &str) -> Option<&'a Value> {
        let (k, v) = self.obj.get_key_value(name)?;
        self.read.borrow_mut().insert(k.as_str());
        (!v.is_null()).then_some(v)
    }

    fn bad(&self, msg: String) -> Error {
        Error::invalid_model(format!("{}: {msg}", self.file.display()))
    }

    fn unsupported(&self, msg: String) -> Error {
        Error::unsupported(format!("{}: {msg}", self.file.display()))
    }

    fn require(&self, name: &str) -> Result<&'a Value> {
        self.get(name)
            .ok_or_else(|| self.bad(format!("missing field `{name}`")))
    }

    fn usize(&self, name: &str) -> Result<usize> {
        let v = self.require(name)?;
        positive_usize(v).ok_or_else(|| {
            self.bad(format!(
                "field `{name}` must be a positive integer, found {v}"
            ))
        })
    }

    fn usize_or(&self, name: &str, default: usize) -> Result<usize> {
        match self.get(name) {
            None => Ok(default),
            Some(_) => self.usize(name),
        }
    }

    fn f32_or(&self, name: &str, default: f64) -> Result<f32> {
        match self.get(name) {
            None => Ok(default as f32),
            Some(v) => positive_f32(v).ok_or_else(|| {
                self.bad(format!(
                    "field `{name}` must be a positive number, found {v}"
                ))
            }),
        }
    }

    fn bool_or(&self, name: &str, default: bool) -> Result<bool> {
        match self.get(name) {
            None => Ok(default),
            Some(Value::Bool(b)) => Ok(*b),
            Some(v) => Err(self.bad(format!("field `{name}` must be true or false, found {v}"))),
        }
    }

    /// Every key neither read nor harmless, as an error naming the first.
    fn refuse_unread(&self) -> Result<()> {
        let read = self.read.borrow();
        let unknown: Vec<&str> = self
            .obj
            .keys()
            .map(String::as_str)
            .filter(|k| !read.contains(k) && !HARMLESS_KEYS.contains(k))
            .collect();
        match unknown.first() {
            None => Ok(()),
            Some(k) => Err(Error::new(
                ErrorKind::Unsupported,
                format!(
                    "{}: field `{k}` is not understood by this engine and may change the model's maths{}; refusing to load rather than compute wrong logits",
                    self.file.display(),
                    if unknown.len() > 1 {
                        format!(" (also unknown: {})", unknown[1..].join(", "))
                    } else {
                        String::new()
                    }
                ),
            )),
        }
    }
}

fn positive_usize(v: &Value) -> Option<usize> {
    v.as_u64().filter(|&n| n > 0).map(|n| n as usize)
}

fn positive_f32(v: &Value) -> Option<f32> {
    v.as_f64()
        .filter(|x| x.is_finite() && *x > 0.0)
        .map(|x| x as f32)
}

/// Token ids from a field that may be an integer or a list of integers.
fn token_ids(v: Option<&Value>) -> Vec<u32> {
    match v {
        Some(Value::Number(n)) => n.as_u64().map(|x| vec![x as u32]).unwrap_or_default(),
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(|x| x.as_u64())
            .map(|x| x as u32)
            .collect(),
        _ => Vec::new(),
    }
}

/// Reads a JSON object from `path`.
pub(crate) fn read_json_object(path: &Path) -> Result<Map<String, Value>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    match serde_json::from_str::<Value>(&text) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(Error::invalid_model(format!(
            "{}: expected a JSON object",
            path.display()
        ))),
        Err(e) => Err(Error::invalid_model(format!(
            "{}: invalid JSON: {e}",
            path.display()
        ))),
    }
}

/// RoPE of a single-base model: `rope_theta` + `rope_scaling` (transformers 4) or
/// `rope_parameters` (transformers 5); both forms must agree when both are given.
fn plain_rope(f: &Fields) -> Result<(f32, RopeScaling)> {
    let mut rope_theta = f.f32_or("rope_theta", 10000.0)?;
    let mut rope_scaling = RopeScaling::None;
    let old = f.get("rope_scaling");
    let new = f.get("rope_parameters");
    if let Some(v) = old {
        rope_scaling = rope_object(f, "rope_scaling", v)?.0;
    }
    if let Some(v) = new {
        let (scaling, theta) = rope_object(f, "rope_parameters", v)?;
        if old.is_some() && scaling != rope_scaling {
            return Err(
                f.bad("`rope_scaling` and `rope_parameters` disagree; give one of them".into())
            );
        }
        rope_scaling = scaling;
        if let Some(t) = theta {
            if f.get("rope_theta").is_some() && t != rope_theta {
                return Err(f.bad(format!(
                    "`rope_theta` ({rope_theta}) and `rope_parameters`.`rope_theta` ({t}) disagree"
                )));
            }
            rope_theta = t;
        }
    }
    Ok((rope_theta, rope_scaling))
}

/// Gemma 3's two RoPEs: the full-attention layers' base and scaling, and the local
/// (sliding-window) layers' base. transformers 4 writes `rope_theta`, `rope_scaling`
/// (for the global layers) and `rope_local_base_freq`; transformers 5 writes
/// `rope_parameters` with one object per layer type.
fn gemma3_rope(f: &Fields) -> Result<(f32, RopeScaling, f32)> {
    if let Some(v) = f.get("rope_parameters") {
        let obj = v.as_object().ok_or_else(|| {
            f.bad(format!(
                "field `rope_parameters` must be an object, found {v}"
            ))
        })?;
        if let Some(k) = obj
            .keys()
            .find(|k| !matches!(k.as_str(), "full_attention" | "sliding_attention"))
        {
            return Err(f.unsupported(format!(
                "field `rope_parameters`.`{k}`: Gemma 3 has `full_attention` and `sliding_attention` entries"
            )));
        }
        let part = |k: &str, default: f32| -> Result<(f32, RopeScaling)> {
            match obj.get(k).filter(|v| !v.is_null()) {
                None => Ok((default, RopeScaling::None)),
                Some(v) => {
                    let (s, t) = rope_object(f, &format!("rope_parameters`.`{k}"), v)?;
                    Ok((t.unwrap_or(default), s))
                }
            }
        };
        let (theta, scaling) = part("full_attention", 1_000_000.0)?;
        let (local, local_scaling) = part("sliding_attention", 10_000.0)?;
        for k in ["rope_theta", "rope_scaling", "rope_local_base_freq"] {
            if f.get(k).is_some() {
                return Err(f.bad(format!(
                    "give the RoPE either in `rope_parameters` or in `{k}`, not both"
                )));
            }
        }
        if local_scaling != RopeScaling::None {
            return Err(f.unsupported(
                "field `rope_parameters`.`sliding_attention`: scaling of the local layers' RoPE is not supported".into(),
            ));
        }
        return Ok((theta, scaling, local));
    }
    let theta = f.f32_or("rope_theta", 1_000_000.0)?;
    let scaling = match f.get("rope_scaling") {
        None => RopeScaling::None,
        Some(v) => rope_object(f, "rope_scaling", v)?.0,
    };
    let local = f.f32_or("rope_local_base_freq", 10_000.0)?;
    Ok((theta, scaling, local))
}

impl ModelConfig {
    /// The rows of a draft head over token ids below `vocab` (`0`: the whole
    /// vocabulary); more than the vocabulary is an error naming `draft_vocab`.
    pub(crate) fn draft_vocab(&self, vocab: usize) -> Result<usize> {
        match vocab {
            0 => Ok(self.vocab),
            v if v > self.vocab => Err(Error::invalid_argument(format!(
                "draft_vocab {v} exceeds the model's vocabulary of {} tokens",
                self.vocab
            ))),
            v => Ok(v),
        }
    }

    /// The config of a checkpoint: a Hugging Face model directory's `config.json`, or a
    /// GGUF file's metadata.
    pub fn load(path: &std::path::Path) -> Result<ModelConfig> {
        if path.is_dir() {
            Self::from_dir(path)
        } else if path.exists() {
            super::gguf_model::config(&super::gguf::GgufFile::open(path)?)
        } else {
            Err(Error::new(
                ErrorKind::Io,
                format!("{}: no such model directory or GGUF file", path.display()),
            ))
        }
    }

    /// Reads and validates `dir/config.json` (and the EOS ids of `generation_config.json`
    /// when present).
    pub fn from_dir(dir: &Path) -> Result<ModelConfig> {
        if !dir.is_dir() {
            return Err(Error::new(
                ErrorKind::Io,
                format!("{}: model directory not found", dir.display()),
            ));
        }
        let file = dir.join("config.json");
        let obj = read_json_object(&file)?;
        let mut cfg = Self::from_json(&obj, &file)?;
        let gen_file = dir.join("generation_config.json");
        if gen_file.is_file() {
            let gen = read_json_object(&gen_file)?;
            for id in token_ids(gen.get("eos_token_id")) {
                if !cfg.eos_ids.contains(&id) {
                    cfg.eos_ids.push(id);
                }
            }
        }
        cfg.eos_ids.retain(|&id| (id as usize) < cfg.vocab);
        Ok(cfg)
    }

    /// Validates a parsed config.json; `file` is used in messages.
    pub fn from_json(obj: &Map<String, Value>, file: &Path) -> Result<ModelConfig> {
        let f = Fields::new(obj, file);
        let archs = f.require("architectures")?;
        let arch_name = archs
            .as_array()
            .and_then(|a| a.first())
            .and_then(|v| v.as_str())
            .unwrap_or("");
        let arch = match arch_name {
            "LlamaForCausalLM" => Arch::Llama,
            "Qwen2ForCausalLM" => Arch::Qwen2,
            "Qwen3ForCausalLM" => Arch::Qwen3,
            "MistralForCausalLM" => Arch::Mistral,
            "Gemma3ForCausalLM" => Arch::Gemma3,
            _ => {
                return Err(f.unsupported(format!(
                    "field `architectures` is {archs}; supported: LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM, Gemma3ForCausalLM"
                )))
            }
        };
        let gemma = arch == Arch::Gemma3;
        let hidden_act = if gemma {
            // Gemma reads `hidden_activation`; a `hidden_act` beside it is not used.
            let _ = f.get("hidden_act");
            match f.get("hidden_activation") {
                None => Activation::GeluTanh,
                Some(v) if v.as_str() == Some("gelu_pytorch_tanh") => Activation::GeluTanh,
                Some(v) => {
                    return Err(f.unsupported(format!(
                        "field `hidden_activation` is {v}; only \"gelu_pytorch_tanh\" is supported"
                    )))
                }
            }
        } else {
            if let Some(v) = f.get("hidden_act") {
                if v.as_str() != Some("silu") {
                    return Err(f.unsupported(format!(
                        "field `hidden_act` is {v}; only \"silu\" is supported"
                    )));
                }
            }
            Activation::Silu
        };
        // Biases: Qwen2 always has q/k/v biases; the others none, unless said.
        let attention_bias = f.bool_or("attention_bias", false)?;
        if f.bool_or("mlp_bias", false)? {
            return Err(f.unsupported("field `mlp_bias` is true; not supported".into()));
        }
        let qkv_bias = match arch {
            Arch::Qwen2 => true,
            Arch::Qwen3 => attention_bias,
            Arch::Llama | Arch::Mistral | Arch::Gemma3 if attention_bias => {
                return Err(f.unsupported(
                    "field `attention_bias` is true; not supported for this architecture".into(),
                ))
            }
            Arch::Llama | Arch::Mistral | Arch::Gemma3 => false,
        };
        let hidden = f.usize("hidden_size")?;
        let n_heads = f.usize("num_attention_heads")?;
        let n_kv_heads = f.usize_or("num_key_value_heads", n_heads)?;
        if n_heads % n_kv_heads != 0 {
            return Err(f.bad(format!(
                "`num_attention_heads` ({n_heads}) must be a multiple of `num_key_value_heads` ({n_kv_heads})"
            )));
        }
        let head_dim = match f.get("head_dim") {
            // Gemma 3's default head width is 256 whatever the model width.
            None if gemma => 256,
            None => {
                if hidden % n_heads != 0 {
                    return Err(f.bad(format!(
                        "`hidden_size` ({hidden}) is not a multiple of `num_attention_heads` ({n_heads}) and no `head_dim` is given"
                    )));
                }
                hidden / n_heads
            }
            Some(_) => f.usize("head_dim")?,
        };
        if head_dim % 2 != 0 {
            return Err(f.bad(format!("`head_dim` ({head_dim}) must be even for RoPE")));
        }
        let n_layers = f.usize("num_hidden_layers")?;
        let max_position = f.usize("max_position_embeddings")?;

        let (rope_theta, rope_scaling, rope_local_theta) = if gemma {
            let (theta, scaling, local) = gemma3_rope(&f)?;
            (theta, scaling, Some(local))
        } else {
            let (theta, scaling) = plain_rope(&f)?;
            (theta, scaling, None)
        };
        if let Some(v) = f.get("partial_rotary_factor") {
            if v.as_f64() != Some(1.0) {
                return Err(f.unsupported(format!(
                    "field `partial_rotary_factor` is {v}; only full rotary embeddings are supported"
                )));
            }
        }

        // Attention windows.
        let sliding_window = |default: Option<usize>| -> Result<Option<usize>> {
            match f.get("sliding_window") {
                None => Ok(default),
                Some(v) => Some(positive_usize(v).ok_or_else(|| {
                    f.bad(format!(
                        "field `sliding_window` must be a positive integer or null, found {v}"
                    ))
                }))
                .transpose(),
            }
        };
        let window = match arch {
            Arch::Mistral => sliding_window(None)?,
            // Gemma 3's local layers keep their window (and their RoPE base) even when it
            // is as long as the context.
            Arch::Gemma3 => Some(sliding_window(Some(4096))?.ok_or_else(|| {
                f.bad("field `sliding_window` must be a positive integer for Gemma 3".into())
            })?),
            Arch::Qwen2 | Arch::Qwen3 => {
                // Qwen reads `sliding_window` only with `use_sliding_window`.
                let _ = f.get("sliding_window");
                let _ = f.get("max_window_layers");
                if f.bool_or("use_sliding_window", false)? {
                    return Err(f.unsupported(
                        "field `use_sliding_window` is true; Qwen's sliding-window attention is not supported".into(),
                    ));
                }
                None
            }
            Arch::Llama => match f.get("sliding_window") {
                None => None,
                Some(v) => {
                    return Err(f.unsupported(format!(
                        "field `sliding_window` is {v}; sliding-window attention is not supported for Llama"
                    )))
                }
            },
        };
        // A window as long as the context changes nothing.
        let window = window.filter(|&w| gemma || w < max_position);
        let attn_window = match f.get("layer_types") {
            None if gemma => {
                // The transformers 4 form: every `sliding_window_pattern`-th layer is global.
                let pattern = match (
                    f.get("sliding_window_pattern"),
                    f.get("_sliding_window_pattern"),
                ) {
                    (Some(_), _) => f.usize("sliding_window_pattern")?,
                    (None, Some(_)) => f.usize("_sliding_window_pattern")?,
                    (None, None) => 6,
                };
                (0..n_layers)
                    .map(|i| if (i + 1) % pattern == 0 { None } else { window })
                    .collect()
            }
            None => vec![window; n_layers],
            Some(v) => {
                if gemma {
                    // Only used by transformers when `layer_types` is absent.
                    let _ = (
                        f.get("sliding_window_pattern"),
                        f.get("_sliding_window_pattern"),
                    );
                }
                let types = v
                    .as_array()
                    .filter(|a| a.len() == n_layers)
                    .ok_or_else(|| {
                        f.bad(format!(
                            "field `layer_types` must list one type per layer ({n_layers})"
                        ))
                    })?;
                types
                    .iter()
                    .map(|t| match t.as_str() {
                        Some("full_attention") => Ok(None),
                        Some("sliding_attention") if window.is_some() => Ok(window),
                        _ => Err(f.unsupported(format!(
                            "field `layer_types` has {t}; supported: \"full_attention\" (and \"sliding_attention\" with a `sliding_window`)"
                        ))),
                    })
                    .collect::<Result<Vec<_>>>()?
            }
        };

        let attn_scale = if gemma {
            // Gemma 3 scales scores by query_pre_attn_scalar ** -0.5 (computed in f64 by
            // Python, then used as an f32).
            let v = f.f32_or("query_pre_attn_scalar", 256.0)? as f64;
            (1.0 / v.sqrt()) as f32
        } else {
            1.0 / (head_dim as f32).sqrt()
        };
        if gemma {
            for k in ["final_logit_softcapping", "attn_logit_softcapping"] {
                if let Some(v) = f.get(k) {
                    return Err(f.unsupported(format!(
                        "field `{k}` is {v}; logit soft-capping (Gemma 2) is not supported"
                    )));
                }
            }
            if f.bool_or("use_bidirectional_attention", false)? {
                return Err(f.unsupported(
                    "field `use_bidirectional_attention` is true; only causal attention is supported".into(),
                ));
            }
        }

        let vocab = f.usize("vocab_size")?;
        let tie_embeddings = f.bool_or("tie_word_embeddings", gemma)?;
        let bos_id = token_ids(f.get("bos_token_id")).first().copied();
        let eos_ids = token_ids(f.get("eos_token_id"));
        let cfg = ModelConfig {
            arch,
            hidden,
            intermediate: f.usize("intermediate_size")?,
            n_layers,
            n_heads,
            n_kv_heads,
            head_dim,
            vocab,
            rms_eps: f.f32_or("rms_norm_eps", 1e-6)?,
            rope_theta,
            rope_scaling,
            rope_local_theta,
            max_position,
            tie_embeddings,
            qkv_bias,
            qk_norm: matches!(arch, Arch::Qwen3 | Arch::Gemma3),
            attn_window,
            hidden_act,
            attn_scale,
            embed_scale: gemma.then(|| (hidden as f64).sqrt() as f32),
            norm_weight_offset: if gemma { 1.0 } else { 0.0 },
            sandwich_norms: gemma,
            eos_ids,
            bos_id,
        };
        let _ = f.get("architectures");
        f.refuse_unread()?;
        Ok(cfg)
    }

    /// Width of all query heads together.
    pub fn q_dim(&self) -> usize {
        self.n_heads * self.head_dim
    }

    /// Width of all key (or value) heads together.
    pub fn kv_dim(&self) -> usize {
        self.n_kv_heads * self.head_dim
    }

    /// RoPE inverse frequencies of the full-attention layers, `(head_dim / 2)`, with
    /// the scaling applied as transformers computes them (f32).
    pub fn rope_inv_freq(&self) -> Vec<f32> {
        rope::inv_freq(self.rope_theta, self.head_dim, &self.rope_scaling)
    }

    /// RoPE inverse frequencies of the sliding-window layers when they have their own
    /// base (Gemma 3), unscaled; `None`: they use [`ModelConfig::rope_inv_freq`].
    pub fn rope_inv_freq_local(&self) -> Option<Vec<f32>> {
        self.rope_local_theta
            .map(|t| rope::inv_freq(t, self.head_dim, &RopeScaling::None))
    }
}

#[cfg(test)]
mod tests;
