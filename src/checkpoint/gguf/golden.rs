//! The dequantizers against gguf-py, bit for bit (fixtures from
//! `tests/golden/make_gguf_dequant.py` in `tests/golden/gguf/`), and the whole path
//! (parser, dequantizer, q/k un-permutation) against the Hugging Face conversion that
//! `scripts/fetch_models.py` made from the same GGUF files.
//!
//! The tests on the real files skip, saying so, when `models/` lacks them.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use serde_json::Value as Json;

use super::ggml::{dequantize_row, GgmlType};
use super::GgufFile;
use crate::checkpoint::tensor::DType;
use crate::checkpoint::Weights;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn fixtures() -> PathBuf {
    repo().join("tests/golden/gguf")
}

fn cases() -> Vec<Json> {
    let text = std::fs::read_to_string(fixtures().join("index.json")).unwrap();
    let index: Json = serde_json::from_str(&text).unwrap();
    index["cases"].as_array().unwrap().clone()
}

fn type_named(name: &str) -> GgmlType {
    *GgmlType::ALL
        .iter()
        .find(|t| t.name() == name)
        .unwrap_or_else(|| panic!("type {name}"))
}

fn read_f32(path: &Path) -> Vec<f32> {
    let b = std::fs::read(path).unwrap();
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

/// Compares bits, NaN payloads included; reports the first difference.
#[track_caller]
fn assert_bits(case: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{case}: length");
    if let Some(i) = (0..got.len()).find(|&i| got[i].to_bits() != want[i].to_bits()) {
        panic!(
            "{case}: element {i}: {} ({:#010x}) but gguf-py gives {} ({:#010x})",
            got[i],
            got[i].to_bits(),
            want[i],
            want[i].to_bits()
        );
    }
}

fn gguf_path(name: &str) -> Option<PathBuf> {
    let p = repo().join("models/.cache/gguf").join(name);
    if p.is_file() {
        Some(p)
    } else {
        eprintln!(
            "skipping: {} is missing (scripts/fetch-models.sh)",
            p.display()
        );
        None
    }
}

#[test]
fn synthetic_blocks_dequantize_bit_identical_to_gguf_py() {
    let mut seen = HashSet::new();
    for c in cases().iter().filter(|c| c["kind"] == "synthetic") {
        let name = c["case"].as_str().unwrap();
        let t = type_named(c["type"].as_str().unwrap());
        let bytes = std::fs::read(fixtures().join(format!("{name}.bin"))).unwrap();
        let want = read_f32(&fixtures().join(format!("{name}.f32")));
        let mut got = vec![0f32; want.len()];
        dequantize_row(t, &bytes, &mut got).unwrap();
        assert_bits(name, &got, &want);
        seen.insert(t);
    }
    for t in GgmlType::ALL {
        assert!(seen.contains(&t), "no synthetic fixture for {t}");
    }
}

#[test]
fn rows_of_the_test_files_dequantize_bit_identical_to_gguf_py() {
    let mut opened: Vec<(String, GgufFile)> = Vec::new();
    for c in cases().iter().filter(|c| c["kind"] == "file") {
        let name = c["case"].as_str().unwrap();
        let source = c["source"].as_str().unwrap();
        let Some(path) = gguf_path(source) else {
            continue;
        };
        if !opened.iter().any(|(s, _)| s == source) {
            opened.push((source.to_string(), GgufFile::open(&path).unwrap()));
        }
        let g = &opened.iter().find(|(s, _)| s == source).unwrap().1;
        let t = g.tensor(c["tensor"].as_str().unwrap()).unwrap();
        assert_eq!(t.ggml_type.name(), c["type"].as_str().unwrap(), "{name}");
        let cols = c["cols"].as_u64().unwrap() as usize;
        assert_eq!(t.cols(), cols, "{name}");
        let raw = std::fs::read(fixtures().join(format!("{name}.bin"))).unwrap();
        let want = read_f32(&fixtures().join(format!("{name}.f32")));
        let rows: Vec<usize> = c["rows"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r.as_u64().unwrap() as usize)
            .collect();
        let rb = t.row_bytes();
        let mut got = vec![0f32; rows.len() * cols];
        for (k, &r) in rows.iter().enumerate() {
            assert_eq!(
                t.row(r),
                &raw[k * rb..(k + 1) * rb],
                "{name}: bytes of row {r}"
            );
            t.dequantize_row(r, &mut got[k * cols..(k + 1) * cols])
                .unwrap();
        }
        assert_bits(name, &got, &want);
    }
}

/// The hash `make_gguf_dequant.py` writes into checksums.json: over the f32 bits of a
/// dequantized tensor in row-major order, `sum_i (bits_i + 1) * M^(i+1) mod 2^64`.
struct BitsHash {
    acc: u64,
    pw: u64,
}

impl BitsHash {
    const M: u64 = 0x9E37_79B9_7F4A_7C15;

    fn new() -> Self {
        BitsHash { acc: 0, pw: 1 }
    }

    fn add(&mut self, vals: &[f32]) {
        for v in vals {
            self.pw = self.pw.wrapping_mul(Self::M);
            let b = v.to_bits() as u64 + 1;
            self.acc = self.acc.wrapping_add(b.wrapping_mul(self.pw));
        }
    }
}

#[test]
fn bits_hash_matches_the_python_definition() {
    // h([1.0]) = (0x3f800000 + 1) * M, h([0.0, 0.0]) = M + M^2 (mod 2^64).
    let mut h = BitsHash::new();
    h.add(&[1.0]);
    assert_eq!(h.acc, 0x3f80_0001u64.wrapping_mul(BitsHash::M));
    let mut h = BitsHash::new();
    h.add(&[0.0, 0.0]);
    let m = BitsHash::M;
    assert_eq!(h.acc, m.wrapping_add(m.wrapping_mul(m)));
}

/// Every tensor of both test files, dequantized whole, hashes to what gguf-py's
/// dequantization of the same tensor hashes to: all weights, bit for bit.
#[test]
fn every_tensor_of_the_test_files_dequantizes_bit_identical_to_gguf_py() {
    let text = std::fs::read_to_string(fixtures().join("checksums.json")).unwrap();
    let sums: Json = serde_json::from_str(&text).unwrap();
    for (file, tensors) in sums.as_object().unwrap() {
        let Some(path) = gguf_path(file) else {
            continue;
        };
        let g = GgufFile::open(&path).unwrap();
        let tensors = tensors.as_object().unwrap();
        assert_eq!(g.tensors().len(), tensors.len(), "{file}: tensor count");
        let mut elements = 0;
        for (name, want) in tensors {
            let t = g.tensor(name).unwrap();
            assert_eq!(t.ggml_type.name(), want["type"].as_str().unwrap(), "{name}");
            let shape: Vec<usize> = want["shape"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d.as_u64().unwrap() as usize)
                .collect();
            assert_eq!(t.shape, shape, "{name}");
            let mut h = BitsHash::new();
            let mut row = vec![0f32; t.cols()];
            for r in 0..t.rows() {
                t.dequantize_row(r, &mut row).unwrap();
                h.add(&row);
            }
            assert_eq!(
                format!("{:016x}", h.acc),
                want["hash"].as_str().unwrap(),
                "{file}: {name}"
            );
            elements += t.numel();
        }
        eprintln!(
            "{file}: {} tensors, {elements} weights equal gguf-py's",
            tensors.len()
        );
    }
}

/// `scripts/fetch_models.py`'s name map, GGUF -> Hugging Face.
fn hf_name(gguf: &str) -> Option<String> {
    Some(match gguf {
        "token_embd.weight" => "model.embed_tokens.weight".into(),
        "output_norm.weight" => "model.norm.weight".into(),
        "output.weight" => "lm_head.weight".into(),
        "rope_freqs.weight" => return None,
        _ => {
            let p: Vec<&str> = gguf.split('.').collect();
            assert!(p.len() == 4 && p[0] == "blk", "unexpected tensor {gguf}");
            let m = match p[2] {
                "attn_q" => "self_attn.q_proj",
                "attn_k" => "self_attn.k_proj",
                "attn_v" => "self_attn.v_proj",
                "attn_output" => "self_attn.o_proj",
                "ffn_gate" => "mlp.gate_proj",
                "ffn_up" => "mlp.up_proj",
                "ffn_down" => "mlp.down_proj",
                "attn_norm" => "input_layernorm",
                "ffn_norm" => "post_attention_layernorm",
                other => panic!("unexpected tensor kind {other}"),
            };
            format!("model.layers.{}.{m}.{}", p[1], p[3])
        }
    })
}

/// Every tensor of `gguf` whose name `keep` accepts, dequantized, un-permuted where
/// `qk_row_map` says, rounded to f16 (numpy's `astype(float16)`: nearest, ties to
/// even), equals the f16 safetensors fetch_models.py wrote into `hf_dir`.
fn matches_hf_conversion(gguf: &str, hf_dir: &str, keep: &dyn Fn(&str) -> bool) {
    let Some(path) = gguf_path(gguf) else {
        return;
    };
    let dir = repo().join("models").join(hf_dir);
    if !dir.join("model.safetensors").is_file() {
        eprintln!("skipping: {} is missing", dir.display());
        return;
    }
    let g = GgufFile::open(&path).unwrap();
    let w = Weights::open(&dir).unwrap();
    let (mut checked, mut permuted) = (0, 0);
    for t in g.tensors().iter().filter(|t| keep(&t.name)) {
        let Some(hf) = hf_name(&t.name) else {
            continue;
        };
        let st = w.get(&hf, &t.shape).unwrap();
        assert_eq!(st.dtype, DType::F16, "{hf}");
        let map = g.qk_row_map(&t.name).unwrap();
        permuted += map.is_some() as usize;
        let (cols, want) = (t.cols(), st.bytes());
        let mut row = vec![0f32; cols];
        for r in 0..t.rows() {
            let src = map.as_ref().map_or(r, |m| m[r]);
            t.dequantize_row(src, &mut row).unwrap();
            for (c, v) in row.iter().enumerate() {
                let i = r * cols + c;
                let h = half::f16::from_f32(*v).to_bits();
                let s = u16::from_le_bytes([want[2 * i], want[2 * i + 1]]);
                assert_eq!(h, s, "{} -> {hf}: row {r} col {c} ({v})", t.name);
            }
        }
        checked += 1;
    }
    assert!(checked > 0);
    eprintln!("{gguf}: {checked} tensors equal the HF conversion ({permuted} un-permuted)");
}

#[test]
fn llama_file_matches_hf_conversion_with_qk_unpermuted() {
    // All of SmolLM2's tensors (135M parameters): every layer's q and k go through the
    // row map, everything else checks the parser and the Q4_1/Q8_0/F32 dequantizers.
    matches_hf_conversion(
        "SmolLM2-135M-Instruct.Q4_1.gguf",
        "smollm2-135m-instruct",
        &|_| true,
    );
}

#[test]
fn qwen2_file_matches_hf_conversion_without_permutation() {
    // Qwen2 is not permuted; two layers and the embeddings cover Q5_0, Q8_0, Q4_K, Q6_K.
    matches_hf_conversion(
        "Qwen2.5-Coder-0.5B-Instruct.gguf",
        "qwen2.5-coder-0.5b-instruct",
        &|n| n.starts_with("blk.0.") || n.starts_with("blk.2.") || !n.starts_with("blk."),
    );
    if let Some(p) = gguf_path("Qwen2.5-Coder-0.5B-Instruct.gguf") {
        let g = GgufFile::open(&p).unwrap();
        assert_eq!(g.qk_row_map("blk.0.attn_q.weight").unwrap(), None);
    }
}

#[test]
fn real_files_metadata() {
    let Some(p) = gguf_path("SmolLM2-135M-Instruct.Q4_1.gguf") else {
        return;
    };
    let g = GgufFile::open(&p).unwrap();
    let m = g.meta();
    assert_eq!(g.version(), 3);
    assert_eq!(g.architecture().unwrap(), "llama");
    assert_eq!(m.get_u32("llama.block_count").unwrap(), 30);
    assert_eq!(m.get_u32("llama.attention.head_count_kv").unwrap(), 3);
    assert_eq!(
        m.get_f32("llama.attention.layer_norm_rms_epsilon").unwrap(),
        1e-5
    );
    assert_eq!(
        m.get_str_array("tokenizer.ggml.tokens").unwrap().len(),
        49152
    );
    assert_eq!(
        m.get_int_array("tokenizer.ggml.token_type").unwrap().len(),
        49152
    );
    assert!(!m.get_bool("tokenizer.ggml.add_bos_token").unwrap());
    assert_eq!(g.tensors().len(), 272);
    let e = g.tensor("token_embd.weight").unwrap();
    assert_eq!(
        (e.ggml_type, e.shape.clone()),
        (GgmlType::Q8_0, vec![49152, 576])
    );
    let e = m.get_u32("llama.nonexistent").unwrap_err();
    assert!(e
        .message()
        .contains("SmolLM2-135M-Instruct.Q4_1.gguf: missing required"));
}
