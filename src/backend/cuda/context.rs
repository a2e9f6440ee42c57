//! Opening a device: whether a driver is present at all, the device's primary context with
//! its two streams and the loaded kernels, the shared state every device buffer keeps alive
//! ([`Inner`]), and driver errors as the crate's errors.

use std::ffi::c_void;
use std::sync::atomic::AtomicBool;
use std::sync::Mutex;

use cudarc::cublas::sys as blas;
use cudarc::driver::{result as cu, sys};

use super::kernels::Kernels;
use super::launch::{self, Launch};
use super::memory::{MemAccount, Pinned};
use crate::error::{Error, ErrorKind, Result};

/// Whether a CUDA driver library can be loaded on this machine (no device is touched).
pub fn driver_present() -> bool {
    // SAFETY: only tries to dlopen the library.
    unsafe { sys::is_culib_present() }
}

/// A driver error as the crate's error: `OutOfMemory` for the driver's out-of-memory,
/// `Internal` for anything else, named by the driver.
pub(crate) fn cu_err(what: &str, e: cu::DriverError) -> Error {
    let kind = if e.0 == sys::cudaError_enum::CUDA_ERROR_OUT_OF_MEMORY {
        ErrorKind::OutOfMemory
    } else {
        ErrorKind::Internal
    };
    let name = e
        .error_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|_| format!("{:?}", e.0));
    Error::new(kind, format!("CUDA {what}: {name}"))
}

/// Shared state of a CUDA backend; every device buffer holds an `Arc` of it.
pub(crate) struct Inner {
    pub(super) ordinal: usize,
    pub(super) device: sys::CUdevice,
    pub(super) ctx: sys::CUcontext,
    /// The compute stream: every kernel and cuBLAS call.
    pub(super) stream: sys::CUstream,
    /// The copy stream of the slow tier.
    pub(super) copy: sys::CUstream,
    pub(super) module: sys::CUmodule,
    /// Every kernel of `module`, with its typed launch.
    pub(super) kernels: Kernels,
    /// cuBLAS, when the library could be loaded (only needed for `SUBSPEC_CUDA_GEMM=cublas`).
    pub(super) blas: Option<Mutex<blas::cublasHandle_t>>,
    pub(super) mem: MemAccount,
    pub(super) name: String,
    /// Dense products through cuBLAS (faster for big batches, not batch-invariant)
    /// instead of our batch-invariant kernels.
    pub(super) cublas_gemm: AtomicBool,
    /// Pinned host memory that large reads to the host (a tree's logits) land in first,
    /// grown to the largest read so far (see `CudaBackend::to_host`).
    pub(super) read_stage: Mutex<Option<Pinned>>,
}

// SAFETY: driver handles (context, streams, functions) may be used from any thread once the
// context is made current there (`bind`); the cuBLAS handle is behind a mutex.
unsafe impl Send for Inner {}
// SAFETY: as above.
unsafe impl Sync for Inner {}

