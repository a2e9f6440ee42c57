//! The slow tier on the CPU backend: the model file on disk. Offloaded layers are read
//! with O_DIRECT (aligned reads, page cache bypassed, so the budget is honest and timings do
//! not depend on what the OS cached) into a ring of staging buffers by a reader thread that
//! cycles through the offloaded layers in order, as far ahead as free buffers allow. So
//! layer i+1 loads while layer i computes, and between target passes (while the draft grows
//! the tree) the first offloaded layers of the coming verification are already loading.
//!
//! Where O_DIRECT is refused (some filesystems), files are read normally and the pages are
//! dropped after each read with `posix_fadvise(DONTNEED)`; [`Streamer::direct`] says which.
//! The reads themselves are `checkpoint::direct`'s.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{channel, sync_channel, Receiver, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use crate::checkpoint::direct::{locate, read_group, LayerExtent, TierFile};
use crate::checkpoint::{AlignedBuf, HostTensor, Storage, Weights};
use crate::error::{Error, Result};

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
    /// The next layer, received by [`Streamer::ready`] before it was asked for.
    early: Option<Filled>,
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
        let (files, extents, direct, buf_len) = locate(weights, layers, names)?;
        let mut s = Streamer {
            extents: Arc::new(extents),
            files: Arc::new(files),
            buf_len,
            buffers: buffers.max(1),
            counters: Arc::new(StreamCounters::default()),
            direct,
            next: 0,
            chan: None,
            early: None,
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
        self.extents.iter().map(|e| e.layer()).collect()
    }

    /// (Re)starts the reader at the first offloaded layer.
    fn start(&mut self) {
        self.chan = None; // drops the old channels: the old reader exits
        self.early = None;
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
                    let r = read_group(&files, e, &mut buf, direct);
                    if r.is_ok() {
                        counters.bytes.fetch_add(e.bytes(), Ordering::Relaxed);
                    }
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
        let expected = self.extents.get(self.next).map(|e| e.layer());
        if expected != Some(layer) {
            self.stop();
            return Err(Error::internal(format!(
                "streamer expected layer {expected:?}, asked for {layer}"
            )));
        }
        let t0 = Instant::now();
        let got = match (self.early.take(), &self.chan) {
            (Some(got), _) => got,
            (None, Some((rx, _, _))) => rx
                .recv()
                .unwrap_or_else(|_| Err(Error::internal("the reader thread stopped"))),
            (None, None) => Err(Error::internal("no reader thread")),
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
        let tensors = ext.views(&storage, &starts);
        Ok(StreamedLayer {
            layer: ext.layer(),
            tensors,
            storage,
        })
    }

    /// Whether the next layer has been read (or reading it failed): then
    /// [`Streamer::next_layer`] returns at once. Never blocks.
    pub fn ready(&mut self) -> bool {
        if self.early.is_none() {
            if let Some((rx, _, _)) = &self.chan {
                self.early = match rx.try_recv() {
                    Ok(got) => Some(got),
                    Err(std::sync::mpsc::TryRecvError::Empty) => None,
                    Err(std::sync::mpsc::TryRecvError::Disconnected) => {
                        Some(Err(Error::internal("the reader thread stopped")))
                    }
                };
            }
        }
        self.early.is_some() || self.chan.is_none()
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
        self.early = None;
        self.next = 0;
    }
}
