//! Device and pinned host memory: the budget every device allocation is counted against
//! ([`MemAccount`]), device buffers typed by their element ([`DeviceBuf`], whose `ptr()` is
//! the typed pointer a kernel launch takes), page-locked host memory ([`Pinned`]), uploads,
//! and what the backend keeps on the device: weights ([`CudaWeight`]), activations
//! ([`CudaAct`]) and KV caches ([`CudaKv`]).

use std::ffi::c_void;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use cudarc::driver::{result as cu, sys};
use half::f16;

use super::context::{cu_err, Inner};
use super::launch::{DevPtr, DevPtrMut};
use crate::checkpoint::{DType, HostTensor};
use crate::error::{Error, ErrorKind, Result};

/// Bytes of device memory in use against a limit (the engine's budget).
#[derive(Debug)]
pub(crate) struct MemAccount {
    limit: u64,
    used: AtomicU64,
    peak: AtomicU64,
}

impl MemAccount {
    /// Nothing in use yet, at most `limit` bytes.
    pub(super) fn new(limit: u64) -> MemAccount {
        MemAccount {
            limit,
            used: AtomicU64::new(0),
            peak: AtomicU64::new(0),
        }
    }

    /// Counts `bytes` more for `what`, or fails with `OutOfMemory` past the limit.
    fn take(&self, bytes: u64, what: &str) -> Result<()> {
        let mut cur = self.used.load(Ordering::Relaxed);
        loop {
            let next = cur + bytes;
            if next > self.limit {
                return Err(Error::new(
                    ErrorKind::OutOfMemory,
                    format!(
                        "allocating {} for {what} would exceed the device memory budget: {} of {} in use",
                        crate::util::human(bytes),
                        crate::util::human(cur),
                        crate::util::human(self.limit)
                    ),
                ));
            }
            match self
                .used
                .compare_exchange_weak(cur, next, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => {
                    self.peak.fetch_max(next, Ordering::Relaxed);
                    return Ok(());
                }
                Err(c) => cur = c,
            }
        }
    }

    fn give(&self, bytes: u64) {
        self.used.fetch_sub(bytes, Ordering::Relaxed);
    }

    /// Bytes in use, the most ever in use, and the limit.
    pub(super) fn snapshot(&self) -> (u64, u64, u64) {
        (
            self.used.load(Ordering::Relaxed),
            self.peak.load(Ordering::Relaxed),
            self.limit,
        )
    }
}

/// One device allocation, freed (stream-ordered) on drop and returned to the account.
struct Allocation {
    ptr: sys::CUdeviceptr,
    bytes: usize,
    inner: Arc<Inner>,
}

impl Drop for Allocation {
    fn drop(&mut self) {
        // SAFETY: allocated by `Inner::alloc`; work queued before on the stream that reads
        // it completes before the stream-ordered free.
        unsafe {
            let _ = cu::ctx::set_current(self.inner.ctx);
            let _ = cu::free_async(self.ptr, self.inner.stream);
        }
        self.inner.mem.give(self.bytes as u64);
    }
}

/// Device memory holding `T`s (`u8`: bytes of a type known only at run time), freed
/// (stream-ordered) on drop and returned to the account.
pub struct DeviceBuf<T = u8> {
    alloc: Allocation,
    _elem: PhantomData<fn() -> T>,
}

impl<T> DeviceBuf<T> {
    /// The device address.
    pub(crate) fn addr(&self) -> u64 {
        self.alloc.ptr
    }

    /// The memory as a kernel's read-only parameter.
    pub(crate) fn ptr(&self) -> DevPtr<T> {
        DevPtr::from_addr(self.alloc.ptr)
    }

    /// The memory as a kernel's written parameter.
    pub(crate) fn ptr_mut(&mut self) -> DevPtrMut<T> {
        DevPtrMut::from_addr(self.alloc.ptr)
    }

    /// The same memory as plain bytes (to keep it alive without its element type).
    pub(super) fn into_bytes(self) -> DeviceBuf {
        self.retype()
    }

    /// The same memory holding `U`s (for an upload of `U`s as bytes).
    fn retype<U>(self) -> DeviceBuf<U> {
        DeviceBuf {
            alloc: self.alloc,
            _elem: PhantomData,
        }
    }
}

/// The element types uploaded from the host, with their encoding on the device.
pub(crate) trait Element: Copy {
    /// Appends the value's little-endian bytes.
    fn extend_le(&self, out: &mut Vec<u8>);
}

impl Element for u32 {
    fn extend_le(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.to_le_bytes());
    }
}
impl Element for f32 {
    fn extend_le(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.to_le_bytes());
    }
}
impl Element for f16 {
    fn extend_le(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.to_le_bytes());
    }
}

