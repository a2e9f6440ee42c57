//! GGUF model files, read natively over memory maps: the parser, the ggml tensor types
//! with reference dequantizers, and llama.cpp's q/k row permutation. The bottom layer of
//! GGUF support; the loader that builds a model from it sits above.
//!
//! # For the loader
//! - [`GgufFile::open`]`(path)` opens one file, or every shard of a split
//!   `<name>-00001-of-0000N.gguf` set (from any shard's path; `split.count`/`split.no`
//!   are checked and the tensor tables merged). [`GgufFile::meta`] gives the metadata
//!   (of the first shard) with typed accessors: [`Metadata::get_u32`]`("llama.block_count")`,
//!   `get_str`, `get_f32`, `get_str_array`, ... and `opt_*` for optional keys; errors name
//!   the file, the key and the type found. [`Metadata::get`] gives the raw
//!   [`parse::Value`] (arrays: [`parse::Array`], nested ones included).
//! - [`GgufFile::tensor`]`(name)` / [`GgufFile::tensors`]: a [`GgufTensor`] = ggml type,
//!   shape in row-major HF order (`[rows, cols]`, cols = ggml `ne[0]`), byte offset in its
//!   shard's map, byte length, and the shard's `Arc<Storage>` (zero-copy, like
//!   [`HostTensor`](super::tensor::HostTensor)). Rows are whole blocks:
//!   [`GgufTensor::row`] is row `r`'s bytes.
//! - [`dequantize_row`]`(type, bytes, out)`: any whole number of blocks -> f32,
//!   bit-identical to gguf-py; [`GgmlType::block_size`] / [`GgmlType::block_bytes`] /
//!   [`GgmlType::bytes_for`].
//! - [`GgufFile::qk_row_map`]`(name)`: for Llama-architecture files, the row map that
//!   undoes llama.cpp's q/k permutation of `blk.N.attn_q`/`attn_k` (HF row `r` is GGUF
//!   row `map[r]`), `None` for every other tensor or architecture; [`unpermute_rows`] for
//!   the bare map and [`permute::gather_rows`] to apply one (to f32 rows or to the bytes
//!   of quantized rows alike).
//! - [`parse_bytes`]`(bytes, name)`: the parser alone, pure, for fuzzing.
//!
//! Every failure a file causes is an `InvalidModel` or `Unsupported` error (`Io` when a
//! file or shard cannot be opened) naming the file and the field, key or tensor; nothing
//! the file claims is allocated before it is checked against the file's size.

pub(crate) mod ggml;
pub(crate) mod parse;
pub(crate) mod permute;

#[cfg(test)]
mod golden;
#[cfg(test)]
mod tests;
#[cfg(test)]
pub(crate) mod testutil;

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use memmap2::Mmap;

pub(crate) use ggml::dequantize_row;
pub use ggml::GgmlType;
pub(crate) use parse::{parse_bytes, Metadata, Parsed};
pub(crate) use permute::unpermute_rows;

use super::tensor::Storage;
use crate::error::{Error, Result};

/// Most shards a split file may have (the file name holds five digits).
const MAX_SPLITS: u64 = 99_999;

/// One tensor of a GGUF file: where its bytes are and how to read them.
#[derive(Clone)]
pub(crate) struct GgufTensor {
    /// The GGUF name (`blk.0.attn_q.weight`).
    pub(crate) name: String,
    /// Its ggml type.
    pub(crate) ggml_type: GgmlType,
    /// Shape, outermost first (ggml `ne` reversed): `[rows, cols]` for a matrix.
    pub(crate) shape: Vec<usize>,
    /// Byte offset of the data in its shard's map.
    pub(crate) offset: usize,
    /// Bytes of data.
    pub(crate) len: usize,
    /// Index of its shard in [`GgufFile::paths`].
    pub(crate) shard: usize,
    /// The shard's map.
    pub(crate) storage: Arc<Storage>,
}

impl std::fmt::Debug for GgufTensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "GgufTensor({}, {}, {:?}, shard {} @ {}+{})",
            self.name, self.ggml_type, self.shape, self.shard, self.offset, self.len
        )
    }
}

impl GgufTensor {
    /// The raw bytes.
    pub(crate) fn bytes(&self) -> &[u8] {
        &self.storage[self.offset..self.offset + self.len]
    }

    /// Number of elements.
    pub(crate) fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// Row length (the innermost dimension, ggml `ne[0]`; 1 for a scalar).
    #[cfg_attr(not(test), allow(dead_code))] // used by the tests only
    pub(crate) fn cols(&self) -> usize {
        self.shape.last().copied().unwrap_or(1)
    }

    /// Number of rows (all outer dimensions; 1 for a vector).
    #[cfg_attr(not(test), allow(dead_code))] // used by the tests only
    pub(crate) fn rows(&self) -> usize {
        self.shape[..self.shape.len().saturating_sub(1)]
            .iter()
            .product()
    }

