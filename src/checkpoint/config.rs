//! `config.json` of a Hugging Face model directory, validated.
//!
//! Only what the engine implements is accepted: `LlamaForCausalLM` and
//! `Qwen2ForCausalLM` with plain RoPE, SiLU MLP, RMSNorm, grouped-query attention. Any other
//! setting that changes the maths (rope scaling, sliding window, another activation) is
//! refused with an error naming the file and the field, never silently ignored.

use std::path::Path;

use serde_json::{Map, Value};

use crate::error::{Error, Result};

/// The supported architectures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Arch {
    /// `LlamaForCausalLM` (also SmolLM2): no attention bias.
    Llama,
    /// `Qwen2ForCausalLM`: bias on q, k and v projections.
    Qwen2,
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
    /// Longest context the model was trained for.
    pub max_position: usize,
    /// Whether lm_head shares the embedding matrix.
    pub tie_embeddings: bool,
    /// Whether q, k and v projections carry a bias.
    pub qkv_bias: bool,
    /// End-of-sequence token ids (from config.json and generation_config.json).
    pub eos_ids: Vec<u32>,
    /// Beginning-of-sequence token id, if any.
    pub bos_id: Option<u32>,
}

fn field<'a>(obj: &'a Map<String, Value>, file: &Path, name: &str) -> Result<&'a Value> {
    obj.get(name)
        .ok_or_else(|| Error::invalid_model(format!("{}: missing field `{name}`", file.display())))
}

fn usize_field(obj: &Map<String, Value>, file: &Path, name: &str) -> Result<usize> {
    let v = field(obj, file, name)?;
    match v.as_u64() {
        Some(n) if n > 0 => Ok(n as usize),
        _ => Err(Error::invalid_model(format!(
            "{}: field `{name}` must be a positive integer, found {v}",
            file.display()
        ))),
    }
}

