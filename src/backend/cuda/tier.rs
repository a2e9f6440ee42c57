//! The GPU's slow tier: offloaded layers in pinned host memory, streamed over PCIe into a
//! ring of device staging buffers.
//!
//! Fetches are numbered in order (`seq`), cycling through the offloaded layers pass after
//! pass: fetch `seq` is layer `layers[seq % m]` in staging slot `seq % ring`. The copy of
//! `seq` is queued on the copy stream once the compute that used its slot before (fetch
//! `seq - ring`) is queued and released: the copy stream waits for that compute's event,
//! copies, and records the slot's copy event, which the compute stream waits for at the
//! fetch. The host never blocks on a copy. Releasing the last layers of a pass queues the
//! copies of the next pass's first layers, which then run while the draft grows its tree;
//! and during a pass, while the next layer's copy is in flight and the compute stream has
//! nothing left to run, the draft runs a layer at a time on it ([`CudaTier::ready`]).

use std::ffi::c_void;
use std::sync::Arc;

use cudarc::driver::{result as cu, sys};
use rayon::prelude::*;

use super::context::{cu_err, Inner};
use super::memory::{CudaWeight, DeviceBuf, Pinned};
use crate::checkpoint::names::linear_names;
use crate::checkpoint::{DType, Weights};
use crate::error::{Error, Result};

/// Alignment of each tensor inside a layer's block (bytes).
const ALIGN: usize = 256;

/// One tensor inside a layer's block.
#[derive(Debug, Clone, Copy)]
struct Slot {
    offset: usize,
    rows: usize,
    cols: usize,
    dtype: DType,
}

/// The offloaded layers in pinned memory and the staging ring; see the module docs.
pub struct CudaTier {
    layers: Vec<usize>,
    host: Pinned,
    /// Per offloaded layer: offset of its block in `host` and its length.
    blocks: Vec<(usize, usize)>,
    /// Per offloaded layer: its seven linears inside the block.
    slots: Vec<[Slot; 7]>,
    staging: Vec<DeviceBuf>,
    copied: Vec<sys::CUevent>,
    computed: Vec<sys::CUevent>,
    /// The next fetch.
    next: u64,
    /// Fetches `< queued` have their copy queued.
    queued: u64,
    /// A fetched layer not released yet.
    outstanding: Option<u64>,
    bytes: u64,
    inner: Arc<Inner>,
}

// SAFETY: events are driver handles usable from any thread with the context current.
unsafe impl Send for CudaTier {}

