//! Reading a checkpoint's tensors straight from disk with O_DIRECT: aligned reads that
//! bypass the page cache, so the memory budget is honest and timings do not depend on what
//! the OS cached. Where O_DIRECT is refused (some filesystems), files are read normally and
//! the pages dropped after each read with `posix_fadvise(DONTNEED)`.
//!
//! [`locate`] finds groups of tensors (the linears of a layer) in their files; [`read_group`]
//! reads one group into an aligned buffer. The CPU backend's slow tier streams offloaded
//! layers this way, and [`read_resident`] reads a resident weight once into owned memory.

use std::fs::File;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::faults::Fault;
use super::tensor::{AlignedBuf, DType, HostTensor, Storage};
use super::weights::{gather_into, Weights};
use crate::error::{Error, ErrorKind, Result};

/// Where one tensor lives on disk.
#[derive(Debug, Clone)]
pub(crate) struct TensorExtent {
    name: String,
    dtype: DType,
    shape: Vec<usize>,
    file: usize,
    offset: u64,
    len: usize,
    /// Stored row `map[r]` is row `r` (llama.cpp's q/k permutation, undone after reading).
    row_map: Option<Arc<[usize]>>,
}

/// A group of tensors read together (the linears of one layer).
#[derive(Debug, Clone)]
pub(crate) struct LayerExtent {
    layer: usize,
    tensors: Vec<TensorExtent>,
}

impl LayerExtent {
    /// The group's key (the decoder layer).
    pub(crate) fn layer(&self) -> usize {
        self.layer
    }

    /// Bytes of tensor data in the group.
    pub(crate) fn bytes(&self) -> u64 {
        self.tensors.iter().map(|t| t.len as u64).sum()
    }

    /// Views of the group's tensors in `storage`, which [`read_group`] filled and whose
    /// `starts` it returned.
    pub(crate) fn views(&self, storage: &Arc<Storage>, starts: &[usize]) -> Vec<HostTensor> {
        self.tensors
            .iter()
            .zip(starts)
            .map(|(t, &start)| {
                HostTensor::view(
                    &t.name,
                    t.dtype,
                    t.shape.clone(),
                    storage.clone(),
                    start,
                    t.len,
                )
            })
            .collect()
    }
}

/// An open checkpoint file, for direct reads.
pub(crate) struct TierFile {
    path: PathBuf,
    file: File,
    size: u64,
}

impl TierFile {
    /// An error if the file no longer has the size it had when opened.
    fn check_size(&self) -> Result<()> {
        let now = self
            .file
            .metadata()
            .map_err(|err| Error::io(&self.path, err))?
            .len();
        if now != self.size {
            return Err(Error::new(
                ErrorKind::Io,
                format!(
                    "{}: the model file changed size while open (was {} bytes, now {now})",
                    self.path.display(),
                    self.size
                ),
            ));
        }
        Ok(())
    }
}

const BLOCK: u64 = AlignedBuf::ALIGN as u64;

fn open_direct(path: &Path) -> Result<(File, bool)> {
    match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
    {
        Ok(f) => Ok((f, true)),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            let f = File::open(path).map_err(|e| Error::io(path, e))?;
            Ok((f, false))
        }
        Err(e) => Err(Error::io(path, e)),
    }
}

/// What [`locate`] found: the open files, one extent per group, whether O_DIRECT works for
/// all files, and the size of a buffer that holds the largest group.
pub(crate) type Extents = (Vec<TierFile>, Vec<LayerExtent>, bool, usize);