    /// Bytes of one row.
    #[cfg_attr(not(test), allow(dead_code))] // used by the tests only
    pub(crate) fn row_bytes(&self) -> usize {
        // Validated when the file was parsed.
        self.ggml_type.bytes_for(self.cols()).unwrap_or(0)
    }

    /// Row `r`'s bytes (whole blocks).
    #[cfg_attr(not(test), allow(dead_code))] // used by the tests only
    pub(crate) fn row(&self, r: usize) -> &[u8] {
        assert!(
            r < self.rows(),
            "row {r} of {} in `{}`",
            self.rows(),
            self.name
        );
        let rb = self.row_bytes();
        &self.bytes()[r * rb..(r + 1) * rb]
    }

    /// Row `r` dequantized into `out` (`cols()` elements).
    #[cfg_attr(not(test), allow(dead_code))] // used by the tests only
    pub(crate) fn dequantize_row(&self, r: usize, out: &mut [f32]) -> Result<()> {
        dequantize_row(self.ggml_type, self.row(r), out)
    }

    /// The whole tensor dequantized, row-major.
    pub(crate) fn to_f32_vec(&self) -> Vec<f32> {
        let mut out = vec![0f32; self.numel()];
        dequantize_row(self.ggml_type, self.bytes(), &mut out).expect("validated sizes");
        out
    }
}

/// A GGUF model: one file or all shards of a split one, tensors merged.
pub(crate) struct GgufFile {
    paths: Vec<PathBuf>,
    version: u32,
    meta: Metadata,
    tensors: Vec<GgufTensor>,
    index: HashMap<String, usize>,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "GgufFile({}, v{}, {} keys, {} tensors in {} shard(s))",
            self.paths[0].display(),
            self.version,
            self.meta.len(),
            self.tensors.len(),
            self.paths.len()
        )
    }
}

fn map_file(path: &Path) -> Result<Arc<Storage>> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    // SAFETY: as in safetensors.rs: a read-only private map of a file treated as
    // immutable while loaded; every offset is checked against the map's length.
    let map = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
    Ok(Arc::new(Storage::Mapped(map)))
}

fn open_shard(path: &Path) -> Result<(Arc<Storage>, Parsed)> {
    let map = map_file(path)?;
    let parsed = parse_bytes(&map, &path.display().to_string())?;
    Ok((map, parsed))
}

/// `(prefix, no, count)` of a shard name `<prefix>-NNNNN-of-MMMMM.gguf` (no from 1).
fn split_name(path: &Path) -> Option<(String, u64, u64)> {
    let name = path.file_name()?.to_str()?;
    let stem = name.strip_suffix(".gguf")?;
    let (rest, count) = stem.rsplit_once("-of-")?;
    let (prefix, no) = rest.rsplit_once('-')?;
    let digits = |s: &str| s.len() == 5 && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(no) || !digits(count) {
        return None;
    }
    Some((prefix.to_string(), no.parse().ok()?, count.parse().ok()?))
}

impl GgufFile {
    /// Opens `path`: a single GGUF file, or any shard of a split set, which opens them all.
    pub(crate) fn open(path: &Path) -> Result<GgufFile> {
        let (map, first) = open_shard(path)?;
        let file = path.display().to_string();
        let count = first.meta.opt_u64("split.count")?.unwrap_or(1);
        if count <= 1 {
            if let Some(no) = first.meta.opt_u64("split.no")? {
                if no != 0 {
                    return Err(Error::invalid_model(format!(
                        "{file}: `split.no` is {no} but `split.count` is {count}"
                    )));
                }
            }
            return Self::merge(vec![(path.to_path_buf(), map, first)]);
        }
        if count > MAX_SPLITS {
            return Err(Error::invalid_model(format!(
                "{file}: `split.count` is {count} (at most {MAX_SPLITS})"
            )));
        }
        let no = first.meta.get_u64("split.no")?;
        let Some((prefix, name_no, name_count)) = split_name(path) else {
            return Err(Error::invalid_model(format!(
                "{file}: `split.count` is {count} but the name does not end in \
                 -NNNNN-of-NNNNN.gguf, so the other shards cannot be found"
            )));
        };
        if name_count != count || name_no != no + 1 {
            return Err(Error::invalid_model(format!(
                "{file}: the name says shard {name_no} of {name_count} but `split.no` = {no} \
                 and `split.count` = {count} (split.no counts from 0)"
            )));
        }
        let dir = path.parent().unwrap_or(Path::new(""));
        let mut first = Some((map, first));
        let mut shards = Vec::with_capacity(count as usize);
        for k in 0..count {
            let p = dir.join(format!("{prefix}-{:05}-of-{count:05}.gguf", k + 1));
            let (map, parsed) = if k == no {
                first.take().expect("the opened shard is used once")
            } else {
                open_shard(&p)?
            };
            let f = p.display().to_string();
            let (c, n) = (
                parsed.meta.get_u64("split.count")?,
                parsed.meta.get_u64("split.no")?,
            );
            if c != count || n != k {
                return Err(Error::invalid_model(format!(
                    "{f}: `split.no` = {n}, `split.count` = {c}; expected {k} and {count} \
                     (shard {} of the set opened from {file})",
                    k + 1
                )));
            }
            shards.push((p, map, parsed));
        }
        let g = Self::merge(shards)?;
        if let Some(total) = g.meta.opt_u64("split.tensors.count")? {
            if total != g.tensors.len() as u64 {
                return Err(Error::invalid_model(format!(
                    "{}: `split.tensors.count` is {total} but the {count} shards hold {} tensors",
                    g.paths[0].display(),
                    g.tensors.len()
                )));
            }
        }
        Ok(g)
    }