impl CudaTier {
    pub(crate) fn new(
        inner: &Arc<Inner>,
        weights: &Weights,
        layers: &[usize],
        ring: usize,
    ) -> Result<CudaTier> {
        inner.bind()?;
        if layers.is_empty() || ring == 0 {
            return Err(Error::internal(
                "the CUDA tier needs offloaded layers and staging buffers",
            ));
        }
        let mut blocks = Vec::with_capacity(layers.len());
        let mut slots = Vec::with_capacity(layers.len());
        let mut total = 0usize;
        for &l in layers {
            let mut off = 0usize;
            let mut s = Vec::with_capacity(7);
            for name in linear_names(l) {
                let t = weights.get_any(&name)?;
                if t.shape.len() != 2 {
                    return Err(Error::invalid_model(format!(
                        "`{name}` has shape {:?}, expected a matrix",
                        t.shape
                    )));
                }
                s.push(Slot {
                    offset: off,
                    rows: t.shape[0],
                    cols: t.shape[1],
                    dtype: t.dtype,
                });
                off += t.bytes().len().div_ceil(ALIGN) * ALIGN;
            }
            blocks.push((total, off));
            slots.push([s[0], s[1], s[2], s[3], s[4], s[5], s[6]]);
            total += off;
        }
        let mut host = Pinned::new(total)?;
        // Fill the pinned copy from the checkpoint, tensors in parallel.
        let mut jobs: Vec<(&mut [u8], String)> = Vec::new();
        let mut rest = host.as_mut_slice();
        for (i, &l) in layers.iter().enumerate() {
            let names = linear_names(l);
            for (j, name) in names.into_iter().enumerate() {
                let end = if j + 1 < 7 {
                    slots[i][j + 1].offset
                } else {
                    blocks[i].1
                };
                let (head, tail) = rest.split_at_mut(end - slots[i][j].offset);
                jobs.push((head, name));
                rest = tail;
            }
        }
        jobs.into_par_iter()
            .try_for_each(|(dst, name)| -> Result<()> {
                let t = weights.get_any(&name)?;
                let b = t.bytes();
                dst[..b.len()].copy_from_slice(b);
                Ok(())
            })?;
        let max_block = blocks.iter().map(|b| b.1).max().unwrap_or(0);
        let staging = (0..ring)
            .map(|_| inner.alloc::<u8>(max_block, "a staging buffer"))
            .collect::<Result<Vec<_>>>()?;
        let event = || {
            cu::event::create(sys::CUevent_flags::CU_EVENT_DISABLE_TIMING)
                .map_err(|e| cu_err("cuEventCreate", e))
        };
        let copied = (0..ring).map(|_| event()).collect::<Result<Vec<_>>>()?;
        let computed = (0..ring).map(|_| event()).collect::<Result<Vec<_>>>()?;
        let mut tier = CudaTier {
            layers: layers.to_vec(),
            host,
            blocks,
            slots,
            staging,
            copied,
            computed,
            next: 0,
            queued: 0,
            outstanding: None,
            bytes: 0,
            inner: inner.clone(),
        };
        // The weights must be on the device side of the copy stream before it reads them:
        // the staging buffers were allocated on the compute stream.
        inner.sync()?;
        tier.fill_ring()?;
        Ok(tier)
    }

