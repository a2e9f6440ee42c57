//! The parser on well-formed and malformed bytes (each malformation an error naming the
//! file and the field or tensor, never a panic), metadata accessors, split files, and the
//! committed fuzz seed corpus.

use std::path::{Path, PathBuf};

use super::parse::{parse_bytes, Array, Parsed, Value, MAX_ARRAY_DEPTH};
use super::testutil::{put_kv, put_str, Builder};
use super::GgufFile;
use crate::error::{Error, ErrorKind};

const FILE: &str = "/tmp/bad.gguf";

fn q8_block(d: f32, start: i8) -> Vec<u8> {
    let mut b = half::f16::from_f32(d).to_bits().to_le_bytes().to_vec();
    b.extend((0..32).map(|i| start.wrapping_add(i) as u8));
    b
}

/// A small valid file: one key besides the architecture, an F32 [2, 3] and a Q8_0 [64].
fn base() -> Builder {
    let mut q8 = q8_block(0.5, -16);
    q8.extend(q8_block(2.0, 0));
    Builder::default()
        .kv("llama.block_count", Value::U32(2))
        .f32_tensor("a", &[2, 3], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
        .tensor("b", &[64], 8, q8)
}

fn parse(bytes: &[u8]) -> crate::error::Result<Parsed> {
    parse_bytes(bytes, FILE)
}

/// Parsing fails with `kind` and a message naming the file and every one of `needles`.
#[track_caller]
fn refused(bytes: &[u8], kind: ErrorKind, needles: &[&str]) -> Error {
    let e = parse(bytes).expect_err("malformed input must be refused");
    assert_eq!(e.kind(), kind, "{e}");
    assert!(
        e.message().starts_with(FILE),
        "message must name the file: {e}"
    );
    for n in needles {
        assert!(e.message().contains(n), "message must mention `{n}`: {e}");
    }
    e
}

/// The header of a file with `n_tensors` and `n_kv` claimed, nothing after.
fn header(version: u32, n_tensors: u64, n_kv: u64) -> Vec<u8> {
    let mut b = b"GGUF".to_vec();
    b.extend_from_slice(&version.to_le_bytes());
    b.extend_from_slice(&n_tensors.to_le_bytes());
    b.extend_from_slice(&n_kv.to_le_bytes());
    b
}

#[test]
fn a_valid_file_parses_with_offsets_and_shapes() {
    let bytes = base().build();
    let p = parse(&bytes).unwrap();
    assert_eq!((p.version, p.alignment), (3, 32));
    assert_eq!(p.data_start % 32, 0);
    assert_eq!(p.meta.len(), 2);
    assert_eq!(p.meta.get_str("general.architecture").unwrap(), "llama");
    assert_eq!(p.meta.get_u32("llama.block_count").unwrap(), 2);
    let (a, b) = (&p.tensors[0], &p.tensors[1]);
    assert_eq!(
        (a.name.as_str(), a.shape.clone(), a.len),
        ("a", vec![2, 3], 24)
    );
    assert_eq!(a.offset, p.data_start);
    assert_eq!(
        (b.shape.clone(), b.len, b.offset),
        (vec![64], 68, p.data_start + 32)
    );
    assert_eq!(b.offset + b.len, bytes.len());
    assert_eq!(&bytes[a.offset..a.offset + 4], &1.0f32.to_le_bytes());
    // Version 2 reads the same way; no tensors at all is fine.
    let mut v2 = base();
    v2.version = 2;
    assert_eq!(parse(&v2.build()).unwrap().version, 2);
    let empty = Builder::default().build();
    assert!(parse(&empty).unwrap().tensors.is_empty());
}

#[test]
fn every_value_type_and_nested_arrays_round_trip() {
    let nested = Array::Array(vec![
        Array::Array(vec![Array::U8(vec![1, 2]), Array::Str(vec![])]),
        Array::Array(vec![Array::Bool(vec![true, false])]),
    ]);
    let values = vec![
        ("u8", Value::U8(200)),
        ("i8", Value::I8(-100)),
        ("u16", Value::U16(60_000)),
        ("i16", Value::I16(-30_000)),
        ("u32", Value::U32(4_000_000_000)),
        ("i32", Value::I32(-2_000_000_000)),
        ("u64", Value::U64(u64::MAX)),
        ("i64", Value::I64(i64::MIN)),
        ("f32", Value::F32(1e-5)),
        ("f64", Value::F64(-2.5e300)),
        ("bool", Value::Bool(true)),
        ("str", Value::Str("héllo".into())),
        ("empty", Value::Str(String::new())),
        (
            "tokens",
            Value::Array(Array::Str(vec!["a".into(), "Ġb".into()])),
        ),
        ("types", Value::Array(Array::I32(vec![1, -3, 6]))),
        ("floats", Value::Array(Array::F32(vec![0.5, -1.0]))),
        ("f64s", Value::Array(Array::F64(vec![0.25]))),
        ("u64s", Value::Array(Array::U64(vec![u64::MAX]))),
        ("i16s", Value::Array(Array::I16(vec![-1, 2]))),
        ("none", Value::Array(Array::U32(vec![]))),
        ("nested", Value::Array(nested.clone())),
    ];
    let mut b = Builder::default();
    for (k, v) in &values {
        b = b.kv(k, v.clone());
    }
    let p = parse(&b.build()).unwrap();
    for (k, v) in &values {
        assert_eq!(p.meta.get(k), Some(v), "{k}");
    }
    let m = &p.meta;
    // Integers of any width convert when the value fits.
    assert_eq!(m.get_u32("u8").unwrap(), 200);
    assert_eq!(m.get_i64("i32").unwrap(), -2_000_000_000);
    assert_eq!(m.get_u64("u64").unwrap(), u64::MAX);
    assert_eq!(m.get_usize("u16").unwrap(), 60_000);
    assert_eq!(m.get_f32("f32").unwrap(), 1e-5);
    assert_eq!(m.get_f64("f32").unwrap(), 1e-5f32 as f64);
    assert!(m.get_bool("bool").unwrap());
    assert_eq!(m.get_str("str").unwrap(), "héllo");
    assert_eq!(m.get_str_array("tokens").unwrap(), ["a", "Ġb"]);
    assert_eq!(m.get_int_array("types").unwrap(), [1, -3, 6]);
    assert_eq!(m.get_array("none").unwrap().len(), 0);
    assert_eq!(m.get_array("nested").unwrap(), &nested);
    assert_eq!(m.opt_u32("absent").unwrap(), None);
    assert_eq!(m.opt_str("absent").unwrap(), None);
    // Errors name the file, the key and what was found.
    let msg = |e: Error| {
        assert_eq!(e.kind(), ErrorKind::InvalidModel);
        assert!(e.message().starts_with(FILE), "{e}");
        e.message().to_string()
    };
    assert!(
        msg(m.get_u32("i32").unwrap_err()).contains("`i32` = -2000000000 (i32) does not fit u32")
    );
    assert!(msg(m.get_u32("u64").unwrap_err()).contains("does not fit u32"));
    assert!(msg(m.get_str("u32").unwrap_err()).contains("`u32` is u32, expected string"));
    assert!(msg(m.get_u32("str").unwrap_err()).contains("`str` is string, expected u32"));
    assert!(msg(m.get_f32("tokens").unwrap_err()).contains("is array of string, expected f32"));
    assert!(msg(m.get_str_array("types").unwrap_err())
        .contains("is array of i32, expected array of string"));
    assert!(msg(m.get_int_array("tokens").unwrap_err()).contains("`tokens`"));
    assert!(msg(m.get_bool("u8").unwrap_err()).contains("expected bool"));
    assert!(msg(m.get_u32("llama.block_count").unwrap_err())
        .contains("missing required metadata key `llama.block_count`"));
}

#[test]
fn general_alignment_is_honoured_and_checked() {
    let mut b = base().kv("general.alignment", Value::U32(64));
    b.alignment = 64;
    let bytes = b.build();
    let p = parse(&bytes).unwrap();
    assert_eq!(p.alignment, 64);
    assert_eq!(p.data_start % 64, 0);
    assert_eq!(p.tensors[1].offset, p.data_start + 64);
    for (v, needle) in [
        (Value::U32(48), "not a power of two"),
        (Value::U32(0), "not a power of two"),
        (Value::U64(64), "is u64, expected u32"),
        (Value::Str("32".into()), "is string, expected u32"),
    ] {
        let bytes = base().kv("general.alignment", v).build();
        refused(
            &bytes,
            ErrorKind::InvalidModel,
            &["general.alignment", needle],
        );
    }
}

#[test]
fn bad_magic_versions_and_truncated_headers() {
    let mut bytes = base().build();
    bytes[..4].copy_from_slice(b"GGML");
    refused(
        &bytes,
        ErrorKind::InvalidModel,
        &["not a GGUF file", "GGML"],
    );
    refused(
        b"GG",
        ErrorKind::InvalidModel,
        &["not a GGUF file", "2 bytes"],
    );
    refused(b"", ErrorKind::InvalidModel, &["not a GGUF file"]);
    for v in [1u32, 4, 0, 0xffff_ffff] {
        let mut b = base();
        b.version = v;
        refused(
            &b.build(),
            ErrorKind::Unsupported,
            &[&format!("version {v} is not supported")],
        );
    }
    let mut b = base();
    b.version = 3u32.swap_bytes();
    refused(&b.build(), ErrorKind::Unsupported, &["big-endian"]);
    let bytes = base().build();
    refused(
        &bytes[..6],
        ErrorKind::InvalidModel,
        &["truncated", "`version`"],
    );
    refused(
        &bytes[..10],
        ErrorKind::InvalidModel,
        &["truncated", "`tensor_count`"],
    );
    // The counts are checked against what is left as soon as they are read.
    refused(
        &bytes[..20],
        ErrorKind::InvalidModel,
        &["`tensor_count` is 2", "4 bytes left"],
    );
    refused(
        &header(3, 0, 0)[..20],
        ErrorKind::InvalidModel,
        &["truncated", "`metadata_kv_count`"],
    );
}

#[test]
fn absurd_counts_are_refused_before_allocating() {
    let mut b = header(3, 0, 1 << 60);
    b.extend_from_slice(&[0; 64]);
    refused(
        &b,
        ErrorKind::InvalidModel,
        &["`metadata_kv_count` is 1152921504606846976"],
    );
    let mut b = header(3, 1 << 60, 0);
    b.extend_from_slice(&[0; 64]);
    refused(
        &b,
        ErrorKind::InvalidModel,
        &["`tensor_count` is 1152921504606846976"],
    );
    let b = header(3, u64::MAX, u64::MAX);
    refused(&b, ErrorKind::InvalidModel, &["`tensor_count`"]);
    // A count that fits the file's size but whose items are not there is truncation.
    let mut b = header(3, 0, 4);
    b.extend_from_slice(&[0; 60]);
    refused(&b, ErrorKind::InvalidModel, &["metadata"]);
}

#[test]
fn long_strings_and_huge_arrays_are_refused_before_allocating() {
    // A key whose length runs past the end.
    let mut b = header(3, 0, 1);
    b.extend_from_slice(&(1u64 << 40).to_le_bytes());
    b.extend_from_slice(b"general.name");
    refused(
        &b,
        ErrorKind::InvalidModel,
        &["metadata key #0", "string length 1099511627776"],
    );
    // A string value of 2^40 bytes.
    let mut b = header(3, 0, 1);
    put_str(&mut b, "general.name");
    b.extend_from_slice(&8u32.to_le_bytes());
    b.extend_from_slice(&(1u64 << 40).to_le_bytes());
    refused(
        &b,
        ErrorKind::InvalidModel,
        &["metadata `general.name`", "string length"],
    );
    // Arrays of 2^62 elements, of a fixed-size type and of strings.
    for elem in [0u32, 4, 8, 9] {
        let mut b = header(3, 0, 1);
        put_str(&mut b, "tokenizer.ggml.tokens");
        b.extend_from_slice(&9u32.to_le_bytes());
        b.extend_from_slice(&elem.to_le_bytes());
        b.extend_from_slice(&(1u64 << 62).to_le_bytes());
        b.extend_from_slice(&[0; 100]);
        refused(
            &b,
            ErrorKind::InvalidModel,
            &[
                "`tokenizer.ggml.tokens`",
                "array length",
                "4611686018427387904",
            ],
        );
    }
    // A tensor name past the end.
    let mut b = header(3, 1, 0);
    b.extend_from_slice(&u64::MAX.to_le_bytes());
    b.extend_from_slice(&[0; 20]);
    refused(
        &b,
        ErrorKind::InvalidModel,
        &["tensor info #0 name", "string length"],
    );
}

#[test]
fn malformed_metadata_values() {
    let kv = |f: &dyn Fn(&mut Vec<u8>)| {
        let mut b = header(3, 0, 1);
        f(&mut b);
        b
    };
    let b = kv(&|b| {
        put_str(b, "general.x");
        b.extend_from_slice(&13u32.to_le_bytes());
        b.extend_from_slice(&[0; 8]);
    });
    refused(
        &b,
        ErrorKind::InvalidModel,
        &["`general.x`", "unknown metadata value type 13"],
    );
    let b = kv(&|b| {
        put_str(b, "general.flag");
        b.extend_from_slice(&7u32.to_le_bytes());
        b.push(2);
    });
    refused(
        &b,
        ErrorKind::InvalidModel,
        &["`general.flag`", "must be 0 or 1"],
    );
    let b = kv(&|b| {
        b.extend_from_slice(&2u64.to_le_bytes());
        b.extend_from_slice(&[0xff, 0xfe]);
        b.extend_from_slice(&4u32.to_le_bytes());
        b.extend_from_slice(&[0; 4]);
    });
    refused(
        &b,
        ErrorKind::InvalidModel,
        &["metadata key #0", "not UTF-8"],
    );
    let b = kv(&|b| {
        put_str(b, "general.x");
        b.extend_from_slice(&4u32.to_le_bytes());
        b.extend_from_slice(&[0; 2]);
    });
    refused(
        &b,
        ErrorKind::InvalidModel,
        &["truncated", "metadata `general.x`"],
    );
    // Arrays nested one level deeper than allowed.
    let b = kv(&|b| {
        put_str(b, "general.deep");
        b.extend_from_slice(&9u32.to_le_bytes());
        for _ in 0..MAX_ARRAY_DEPTH {
            b.extend_from_slice(&9u32.to_le_bytes());
            b.extend_from_slice(&1u64.to_le_bytes());
        }
        b.extend_from_slice(&0u32.to_le_bytes());
        b.extend_from_slice(&0u64.to_le_bytes());
    });
    refused(
        &b,
        ErrorKind::InvalidModel,
        &["`general.deep`", "nested deeper"],
    );
    // Duplicate keys.
    let b = base().kv("llama.block_count", Value::U32(3)).build();
    refused(
        &b,
        ErrorKind::InvalidModel,
        &["duplicate metadata key `llama.block_count`"],
    );
}

#[test]
fn malformed_tensor_infos() {
    let with = |f: &dyn Fn(&mut Builder)| {
        let mut b = base();
        f(&mut b);
        b.build()
    };
    let b = with(&|b| b.tensors[0].ne = vec![1; 9]);
    refused(
        &b,
        ErrorKind::InvalidModel,
        &["tensor `a` has 9 dimensions (at most 4)"],
    );
    let b = with(&|b| b.tensors[0].ne = vec![1 << 40, 1 << 40]);
    refused(
        &b,
        ErrorKind::InvalidModel,
        &["tensor `a`", "overflow the element count"],
    );
    let b = with(&|b| b.tensors[0].ne = vec![1 << 62, 1]);
    refused(
        &b,
        ErrorKind::InvalidModel,
        &["tensor `a`", "overflow the byte size"],
    );
    let b = with(&|b| b.tensors[1].ne = vec![48]);
    refused(
        &b,
        ErrorKind::InvalidModel,
        &["tensor `b` (Q8_0)", "row length 48", "block size 32"],
    );
    let b = with(&|b| b.tensors[1].offset = Some(1 << 40));
    refused(
        &b,
        ErrorKind::InvalidModel,
        &["tensor `b` offset 1099511627776", "past the end"],
    );
    let b = with(&|b| b.tensors[1].offset = Some(u64::MAX - 31));
    refused(&b, ErrorKind::InvalidModel, &["tensor `b`", "past the end"]);
    let b = with(&|b| b.tensors[1].offset = Some(33));
    refused(
        &b,
        ErrorKind::InvalidModel,
        &["tensor `b` offset 33 is not a multiple of the alignment 32"],
    );
    let b = with(&|b| b.tensors[0].type_id = 99);
    refused(
        &b,
        ErrorKind::Unsupported,
        &["tensor `a` has unknown ggml type 99", "supported: F32"],
    );
    let b = with(&|b| b.tensors[0].type_id = 10);
    refused(&b, ErrorKind::Unsupported, &["tensor `a` has type Q2_K"]);
    let b = with(&|b| b.tensors[1].name = "a".into());
    refused(&b, ErrorKind::InvalidModel, &["duplicate tensor `a`"]);
    // The last tensor's data cut short: the file was truncated.
    let full = base().build();
    refused(
        &full[..full.len() - 1],
        ErrorKind::InvalidModel,
        &["tensor `b` (Q8_0, shape [64]) needs 68 bytes", "truncated"],
    );
    // Cut inside the tensor infos.
    let p = parse(&full).unwrap();
    refused(
        &full[..p.data_start - 40],
        ErrorKind::InvalidModel,
        &["truncated", "tensor `b`"],
    );
    // Zero-sized tensors are fine, scalars too.
    let b = with(&|b| {
        b.tensors[0].ne = vec![3, 0];
        b.tensors[0].data.clear();
    });
    let p = parse(&b).unwrap();
    assert_eq!(
        (p.tensors[0].shape.clone(), p.tensors[0].len),
        (vec![0, 3], 0)
    );
    let b = with(&|b| {
        b.tensors[0].ne = vec![];
        b.tensors[0].data.truncate(4);
    });
    assert_eq!(parse(&b).unwrap().tensors[0].numel(), 1);
}

#[test]
fn every_prefix_of_a_valid_file_is_an_error_not_a_panic() {
    let full = base()
        .kv("tokens", Value::Array(Array::Str(vec!["x".into(); 3])))
        .build();
    assert!(parse(&full).is_ok());
    for n in 0..full.len() {
        let e = parse(&full[..n]).expect_err("a strict prefix cannot be complete");
        assert_eq!(e.kind(), ErrorKind::InvalidModel, "prefix {n}: {e}");
        assert!(e.message().starts_with(FILE));
    }
}

/// Random mutations of valid files: parsing returns (never panics), and what it accepts
/// is consistent. A cheap stand-in for the cargo-fuzz target that will call `parse_bytes`.
#[test]
fn mutated_files_never_panic() {
    let seeds = [
        base().build(),
        base()
            .kv(
                "nested",
                Value::Array(Array::Array(vec![Array::I8(vec![1])])),
            )
            .kv("general.alignment", Value::U32(16))
            .build(),
    ];
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    let mut rnd = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for i in 0..20_000 {
        let mut b = seeds[i % 2].clone();
        for _ in 0..1 + rnd() % 4 {
            let at = (rnd() as usize) % b.len();
            match rnd() % 4 {
                0 => b[at] ^= 1 << (rnd() % 8),
                1 => b[at] = 0xff,
                2 => b[at] = rnd() as u8,
                _ => b.truncate(at.max(1)),
            }
        }
        if let Ok(p) = parse(&b) {
            for t in &p.tensors {
                assert!(t.offset + t.len <= b.len());
                assert_eq!((t.offset - p.data_start) % p.alignment, 0);
                assert_eq!(t.ggml_type.bytes_for(t.numel()), Some(t.len));
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Files on disk: single and split.
// ---------------------------------------------------------------------------------------

fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("subspec-gguf-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn shard_path(dir: &Path, k: u64, n: u64) -> PathBuf {
    dir.join(format!("model-{:05}-of-{n:05}.gguf", k + 1))
}

/// Writes an `n`-shard set, shard k holding tensor `t{k}` = [k, k + 1]; `edit` may change
/// each shard's builder.
fn write_split(dir: &Path, n: u64, edit: &dyn Fn(u64, &mut Builder)) {
    for k in 0..n {
        let mut b = Builder::default();
        if k > 0 {
            b.kvs.clear();
        }
        let mut b = b
            .kv("split.no", Value::U16(k as u16))
            .kv("split.count", Value::U16(n as u16))
            .kv("split.tensors.count", Value::I32(n as i32))
            .f32_tensor(&format!("t{k}"), &[2], &[k as f32, k as f32 + 1.0]);
        edit(k, &mut b);
        std::fs::write(shard_path(dir, k, n), b.build()).unwrap();
    }
}

fn set(b: &mut Builder, key: &str, v: Value) {
    b.kvs.iter_mut().find(|(k, _)| k == key).expect("key").1 = v;
}

#[test]
fn a_single_file_opens_with_zero_copy_tensors() {
    let dir = temp_dir("single");
    let path = dir.join("m.gguf");
    std::fs::write(&path, base().build()).unwrap();
    let g = GgufFile::open(&path).unwrap();
    assert_eq!(g.paths(), std::slice::from_ref(&path));
    assert_eq!(g.version(), 3);
    assert_eq!(g.architecture().unwrap(), "llama");
    let a = g.tensor("a").unwrap();
    assert_eq!((a.rows(), a.cols(), a.row_bytes()), (2, 3, 12));
    assert_eq!(a.to_f32_vec(), [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    let mut row = [0f32; 3];
    a.dequantize_row(1, &mut row).unwrap();
    assert_eq!(row, [4.0, 5.0, 6.0]);
    let b = g.tensor("b").unwrap();
    assert_eq!((b.rows(), b.cols(), b.row_bytes()), (1, 64, 68));
    let v = b.to_f32_vec();
    assert_eq!((v[0], v[31], v[32], v[63]), (-8.0, 7.5, 0.0, 62.0));
    let e = g.tensor("c").unwrap_err();
    assert!(e.message().contains("m.gguf: missing tensor `c`"), "{e}");
    assert_eq!(g.qk_row_map("a").unwrap(), None);

    let e = GgufFile::open(&dir.join("absent.gguf")).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Io);
    assert!(e.message().contains("absent.gguf"));
    let bad = dir.join("bad.gguf");
    std::fs::write(&bad, b"GGUF\x01\0\0\0").unwrap();
    let e = GgufFile::open(&bad).unwrap_err();
    assert!(
        e.message()
            .contains("bad.gguf: GGUF version 1 is not supported"),
        "{e}"
    );
    std::fs::write(&bad, b"").unwrap();
    assert_eq!(
        GgufFile::open(&bad).unwrap_err().kind(),
        ErrorKind::InvalidModel
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn qk_row_map_for_llama_attention() {
    let dir = temp_dir("qk");
    let path = dir.join("m.gguf");
    let b = Builder::default()
        .kv("llama.attention.head_count", Value::U32(2))
        .kv("llama.attention.head_count_kv", Value::U32(1))
        .f32_tensor("blk.0.attn_q.weight", &[8, 1], &[0.0; 8])
        .f32_tensor("blk.0.attn_k.weight", &[4, 1], &[0.0; 4])
        .f32_tensor("blk.0.attn_k.bias", &[4], &[0.0; 4])
        .f32_tensor("blk.0.attn_v.weight", &[4, 1], &[0.0; 4])
        .f32_tensor("blk.0.attn_q.weight.extra", &[8], &[0.0; 8]);
    std::fs::write(&path, b.build()).unwrap();
    let g = GgufFile::open(&path).unwrap();
    let q = g.qk_row_map("blk.0.attn_q.weight").unwrap().unwrap();
    assert_eq!(q, [0, 2, 1, 3, 4, 6, 5, 7]);
    assert_eq!(
        g.qk_row_map("blk.0.attn_k.weight").unwrap().unwrap(),
        [0, 2, 1, 3]
    );
    assert_eq!(
        g.qk_row_map("blk.0.attn_k.bias").unwrap().unwrap(),
        [0, 2, 1, 3]
    );
    assert_eq!(g.qk_row_map("blk.0.attn_v.weight").unwrap(), None);
    assert_eq!(g.qk_row_map("blk.0.attn_q.weight.extra").unwrap(), None);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn split_files_open_from_any_shard_and_merge() {
    let dir = temp_dir("split");
    write_split(&dir, 3, &|_, _| {});
    for k in 0..3 {
        let g = GgufFile::open(&shard_path(&dir, k, 3)).unwrap();
        assert_eq!(g.paths().len(), 3);
        assert_eq!(g.paths()[0], shard_path(&dir, 0, 3));
        assert_eq!(g.architecture().unwrap(), "llama");
        assert_eq!(g.tensors().len(), 3);
        for j in 0..3u64 {
            let t = g.tensor(&format!("t{j}")).unwrap();
            assert_eq!(t.shard, j as usize);
            assert_eq!(t.to_f32_vec(), [j as f32, j as f32 + 1.0]);
        }
        let (s0, s1) = (&g.tensors()[0].storage, &g.tensors()[1].storage);
        assert!(!std::sync::Arc::ptr_eq(s0, s1));
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn inconsistent_split_files_are_refused() {
    let dir = temp_dir("split-bad");
    let open = |k: u64, n: u64| GgufFile::open(&shard_path(&dir, k, n)).unwrap_err();

    write_split(&dir, 3, &|_, _| {});
    std::fs::remove_file(shard_path(&dir, 1, 3)).unwrap();
    let e = open(0, 3);
    assert_eq!(e.kind(), ErrorKind::Io);
    assert!(e.message().contains("model-00002-of-00003.gguf"), "{e}");

    write_split(&dir, 3, &|k, b| {
        if k == 2 {
            set(b, "split.no", Value::U16(1));
        }
    });
    let e = open(0, 3);
    assert!(
        e.message()
            .contains("model-00003-of-00003.gguf: `split.no` = 1"),
        "{e}"
    );
    // Opened from the mislabelled shard itself, its name disagrees with its keys.
    let e = open(2, 3);
    assert!(
        e.message()
            .contains("the name says shard 3 of 3 but `split.no` = 1"),
        "{e}"
    );

    write_split(&dir, 2, &|_, b| b.tensors[0].name = "t0".into());
    let e = open(0, 2);
    assert!(e.message().contains("tensor `t0` appears in both"), "{e}");
    assert!(e.message().contains("00001-of-00002") && e.message().contains("00002-of-00002"));

    write_split(&dir, 2, &|_, b| {
        set(b, "split.tensors.count", Value::I32(5))
    });
    let e = open(1, 2);
    assert!(
        e.message()
            .contains("`split.tensors.count` is 5 but the 2 shards hold 2 tensors"),
        "{e}"
    );

    write_split(&dir, 2, &|k, b| {
        if k == 1 {
            b.kvs.retain(|(key, _)| key != "split.no");
        }
    });
    let e = open(0, 2);
    assert!(
        e.message()
            .contains("00002-of-00002.gguf: missing required metadata key `split.no`"),
        "{e}"
    );

    let lone = dir.join("lone.gguf");
    std::fs::copy(shard_path(&dir, 0, 2), &lone).unwrap();
    let e = GgufFile::open(&lone).unwrap_err();
    assert!(
        e.message()
            .contains("lone.gguf: `split.count` is 2 but the name"),
        "{e}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

// ---------------------------------------------------------------------------------------
// The committed seed corpus (fuzz/corpus/gguf, made by tests/golden/make_gguf_seeds.py).
// ---------------------------------------------------------------------------------------

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn seed_corpus_files_parse_or_fail_as_their_names_say() {
    let dir = repo().join("fuzz/corpus/gguf");
    let mut n = 0;
    for e in std::fs::read_dir(&dir).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap().to_str().unwrap().to_string();
        let bytes = std::fs::read(&p).unwrap();
        assert!(bytes.len() < 4096, "{name}: seeds stay under 4 KB");
        let r = parse_bytes(&bytes, &name);
        if name.starts_with("valid-") {
            let p = r.unwrap_or_else(|e| panic!("{name}: {e}"));
            for t in &p.tensors {
                let mut out = vec![0f32; t.numel()];
                let bytes = &bytes[t.offset..t.offset + t.len];
                super::dequantize_row(t.ggml_type, bytes, &mut out).unwrap();
            }
        } else {
            assert!(
                name.starts_with("invalid-"),
                "{name}: seeds are valid-* or invalid-*"
            );
            let e = r.expect_err(&name);
            assert!(e.message().starts_with(&name), "{e}");
        }
        n += 1;
    }
    assert!(n >= 8, "{n} seeds");
}

#[test]
fn gguf_py_split_files_open() {
    let dir = repo().join("tests/golden/gguf/split");
    let g = GgufFile::open(&dir.join("tiny-00002-of-00002.gguf")).unwrap();
    assert_eq!(g.paths().len(), 2);
    assert_eq!(g.meta().get_str("general.name").unwrap(), "split seed");
    assert_eq!(g.tensors().len(), 3);
    assert!(g.tensors().iter().any(|t| t.shard == 1));
    let a = g.tensor("a").unwrap();
    let want: Vec<f32> = (0..64).map(|i| i as f32).collect();
    assert_eq!(a.to_f32_vec(), want);
}

#[test]
fn raw_kv_helper_matches_builder() {
    // put_kv writes what the builder writes for one key (keeps hand-built cases honest).
    let mut raw = header(3, 0, 1);
    put_kv(
        &mut raw,
        "general.architecture",
        &Value::Str("llama".into()),
    );
    assert_eq!(raw, Builder::default().build());
}