impl Inner {
    /// Opens device `ordinal` (see `CudaBackend::new`): retains its primary context,
    /// creates the compute and copy streams, loads the kernels, loads cuBLAS if present and
    /// sets the memory limit.
    pub(super) fn open(ordinal: usize, limit: Option<u64>) -> Result<Inner> {
        let unavailable = |why: String| {
            Error::new(
                ErrorKind::DeviceUnavailable,
                format!("cuda:{ordinal}: {why}"),
            )
        };
        if !driver_present() {
            return Err(unavailable(
                "no CUDA driver found (libcuda.so could not be loaded)".into(),
            ));
        }
        // cudarc panics when a symbol is missing from an old driver: keep that an error.
        let opened = std::panic::catch_unwind(|| -> std::result::Result<_, String> {
            cu::init().map_err(|e| format!("cuInit: {e:?}"))?;
            let count = cu::device::get_count().map_err(|e| format!("{e:?}"))?;
            if ordinal as i32 >= count {
                return Err(format!("no such device ({count} CUDA devices found)"));
            }
            let device = cu::device::get(ordinal as i32).map_err(|e| format!("{e:?}"))?;
            // SAFETY: a device handle from the driver.
            let ctx = unsafe { cu::primary_ctx::retain(device) }.map_err(|e| format!("{e:?}"))?;
            Ok((device, ctx))
        });
        let (device, ctx) = match opened {
            Ok(Ok(v)) => v,
            Ok(Err(why)) => return Err(unavailable(why)),
            Err(_) => {
                return Err(unavailable(
                    "the CUDA driver could not be initialised".into(),
                ))
            }
        };
        // SAFETY: the retained primary context.
        unsafe { cu::ctx::set_current(ctx) }.map_err(|e| cu_err("cuCtxSetCurrent", e))?;
        let name = cu::device::get_name(device).unwrap_or_else(|_| "unknown".into());
        // SAFETY: plain driver calls (streams, the module, a pool attribute) on the context
        // made current just above.
        let (stream, copy, (module, kernels)) = unsafe {
            let stream = cu::stream::create(cu::stream::StreamKind::NonBlocking)
                .map_err(|e| cu_err("cuStreamCreate", e))?;
            let copy = cu::stream::create(cu::stream::StreamKind::NonBlocking)
                .map_err(|e| cu_err("cuStreamCreate", e))?;
            let loaded = launch::load_module()?;
            // Keep freed stream-ordered memory in the pool instead of returning it at
            // every synchronisation.
            let mut pool = std::mem::MaybeUninit::uninit();
            if sys::cuDeviceGetDefaultMemPool(pool.as_mut_ptr(), device)
                == sys::cudaError_enum::CUDA_SUCCESS
            {
                let mut threshold: u64 = u64::MAX;
                let _ = sys::cuMemPoolSetAttribute(
                    pool.assume_init(),
                    sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD,
                    &mut threshold as *mut u64 as *mut c_void,
                );
            }
            (stream, copy, loaded)
        };
        let blas = super::blas::create_handle(stream)?;
        let (free, _total) = cu::mem_get_info().map_err(|e| cu_err("cuMemGetInfo", e))?;
        let limit = match limit {
            Some(l) if l > free as u64 => {
                return Err(Error::new(
                    ErrorKind::OutOfMemory,
                    format!(
                        "cuda:{ordinal}: the budget of {} exceeds the {} free on {name}",
                        crate::util::human(l),
                        crate::util::human(free as u64)
                    ),
                ))
            }
            Some(l) => l,
            None => free as u64 / 20 * 19,
        };
        Ok(Inner {
            ordinal,
            device,
            ctx,
            stream,
            copy,
            module,
            kernels,
            blas,
            mem: MemAccount::new(limit),
            name,
            cublas_gemm: AtomicBool::new(false),
            read_stage: Mutex::new(None),
        })
    }

    /// Makes the context current on the calling thread.
    pub(super) fn bind(&self) -> Result<()> {
        // SAFETY: the context is retained for the life of `Inner`.
        unsafe { cu::ctx::set_current(self.ctx) }.map_err(|e| cu_err("cuCtxSetCurrent", e))
    }

    /// Waits for everything queued on the compute stream.
    pub(super) fn sync(&self) -> Result<()> {
        // SAFETY: our stream.
        unsafe { cu::stream::synchronize(self.stream) }
            .map_err(|e| cu_err("cuStreamSynchronize", e))
    }

    /// A launch of `grid` blocks of `block` threads on the compute stream.
    pub(super) fn launch(&self, grid: (u32, u32, u32), block: u32) -> Launch {
        Launch::new(self.stream, grid, block)
    }

    /// A grid-stride element-wise launch over `n` values on the compute stream.
    pub(super) fn elementwise(&self, n: usize) -> Launch {
        Launch::elementwise(self.stream, n)
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // SAFETY: everything below was created by `Inner::open` and is released once.
        unsafe {
            let _ = cu::ctx::set_current(self.ctx);
            let _ = cu::stream::synchronize(self.stream);
            let _ = cu::stream::synchronize(self.copy);
            // Freed while the context is still held.
            drop(self.read_stage.get_mut().map(Option::take));
            if let Some(Ok(h)) = self.blas.as_ref().map(|b| b.lock()) {
                let _ = blas::cublasDestroy_v2(*h);
            }
            let _ = cu::module::unload(self.module);
            let _ = cu::stream::destroy(self.stream);
            let _ = cu::stream::destroy(self.copy);
            let _ = cu::primary_ctx::release(self.device);
        }
    }
}