    fn merge(shards: Vec<(PathBuf, Arc<Storage>, Parsed)>) -> Result<GgufFile> {
        let mut paths: Vec<PathBuf> = Vec::with_capacity(shards.len());
        let mut tensors = Vec::new();
        let mut index: HashMap<String, usize> = HashMap::new();
        let mut head = None;
        for (k, (path, map, parsed)) in shards.into_iter().enumerate() {
            for t in parsed.tensors {
                if let Some(&other) = index.get(&t.name) {
                    let other: &GgufTensor = &tensors[other];
                    return Err(Error::invalid_model(format!(
                        "tensor `{}` appears in both {} and {}",
                        t.name,
                        paths[other.shard].display(),
                        path.display()
                    )));
                }
                index.insert(t.name.clone(), tensors.len());
                tensors.push(GgufTensor {
                    name: t.name,
                    ggml_type: t.ggml_type,
                    shape: t.shape,
                    offset: t.offset,
                    len: t.len,
                    shard: k,
                    storage: map.clone(),
                });
            }
            if head.is_none() {
                head = Some((parsed.version, parsed.meta));
            }
            paths.push(path);
        }
        let (version, meta) = head.expect("at least one shard");
        Ok(GgufFile {
            paths,
            version,
            meta,
            tensors,
            index,
        })
    }

    /// The files, first shard first.
    pub(crate) fn paths(&self) -> &[PathBuf] {
        &self.paths
    }

    /// Format version of the first shard.
    #[cfg_attr(not(test), allow(dead_code))] // used by the tests only
    pub(crate) fn version(&self) -> u32 {
        self.version
    }

    /// The metadata (of the first shard: the others hold only `split.*`).
    pub(crate) fn meta(&self) -> &Metadata {
        &self.meta
    }

    /// All tensors, in file order, shard after shard.
    pub(crate) fn tensors(&self) -> &[GgufTensor] {
        &self.tensors
    }

    /// The tensor `name`, if present.
    pub(crate) fn get(&self, name: &str) -> Option<&GgufTensor> {
        self.index.get(name).map(|&i| &self.tensors[i])
    }

    /// The tensor `name`; missing: an `InvalidModel` error naming the file.
    pub(crate) fn tensor(&self, name: &str) -> Result<&GgufTensor> {
        self.get(name).ok_or_else(|| {
            Error::invalid_model(format!(
                "{}: missing tensor `{name}`",
                self.paths[0].display()
            ))
        })
    }

    /// `general.architecture`, required.
    pub(crate) fn architecture(&self) -> Result<&str> {
        self.meta.get_str("general.architecture")
    }

    /// For a Llama-architecture file and a `blk.N.attn_q.*` / `blk.N.attn_k.*` tensor
    /// (weight or bias), the row map undoing llama.cpp's permutation: HF row `r` is GGUF
    /// row `map[r]` ([`unpermute_rows`] with `llama.attention.head_count`, or
    /// `head_count_kv` for k). `None` for any other tensor or architecture.
    pub(crate) fn qk_row_map(&self, name: &str) -> Result<Option<Vec<usize>>> {
        if self.architecture()? != "llama" {
            return Ok(None);
        }
        let mut parts = name.split('.');
        let (Some("blk"), Some(layer), Some(what), Some(_), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Ok(None);
        };
        if layer.parse::<usize>().is_err() || !matches!(what, "attn_q" | "attn_k") {
            return Ok(None);
        }
        let t = self.tensor(name)?;
        let heads_q = self.meta.get_usize("llama.attention.head_count")?;
        let heads = if what == "attn_q" {
            heads_q
        } else {
            self.meta
                .opt_usize("llama.attention.head_count_kv")?
                .unwrap_or(heads_q)
        };
        let rows = t.shape.first().copied().unwrap_or(1);
        unpermute_rows(rows, heads).map(Some).map_err(|e| {
            Error::invalid_model(format!(
                "{}: tensor `{name}`: {}",
                self.paths[t.shard].display(),
                e.message()
            ))
        })
    }
}