impl Inner {
    /// Device memory for `len` `T`s (at least one byte), counted against the budget.
    pub(super) fn alloc<T>(self: &Arc<Self>, len: usize, what: &str) -> Result<DeviceBuf<T>> {
        let n = (len * std::mem::size_of::<T>()).max(1);
        self.mem.take(n as u64, what)?;
        // SAFETY: a plain stream-ordered allocation on our stream.
        match unsafe { cu::malloc_async(self.stream, n) } {
            Ok(ptr) => Ok(DeviceBuf {
                alloc: Allocation {
                    ptr,
                    bytes: n,
                    inner: self.clone(),
                },
                _elem: PhantomData,
            }),
            Err(e) => {
                self.mem.give(n as u64);
                Err(cu_err(&format!("allocating {n} bytes for {what}"), e))
            }
        }
    }

    /// A copy of `bytes` on the device (queued on the compute stream).
    pub(super) fn upload_bytes(self: &Arc<Self>, bytes: &[u8], what: &str) -> Result<DeviceBuf> {
        let buf = self.alloc::<u8>(bytes.len(), what)?;
        // SAFETY: `buf` holds `bytes.len()` bytes; pageable sources are staged by the driver
        // before the call returns.
        unsafe { cu::memcpy_htod_async(buf.addr(), bytes, self.stream) }
            .map_err(|e| cu_err("cuMemcpyHtoDAsync", e))?;
        Ok(buf)
    }

    /// A copy of `v` on the device, little-endian (queued on the compute stream).
    pub(super) fn upload<T: Element>(
        self: &Arc<Self>,
        v: &[T],
        what: &str,
    ) -> Result<DeviceBuf<T>> {
        let mut bytes = Vec::with_capacity(std::mem::size_of_val(v));
        for x in v {
            x.extend_le(&mut bytes);
        }
        Ok(self.upload_bytes(&bytes, what)?.retype())
    }
}

/// Page-locked host memory (`cuMemHostAlloc`).
pub(crate) struct Pinned {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: plain memory owned by this value.
unsafe impl Send for Pinned {}
// SAFETY: as above; `&Pinned` gives out only the address.
unsafe impl Sync for Pinned {}

impl Pinned {
    /// Allocates `len` bytes (the context must be current).
    pub(crate) fn new(len: usize) -> Result<Pinned> {
        // SAFETY: a plain allocation; freed in Drop.
        let ptr = unsafe { cu::malloc_host(len.max(1), 0) }
            .map_err(|e| cu_err(&format!("allocating {len} bytes of pinned host memory"), e))?;
        Ok(Pinned {
            ptr: ptr as *mut u8,
            len,
        })
    }

    /// The host address.
    pub(crate) fn ptr(&self) -> *mut u8 {
        self.ptr
    }

    /// Its size in bytes.
    pub(crate) fn bytes(&self) -> usize {
        self.len
    }

    /// The memory, to fill.
    pub(crate) fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: `len` bytes owned by self.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
}

impl Drop for Pinned {
    fn drop(&mut self) {
        // SAFETY: allocated by cuMemHostAlloc.
        unsafe {
            let _ = cu::free_host(self.ptr as *mut c_void);
        }
    }
}

/// A weight on the GPU.
pub enum CudaWeight {
    /// A full-precision matrix `[rows, cols]` in its checkpoint dtype; `buf` is `None` for
    /// a view into a staging buffer of the slow tier.
    Dense {
        /// Owned memory, or `None` for a view.
        buf: Option<DeviceBuf>,
        /// Device address.
        ptr: u64,
        /// Output features.
        rows: usize,
        /// Input features.
        cols: usize,
        /// Element type.
        dtype: DType,
    },
    /// A norm or bias in f32.
    Vector(DeviceBuf<f32>, usize),
    /// A quantized substitute (codes and f16 `(scale, min)` params, as `QMatrix`).
    Quant {
        /// Codes plane.
        codes: DeviceBuf<u8>,
        /// Params plane.
        params: DeviceBuf<f16>,
        /// Output features.
        rows: usize,
        /// Input features.
        cols: usize,
        /// Bits per code.
        bits: u8,
        /// Group size.
        group: usize,
    },
    /// A matrix kept in host memory, read a row at a time (the untied embedding).
    Host(HostTensor),
}

/// A row-major `[rows, cols]` f32 activation matrix in device memory.
pub struct CudaAct {
    pub(super) buf: DeviceBuf<f32>,
    /// Rows (tokens).
    pub rows: usize,
    /// Columns.
    pub cols: usize,
}

impl CudaAct {
    /// Its values as a kernel's read-only parameter.
    pub(super) fn ptr(&self) -> DevPtr<f32> {
        self.buf.ptr()
    }
    /// Its values as a kernel's written parameter.
    pub(super) fn ptr_mut(&mut self) -> DevPtrMut<f32> {
        self.buf.ptr_mut()
    }
    /// The device address.
    pub(super) fn addr(&self) -> u64 {
        self.buf.addr()
    }
    /// Values (rows x cols).
    pub(super) fn len(&self) -> usize {
        self.rows * self.cols
    }
}

/// The KV cache of one sequence: `[layers][2][capacity][kv_dim]` f32.
pub struct CudaKv {
    pub(super) buf: DeviceBuf<f32>,
    pub(super) layers: usize,
    pub(super) kv_dim: usize,
    pub(super) capacity: usize,
}
