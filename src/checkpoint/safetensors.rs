//! Safetensors weights, memory-mapped: one `model.safetensors` or shards listed in
//! `model.safetensors.index.json`.
//!
//! Tensors are zero-copy views into the maps ([`HostTensor`]); nothing is read from disk
//! until a kernel touches it. Every lookup checks the dtype and the shape, and a failure
//! names the file, the tensor and what was expected.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use memmap2::Mmap;

use super::tensor::{DType, HostTensor, Storage};
use crate::error::{Error, ErrorKind, Result};

/// The tensors of a model directory's safetensors file(s), each with its file.
pub(crate) fn open_dir(dir: &Path) -> Result<Vec<(HostTensor, PathBuf)>> {
    let single = dir.join("model.safetensors");
    let index = dir.join("model.safetensors.index.json");
    let files: Vec<PathBuf> = if single.is_file() {
        vec![single]
    } else if index.is_file() {
        let obj = super::config::read_json_object(&index)?;
        let map = obj
            .get("weight_map")
            .and_then(|v| v.as_object())
            .ok_or_else(|| {
                Error::invalid_model(format!("{}: missing object `weight_map`", index.display()))
            })?;
        let mut names: Vec<String> = Vec::new();
        for (tensor, file) in map {
            let file = file.as_str().ok_or_else(|| {
                Error::invalid_model(format!(
                    "{}: `weight_map`.`{tensor}` is not a file name",
                    index.display()
                ))
            })?;
            if file.contains('/') || file.contains("..") {
                return Err(Error::invalid_model(format!(
                    "{}: shard name `{file}` must be a plain file name",
                    index.display()
                )));
            }
            if !names.iter().any(|n| n == file) {
                names.push(file.to_string());
            }
        }
        names.sort();
        names.into_iter().map(|n| dir.join(n)).collect()
    } else {
        return Err(Error::new(
            ErrorKind::Io,
            format!(
                "{}: no model.safetensors or model.safetensors.index.json",
                dir.display()
            ),
        ));
    };
    let mut out = Vec::new();
    for path in files {
        out.extend(open_file(&path)?.into_iter().map(|t| (t, path.clone())));
    }
    Ok(out)
}

fn open_file(path: &Path) -> Result<Vec<HostTensor>> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    // SAFETY: the map is read-only and private. Another process truncating or rewriting
    // the file while it is mapped would be undefined behaviour; a model directory is
    // treated as immutable while loaded, as every mmap-based loader does (llama.cpp,
    // candle), and the sizes below are checked against the map so no view can point past
    // its end at load time.
    let map = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
    let len = map.len();
    tensors_of(Arc::new(Storage::Mapped(map)), len, path)
}

/// The tensors of one safetensors file already in memory (the first `len` bytes of
/// `map`, `len <= map.len()`), every offset checked against `len`; `path` is used in messages. The fuzz target calls this directly.
pub(crate) fn tensors_of(map: Arc<Storage>, len: usize, path: &Path) -> Result<Vec<HostTensor>> {
    let bad = |msg: String| Error::invalid_model(format!("{}: {msg}", path.display()));
    if len < 8 {
        return Err(bad(format!(
            "not a safetensors file ({} bytes, too short for a header)",
            len
        )));
    }
    let (header_len, meta) = safetensors::SafeTensors::read_metadata(&map[..len])
        .map_err(|e| bad(format!("corrupt safetensors header: {e}")))?;
    let data_start = 8 + header_len;
    let mut out = Vec::new();
    for (name, info) in meta.tensors() {
        let dtype = match info.dtype {
            safetensors::Dtype::F32 => DType::F32,
            safetensors::Dtype::F16 => DType::F16,
            safetensors::Dtype::BF16 => DType::BF16,
            other => {
                return Err(Error::unsupported(format!(
                    "{}: tensor `{name}` has dtype {other:?}; supported: F32, F16, BF16",
                    path.display()
                )))
            }
        };
        let (begin, end) = info.data_offsets;
        let numel = info
            .shape
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .and_then(|n| n.checked_mul(dtype.size()));
        if end < begin || Some(end - begin) != numel {
            return Err(bad(format!(
                "tensor `{name}`: data offsets {begin}..{end} do not match shape {:?}",
                info.shape
            )));
        }
        if data_start.checked_add(end).is_none_or(|e| e > len) {
            return Err(bad(format!(
                "tensor `{name}` ends at byte {} but the file has {} bytes (truncated?)",
                data_start as u128 + end as u128,
                len
            )));
        }
        out.push(HostTensor::view(
            &name,
            dtype,
            info.shape.clone(),
            map.clone(),
            data_start + begin,
            end - begin,
        ));
    }
    Ok(out)
}

#[cfg(test)]
pub(crate) mod testutil {
    //! Writes small safetensors files for tests.
    use std::path::Path;

    /// Writes `tensors` (name -> (shape, f32 data)) as f16 safetensors at `path`.
    pub fn write_f16(path: &Path, tensors: &[(String, Vec<usize>, Vec<f32>)]) {
        let mut header = serde_json::Map::new();
        let mut data = Vec::new();
        for (name, shape, vals) in tensors {
            let begin = data.len();
            for v in vals {
                data.extend_from_slice(&half::f16::from_f32(*v).to_bits().to_le_bytes());
            }
            header.insert(
                name.clone(),
                serde_json::json!({"dtype": "F16", "shape": shape, "data_offsets": [begin, data.len()]}),
            );
        }
        let mut h = serde_json::to_vec(&serde_json::Value::Object(header)).unwrap();
        while !h.len().is_multiple_of(8) {
            h.push(b' ');
        }
        let mut bytes = (h.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(&h);
        bytes.extend_from_slice(&data);
        std::fs::write(path, bytes).unwrap();
    }
}
