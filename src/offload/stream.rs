//! The slow tier on the CPU backend: the model file on disk. Offloaded layers are read
//! with O_DIRECT (aligned reads, page cache bypassed, so the budget is honest and timings do
//! not depend on what the OS cached) into a ring of staging buffers by a reader thread that
//! cycles through the offloaded layers in order, as far ahead as free buffers allow. So
//! layer i+1 loads while layer i computes, and between target passes (while the draft grows
//! the tree) the first offloaded layers of the coming verification are already loading.
//!
//! Where O_DIRECT is refused (some filesystems), files are read normally and the pages are
//! dropped after each read with `posix_fadvise(DONTNEED)`; [`Streamer::direct`] says which.

use std::fs::File;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{channel, sync_channel, Receiver, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use crate::error::{Error, ErrorKind, Result};
use crate::model::weights::{AlignedBuf, Storage};
use crate::model::{DType, HostTensor, Weights};

/// Where one tensor lives on disk.
#[derive(Debug, Clone)]
struct TensorExtent {
    name: String,
    dtype: DType,
    shape: Vec<usize>,
    file: usize,
    offset: u64,
    len: usize,
}

/// The tensors one offloaded layer streams.
#[derive(Debug, Clone)]
struct LayerExtent {
    layer: usize,
    tensors: Vec<TensorExtent>,
}

/// An open checkpoint file of the slow tier.
struct TierFile {
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

/// Streaming counters, shared with the reader thread.
#[derive(Debug, Default)]
pub struct StreamCounters {
    /// Bytes read from the slow tier.
    pub bytes: AtomicU64,
    /// Nanoseconds the reader spent reading.
    pub read_ns: AtomicU64,
    /// Nanoseconds compute waited for a layer.
    pub wait_ns: AtomicU64,
}

/// A staging buffer filled with one layer, as sent by the reader.
type Filled = Result<(usize, AlignedBuf, Vec<usize>)>;

/// One streamed layer, ready for compute; hand it back with [`Streamer::release`].
pub struct StreamedLayer {
    /// The decoder layer.
    pub layer: usize,
    /// Its tensors, in the order given to [`Streamer::new`], viewing the staging buffer.
    pub tensors: Vec<HostTensor>,
    storage: Arc<Storage>,
}

/// The reader thread and its ring of staging buffers.
pub struct Streamer {
    extents: Arc<Vec<LayerExtent>>,
    files: Arc<Vec<TierFile>>,
    buf_len: usize,
    buffers: usize,
    counters: Arc<StreamCounters>,
    direct: bool,
    next: usize,
    chan: Option<(Receiver<Filled>, Sender<AlignedBuf>, JoinHandle<()>)>,
}

const BLOCK: u64 = AlignedBuf::ALIGN as u64;

fn open_tier(path: &Path) -> Result<(File, bool)> {
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

impl Streamer {
    /// A streamer for `layers` (ascending), each streaming the tensors `names(layer)`,
    /// with `buffers` staging buffers. Starts reading at once.
    pub fn new(
        weights: &Weights,
        layers: &[usize],
        names: impl Fn(usize) -> Vec<String>,
        buffers: usize,
    ) -> Result<Streamer> {
        let (files, extents, direct, buf_len) = extents(weights, layers, names)?;
        let mut s = Streamer {
            extents: Arc::new(extents),
            files: Arc::new(files),
            buf_len,
            buffers: buffers.max(1),
            counters: Arc::new(StreamCounters::default()),
            direct,
            next: 0,
            chan: None,
        };
        s.start();
        Ok(s)
    }

    /// Whether reads bypass the page cache (O_DIRECT).
    pub fn direct(&self) -> bool {
        self.direct
    }

    /// Bytes of one staging buffer.
    pub fn buffer_bytes(&self) -> usize {
        self.buf_len
    }

    /// The counters.
    pub fn counters(&self) -> &StreamCounters {
        &self.counters
    }

    /// The offloaded layers, in streaming order.
    pub fn layers(&self) -> Vec<usize> {
        self.extents.iter().map(|e| e.layer).collect()
    }

    /// (Re)starts the reader at the first offloaded layer.
    fn start(&mut self) {
        self.chan = None; // drops the old channels: the old reader exits
        if self.extents.is_empty() {
            return;
        }
        let (filled_tx, filled_rx) = sync_channel::<Filled>(self.buffers);
        let (free_tx, free_rx) = channel::<AlignedBuf>();
        for _ in 0..self.buffers {
            free_tx
                .send(AlignedBuf::new(self.buf_len))
                .expect("fresh channel");
        }
        let (extents, files, counters, direct) = (
            self.extents.clone(),
            self.files.clone(),
            self.counters.clone(),
            self.direct,
        );
        let handle = std::thread::Builder::new()
            .name("subspec-stream".into())
            .spawn(move || loop {
                for (i, e) in extents.iter().enumerate() {
                    let Ok(mut buf) = free_rx.recv() else { return };
                    let t0 = Instant::now();
                    let r = read_layer(&files, e, &mut buf, direct, &counters);
                    counters
                        .read_ns
                        .fetch_add(t0.elapsed().as_nanos() as u64, Ordering::Relaxed);
                    let failed = r.is_err();
                    if filled_tx.send(r.map(|starts| (i, buf, starts))).is_err() || failed {
                        return;
                    }
                }
            })
            .expect("spawn the reader thread");
        self.next = 0;
        self.chan = Some((filled_rx, free_tx, handle));
    }

    /// The next offloaded layer of the pass, which must be `layer`. Blocks until loaded.
    pub fn next_layer(&mut self, layer: usize) -> Result<StreamedLayer> {
        let expected = self.extents.get(self.next).map(|e| e.layer);
        if expected != Some(layer) {
            self.stop();
            return Err(Error::internal(format!(
                "streamer expected layer {expected:?}, asked for {layer}"
            )));
        }
        let t0 = Instant::now();
        let got = match &self.chan {
            Some((rx, _, _)) => rx
                .recv()
                .unwrap_or_else(|_| Err(Error::internal("the reader thread stopped"))),
            None => Err(Error::internal("no reader thread")),
        };
        self.counters
            .wait_ns
            .fetch_add(t0.elapsed().as_nanos() as u64, Ordering::Relaxed);
        let (i, buf, starts) = match got {
            Ok(x) => x,
            Err(e) => {
                // Stop reading; the next pass restarts from the first layer (not now: the
                // cause, e.g. a file being rewritten, may still be there).
                self.stop();
                return Err(e);
            }
        };
        debug_assert_eq!(i, self.next);
        self.next = (self.next + 1) % self.extents.len();
        let storage = Arc::new(Storage::Owned(buf));
        let ext = &self.extents[i];
        let tensors = ext
            .tensors
            .iter()
            .zip(starts)
            .map(|(t, start)| {
                HostTensor::view(
                    &t.name,
                    t.dtype,
                    t.shape.clone(),
                    storage.clone(),
                    start,
                    t.len,
                )
            })
            .collect();
        Ok(StreamedLayer {
            layer: ext.layer,
            tensors,
            storage,
        })
    }

    /// Hands a layer's staging buffer back to the reader (all views must be dropped).
    pub fn release(&mut self, l: StreamedLayer) {
        let StreamedLayer {
            tensors, storage, ..
        } = l;
        drop(tensors);
        if let (Ok(Storage::Owned(buf)), Some((_, free, _))) =
            (Arc::try_unwrap(storage), &self.chan)
        {
            let _ = free.send(buf);
        }
    }

    /// Called before each pass: restarts the reader at the first layer if the previous
    /// pass stopped midway or failed.
    pub fn reset(&mut self) {
        if self.next != 0 || self.chan.is_none() {
            self.start();
        }
    }

    /// Stops the reader (after an error); [`Streamer::reset`] restarts it.
    fn stop(&mut self) {
        self.chan = None;
        self.next = 0;
    }
}

type Extents = (Vec<TierFile>, Vec<LayerExtent>, bool, usize);

/// Opens the files and locates the tensors `names(layer)` of every layer in `layers`;
/// also says whether O_DIRECT works and how big a staging buffer must be.
fn extents(
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
            let t = weights.get_any(&name)?;
            let path = weights
                .file_of(&name)
                .expect("tensor has a file")
                .to_path_buf();
            let file = match files.iter().position(|f| f.path == path) {
                Some(i) => i,
                None => {
                    let (file, d) = open_tier(&path)?;
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
            });
        }
        buf_len = buf_len.max(need);
        out.push(LayerExtent { layer, tensors });
    }
    Ok((files, out, direct, buf_len))
}

/// Reads every tensor of `e` into `buf`, each at a block-aligned place; returns where each
/// tensor's data starts in `buf`.
fn read_layer(
    files: &[TierFile],
    e: &LayerExtent,
    buf: &mut AlignedBuf,
    direct: bool,
    counters: &StreamCounters,
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
        while got < want {
            match f.file.read_at(&mut dst[got..], begin + got as u64) {
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
        counters.bytes.fetch_add(t.len as u64, Ordering::Relaxed);
        starts.push(cursor + (t.offset - begin) as usize);
        cursor += want;
    }
    Ok(starts)
}

/// Reads tensor `name` once into an owned, aligned buffer through the slow tier's path
/// (O_DIRECT where possible): a resident weight that does not sit in the page cache.
pub fn read_resident(weights: &Weights, name: &str) -> Result<HostTensor> {
    let (files, ext, direct, buf_len) = extents(weights, &[0], |_| vec![name.to_string()])?;
    let mut buf = AlignedBuf::new(buf_len);
    let starts = read_layer(
        &files,
        &ext[0],
        &mut buf,
        direct,
        &StreamCounters::default(),
    )?;
    let t = &ext[0].tensors[0];
    Ok(HostTensor::view(
        &t.name,
        t.dtype,
        t.shape.clone(),
        Arc::new(Storage::Owned(buf)),
        starts[0],
        t.len,
    ))
}