    /// Bytes copied to the device so far.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    fn ring(&self) -> u64 {
        self.staging.len() as u64
    }

    /// Queues the copy of fetch `seq`.
    fn queue(&mut self, seq: u64) -> Result<()> {
        let inner = &self.inner;
        let slot = (seq % self.ring()) as usize;
        let j = (seq % self.layers.len() as u64) as usize;
        let (off, len) = self.blocks[j];
        // SAFETY: the host block and the staging slot each hold `len` bytes; the copy waits
        // for the compute that last read the slot.
        unsafe {
            cu::stream::wait_event(
                inner.copy,
                self.computed[slot],
                sys::CUevent_wait_flags::CU_EVENT_WAIT_DEFAULT,
            )
            .map_err(|e| cu_err("cuStreamWaitEvent", e))?;
            sys::cuMemcpyHtoDAsync_v2(
                self.staging[slot].addr(),
                self.host.ptr().add(off) as *const c_void,
                len,
                inner.copy,
            )
            .result()
            .map_err(|e| cu_err("cuMemcpyHtoDAsync (streaming a layer)", e))?;
            cu::event::record(self.copied[slot], inner.copy)
                .map_err(|e| cu_err("cuEventRecord", e))?;
        }
        self.bytes += len as u64;
        Ok(())
    }

    /// Queues copies until `ring` fetches ahead of the next one are in flight.
    fn fill_ring(&mut self) -> Result<()> {
        while self.queued < self.next + self.ring() {
            self.queue(self.queued)?;
            self.queued += 1;
        }
        Ok(())
    }

    pub(crate) fn begin(&mut self, inner: &Inner) -> Result<()> {
        inner.bind()?;
        let m = self.layers.len() as u64;
        if self.outstanding.is_none() && self.next.is_multiple_of(m) {
            return Ok(());
        }
        // A pass failed midway: drain both streams and restart the ring at the first layer.
        inner.sync()?;
        // SAFETY: our copy stream.
        unsafe { cu::stream::synchronize(inner.copy) }
            .map_err(|e| cu_err("cuStreamSynchronize", e))?;
        self.outstanding = None;
        let skip = self.next.div_ceil(m) * m;
        // Copies queued for fetches before `skip` are complete; start the ring afresh.
        self.next = skip;
        self.queued = self.queued.max(skip);
        self.fill_ring()
    }

    pub(crate) fn fetch(&mut self, inner: &Inner, layer: usize) -> Result<(u64, Vec<CudaWeight>)> {
        inner.bind()?;
        let m = self.layers.len() as u64;
        let j = (self.next % m) as usize;
        if self.outstanding.is_some() || self.layers[j] != layer {
            return Err(Error::internal(format!(
                "streamed layer {layer} fetched out of order (expected layer {})",
                self.layers[j]
            )));
        }
        let seq = self.next;
        self.fill_ring()?;
        let slot = (seq % self.ring()) as usize;
        // SAFETY: our compute stream waits for the slot's copy.
        unsafe {
            cu::stream::wait_event(
                inner.stream,
                self.copied[slot],
                sys::CUevent_wait_flags::CU_EVENT_WAIT_DEFAULT,
            )
        }
        .map_err(|e| cu_err("cuStreamWaitEvent", e))?;
        let base = self.staging[slot].addr();
        let w = self.slots[j]
            .iter()
            .map(|s| CudaWeight::Dense {
                buf: None,
                ptr: base + s.offset as u64,
                rows: s.rows,
                cols: s.cols,
                dtype: s.dtype,
            })
            .collect();
        self.outstanding = Some(seq);
        self.next += 1;
        Ok((seq, w))
    }

    /// Whether the target pass should fetch its next layer now, rather than queue more of
    /// the draft (see `Backend::tier_ready`): `true` once that layer's copy is done, `false`
    /// while it is in flight and the compute stream has drained (the GPU would idle). While
    /// the stream still runs earlier work (the last layer, or the draft layer queued last)
    /// and the copy is in flight, waits for one of the two, polling: work queued behind the
    /// stream's then would delay the layer when it lands, so at most one draft layer is
    /// ever queued ahead of it. Anything unexpected answers `true`, and the fetch reports
    /// what went wrong.
    pub(crate) fn ready(&self, inner: &Inner) -> bool {
        if self.outstanding.is_some() || self.queued <= self.next || inner.bind().is_err() {
            return true;
        }
        let copied = self.copied[(self.next % self.ring()) as usize];
        loop {
            // SAFETY: our event and our compute stream, with the context current.
            let (copy, compute) =
                unsafe { (sys::cuEventQuery(copied), sys::cuStreamQuery(inner.stream)) };
            match (copy, compute) {
                (sys::CUresult::CUDA_ERROR_NOT_READY, sys::CUresult::CUDA_SUCCESS) => return false,
                (sys::CUresult::CUDA_ERROR_NOT_READY, sys::CUresult::CUDA_ERROR_NOT_READY) => {
                    std::thread::yield_now()
                }
                _ => return true,
            }
        }
    }

    pub(crate) fn release(&mut self, inner: &Inner, seq: u64) -> Result<()> {
        inner.bind()?;
        if self.outstanding != Some(seq) {
            return Err(Error::internal(
                "releasing a streamed layer that is not fetched",
            ));
        }
        let slot = (seq % self.ring()) as usize;
        // SAFETY: our compute stream; the event marks the end of the slot's use.
        unsafe { cu::event::record(self.computed[slot], inner.stream) }
            .map_err(|e| cu_err("cuEventRecord", e))?;
        self.outstanding = None;
        self.fill_ring()
    }
}

impl Drop for CudaTier {
    fn drop(&mut self) {
        // SAFETY: wait for the copies reading `host`, then destroy our events.
        unsafe {
            let _ = cu::ctx::set_current(self.inner.ctx);
            let _ = cu::stream::synchronize(self.inner.copy);
            let _ = cu::stream::synchronize(self.inner.stream);
            for &e in self.copied.iter().chain(&self.computed) {
                let _ = cu::event::destroy(e);
            }
        }
    }
}