fn f32_field(obj: &Map<String, Value>, file: &Path, name: &str, default: f64) -> Result<f32> {
    match obj.get(name) {
        None | Some(Value::Null) => Ok(default as f32),
        Some(v) => match v.as_f64() {
            Some(x) if x.is_finite() && x > 0.0 => Ok(x as f32),
            _ => Err(Error::invalid_model(format!(
                "{}: field `{name}` must be a positive number, found {v}",
                file.display()
            ))),
        },
    }
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

impl ModelConfig {
    /// Reads and validates `dir/config.json` (and the EOS ids of `generation_config.json`
    /// when present).
    pub fn from_dir(dir: &Path) -> Result<ModelConfig> {
        if !dir.is_dir() {
            return Err(Error::new(
                crate::error::ErrorKind::Io,
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
        let archs = field(obj, file, "architectures")?;
        let arch_name = archs
            .as_array()
            .and_then(|a| a.first())
            .and_then(|v| v.as_str())
            .unwrap_or("");
        let arch = match arch_name {
            "LlamaForCausalLM" => Arch::Llama,
            "Qwen2ForCausalLM" => Arch::Qwen2,
            _ => {
                return Err(Error::unsupported(format!(
                    "{}: field `architectures` is {archs}; supported: LlamaForCausalLM, Qwen2ForCausalLM",
                    file.display()
                )))
            }
        };
        if let Some(v) = obj.get("rope_scaling") {
            if !v.is_null() {
                return Err(Error::unsupported(format!(
                    "{}: field `rope_scaling` is {v}; only plain RoPE (null) is supported",
                    file.display()
                )));
            }
        }
        if let Some(v) = obj.get("use_sliding_window") {
            if v.as_bool() == Some(true) {
                return Err(Error::unsupported(format!(
                    "{}: field `use_sliding_window` is true; sliding-window attention is not supported",
                    file.display()
                )));
            }
        }
        if arch == Arch::Llama {
            if let Some(v) = obj.get("sliding_window") {
                if !v.is_null() {
                    return Err(Error::unsupported(format!(
                        "{}: field `sliding_window` is {v}; sliding-window attention is not supported",
                        file.display()
                    )));
                }
            }
        }
        if let Some(v) = obj.get("hidden_act") {
            if v.as_str() != Some("silu") {
                return Err(Error::unsupported(format!(
                    "{}: field `hidden_act` is {v}; only \"silu\" is supported",
                    file.display()
                )));
            }
        }
        for flag in ["attention_bias", "mlp_bias"] {
            if obj.get(flag).and_then(|v| v.as_bool()) == Some(true) {
                return Err(Error::unsupported(format!(
                    "{}: field `{flag}` is true; not supported",
                    file.display()
                )));
            }
        }
        let hidden = usize_field(obj, file, "hidden_size")?;
        let n_heads = usize_field(obj, file, "num_attention_heads")?;
        let n_kv_heads = match obj.get("num_key_value_heads") {
            None | Some(Value::Null) => n_heads,
            Some(_) => usize_field(obj, file, "num_key_value_heads")?,
        };
        if n_heads % n_kv_heads != 0 {
            return Err(Error::invalid_model(format!(
                "{}: `num_attention_heads` ({n_heads}) must be a multiple of `num_key_value_heads` ({n_kv_heads})",
                file.display()
            )));
        }
        let head_dim = match obj.get("head_dim") {
            None | Some(Value::Null) => {
                if hidden % n_heads != 0 {
                    return Err(Error::invalid_model(format!(
                        "{}: `hidden_size` ({hidden}) is not a multiple of `num_attention_heads` ({n_heads}) and no `head_dim` is given",
                        file.display()
                    )));
                }
                hidden / n_heads
            }
            Some(_) => usize_field(obj, file, "head_dim")?,
        };
        if head_dim % 2 != 0 {
            return Err(Error::invalid_model(format!(
                "{}: `head_dim` ({head_dim}) must be even for RoPE",
                file.display()
            )));
        }
        let vocab = usize_field(obj, file, "vocab_size")?;
        let tie_embeddings = obj
            .get("tie_word_embeddings")
            .and_then(|v| v.as_bool())
            .unwrap_or(false);
        let bos_id = token_ids(obj.get("bos_token_id")).first().copied();
        Ok(ModelConfig {
            arch,
            hidden,
            intermediate: usize_field(obj, file, "intermediate_size")?,
            n_layers: usize_field(obj, file, "num_hidden_layers")?,
            n_heads,
            n_kv_heads,
            head_dim,
            vocab,
            rms_eps: f32_field(obj, file, "rms_norm_eps", 1e-6)?,
            rope_theta: f32_field(obj, file, "rope_theta", 10000.0)?,
            max_position: usize_field(obj, file, "max_position_embeddings")?,
            tie_embeddings,
            qkv_bias: arch == Arch::Qwen2,
            eos_ids: token_ids(obj.get("eos_token_id")),
            bos_id,
        })
    }

    /// Width of all query heads together.
    pub fn q_dim(&self) -> usize {
        self.n_heads * self.head_dim
    }

    /// Width of all key (or value) heads together.
    pub fn kv_dim(&self) -> usize {
        self.n_kv_heads * self.head_dim
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

    #[test]
    fn parses_a_llama_config() {
        let c = ModelConfig::from_json(&base(), Path::new("config.json")).unwrap();
        assert_eq!(c.arch, Arch::Llama);
        assert_eq!(c.head_dim, 16);
        assert_eq!(c.kv_dim(), 32);
        assert_eq!(c.eos_ids, vec![2]);
        assert!(!c.qkv_bias);
    }

    #[test]
    fn refuses_rope_scaling_and_unknown_arch() {
        let mut o = base();
        o.insert(
            "rope_scaling".into(),
            serde_json::json!({"type": "linear", "factor": 2.0}),
        );
        let e = ModelConfig::from_json(&o, Path::new("m/config.json")).unwrap_err();
        assert!(e.message().contains("rope_scaling"), "{e}");
        assert!(e.message().contains("m/config.json"), "{e}");
        let mut o = base();
        o.insert(
            "architectures".into(),
            serde_json::json!(["MistralForCausalLM"]),
        );
        let e = ModelConfig::from_json(&o, Path::new("config.json")).unwrap_err();
        assert_eq!(e.kind(), crate::error::ErrorKind::Unsupported);
        assert!(e.message().contains("MistralForCausalLM"), "{e}");
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
        o.insert("use_sliding_window".into(), serde_json::json!(true));
        assert!(ModelConfig::from_json(&o, Path::new("config.json")).is_err());
    }
}
