//! Random-weight models in Hugging Face layout, shaped like real ones.
//!
//! Tests and the GPU benchmark use [`write_model`] to create a model directory
//! (`config.json` and `model.safetensors`, no tokenizer) of the exact shape of, say,
//! Qwen2.5-7B without downloading it. The writer streams: each tensor is generated in
//! parallel chunks of about 16 MiB and written before the next is made, so a 15 GB model
//! never sits in memory; a writer thread overlaps the disk writes with the generation.
//!
//! Every value is a pure function of `(seed, tensor index, element index)` (a counter-based
//! splitmix64 hash), so the bytes depend on the seed only, never on the number of threads
//! or the chunking.
//!
//! The scales are chosen so that a forward pass is well-conditioned and its logits are
//! peaked (embedding and lm_head uniform in ±0.1·√3, i.e. standard deviation 0.1): greedy
//! decoding then picks clear winners, which keeps comparisons between backends stable.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::sync::mpsc;

use half::slice::HalfFloatSliceExt;
use rayon::prelude::*;

use crate::checkpoint::DType;
use crate::error::{Error, Result};

/// Shape of a synthetic Llama/Qwen2-style model.
#[derive(Debug, Clone, PartialEq)]
pub struct SynthShape {
    /// `Qwen2ForCausalLM` (q/k/v biases) rather than `LlamaForCausalLM`.
    pub qwen2: bool,
    /// `hidden_size`.
    pub hidden: usize,
    /// `intermediate_size`.
    pub intermediate: usize,
    /// `num_hidden_layers`.
    pub layers: usize,
    /// `num_attention_heads`.
    pub heads: usize,
    /// `num_key_value_heads`.
    pub kv_heads: usize,
    /// `head_dim`.
    pub head_dim: usize,
    /// `vocab_size`.
    pub vocab: usize,
    /// `max_position_embeddings`.
    pub max_position: usize,
    /// `tie_word_embeddings`: no `lm_head.weight` when true.
    pub tie_embeddings: bool,
}

/// The names [`SynthShape::named`] knows.
const NAMES: [&str; 4] = ["tiny", "smollm2-135m", "qwen2.5-0.5b", "qwen2.5-7b"];

/// How a tensor's values are drawn: `offset + uniform(-scale, scale)`.
#[derive(Debug, Clone, Copy)]
struct Init {
    offset: f32,
    scale: f32,
}

/// One tensor of the checkpoint.
struct Spec {
    name: String,
    shape: Vec<usize>,
    init: Init,
}

impl Spec {
    fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

impl SynthShape {
    /// Named shapes: "tiny" (hidden 128, ff 256, 2 layers, 4 heads/2 kv, head_dim 32 (the
    /// smallest the CUDA attention takes), vocab 128, llama tied, max_position 1024), "smollm2-135m" (llama: hidden 576, ff 1536, 30 layers, 9 heads / 3
    /// kv heads, head_dim 64, vocab 49152, tied, max_position 8192), "qwen2.5-0.5b" (qwen2:
    /// hidden 896, ff 4864, 24 layers, 14 heads / 2 kv, head_dim 64, vocab 151936, untied,
    /// max_position 32768), "qwen2.5-7b" (qwen2: hidden 3584, ff 18944, 28 layers, 28 heads
    /// / 4 kv, head_dim 128, vocab 152064, untied, max_position 32768).
    pub fn named(name: &str) -> Result<SynthShape> {
        let (qwen2, hidden, intermediate, layers, heads, kv_heads, head_dim, vocab, max_position) =
            match name {
                "tiny" => (false, 128, 256, 2, 4, 2, 32, 128, 1024),
                "smollm2-135m" => (false, 576, 1536, 30, 9, 3, 64, 49152, 8192),
                "qwen2.5-0.5b" => (true, 896, 4864, 24, 14, 2, 64, 151936, 32768),
                "qwen2.5-7b" => (true, 3584, 18944, 28, 28, 4, 128, 152064, 32768),
                _ => {
                    return Err(Error::invalid_argument(format!(
                        "unknown synthetic model shape `{name}`; known: {}",
                        NAMES.join(", ")
                    )))
                }
            };
        Ok(SynthShape {
            qwen2,
            hidden,
            intermediate,
            layers,
            heads,
            kv_heads,
            head_dim,
            vocab,
            max_position,
            tie_embeddings: !qwen2,
        })
    }