/// Opens the files and locates the tensors `names(layer)` of every layer in `layers`;
/// also says whether O_DIRECT works and how big a staging buffer must be.
pub(crate) fn locate(
    weights: &Weights,
    layers: &[usize],
    names: impl Fn(usize) -> Vec<String>,
) -> Result<Extents> {
    let mut files: Vec<TierFile> = Vec::new();
    let mut direct = true;
    let mut out = Vec::new();
    let mut buf_len = 0usize;
    for &layer in layers {
        let mut tensors = Vec::new();
        let mut need = 0usize;
        for name in names(layer) {
            let (t, path, row_map) = weights.stored(&name)?;
            let (path, row_map) = (path.to_path_buf(), row_map.cloned());
            let file = match files.iter().position(|f| f.path == path) {
                Some(i) => i,
                None => {
                    let (file, d) = open_direct(&path)?;
                    direct &= d;
                    let size = file.metadata().map_err(|e| Error::io(&path, e))?.len();
                    files.push(TierFile { path, file, size });
                    files.len() - 1
                }
            };
            let len = t.bytes().len();
            let offset = t.offset() as u64;
            need += (((offset + len as u64).div_ceil(BLOCK) - offset / BLOCK) * BLOCK) as usize;
            tensors.push(TensorExtent {
                name,
                dtype: t.dtype,
                shape: t.shape.clone(),
                file,
                offset,
                len,
                row_map,
            });
        }
        buf_len = buf_len.max(need);
        out.push(LayerExtent { layer, tensors });
    }
    Ok((files, out, direct, buf_len))
}

/// Reads every tensor of `e` into `buf`, each at a block-aligned place; returns where each
/// tensor's data starts in `buf`.
pub(crate) fn read_group(
    files: &[TierFile],
    e: &LayerExtent,
    buf: &mut AlignedBuf,
    direct: bool,
) -> Result<Vec<usize>> {
    let mut cursor = 0usize;
    let mut starts = Vec::with_capacity(e.tensors.len());
    for t in &e.tensors {
        let f = &files[t.file];
        f.check_size()?;
        let begin = t.offset / BLOCK * BLOCK;
        let end = (t.offset + t.len as u64).div_ceil(BLOCK) * BLOCK;
        let want = (end - begin) as usize;
        let dst = &mut buf.as_mut_slice()[cursor..cursor + want];
        let mut got = 0usize;
        // Tests make reads fail here (checkpoint::faults); nothing is armed otherwise.
        let mut stop_at = want;
        match super::faults::take() {
            None => {}
            Some(Fault::Eio) => {
                let err = std::io::Error::from_raw_os_error(libc::EIO);
                return Err(Error::io(&f.path, err));
            }
            Some(Fault::ShortRead) => stop_at = want / 2,
            Some(Fault::Stall(d)) => std::thread::sleep(d),
        }
        while got < stop_at {
            match f.file.read_at(&mut dst[got..stop_at], begin + got as u64) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
                // A resize racing the read can fail it (EINVAL under O_DIRECT): name the
                // cause rather than the errno when that is what happened.
                Err(err) => {
                    f.check_size()?;
                    return Err(Error::io(&f.path, err));
                }
            }
        }
        let needed = (t.offset + t.len as u64 - begin) as usize;
        if got < needed {
            f.check_size()?;
            return Err(Error::new(
                ErrorKind::Io,
                format!("{}: short read of tensor `{}` ({got} of {needed} bytes): the file is truncated", f.path.display(), t.name),
            ));
        }
        if !direct {
            // SAFETY: plain syscall on an open descriptor; only advice to the kernel.
            unsafe {
                libc::posix_fadvise(
                    f.file.as_raw_fd(),
                    begin as i64,
                    want as i64,
                    libc::POSIX_FADV_DONTNEED,
                )
            };
        }
        let start = cursor + (t.offset - begin) as usize;
        if let Some(map) = &t.row_map {
            let rows = &mut buf.as_mut_slice()[start..start + t.len];
            let stored = rows.to_vec();
            gather_into(&stored, t.len / map.len(), map, rows);
        }
        starts.push(start);
        cursor += want;
    }
    Ok(starts)
}

/// Reads tensor `name` once into an owned, aligned buffer through the slow tier's path
/// (O_DIRECT where possible): a resident weight that does not sit in the page cache.
pub(crate) fn read_resident(weights: &Weights, name: &str) -> Result<HostTensor> {
    let (files, ext, direct, buf_len) = locate(weights, &[0], |_| vec![name.to_string()])?;
    let mut buf = AlignedBuf::new(buf_len);
    let starts = read_group(&files, &ext[0], &mut buf, direct)?;
    let mut views = ext[0].views(&Arc::new(Storage::Owned(buf)), &starts);
    Ok(views.remove(0))
}
