//! [`Weights`]: a checkpoint's tensors by their Hugging Face names, whatever the file
//! format: the safetensors of a model directory, or a GGUF file (or split set) whose
//! tensors `gguf_model.rs` renames. Tensors are zero-copy views into the maps; nothing is
//! read until a kernel touches it. Every lookup checks the shape, and a failure names the
//! file, the tensor and what was expected.
//!
//! A GGUF file of the Llama architecture stores q/k rows permuted (llama.cpp's
//! converter); such a tensor carries its row map, and every way of reading it ([`get`],
//! direct reads, the CPU slow tier) yields the rows in Hugging Face order.
//!
//! [`get`]: Weights::get

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::tensor::{AlignedBuf, DType, HostTensor, Storage};
use crate::error::{Error, Result};

/// One tensor of the table.
struct Entry {
    tensor: HostTensor,
    /// The file it lives in.
    file: PathBuf,
    /// Stored row `map[r]` is logical row `r` (llama.cpp's q/k permutation undone).
    row_map: Option<Arc<[usize]>>,
}

/// A tensor as stored, its file and its row map (see [`Weights::stored`]).
pub(crate) type Stored<'a> = (&'a HostTensor, &'a Path, Option<&'a Arc<[usize]>>);

/// All tensors of a checkpoint, by name.
pub struct Weights {
    tensors: HashMap<String, Entry>,
}

/// Stored rows of `t` in the order `map` gives (`map[r]` is the stored row of row `r`),
/// as an owned tensor.
pub(crate) fn gather(t: &HostTensor, map: &[usize]) -> HostTensor {
    let rb = t.row_bytes();
    let mut buf = AlignedBuf::new(t.bytes().len());
    gather_into(
        t.bytes(),
        rb,
        map,
        &mut buf.as_mut_slice()[..t.bytes().len()],
    );
    HostTensor::view(
        &t.name,
        t.dtype,
        t.shape.clone(),
        Arc::new(Storage::Owned(buf)),
        0,
        t.bytes().len(),
    )
}

/// `dst` row `r` = `src` row `map[r]`, rows of `row_bytes`.
pub(crate) fn gather_into(src: &[u8], row_bytes: usize, map: &[usize], dst: &mut [u8]) {
    for (r, &g) in map.iter().enumerate() {
        dst[r * row_bytes..(r + 1) * row_bytes]
            .copy_from_slice(&src[g * row_bytes..(g + 1) * row_bytes]);
    }
}

impl Weights {
    /// Opens a checkpoint: a Hugging Face model directory (`model.safetensors` or its
    /// sharded index) or a `.gguf` file (any shard of a split set).
    pub fn open(path: &Path) -> Result<Weights> {
        if path.is_dir() {
            Self::from_tensors(
                super::safetensors::open_dir(path)?
                    .into_iter()
                    .map(|(t, f)| (t, f, None)),
            )
        } else {
            super::gguf_model::weights(&super::gguf::GgufFile::open(path)?)
        }
    }

    /// A table of `(tensor, its file, its row map)`; a name given twice is an error.
    pub(crate) fn from_tensors(
        items: impl IntoIterator<Item = (HostTensor, PathBuf, Option<Arc<[usize]>>)>,
    ) -> Result<Weights> {
        let mut tensors: HashMap<String, Entry> = HashMap::new();
        for (tensor, file, row_map) in items {
            if let Some(other) = tensors.get(&tensor.name) {
                return Err(Error::invalid_model(format!(
                    "tensor `{}` appears in both {} and {}",
                    tensor.name,
                    other.file.display(),
                    file.display()
                )));
            }
            tensors.insert(
                tensor.name.clone(),
                Entry {
                    tensor,
                    file,
                    row_map,
                },
            );
        }
        Ok(Weights { tensors })
    }

    fn entry(&self, name: &str, shape: Option<&[usize]>) -> Result<&Entry> {
        let e = self.tensors.get(name).ok_or_else(|| {
            Error::invalid_model(match shape {
                Some(shape) => format!("missing tensor `{name}` (expected shape {shape:?})"),
                None => format!("missing tensor `{name}`"),
            })
        })?;
        match shape {
            Some(shape) if e.tensor.shape != shape => Err(Error::invalid_model(format!(
                "{}: tensor `{name}` has shape {:?}, expected {shape:?}",
                e.file.display(),
                e.tensor.shape
            ))),
            _ => Ok(e),
        }
    }

