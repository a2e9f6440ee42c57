//! A GGUF file as a model: its tensors under their Hugging Face names (llama.cpp's q/k
//! row permutation undone through row maps), and its `ModelConfig` from the
//! `{arch}.*` metadata. Like config.json, no model key is silently ignored: a key under
//! the architecture's prefix that this engine does not read is refused by name
//! (`general.*`, `tokenizer.*` and `split.*` keys do not change the maths).

use std::sync::Arc;

use super::config::{Activation, Arch, ModelConfig, RopeScaling};
use super::gguf::{GgufFile, GgufTensor};
use super::tensor::{DType, HostTensor};
use super::weights::Weights;
use crate::error::{Error, ErrorKind, Result};

/// The Hugging Face name of a GGUF tensor of architecture `arch`, or `None` for one this
/// engine does not use (then the file is refused, naming it). `rope_freqs.weight` keeps
/// its name: the config reads it. llama.cpp's `ffn_norm` is the MLP's input norm, which
/// Gemma 3 calls `pre_feedforward_layernorm` (its `post_attention_layernorm` normalises
/// the attention output: llama.cpp's `post_attention_norm`).
fn hf_name(gguf: &str, arch: Arch) -> Option<String> {
    Some(match gguf {
        "token_embd.weight" => "model.embed_tokens.weight".into(),
        "output_norm.weight" => "model.norm.weight".into(),
        "output.weight" => "lm_head.weight".into(),
        "rope_freqs.weight" => "rope_freqs.weight".into(),
        _ => {
            let rest = gguf.strip_prefix("blk.")?;
            let (layer, rest) = rest.split_once('.')?;
            layer.parse::<usize>().ok()?;
            let (what, kind) = rest.split_once('.')?;
            if !matches!(kind, "weight" | "bias") {
                return None;
            }
            let module = match what {
                "attn_norm" => "input_layernorm",
                "ffn_norm" if arch == Arch::Gemma3 => "pre_feedforward_layernorm",
                "ffn_norm" => "post_attention_layernorm",
                "post_attention_norm" if arch == Arch::Gemma3 => "post_attention_layernorm",
                "post_ffw_norm" if arch == Arch::Gemma3 => "post_feedforward_layernorm",
                "attn_q" => "self_attn.q_proj",
                "attn_k" => "self_attn.k_proj",
                "attn_v" => "self_attn.v_proj",
                "attn_output" => "self_attn.o_proj",
                "attn_q_norm" => "self_attn.q_norm",
                "attn_k_norm" => "self_attn.k_norm",
                "ffn_gate" => "mlp.gate_proj",
                "ffn_up" => "mlp.up_proj",
                "ffn_down" => "mlp.down_proj",
                _ => return None,
            };
            format!("model.layers.{layer}.{module}.{kind}")
        }
    })
}

/// The GGUF file's tensors as [`Weights`] under Hugging Face names.
pub(crate) fn weights(g: &GgufFile) -> Result<Weights> {
    let arch = architecture(g)?;
    let mut items = Vec::with_capacity(g.tensors().len());
    for t in g.tensors() {
        let file = g.paths()[t.shard].clone();
        let name = hf_name(&t.name, arch).ok_or_else(|| {
            Error::unsupported(format!(
                "{}: tensor `{}` is not one this engine uses (another architecture, or mixture of experts?)",
                file.display(),
                t.name
            ))
        })?;
        let map: Option<Arc<[usize]>> = g.qk_row_map(&t.name)?.map(Arc::from);
        items.push((view(t, &name), file, map));
    }
    Weights::from_tensors(items)
}

/// A zero-copy view of a GGUF tensor under `name`.
fn view(t: &GgufTensor, name: &str) -> HostTensor {
    HostTensor::view(
        name,
        DType::from_ggml(t.ggml_type),
        t.shape.clone(),
        t.storage.clone(),
        t.offset,
        t.len,
    )
}

/// The `{arch}.*` keys read for each architecture (the prefix is added).
const MODEL_KEYS: &[&str] = &[
    "block_count",
    "context_length",
    "embedding_length",
    "feed_forward_length",
    "attention.head_count",
    "attention.head_count_kv",
    "attention.key_length",
    "attention.value_length",
    "attention.layer_norm_rms_epsilon",
    "rope.freq_base",
    "rope.dimension_count",
    "rope.scaling.type",
    "rope.scaling.factor",
    "rope.scaling.original_context_length",
    "vocab_size",
    "attention.sliding_window",
];

/// The architecture a GGUF file names in `general.architecture`.
fn architecture(g: &GgufFile) -> Result<Arch> {
    Ok(match g.architecture()? {
        "llama" => Arch::Llama,
        "qwen2" => Arch::Qwen2,
        "qwen3" => Arch::Qwen3,
        "gemma3" => Arch::Gemma3,
        other => {
            return Err(Error::unsupported(format!(
                "{}: general.architecture is `{other}`; supported: llama, qwen2, qwen3, gemma3",
                g.paths()[0].display()
            )))
        }
    })
}

