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
        }
    }
}

/// How RoPE frequencies are scaled for long contexts.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum RopeScaling {
    /// Plain RoPE.
    None,
    /// Every frequency divided by `factor` (position interpolation).
    Linear {
        /// The divisor.
        factor: f32,
    },
    /// Llama 3.1's: low frequencies divided by `factor`, high ones kept, a smooth blend
    /// between the two wavelength bounds.
    Llama3 {
        /// The divisor of the low frequencies.
        factor: f32,
        /// `original_max_position_embeddings / low_freq_factor` is the low-frequency
        /// bound: longer wavelengths are divided by `factor`.
        low_freq_factor: f32,
        /// `original_max_position_embeddings / high_freq_factor` is the high-frequency
        /// bound.
        high_freq_factor: f32,
        /// The context the model was pre-trained with.
        original_max_position: usize,
    },
    /// Frequency `i` divided by `divisors[i]`: how llama.cpp's GGUF files store Llama
    /// 3.x's scaling (the `rope_freqs.weight` tensor).
    Divisors(Vec<f32>),
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

/// The RoPE settings of a rope object: `rope_scaling` (transformers 4) or
/// `rope_parameters` (transformers 5), named `key` in messages. Returns the scaling and
/// the theta the object states, if it does.
fn rope_object(f: &Fields, key: &str, v: &Value) -> Result<(RopeScaling, Option<f32>)> {
    let Some(o) = v.as_object() else {
        return Err(f.bad(format!("field `{key}` must be an object, found {v}")));
    };
    let mut seen: Vec<&str> = Vec::new();
    let mut get = |k: &'static str| {
        let r = o.get(k).filter(|v| !v.is_null());
        if r.is_some() {
            seen.push(k);
        }
        r
    };
    let kind = get("rope_type")
        .or_else(|| get("type"))
        .map(|t| t.as_str().unwrap_or("?").to_string())
        .unwrap_or_else(|| "default".into());
    let theta = match get("rope_theta") {
        None => None,
        Some(t) => Some(positive_f32(t).ok_or_else(|| {
            f.bad(format!(
                "field `{key}`.`rope_theta` must be a positive number, found {t}"
            ))
        })?),
    };
    let num = |k: &str, x: Option<&Value>| -> Result<f32> {
        x.and_then(positive_f32).ok_or_else(|| {
            f.bad(format!(
                "field `{key}`.`{k}` must be a positive number for rope type {kind}"
            ))
        })
    };
    let scaling = match kind.as_str() {
        "default" => RopeScaling::None,
        "linear" => RopeScaling::Linear {
            factor: num("factor", get("factor"))?,
        },
        "llama3" => {
            let factor = num("factor", get("factor"))?;
            let low_freq_factor = num("low_freq_factor", get("low_freq_factor"))?;
            let high_freq_factor = num("high_freq_factor", get("high_freq_factor"))?;
            let orig = get("original_max_position_embeddings");
            let original_max_position = orig.and_then(positive_usize).ok_or_else(|| {
                f.bad(format!(
                    "field `{key}`.`original_max_position_embeddings` must be a positive integer for rope type llama3"
                ))
            })?;
            if high_freq_factor <= low_freq_factor {
                return Err(f.bad(format!(
                    "field `{key}`: high_freq_factor ({high_freq_factor}) must exceed low_freq_factor ({low_freq_factor})"
                )));
            }
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position,
            }
        }
        other => {
            return Err(f.unsupported(format!(
                "field `{key}` has rope type `{other}`; supported: default, linear, llama3"
            )))
        }
    };
    // Anything else in the object could change the frequencies: refuse it.
    if let Some(k) = o
        .iter()
        .find(|(k, v)| !v.is_null() && !seen.contains(&k.as_str()))
        .map(|(k, _)| k)
    {
        return Err(f.unsupported(format!(
            "field `{key}`.`{k}` is not understood for rope type {kind}"
        )));
    }
    Ok((scaling, theta))
}