    /// Total bytes of the weights at `dtype`.
    pub fn weight_bytes(&self, dtype: DType) -> u64 {
        self.tensors()
            .iter()
            .map(|t| t.numel() as u64 * dtype.size() as u64)
            .sum()
    }

    /// Every tensor, in file order (also the order that numbers them for the RNG).
    fn tensors(&self) -> Vec<Spec> {
        let (h, ff) = (self.hidden, self.intermediate);
        let q_dim = self.heads * self.head_dim;
        let kv_dim = self.kv_heads * self.head_dim;
        let uniform = |a: f32| Init {
            offset: 0.0,
            scale: a,
        };
        let norm = Init {
            offset: 1.0,
            scale: 0.1,
        };
        let inv_sqrt = |n: usize| 1.0 / (n as f32).sqrt();
        let embed = uniform(0.1 * 3f32.sqrt());
        let mut ts = Vec::new();
        let mut t =
            |name: String, shape: Vec<usize>, init: Init| ts.push(Spec { name, shape, init });
        t(
            "model.embed_tokens.weight".into(),
            vec![self.vocab, h],
            embed,
        );
        t("model.norm.weight".into(), vec![h], norm);
        if !self.tie_embeddings {
            t("lm_head.weight".into(), vec![self.vocab, h], embed);
        }
        for l in 0..self.layers {
            let p = format!("model.layers.{l}");
            t(format!("{p}.input_layernorm.weight"), vec![h], norm);
            t(
                format!("{p}.post_attention_layernorm.weight"),
                vec![h],
                norm,
            );
            let qk = uniform(2.0 * inv_sqrt(h));
            t(format!("{p}.self_attn.q_proj.weight"), vec![q_dim, h], qk);
            t(format!("{p}.self_attn.k_proj.weight"), vec![kv_dim, h], qk);
            t(
                format!("{p}.self_attn.v_proj.weight"),
                vec![kv_dim, h],
                uniform(inv_sqrt(h)),
            );
            t(
                format!("{p}.self_attn.o_proj.weight"),
                vec![h, q_dim],
                uniform(inv_sqrt(q_dim)),
            );
            t(
                format!("{p}.mlp.gate_proj.weight"),
                vec![ff, h],
                uniform(inv_sqrt(h)),
            );
            t(
                format!("{p}.mlp.up_proj.weight"),
                vec![ff, h],
                uniform(inv_sqrt(h)),
            );
            t(
                format!("{p}.mlp.down_proj.weight"),
                vec![h, ff],
                uniform(inv_sqrt(ff)),
            );
            if self.qwen2 {
                let bias = uniform(0.1);
                t(format!("{p}.self_attn.q_proj.bias"), vec![q_dim], bias);
                t(format!("{p}.self_attn.k_proj.bias"), vec![kv_dim], bias);
                t(format!("{p}.self_attn.v_proj.bias"), vec![kv_dim], bias);
            }
        }
        ts
    }

    fn config_json(&self, dtype: DType) -> serde_json::Value {
        let (arch, rope_theta) = if self.qwen2 {
            ("Qwen2ForCausalLM", 1_000_000.0)
        } else {
            ("LlamaForCausalLM", 10_000.0)
        };
        serde_json::json!({
            "architectures": [arch],
            "hidden_size": self.hidden,
            "intermediate_size": self.intermediate,
            "num_hidden_layers": self.layers,
            "num_attention_heads": self.heads,
            "num_key_value_heads": self.kv_heads,
            "head_dim": self.head_dim,
            "vocab_size": self.vocab,
            "max_position_embeddings": self.max_position,
            "rms_norm_eps": 1e-6,
            "rope_theta": rope_theta,
            "tie_word_embeddings": self.tie_embeddings,
            "eos_token_id": 1,
            "bos_token_id": 0,
            "hidden_act": "silu",
            "torch_dtype": torch_dtype(dtype),
        })
    }