    fn logical(e: &Entry) -> HostTensor {
        match &e.row_map {
            Some(map) => gather(&e.tensor, map),
            None => e.tensor.clone(),
        }
    }

    /// Whether a tensor exists.
    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    /// The tensor `name`, checked to have exactly `shape`, rows in logical order (a view,
    /// or an owned copy when the file stores its rows permuted).
    pub fn get(&self, name: &str, shape: &[usize]) -> Result<HostTensor> {
        self.entry(name, Some(shape)).map(Self::logical)
    }

    /// Checks that tensor `name` exists with exactly `shape`, reading nothing.
    pub fn check(&self, name: &str, shape: &[usize]) -> Result<()> {
        self.entry(name, Some(shape)).map(drop)
    }

    /// The tensor `name`, whatever its shape (rows in logical order).
    pub fn get_any(&self, name: &str) -> Result<HostTensor> {
        self.entry(name, None).map(Self::logical)
    }

    /// The type, shape and byte length of tensor `name`, reading nothing.
    pub fn info(&self, name: &str) -> Result<(DType, &[usize], usize)> {
        self.entry(name, None)
            .map(|e| (e.tensor.dtype, &e.tensor.shape[..], e.tensor.bytes().len()))
    }

    /// The tensor as stored (rows possibly permuted), its file and its row map: what a
    /// direct read of the file needs.
    pub(crate) fn stored(&self, name: &str) -> Result<Stored<'_>> {
        self.entry(name, None)
            .map(|e| (&e.tensor, e.file.as_path(), e.row_map.as_ref()))
    }

    /// The file holding tensor `name`.
    pub fn file_of(&self, name: &str) -> Option<&Path> {
        self.tensors.get(name).map(|e| e.file.as_path())
    }

    /// Every tensor name.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(String::as_str)
    }

    /// Per element type: how many tensors and how many bytes, largest first.
    pub fn dtype_summary(&self) -> Vec<(DType, usize, u64)> {
        let mut by: Vec<(DType, usize, u64)> = Vec::new();
        for e in self.tensors.values() {
            let (d, n) = (e.tensor.dtype, e.tensor.bytes().len() as u64);
            match by.iter_mut().find(|x| x.0 == d) {
                Some(x) => {
                    x.1 += 1;
                    x.2 += n;
                }
                None => by.push((d, 1, n)),
            }
        }
        by.sort_by(|a, b| b.2.cmp(&a.2).then(a.0.name().cmp(b.0.name())));
        by
    }

    /// Asks the kernel to drop the checkpoint files' pages from the page cache (after
    /// reading weights through the maps once, e.g. to quantize them).
    pub fn drop_page_cache(&self) {
        let mut maps: Vec<&Arc<Storage>> =
            self.tensors.values().map(|e| e.tensor.storage()).collect();
        maps.sort_by_key(|m| Arc::as_ptr(m));
        maps.dedup_by_key(|m| Arc::as_ptr(m));
        for m in maps {
            if let Storage::Mapped(map) = &**m {
                // SAFETY: the map is private and read-only: dropping its pages loses
                // nothing, a later access faults them in again from the file.
                let _ = unsafe { map.unchecked_advise(memmap2::UncheckedAdvice::DontNeed) };
            }
        }
        let mut files: Vec<&PathBuf> = self.tensors.values().map(|e| &e.file).collect();
        files.sort();
        files.dedup();
        for p in files {
            if let Ok(f) = File::open(p) {
                use std::os::unix::io::AsRawFd;
                // SAFETY: plain syscall on an open descriptor; only advice to the kernel.
                unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
            }
        }
    }

    /// Bytes of all 1-D tensors (norms, biases).
    pub fn vector_bytes(&self) -> usize {
        self.tensors
            .values()
            .filter(|e| e.tensor.shape.len() == 1)
            .map(|e| e.tensor.bytes().len())
            .sum()
    }

    /// Total bytes of all tensors.
    pub fn total_bytes(&self) -> usize {
        self.tensors.values().map(|e| e.tensor.bytes().len()).sum()
    }
}