impl ModelConfig {
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
            _ => {
                return Err(f.unsupported(format!(
                    "field `architectures` is {archs}; supported: LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM"
                )))
            }
        };
        if let Some(v) = f.get("hidden_act") {
            if v.as_str() != Some("silu") {
                return Err(f.unsupported(format!(
                    "field `hidden_act` is {v}; only \"silu\" is supported"
                )));
            }
        }
        // Biases: Qwen2 always has q/k/v biases; the others none, unless said.
        let attention_bias = f.bool_or("attention_bias", false)?;
        if f.bool_or("mlp_bias", false)? {
            return Err(f.unsupported("field `mlp_bias` is true; not supported".into()));
        }
        let qkv_bias = match arch {
            Arch::Qwen2 => true,
            Arch::Qwen3 => attention_bias,
            Arch::Llama | Arch::Mistral if attention_bias => {
                return Err(f.unsupported(
                    "field `attention_bias` is true; not supported for this architecture".into(),
                ))
            }
            Arch::Llama | Arch::Mistral => false,
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

        // RoPE: `rope_theta` + `rope_scaling` (transformers 4) or `rope_parameters` (5).
        let mut rope_theta = f.f32_or("rope_theta", 10000.0)?;
        let mut rope_scaling = RopeScaling::None;
        let old = f.get("rope_scaling");
        let new = f.get("rope_parameters");
        if let Some(v) = old {
            rope_scaling = rope_object(&f, "rope_scaling", v)?.0;
        }
        if let Some(v) = new {
            let (scaling, theta) = rope_object(&f, "rope_parameters", v)?;
            if old.is_some() && scaling != rope_scaling {
                return Err(f.bad(
                    "`rope_scaling` and `rope_parameters` disagree; give one of them".into(),
                ));
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
        if let Some(v) = f.get("partial_rotary_factor") {
            if v.as_f64() != Some(1.0) {
                return Err(f.unsupported(format!(
                    "field `partial_rotary_factor` is {v}; only full rotary embeddings are supported"
                )));
            }
        }

        // Attention windows.
        let window = match arch {
            Arch::Mistral => match f.get("sliding_window") {
                None => None,
                Some(v) => Some(positive_usize(v).ok_or_else(|| {
                    f.bad(format!(
                        "field `sliding_window` must be a positive integer or null, found {v}"
                    ))
                })?),
            },
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
        let window = window.filter(|&w| w < max_position);
        let attn_window = match f.get("layer_types") {
            None => vec![window; n_layers],
            Some(v) => {
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

        let vocab = f.usize("vocab_size")?;
        let tie_embeddings = f.bool_or("tie_word_embeddings", false)?;
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
            max_position,
            tie_embeddings,
            qkv_bias,
            qk_norm: arch == Arch::Qwen3,
            attn_window,
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

    /// RoPE inverse frequencies, `(head_dim / 2)`, with the scaling applied as
    /// transformers computes them (f32).
    pub fn rope_inv_freq(&self) -> Vec<f32> {
        let hd = self.head_dim;
        let base: Vec<f32> = (0..hd / 2)
            .map(|i| 1.0 / self.rope_theta.powf((2 * i) as f32 / hd as f32))
            .collect();
        match &self.rope_scaling {
            RopeScaling::None => base,
            RopeScaling::Linear { factor } => base.iter().map(|f| f / factor).collect(),
            RopeScaling::Divisors(d) => base.iter().zip(d).map(|(f, d)| f / d).collect(),
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position,
            } => {
                let (factor, low_freq_factor, high_freq_factor) =
                    (*factor, *low_freq_factor, *high_freq_factor);
                let old = *original_max_position as f32;
                let low_wavelen = old / low_freq_factor;
                let high_wavelen = old / high_freq_factor;
                base.iter()
                    .map(|&f| {
                        let wavelen = 2.0 * std::f32::consts::PI / f;
                        if wavelen < high_wavelen {
                            f
                        } else if wavelen > low_wavelen {
                            f / factor
                        } else {
                            let smooth = (old / wavelen - low_freq_factor)
                                / (high_freq_factor - low_freq_factor);
                            (1.0 - smooth) * f / factor + smooth * f
                        }
                    })
                    .collect()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Map<String, Value> {
        serde_json::from_str(
            r#"{"architectures":["LlamaForCausalLM"],"hidden_size":64,"intermediate_size":128,
            "num_hidden_layers":2,"num_attention_heads":4,"num_key_value_heads":2,"vocab_size":100,
            "max_position_embeddings":256,"rms_norm_eps":1e-5,"rope_theta":10000.0,"eos_token_id":2}"#,
        )
        .unwrap()
    }

    fn parse(o: &Map<String, Value>) -> Result<ModelConfig> {
        ModelConfig::from_json(o, Path::new("m/config.json"))
    }

    #[test]
    fn parses_a_llama_config() {
        let c = ModelConfig::from_json(&base(), Path::new("config.json")).unwrap();
        assert_eq!(c.arch, Arch::Llama);
        assert_eq!(c.head_dim, 16);
        assert_eq!(c.kv_dim(), 32);
        assert_eq!(c.eos_ids, vec![2]);
        assert!(!c.qkv_bias);
        assert_eq!(c.rope_scaling, RopeScaling::None);
        assert_eq!(c.attn_window, vec![None, None]);
    }

    #[test]
    fn refuses_rope_scaling_and_unknown_arch() {
        let mut o = base();
        o.insert(
            "rope_scaling".into(),
            serde_json::json!({"type": "yarn", "factor": 2.0}),
        );
        let e = parse(&o).unwrap_err();
        assert!(e.message().contains("rope_scaling"), "{e}");
        assert!(e.message().contains("m/config.json"), "{e}");
        let mut o = base();
        o.insert(
            "architectures".into(),
            serde_json::json!(["GPT2LMHeadModel"]),
        );
        let e = ModelConfig::from_json(&o, Path::new("config.json")).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Unsupported);
        assert!(e.message().contains("GPT2LMHeadModel"), "{e}");
    }

    #[test]
    fn refuses_missing_and_inconsistent_fields() {
        let mut o = base();
        o.remove("hidden_size");
        let e = ModelConfig::from_json(&o, Path::new("config.json")).unwrap_err();
        assert!(e.message().contains("hidden_size"), "{e}");
        let mut o = base();
        o.insert("num_key_value_heads".into(), serde_json::json!(3));
        let e = ModelConfig::from_json(&o, Path::new("config.json")).unwrap_err();
        assert!(e.message().contains("num_key_value_heads"), "{e}");
        let mut o = base();
        o.insert(
            "architectures".into(),
            serde_json::json!(["Qwen2ForCausalLM"]),
        );
        o.insert("use_sliding_window".into(), serde_json::json!(true));
        assert!(ModelConfig::from_json(&o, Path::new("config.json")).is_err());
    }

    #[test]
    fn an_unknown_key_is_refused_by_name_and_harmless_ones_pass() {
        let mut o = base();
        o.insert("attn_logit_softcapping".into(), serde_json::json!(50.0));
        let e = parse(&o).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Unsupported);
        assert!(e.message().contains("`attn_logit_softcapping`"), "{e}");
        let mut o = base();
        for k in [
            "torch_dtype",
            "transformers_version",
            "use_cache",
            "initializer_range",
        ] {
            o.insert(k.into(), serde_json::json!("x"));
        }
        parse(&o).unwrap();
    }

    #[test]
    fn both_rope_forms_give_the_same_config() {
        // transformers 4: top-level rope_theta and rope_scaling.
        let mut old = base();
        old.insert("rope_theta".into(), serde_json::json!(500000.0));
        old.insert(
            "rope_scaling".into(),
            serde_json::json!({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                "high_freq_factor": 4.0, "original_max_position_embeddings": 64}),
        );
        // transformers 5: everything in rope_parameters.
        let mut new = base();
        new.remove("rope_theta");
        new.insert(
            "rope_parameters".into(),
            serde_json::json!({"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
                "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                "original_max_position_embeddings": 64}),
        );
        let (a, b) = (parse(&old).unwrap(), parse(&new).unwrap());
        assert_eq!(a, b);
        assert_eq!(a.rope_theta, 500000.0);
        assert!(matches!(a.rope_scaling, RopeScaling::Llama3 { factor, .. } if factor == 8.0));
        // The default theta must not sneak in when only rope_parameters states it.
        let mut plain = base();
        plain.remove("rope_theta");
        plain.insert(
            "rope_parameters".into(),
            serde_json::json!({"rope_type": "default", "rope_theta": 1000000.0}),
        );
        assert_eq!(parse(&plain).unwrap().rope_theta, 1_000_000.0);
        // Disagreeing forms are refused.
        let mut both = new.clone();
        both.insert("rope_theta".into(), serde_json::json!(10000.0));
        assert!(parse(&both).is_err());
        // An unknown key inside the rope object is refused too.
        let mut odd = base();
        odd.insert(
            "rope_parameters".into(),
            serde_json::json!({"rope_type": "linear", "factor": 2.0, "beta_fast": 32}),
        );
        assert!(parse(&odd).unwrap_err().message().contains("beta_fast"));
    }

    #[test]
    fn llama3_scaling_keeps_high_and_divides_low_frequencies() {
        let mut o = base();
        o.insert(
            "rope_scaling".into(),
            serde_json::json!({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                "high_freq_factor": 4.0, "original_max_position_embeddings": 64}),
        );
        let c = parse(&o).unwrap();
        let plain = ModelConfig {
            rope_scaling: RopeScaling::None,
            ..c.clone()
        };
        let (s, p) = (c.rope_inv_freq(), plain.rope_inv_freq());
        // High frequency (wavelength < 16): unchanged; lowest: divided by the factor.
        assert_eq!(s[0], p[0]);
        assert!((s[7] - p[7] / 8.0).abs() < 1e-9, "{} vs {}", s[7], p[7]);
        let mut lin = base();
        lin.insert(
            "rope_scaling".into(),
            serde_json::json!({"type": "linear", "factor": 4.0}),
        );
        let l = parse(&lin).unwrap().rope_inv_freq();
        assert!(l.iter().zip(&p).all(|(a, b)| *a == b / 4.0));
    }

    #[test]
    fn qwen3_and_mistral() {
        let mut q = base();
        q.insert(
            "architectures".into(),
            serde_json::json!(["Qwen3ForCausalLM"]),
        );
        q.insert("head_dim".into(), serde_json::json!(32));
        q.insert("attention_bias".into(), serde_json::json!(false));
        let c = parse(&q).unwrap();
        assert!(c.qk_norm && !c.qkv_bias);
        assert_eq!(c.q_dim(), 128);
        let mut m = base();
        m.insert(
            "architectures".into(),
            serde_json::json!(["MistralForCausalLM"]),
        );
        m.insert("sliding_window".into(), serde_json::json!(16));
        assert_eq!(parse(&m).unwrap().attn_window, vec![Some(16), Some(16)]);
        // A window as long as the context is no window.
        m.insert("sliding_window".into(), serde_json::json!(256));
        assert_eq!(parse(&m).unwrap().attn_window, vec![None, None]);
        m.insert("sliding_window".into(), Value::Null);
        assert_eq!(parse(&m).unwrap().attn_window, vec![None, None]);
    }
}