/// `ModelConfig` of a GGUF file.
pub(crate) fn config(g: &GgufFile) -> Result<ModelConfig> {
    let file = g.paths()[0].display().to_string();
    let m = g.meta();
    let bad = |msg: String| Error::invalid_model(format!("{file}: {msg}"));
    let unsupported = |msg: String| Error::unsupported(format!("{file}: {msg}"));
    let arch = architecture(g)?;
    let arch_name = g.architecture()?;
    let gemma = arch == Arch::Gemma3;
    // No model key may go unread.
    let prefix = format!("{arch_name}.");
    for (key, _) in m.iter() {
        if let Some(k) = key.strip_prefix(&prefix) {
            if !MODEL_KEYS.contains(&k) || (k == "attention.sliding_window" && !gemma) {
                return Err(Error::new(
                    ErrorKind::Unsupported,
                    format!(
                        "{file}: key `{key}` is not understood by this engine and may change the model's maths; refusing to load rather than compute wrong logits"
                    ),
                ));
            }
        } else if !(key.starts_with("general.")
            || key.starts_with("tokenizer.")
            || key.starts_with("split."))
        {
            return Err(unsupported(format!(
                "key `{key}` belongs to another architecture than `{arch_name}`"
            )));
        }
    }
    let key = |k: &str| format!("{prefix}{k}");
    let positive = |k: &str| -> Result<usize> {
        match m.get_usize(&key(k))? {
            0 => Err(bad(format!("`{}` must be positive", key(k)))),
            n => Ok(n),
        }
    };
    let n_layers = positive("block_count")?;
    let hidden = positive("embedding_length")?;
    let intermediate = positive("feed_forward_length")?;
    let n_heads = positive("attention.head_count")?;
    let n_kv_heads = m
        .opt_usize(&key("attention.head_count_kv"))?
        .unwrap_or(n_heads);
    if n_kv_heads == 0 || n_heads % n_kv_heads != 0 {
        return Err(bad(format!(
            "`{}` ({n_heads}) must be a multiple of `{}` ({n_kv_heads})",
            key("attention.head_count"),
            key("attention.head_count_kv")
        )));
    }
    let head_dim = match m.opt_usize(&key("attention.key_length"))? {
        Some(d) => d,
        None if hidden % n_heads == 0 => hidden / n_heads,
        None => {
            return Err(bad(format!(
                "`{}` is not a multiple of the heads and `{}` is missing",
                key("embedding_length"),
                key("attention.key_length")
            )))
        }
    };
    if head_dim == 0 || head_dim % 2 != 0 {
        return Err(bad(format!(
            "head dimension {head_dim} must be even and positive"
        )));
    }
    if let Some(v) = m.opt_usize(&key("attention.value_length"))? {
        if v != head_dim {
            return Err(unsupported(format!(
                "`{}` ({v}) differs from the key length ({head_dim})",
                key("attention.value_length")
            )));
        }
    }
    if let Some(r) = m.opt_usize(&key("rope.dimension_count"))? {
        if r != head_dim {
            return Err(unsupported(format!(
                "`{}` is {r}: partial rotary embeddings (head dimension {head_dim}) are not supported",
                key("rope.dimension_count")
            )));
        }
    }
    let rope_theta = m.opt_f32(&key("rope.freq_base"))?.unwrap_or(10000.0);
    let mut rope_scaling = match m.opt_str(&key("rope.scaling.type"))? {
        None | Some("none") => RopeScaling::None,
        Some("linear") => RopeScaling::Linear {
            factor: m.get_f32(&key("rope.scaling.factor"))?,
        },
        Some(other) => {
            return Err(unsupported(format!(
                "`{}` is `{other}`; supported: none, linear (llama3 scaling comes as rope_freqs.weight)",
                key("rope.scaling.type")
            )))
        }
    };
    // Llama 3.x: the converter stores the per-frequency divisors as a tensor.
    if let Some(t) = g.get("rope_freqs.weight") {
        if t.numel() != head_dim / 2 {
            return Err(bad(format!(
                "tensor `rope_freqs.weight` has {} values for {} frequencies",
                t.numel(),
                head_dim / 2
            )));
        }
        if rope_scaling != RopeScaling::None {
            return Err(unsupported(
                "both rope.scaling.type and rope_freqs.weight are given".into(),
            ));
        }
        let divisors = t.to_f32_vec();
        if divisors.iter().any(|d| !(d.is_finite() && *d > 0.0)) {
            return Err(bad(
                "tensor `rope_freqs.weight` has non-positive values".into()
            ));
        }
        rope_scaling = RopeScaling::Divisors(divisors);
    }
    let max_position = positive("context_length")?;
    let embed = g.tensor("token_embd.weight")?;
    let vocab = embed.shape.first().copied().unwrap_or(0);
    if let Some(v) = m.opt_usize(&key("vocab_size"))? {
        if v != vocab {
            return Err(bad(format!(
                "`{}` is {v} but token_embd.weight has {vocab} rows",
                key("vocab_size")
            )));
        }
    }
    let tie_embeddings = g.get("output.weight").is_none();
    let qkv_bias = g.get("blk.0.attn_q.bias").is_some();
    if qkv_bias && arch != Arch::Qwen2 && arch != Arch::Qwen3 {
        return Err(unsupported(
            "q/k/v biases are only supported for Qwen architectures".into(),
        ));
    }
    let id = |k: &str| -> Result<Option<u32>> { m.opt_u32(k) };
    let bos_id = id("tokenizer.ggml.bos_token_id")?;
    let mut eos_ids: Vec<u32> = id("tokenizer.ggml.eos_token_id")?.into_iter().collect();
    if let Some(eot) = id("tokenizer.ggml.eot_token_id")? {
        if !eos_ids.contains(&eot) {
            eos_ids.push(eot);
        }
    }
    eos_ids.retain(|&i| (i as usize) < vocab);
    // Gemma 3 as llama.cpp runs it: every sixth layer global, the others local with a
    // window and RoPE base 10000; scores scaled by 1/sqrt(head_dim), except the 27B
    // (62 layers), whose query_pre_attn_scalar is hidden / heads.
    let attn_window = if gemma {
        let w = positive("attention.sliding_window")?;
        (0..n_layers)
            .map(|i| if (i + 1) % 6 == 0 { None } else { Some(w) })
            .collect()
    } else {
        vec![None; n_layers]
    };
    let attn_scale = if gemma && n_layers == 62 {
        (1.0 / ((hidden / n_heads) as f64).sqrt()) as f32
    } else if gemma {
        (1.0 / (head_dim as f64).sqrt()) as f32
    } else {
        1.0 / (head_dim as f32).sqrt()
    };
    Ok(ModelConfig {
        arch,
        hidden,
        intermediate,
        n_layers,
        n_heads,
        n_kv_heads,
        head_dim,
        vocab,
        rms_eps: m.get_f32(&key("attention.layer_norm_rms_epsilon"))?,
        rope_theta,
        rope_scaling,
        rope_local_theta: gemma.then_some(10_000.0),
        max_position,
        tie_embeddings,
        qkv_bias,
        qk_norm: matches!(arch, Arch::Qwen3 | Arch::Gemma3),
        attn_window,
        hidden_act: if gemma {
            Activation::GeluTanh
        } else {
            Activation::Silu
        },
        attn_scale,
        embed_scale: gemma.then(|| (hidden as f64).sqrt() as f32),
        // llama.cpp's converter stores Gemma's norm weights as 1 + w already.
        norm_weight_offset: 0.0,
        sandwich_norms: gemma,
        eos_ids,
        bos_id,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tensor_names_map_to_hugging_face() {
        assert_eq!(
            hf_name("blk.3.attn_q.weight", Arch::Llama).unwrap(),
            "model.layers.3.self_attn.q_proj.weight"
        );
        assert_eq!(
            hf_name("blk.0.attn_k.bias", Arch::Qwen2).unwrap(),
            "model.layers.0.self_attn.k_proj.bias"
        );
        assert_eq!(
            hf_name("blk.11.ffn_norm.weight", Arch::Llama).unwrap(),
            "model.layers.11.post_attention_layernorm.weight"
        );
        // Gemma 3's four norms.
        for (g, hf) in [
            ("attn_norm", "input_layernorm"),
            ("post_attention_norm", "post_attention_layernorm"),
            ("ffn_norm", "pre_feedforward_layernorm"),
            ("post_ffw_norm", "post_feedforward_layernorm"),
        ] {
            assert_eq!(
                hf_name(&format!("blk.2.{g}.weight"), Arch::Gemma3).unwrap(),
                format!("model.layers.2.{hf}.weight")
            );
        }
        assert!(hf_name("blk.2.post_ffw_norm.weight", Arch::Llama).is_none());
        assert_eq!(
            hf_name("output.weight", Arch::Llama).unwrap(),
            "lm_head.weight"
        );
        assert!(hf_name("blk.0.ffn_gate_inp.weight", Arch::Llama).is_none());
        assert!(hf_name("blk.x.attn_q.weight", Arch::Llama).is_none());
        assert!(hf_name("blk.0.attn_q.scale", Arch::Llama).is_none());
    }
}