    fn validate(&self) -> Result<()> {
        let dims = [
            ("hidden", self.hidden),
            ("intermediate", self.intermediate),
            ("layers", self.layers),
            ("heads", self.heads),
            ("kv_heads", self.kv_heads),
            ("head_dim", self.head_dim),
            ("vocab", self.vocab),
            ("max_position", self.max_position),
        ];
        for (name, v) in dims {
            if v == 0 {
                return Err(Error::invalid_argument(format!(
                    "synthetic model: `{name}` must be positive"
                )));
            }
        }
        if !self.heads.is_multiple_of(self.kv_heads) || !self.head_dim.is_multiple_of(2) {
            return Err(Error::invalid_argument(format!(
                "synthetic model: heads ({}) must be a multiple of kv_heads ({}) and head_dim ({}) even",
                self.heads, self.kv_heads, self.head_dim
            )));
        }
        if self.vocab < 2 {
            return Err(Error::invalid_argument(
                "synthetic model: vocab must hold at least bos (0) and eos (1)",
            ));
        }
        Ok(())
    }
}

fn torch_dtype(dtype: DType) -> &'static str {
    match dtype {
        DType::F16 => "float16",
        DType::BF16 => "bfloat16",
        DType::F32 => "float32",
        DType::Quant(_) => unreachable!("synth writes float checkpoints only"),
    }
}

fn st_dtype(dtype: DType) -> &'static str {
    match dtype {
        DType::F16 => "F16",
        DType::BF16 => "BF16",
        DType::F32 => "F32",
        DType::Quant(_) => unreachable!("synth writes float checkpoints only"),
    }
}

/// Bytes generated per parallel task.
const CHUNK_BYTES: usize = 16 << 20;
/// Most bytes generated before they are handed to the writer thread.
const BATCH_BYTES: usize = 128 << 20;

/// Writes config.json and model.safetensors (random weights, `dtype` = F16, BF16 or F32)
/// into `dir` (created if missing). No tokenizer.json. Deterministic in `seed`.
pub fn write_model(dir: &Path, shape: &SynthShape, dtype: DType, seed: u64) -> Result<()> {
    write_model_chunked(dir, shape, dtype, seed, CHUNK_BYTES)
}

fn write_model_chunked(
    dir: &Path,
    shape: &SynthShape,
    dtype: DType,
    seed: u64,
    chunk_bytes: usize,
) -> Result<()> {
    shape.validate()?;
    if dtype.is_quantized() {
        return Err(Error::invalid_argument(format!(
            "synthetic models are written as F32, F16 or BF16, not {}",
            dtype.name()
        )));
    }
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let config = dir.join("config.json");
    let text = serde_json::to_string_pretty(&shape.config_json(dtype))
        .map_err(|e| Error::internal(format!("serializing config.json: {e}")))?;
    std::fs::write(&config, text + "\n").map_err(|e| Error::io(&config, e))?;

    let tensors = shape.tensors();
    let header = safetensors_header(&tensors, dtype);
    let path = dir.join("model.safetensors");
    // Written under a temporary name and renamed at the end, so an interrupted run never
    // leaves a truncated model.safetensors behind.
    let tmp = dir.join("model.safetensors.partial");
    let file = File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
    let mut w = BufWriter::with_capacity(1 << 20, file);
    let write_all = |w: &mut BufWriter<File>| -> std::io::Result<()> {
        w.write_all(&(header.len() as u64).to_le_bytes())?;
        w.write_all(&header)?;
        stream_tensors(w, &tensors, dtype, seed, chunk_bytes)?;
        w.flush()?;
        w.get_ref().sync_data()
    };
    if let Err(e) = write_all(&mut w) {
        drop(w);
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::io(&tmp, e));
    }
    drop(w);
    std::fs::rename(&tmp, &path).map_err(|e| Error::io(&path, e))
}

/// The JSON header, tensors in file order, padded with spaces to a multiple of 8.
fn safetensors_header(tensors: &[Spec], dtype: DType) -> Vec<u8> {
    let mut h = String::from("{\"__metadata__\":{\"format\":\"pt\"}");
    let mut offset = 0usize;
    for t in tensors {
        let end = offset + t.numel() * dtype.size();
        h.push_str(&format!(
            ",{}:{{\"dtype\":\"{}\",\"shape\":{},\"data_offsets\":[{offset},{end}]}}",
            serde_json::Value::from(t.name.as_str()),
            st_dtype(dtype),
            serde_json::Value::from(t.shape.clone()),
        ));
        offset = end;
    }
    h.push('}');
    let mut h = h.into_bytes();
    while !h.len().is_multiple_of(8) {
        h.push(b' ');
    }
    h
}

