//! The host-to-device bandwidth probe: what a copy from pinned memory over PCIe achieves,
//! the floor a streamed layer's copy is compared with (`subspec passes`, through
//! `engine::measure::link_bandwidth`).

use std::ffi::c_void;

use cudarc::driver::{result as cu, sys};

use super::backend::CudaBackend;
use super::context::cu_err;
use super::memory::Pinned;
use crate::error::Result;

impl CudaBackend {
    /// Measures host-to-device bandwidth from pinned memory in bytes per second: the
    /// median of `reps` copies of `bytes`, timed with events on the copy stream.
    pub fn measure_h2d(&self, bytes: usize, reps: usize) -> Result<f64> {
        let inner = &self.inner;
        inner.bind()?;
        let host = Pinned::new(bytes)?;
        let dev = inner.alloc::<u8>(bytes, "the bandwidth probe")?;
        let mut times = Vec::with_capacity(reps);
        // SAFETY: events and copies on our copy stream, between live buffers of `bytes`.
        unsafe {
            let e0 = cu::event::create(sys::CUevent_flags::CU_EVENT_DEFAULT)
                .map_err(|e| cu_err("cuEventCreate", e))?;
            let e1 = cu::event::create(sys::CUevent_flags::CU_EVENT_DEFAULT)
                .map_err(|e| cu_err("cuEventCreate", e))?;
            inner.sync()?;
            for _ in 0..reps.max(1) + 1 {
                cu::event::record(e0, inner.copy).map_err(|e| cu_err("cuEventRecord", e))?;
                sys::cuMemcpyHtoDAsync_v2(
                    dev.addr(),
                    host.ptr() as *const c_void,
                    bytes,
                    inner.copy,
                )
                .result()
                .map_err(|e| cu_err("cuMemcpyHtoDAsync", e))?;
                cu::event::record(e1, inner.copy).map_err(|e| cu_err("cuEventRecord", e))?;
                cu::event::synchronize(e1).map_err(|e| cu_err("cuEventSynchronize", e))?;
                times
                    .push(cu::event::elapsed(e0, e1).map_err(|e| cu_err("cuEventElapsedTime", e))?);
            }
            let _ = cu::event::destroy(e0);
            let _ = cu::event::destroy(e1);
        }
        times.remove(0); // warm-up
        times.sort_by(f32::total_cmp);
        let ms = times[times.len() / 2] as f64;
        Ok(bytes as f64 / (ms * 1e-3))
    }
}
