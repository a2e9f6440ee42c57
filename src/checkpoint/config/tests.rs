//! Unit tests of config.json parsing.

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

fn gemma3_v4() -> Map<String, Value> {
    // The shape of gemma-3-270m's config.json on the Hub (transformers 4 form).
    serde_json::from_str(
        r#"{"architectures":["Gemma3ForCausalLM"],"model_type":"gemma3_text","hidden_size":640,
        "intermediate_size":2048,"num_hidden_layers":7,"num_attention_heads":4,
        "num_key_value_heads":1,"head_dim":256,"vocab_size":262144,"max_position_embeddings":32768,
        "rms_norm_eps":1e-6,"rope_theta":1000000.0,"rope_local_base_freq":10000.0,
        "rope_scaling":null,"sliding_window":512,"sliding_window_pattern":6,
        "query_pre_attn_scalar":256,"hidden_activation":"gelu_pytorch_tanh",
        "final_logit_softcapping":null,"attn_logit_softcapping":null,"attention_bias":false,
        "use_bidirectional_attention":false,"bos_token_id":2,"eos_token_id":1,"pad_token_id":0}"#,
    )
    .unwrap()
}

#[test]
fn gemma3_in_the_transformers_4_form() {
    let c = parse(&gemma3_v4()).unwrap();
    assert_eq!(c.arch, Arch::Gemma3);
    assert_eq!(c.hidden_act, Activation::GeluTanh);
    assert!(c.qk_norm && c.sandwich_norms && c.tie_embeddings && !c.qkv_bias);
    assert_eq!(c.norm_weight_offset, 1.0);
    assert_eq!(c.embed_scale, Some(640f64.sqrt() as f32));
    assert_eq!(c.attn_scale, 0.0625);
    // Every sixth layer is global; the local ones keep their window and RoPE base.
    let w = Some(512);
    assert_eq!(c.attn_window, vec![w, w, w, w, w, None, w]);
    assert_eq!((c.rope_theta, c.rope_local_theta), (1e6, Some(1e4)));
    let local = c.rope_inv_freq_local().unwrap();
    assert_eq!(local[1], 1.0 / 10000f32.powf(2.0 / 256.0));
    assert_ne!(local, c.rope_inv_freq());
    // Linear scaling applies to the global layers only.
    let mut o = gemma3_v4();
    o.insert(
        "rope_scaling".into(),
        serde_json::json!({"rope_type": "linear", "factor": 8.0}),
    );
    let s = parse(&o).unwrap();
    assert_eq!(s.rope_scaling, RopeScaling::Linear { factor: 8.0 });
    assert_eq!(s.rope_inv_freq_local(), c.rope_inv_freq_local());
    // A query_pre_attn_scalar of its own.
    o.insert("query_pre_attn_scalar".into(), serde_json::json!(168));
    assert_eq!(parse(&o).unwrap().attn_scale, (1.0 / 168f64.sqrt()) as f32);
    // The pattern as transformers 5 stores it.
    let mut o = gemma3_v4();
    o.remove("sliding_window_pattern");
    o.insert("_sliding_window_pattern".into(), serde_json::json!(2));
    assert_eq!(
        parse(&o).unwrap().attn_window,
        vec![w, None, w, None, w, None, w]
    );
}

#[test]
fn gemma3_settings_it_cannot_compute_are_refused() {
    for (k, v) in [
        ("final_logit_softcapping", serde_json::json!(30.0)),
        ("attn_logit_softcapping", serde_json::json!(50.0)),
        ("use_bidirectional_attention", serde_json::json!(true)),
        ("hidden_activation", serde_json::json!("gelu")),
        ("attention_bias", serde_json::json!(true)),
    ] {
        let mut o = gemma3_v4();
        o.insert(k.into(), v);
        let e = parse(&o).unwrap_err();
        assert!(e.message().contains(k), "{k}: {e}");
    }
    // The RoPE in both forms at once is ambiguous.
    let mut o = gemma3_v4();
    o.insert(
        "rope_parameters".into(),
        serde_json::json!({"full_attention": {"rope_type": "default", "rope_theta": 1e6},
            "sliding_attention": {"rope_type": "default", "rope_theta": 1e4}}),
    );
    assert!(parse(&o).unwrap_err().message().contains("rope_theta"));
    // Scaled local RoPE, or a layer type Gemma 3 does not have.
    for rp in [
        serde_json::json!({"sliding_attention": {"rope_type": "linear", "factor": 2.0}}),
        serde_json::json!({"chunked_attention": {"rope_type": "default"}}),
    ] {
        let mut o = gemma3_v4();
        for k in ["rope_theta", "rope_local_base_freq", "rope_scaling"] {
            o.remove(k);
        }
        o.insert("rope_parameters".into(), rp);
        assert!(parse(&o).is_err());
    }
}