/// Generates every tensor's data in parallel batches and writes them in order through a
/// writer thread (at most three batches exist at once).
fn stream_tensors(
    w: &mut BufWriter<File>,
    tensors: &[Spec],
    dtype: DType,
    seed: u64,
    chunk_bytes: usize,
) -> std::io::Result<()> {
    let esize = dtype.size();
    let chunk_elems = (chunk_bytes / esize).max(1);
    let batch_elems =
        (BATCH_BYTES.min(chunk_bytes * rayon::current_num_threads()) / esize).max(chunk_elems);
    let batch_elems = batch_elems / chunk_elems * chunk_elems;
    let (full_tx, full_rx) = mpsc::sync_channel::<Vec<u8>>(1);
    let (empty_tx, empty_rx) = mpsc::channel::<Vec<u8>>();
    std::thread::scope(|s| {
        let writer = s.spawn(move || -> std::io::Result<()> {
            for buf in full_rx {
                w.write_all(&buf)?;
                let _ = empty_tx.send(buf);
            }
            Ok(())
        });
        'tensors: for (index, t) in tensors.iter().enumerate() {
            let key = tensor_key(seed, index as u64);
            let n = t.numel();
            let mut start = 0;
            while start < n {
                let len = batch_elems.min(n - start);
                let mut buf = empty_rx.try_recv().unwrap_or_default();
                buf.resize(len * esize, 0);
                buf.par_chunks_mut(chunk_elems * esize)
                    .enumerate()
                    .for_each(|(c, out)| {
                        let first = (start + c * chunk_elems) as u64;
                        fill(out, dtype, key, first, t.init);
                    });
                if full_tx.send(buf).is_err() {
                    // The writer failed; its error is reported below.
                    break 'tensors;
                }
                start += len;
            }
        }
        drop(full_tx);
        writer.join().expect("synth writer thread panicked")
    })
}

// inline(always): the crate is built at opt-level 1 in tests, where plain #[inline]
// leaves the per-element calls in place (2x slower).
#[inline(always)]
fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// The per-tensor key of the counter-based RNG.
fn tensor_key(seed: u64, index: u64) -> u64 {
    splitmix64(splitmix64(seed) ^ index.wrapping_mul(0xD6E8_FEB8_6659_FD93))
}

