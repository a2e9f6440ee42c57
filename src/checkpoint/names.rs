//! The checkpoint's tensor names (Hugging Face layout) and the one order of a decoder
//! layer's seven linear weights, which the loader, the planner, the substitutes and both
//! slow tiers all follow.

use super::config::ModelConfig;

/// One of the seven linear weights of a decoder layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Linear {
    /// Query projection, `(n_heads * head_dim, hidden)`.
    Q,
    /// Key projection, `(n_kv_heads * head_dim, hidden)`.
    K,
    /// Value projection, `(n_kv_heads * head_dim, hidden)`.
    V,
    /// Attention output projection, `(hidden, n_heads * head_dim)`.
    O,
    /// MLP gate projection, `(intermediate, hidden)`.
    Gate,
    /// MLP up projection, `(intermediate, hidden)`.
    Up,
    /// MLP down projection, `(hidden, intermediate)`.
    Down,
}

impl Linear {
    /// The seven, in the order used everywhere: q, k, v, o, gate, up, down.
    pub const ALL: [Linear; 7] = [
        Linear::Q,
        Linear::K,
        Linear::V,
        Linear::O,
        Linear::Gate,
        Linear::Up,
        Linear::Down,
    ];

    /// The module path inside a layer, e.g. `self_attn.q_proj`.
    pub fn module(self) -> &'static str {
        match self {
            Linear::Q => "self_attn.q_proj",
            Linear::K => "self_attn.k_proj",
            Linear::V => "self_attn.v_proj",
            Linear::O => "self_attn.o_proj",
            Linear::Gate => "mlp.gate_proj",
            Linear::Up => "mlp.up_proj",
            Linear::Down => "mlp.down_proj",
        }
    }

    /// `[out_features, in_features]` under config `c`.
    pub fn shape(self, c: &ModelConfig) -> [usize; 2] {
        let (h, q, kv, ff) = (c.hidden, c.q_dim(), c.kv_dim(), c.intermediate);
        match self {
            Linear::Q => [q, h],
            Linear::K | Linear::V => [kv, h],
            Linear::O => [h, q],
            Linear::Gate | Linear::Up => [ff, h],
            Linear::Down => [h, ff],
        }
    }

    /// The weight's tensor name in layer `layer`.
    pub fn tensor(self, layer: usize) -> String {
        format!("model.layers.{layer}.{}.weight", self.module())
    }
}

/// The tensor names of layer `l`'s seven linear weights, in [`Linear::ALL`] order.
pub fn linear_names(l: usize) -> [String; 7] {
    Linear::ALL.map(|k| k.tensor(l))
}

/// The embedding table, `(vocab, hidden)`.
pub const EMBED: &str = "model.embed_tokens.weight";
/// The output head, `(vocab, hidden)` (absent when tied to [`EMBED`]).
pub const LM_HEAD: &str = "lm_head.weight";
/// The final RMSNorm, `(hidden)`.
pub const FINAL_NORM: &str = "model.norm.weight";

/// Layer `l`'s RMSNorm before attention.
pub fn input_norm(l: usize) -> String {
    format!("model.layers.{l}.input_layernorm.weight")
}

/// Layer `l`'s RMSNorm before the MLP: `post_attention_layernorm`, except in models
/// with sandwich norms (Gemma 3), which call it `pre_feedforward_layernorm`.
pub fn mlp_norm(l: usize, c: &ModelConfig) -> String {
    if c.sandwich_norms {
        format!("model.layers.{l}.pre_feedforward_layernorm.weight")
    } else {
        format!("model.layers.{l}.post_attention_layernorm.weight")
    }
}

/// Layer `l`'s sandwich norms (Gemma 3), `(hidden)` each: of the attention output and of
/// the MLP output, before each joins the residual stream.
pub fn sandwich_norms(l: usize) -> [String; 2] {
    ["post_attention_layernorm", "post_feedforward_layernorm"]
        .map(|n| format!("model.layers.{l}.{n}.weight"))
}

/// Layer `l`'s per-head RMSNorm weights of q and k (Qwen3), `(head_dim)` each.
pub fn qk_norm(l: usize) -> [String; 2] {
    ["q_norm", "k_norm"].map(|n| format!("model.layers.{l}.self_attn.{n}.weight"))
}

/// Layer `l`'s q, k and v biases (Qwen2).
pub fn qkv_bias(l: usize) -> [String; 3] {
    [Linear::Q, Linear::K, Linear::V].map(|k| format!("model.layers.{l}.{}.bias", k.module()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_hugging_face_layout() {
        assert_eq!(linear_names(3)[0], "model.layers.3.self_attn.q_proj.weight");
        assert_eq!(linear_names(0)[6], "model.layers.0.mlp.down_proj.weight");
        assert_eq!(qkv_bias(1)[2], "model.layers.1.self_attn.v_proj.bias");
        assert_eq!(Linear::ALL.len(), 7);
    }
}
