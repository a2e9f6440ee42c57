//! Writes GGUF bytes for tests: well-formed files, and the pieces to make malformed ones.

use super::parse::{Array, Value};

/// A tensor to write: ggml `ne` (innermost first), type id, data, and an offset that
/// overrides the computed one.
#[derive(Clone)]
pub(crate) struct TensorSpec {
    pub(crate) name: String,
    pub(crate) ne: Vec<u64>,
    pub(crate) type_id: u32,
    pub(crate) data: Vec<u8>,
    pub(crate) offset: Option<u64>,
}

/// A GGUF file to write.
#[derive(Clone)]
pub(crate) struct Builder {
    pub(crate) version: u32,
    pub(crate) kvs: Vec<(String, Value)>,
    pub(crate) tensors: Vec<TensorSpec>,
    /// Alignment used to lay out the data (write `general.alignment` yourself).
    pub(crate) alignment: usize,
}

impl Default for Builder {
    fn default() -> Self {
        Builder {
            version: 3,
            kvs: vec![("general.architecture".into(), Value::Str("llama".into()))],
            tensors: Vec::new(),
            alignment: 32,
        }
    }
}

pub(crate) fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn type_id(v: &Value) -> u32 {
    match v {
        Value::U8(_) => 0,
        Value::I8(_) => 1,
        Value::U16(_) => 2,
        Value::I16(_) => 3,
        Value::U32(_) => 4,
        Value::I32(_) => 5,
        Value::F32(_) => 6,
        Value::Bool(_) => 7,
        Value::Str(_) => 8,
        Value::Array(_) => 9,
        Value::U64(_) => 10,
        Value::I64(_) => 11,
        Value::F64(_) => 12,
    }
}

fn array_elems(a: &Array) -> (u32, Vec<Value>) {
    let v: Vec<Value> = match a {
        Array::U8(v) => v.iter().map(|&x| Value::U8(x)).collect(),
        Array::I8(v) => v.iter().map(|&x| Value::I8(x)).collect(),
        Array::U16(v) => v.iter().map(|&x| Value::U16(x)).collect(),
        Array::I16(v) => v.iter().map(|&x| Value::I16(x)).collect(),
        Array::U32(v) => v.iter().map(|&x| Value::U32(x)).collect(),
        Array::I32(v) => v.iter().map(|&x| Value::I32(x)).collect(),
        Array::U64(v) => v.iter().map(|&x| Value::U64(x)).collect(),
        Array::I64(v) => v.iter().map(|&x| Value::I64(x)).collect(),
        Array::F32(v) => v.iter().map(|&x| Value::F32(x)).collect(),
        Array::F64(v) => v.iter().map(|&x| Value::F64(x)).collect(),
        Array::Bool(v) => v.iter().map(|&x| Value::Bool(x)).collect(),
        Array::Str(v) => v.iter().map(|x| Value::Str(x.clone())).collect(),
        Array::Array(v) => v.iter().map(|x| Value::Array(x.clone())).collect(),
    };
    let id = match a {
        Array::U8(_) => 0,
        Array::I8(_) => 1,
        Array::U16(_) => 2,
        Array::I16(_) => 3,
        Array::U32(_) => 4,
        Array::I32(_) => 5,
        Array::F32(_) => 6,
        Array::Bool(_) => 7,
        Array::Str(_) => 8,
        Array::Array(_) => 9,
        Array::U64(_) => 10,
        Array::I64(_) => 11,
        Array::F64(_) => 12,
    };
    (id, v)
}

/// Appends `v` without its type tag.
pub(crate) fn put_value(out: &mut Vec<u8>, v: &Value) {
    match v {
        Value::U8(x) => out.push(*x),
        Value::I8(x) => out.push(*x as u8),
        Value::U16(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I16(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::U32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::U64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::F32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::F64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::Bool(x) => out.push(*x as u8),
        Value::Str(s) => put_str(out, s),
        Value::Array(a) => {
            let (id, elems) = array_elems(a);
            out.extend_from_slice(&id.to_le_bytes());
            out.extend_from_slice(&(elems.len() as u64).to_le_bytes());
            for e in &elems {
                put_value(out, e);
            }
        }
    }
}

/// Appends a key/value (key, type tag, value).
pub(crate) fn put_kv(out: &mut Vec<u8>, key: &str, v: &Value) {
    put_str(out, key);
    out.extend_from_slice(&type_id(v).to_le_bytes());
    put_value(out, v);
}

impl Builder {
    /// Adds a key/value.
    pub(crate) fn kv(mut self, key: &str, v: Value) -> Self {
        self.kvs.push((key.to_string(), v));
        self
    }

    /// Adds a tensor with HF-order `shape` of ggml type `type_id` holding `data`.
    pub(crate) fn tensor(mut self, name: &str, shape: &[u64], type_id: u32, data: Vec<u8>) -> Self {
        self.tensors.push(TensorSpec {
            name: name.to_string(),
            ne: shape.iter().rev().copied().collect(),
            type_id,
            data,
            offset: None,
        });
        self
    }

    /// Adds an F32 tensor.
    pub(crate) fn f32_tensor(self, name: &str, shape: &[u64], vals: &[f32]) -> Self {
        let data = vals.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.tensor(name, shape, 0, data)
    }

    /// The file's bytes: header, key/values, tensor infos, padding, aligned data.
    pub(crate) fn build(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(b"GGUF");
        out.extend_from_slice(&self.version.to_le_bytes());
        out.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        out.extend_from_slice(&(self.kvs.len() as u64).to_le_bytes());
        for (k, v) in &self.kvs {
            put_kv(&mut out, k, v);
        }
        let mut at = 0usize;
        let mut places = Vec::new();
        for t in &self.tensors {
            put_str(&mut out, &t.name);
            out.extend_from_slice(&(t.ne.len() as u32).to_le_bytes());
            for d in &t.ne {
                out.extend_from_slice(&d.to_le_bytes());
            }
            out.extend_from_slice(&t.type_id.to_le_bytes());
            out.extend_from_slice(&t.offset.unwrap_or(at as u64).to_le_bytes());
            places.push(at);
            at = (at + t.data.len()).next_multiple_of(self.alignment);
        }
        if !self.tensors.is_empty() {
            out.resize(out.len().next_multiple_of(self.alignment), 0);
            let base = out.len();
            for (t, p) in self.tensors.iter().zip(places) {
                out.resize(base + p, 0);
                out.extend_from_slice(&t.data);
            }
        }
        out
    }
}