/// Uniform in [-1, 1) from the element counter `i` of the tensor with `key`.
#[inline(always)]
fn unit(key: u64, i: u64) -> f32 {
    let x = splitmix64(key ^ i.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    (x >> 40) as f32 * (2.0 / (1u64 << 24) as f32) - 1.0
}

/// Fills `out` (little-endian `dtype` elements) with elements `first..` of a tensor.
fn fill(out: &mut [u8], dtype: DType, key: u64, first: u64, init: Init) {
    const BLOCK: usize = 1024;
    let esize = dtype.size();
    let mut vals = [0f32; BLOCK];
    let mut halves = [half::f16::ZERO; BLOCK];
    let mut bhalves = [half::bf16::ZERO; BLOCK];
    for (b, out) in out.chunks_mut(BLOCK * esize).enumerate() {
        let n = out.len() / esize;
        let base = first + (b * BLOCK) as u64;
        for (j, v) in vals[..n].iter_mut().enumerate() {
            *v = init.offset + init.scale * unit(key, base + j as u64);
        }
        match dtype {
            DType::F32 => {
                for (o, v) in out.chunks_exact_mut(4).zip(&vals[..n]) {
                    o.copy_from_slice(&v.to_le_bytes());
                }
            }
            DType::F16 => {
                halves[..n].convert_from_f32_slice(&vals[..n]);
                for (o, v) in out.chunks_exact_mut(2).zip(&halves[..n]) {
                    o.copy_from_slice(&v.to_le_bytes());
                }
            }
            DType::BF16 => {
                bhalves[..n].convert_from_f32_slice(&vals[..n]);
                for (o, v) in out.chunks_exact_mut(2).zip(&bhalves[..n]) {
                    o.copy_from_slice(&v.to_le_bytes());
                }
            }
            DType::Quant(_) => unreachable!("write_model refuses quantized types"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::{Arch, ModelConfig, Weights};
    use std::path::PathBuf;

    fn temp_dir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("subspec-synth-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    fn check_model(dir: &Path, shape: &SynthShape, dtype: DType) {
        let cfg = ModelConfig::from_dir(dir).unwrap();
        assert_eq!(
            cfg.arch,
            if shape.qwen2 {
                Arch::Qwen2
            } else {
                Arch::Llama
            }
        );
        assert_eq!(cfg.hidden, shape.hidden);
        assert_eq!(cfg.intermediate, shape.intermediate);
        assert_eq!(cfg.n_layers, shape.layers);
        assert_eq!(cfg.n_heads, shape.heads);
        assert_eq!(cfg.n_kv_heads, shape.kv_heads);
        assert_eq!(cfg.head_dim, shape.head_dim);
        assert_eq!(cfg.vocab, shape.vocab);
        assert_eq!(cfg.max_position, shape.max_position);
        assert_eq!(cfg.tie_embeddings, shape.tie_embeddings);
        assert_eq!(cfg.qkv_bias, shape.qwen2);
        assert_eq!(cfg.eos_ids, vec![1]);
        assert_eq!(cfg.bos_id, Some(0));
        assert_eq!(cfg.rope_theta, if shape.qwen2 { 1e6 } else { 1e4 });
        let json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap())
                .unwrap();
        assert_eq!(json["torch_dtype"], torch_dtype(dtype));
        assert!(!dir.join("tokenizer.json").exists());

        let w = Weights::open(dir).unwrap();
        let (h, v) = (shape.hidden, shape.vocab);
        let (q, kv) = (
            shape.heads * shape.head_dim,
            shape.kv_heads * shape.head_dim,
        );
        let emb = w.get("model.embed_tokens.weight", &[v, h]).unwrap();
        assert_eq!(emb.dtype, dtype);
        let a = 0.1 * 3f32.sqrt() * 1.01;
        let vals = emb.to_f32_vec();
        assert!(vals.iter().all(|x| x.abs() <= a), "embedding out of range");
        let mean_sq = vals.iter().map(|x| x * x).sum::<f32>() / vals.len() as f32;
        assert!(
            (mean_sq.sqrt() - 0.1).abs() < 0.01,
            "embedding std {}",
            mean_sq.sqrt()
        );
        let norm = w.get("model.norm.weight", &[h]).unwrap().to_f32_vec();
        assert!(norm.iter().all(|x| (0.89..=1.11).contains(x)));
        assert_eq!(w.contains("lm_head.weight"), !shape.tie_embeddings);
        if !shape.tie_embeddings {
            w.get("lm_head.weight", &[v, h]).unwrap();
        }
        for l in 0..shape.layers {
            let p = format!("model.layers.{l}");
            let ff = shape.intermediate;
            for (name, s) in [
                ("input_layernorm.weight", vec![h]),
                ("post_attention_layernorm.weight", vec![h]),
                ("self_attn.q_proj.weight", vec![q, h]),
                ("self_attn.k_proj.weight", vec![kv, h]),
                ("self_attn.v_proj.weight", vec![kv, h]),
                ("self_attn.o_proj.weight", vec![h, q]),
                ("mlp.gate_proj.weight", vec![ff, h]),
                ("mlp.up_proj.weight", vec![ff, h]),
                ("mlp.down_proj.weight", vec![h, ff]),
            ] {
                assert_eq!(w.get(&format!("{p}.{name}"), &s).unwrap().dtype, dtype);
            }
            for (name, n) in [("q", q), ("k", kv), ("v", kv)] {
                let b = format!("{p}.self_attn.{name}_proj.bias");
                assert_eq!(w.contains(&b), shape.qwen2);
                if shape.qwen2 {
                    let b = w.get(&b, &[n]).unwrap().to_f32_vec();
                    assert!(b.iter().all(|x| x.abs() <= 0.101));
                }
            }
        }
        assert_eq!(w.total_bytes() as u64, shape.weight_bytes(dtype));

        // The safetensors crate reads it back too, and the data fill the file exactly.
        let bytes = std::fs::read(dir.join("model.safetensors")).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let sum: u64 = st
            .tensors()
            .iter()
            .map(|(_, t)| t.data().len() as u64)
            .sum();
        assert_eq!(sum, shape.weight_bytes(dtype));
        let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap());
        assert!(header_len.is_multiple_of(8));
        assert_eq!(bytes.len() as u64, 8 + header_len + sum);
    }

    #[test]
    fn tiny_round_trips_at_every_dtype() {
        let shape = SynthShape::named("tiny").unwrap();
        for dtype in [DType::F16, DType::BF16, DType::F32] {
            let dir = temp_dir(&format!("tiny-{}", st_dtype(dtype)));
            write_model(&dir, &shape, dtype, 7).unwrap();
            check_model(&dir, &shape, dtype);
            std::fs::remove_dir_all(&dir).unwrap();
        }
    }

    #[test]
    fn qwen2_layout_has_biases_and_lm_head() {
        let shape = SynthShape {
            qwen2: true,
            tie_embeddings: false,
            max_position: 512,
            ..SynthShape::named("tiny").unwrap()
        };
        let dir = temp_dir("qwen2");
        write_model(&dir, &shape, DType::BF16, 1).unwrap();
        check_model(&dir, &shape, DType::BF16);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn deterministic_in_seed_not_in_threads_or_chunks() {
        let shape = SynthShape::named("tiny").unwrap();
        let read = |dir: &Path| std::fs::read(dir.join("model.safetensors")).unwrap();
        let (a, b, c, d) = (
            temp_dir("det-a"),
            temp_dir("det-b"),
            temp_dir("det-c"),
            temp_dir("det-d"),
        );
        write_model(&a, &shape, DType::F16, 42).unwrap();
        rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap()
            .install(|| write_model(&b, &shape, DType::F16, 42).unwrap());
        // Tiny chunks: many parallel tasks and batches per tensor.
        write_model_chunked(&c, &shape, DType::F16, 42, 64).unwrap();
        write_model(&d, &shape, DType::F16, 43).unwrap();
        assert_eq!(read(&a), read(&b));
        assert_eq!(read(&a), read(&c));
        assert_ne!(read(&a), read(&d));
        assert_eq!(
            std::fs::read(a.join("config.json")).unwrap(),
            std::fs::read(d.join("config.json")).unwrap()
        );
        for dir in [a, b, c, d] {
            std::fs::remove_dir_all(&dir).unwrap();
        }
    }

    #[test]
    fn named_shapes_and_sizes() {
        let e = SynthShape::named("llama-70b").unwrap_err();
        assert_eq!(e.kind(), crate::error::ErrorKind::InvalidArgument);
        for name in NAMES {
            assert!(e.message().contains(name), "{}", e.message());
            SynthShape::named(name).unwrap().validate().unwrap();
        }
        // Parameter counts of the real models.
        let params = |n: &str| SynthShape::named(n).unwrap().weight_bytes(DType::F32) / 4;
        assert_eq!(params("smollm2-135m"), 134_515_008);
        assert_eq!(params("qwen2.5-0.5b"), 630_167_424);
        assert_eq!(params("qwen2.5-7b"), 7_615_616_512);
        let t = SynthShape::named("tiny").unwrap();
        assert_eq!(t.weight_bytes(DType::BF16), t.weight_bytes(DType::F16));
        assert_eq!(t.weight_bytes(DType::F32), 2 * t.weight_bytes(DType::F16));
    }

    #[test]
    fn bad_shape_and_unwritable_dir_are_errors() {
        let shape = SynthShape {
            kv_heads: 3,
            ..SynthShape::named("tiny").unwrap()
        };
        let dir = temp_dir("bad");
        let e = write_model(&dir, &shape, DType::F16, 0).unwrap_err();
        assert_eq!(e.kind(), crate::error::ErrorKind::InvalidArgument);
        // A regular file where the directory should be.
        std::fs::write(&dir, b"x").unwrap();
        let e = write_model(&dir, &SynthShape::named("tiny").unwrap(), DType::F16, 0).unwrap_err();
        assert_eq!(e.kind(), crate::error::ErrorKind::Io);
        assert!(e.message().contains(&dir.display().to_string()));
        std::fs::remove_file(&dir).unwrap();
    }

    /// Times writing a Qwen2.5-0.5B-shaped model:
    /// `cargo test --release --lib synth::tests::time_qwen2_5_0_5b -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn time_qwen2_5_0_5b() {
        let shape = SynthShape::named("qwen2.5-0.5b").unwrap();
        let dir = temp_dir("time");
        let t = std::time::Instant::now();
        write_model(&dir, &shape, DType::F16, 0).unwrap();
        let s = t.elapsed().as_secs_f64();
        let gb = shape.weight_bytes(DType::F16) as f64 / 1e9;
        println!(
            "qwen2.5-0.5b f16: {gb:.2} GB in {s:.2} s ({:.2} GB/s, {} threads)",
            gb / s,
            rayon::current_num_threads()
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
