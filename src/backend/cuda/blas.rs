//! Dense products through cuBLAS (`SUBSPEC_CUDA_GEMM=cublas`, or
//! `CudaBackend::set_cublas_gemm`): `cublasGemmEx` with f32 accumulation and output, the
//! activations rounded to the weight's type first. Faster than our kernels for big batches,
//! but a row's rounding then depends on its batch. cuBLAS is optional: the library is
//! loaded when present and the backend works without it.

use std::ffi::c_void;
use std::sync::{Arc, Mutex};

use cudarc::cublas::sys as blas;
use cudarc::driver::sys;
use half::{bf16, f16};

use super::context::Inner;
use super::memory::{CudaAct, DeviceBuf};
use crate::checkpoint::DType;
use crate::error::{Error, Result};

fn blas_err(what: &str, e: cudarc::cublas::result::CublasError) -> Error {
    Error::internal(format!("cuBLAS {what}: {:?}", e.0))
}

/// A cuBLAS handle queuing on `stream`, or `None` when libcublas cannot be loaded.
pub(super) fn create_handle(stream: sys::CUstream) -> Result<Option<Mutex<blas::cublasHandle_t>>> {
    // SAFETY: only tries to dlopen the library.
    if !unsafe { blas::is_culib_present() } {
        return Ok(None);
    }
    match std::panic::catch_unwind(cudarc::cublas::result::create_handle) {
        Ok(Ok(h)) => {
            // SAFETY: a fresh handle and our stream.
            unsafe { cudarc::cublas::result::set_stream(h, stream as blas::cudaStream_t) }
                .map_err(|e| blas_err("cublasSetStream", e))?;
            Ok(Some(Mutex::new(h)))
        }
        _ => Ok(None),
    }
}

/// `out = x @ w^T` through cuBLAS for the dense `[rows, cols]` weight of type `dtype` at
/// device address `w`.
pub(super) fn gemm(
    inner: &Arc<Inner>,
    x: &CudaAct,
    w: u64,
    rows: usize,
    cols: usize,
    dtype: DType,
    out: &mut CudaAct,
) -> Result<()> {
    let n = x.rows;
    // The activations in the weight's type, for f16/bf16 weights (kept alive until the
    // product is queued; the stream-ordered free waits for it).
    let (a_type, converted): (_, Option<DeviceBuf>) = match dtype {
        DType::Quant(t) => {
            return Err(Error::unsupported(format!(
                "{} weights have no cuBLAS product",
                t.name()
            )))
        }
        DType::F32 => (blas::cudaDataType_t::CUDA_R_32F, None),
        DType::F16 => {
            let mut buf = inner.alloc::<f16>(x.len(), "a converted activation")?;
            // SAFETY: `buf` holds x.len() halves, `x` x.len() floats.
            unsafe {
                inner.kernels.f32_to_f16(
                    inner.elementwise(x.len()),
                    x.ptr(),
                    buf.ptr_mut(),
                    x.len() as i64,
                )
            }?;
            (blas::cudaDataType_t::CUDA_R_16F, Some(buf.into_bytes()))
        }
        DType::BF16 => {
            let mut buf = inner.alloc::<bf16>(x.len(), "a converted activation")?;
            // SAFETY: `buf` holds x.len() bfloat16s, `x` x.len() floats.
            unsafe {
                inner.kernels.f32_to_bf16(
                    inner.elementwise(x.len()),
                    x.ptr(),
                    buf.ptr_mut(),
                    x.len() as i64,
                )
            }?;
            (blas::cudaDataType_t::CUDA_R_16BF, Some(buf.into_bytes()))
        }
    };
    let b_ptr = converted.as_ref().map_or(x.addr(), |b| b.addr());
    let (alpha, beta) = (1.0f32, 0.0f32);
    let h = inner
        .blas
        .as_ref()
        .ok_or_else(|| Error::internal("cuBLAS is not loaded"))?
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    // cuBLAS is column-major: the row-major `out = x @ W^T` ([n, rows]) is the
    // column-major `out^T = W @ x^T` ([rows, n]), where row-major W ([rows, cols]) read
    // column-major is W^T ([cols, rows], hence CUBLAS_OP_T) and row-major x ([n, cols])
    // is x^T ([cols, n]).
    // SAFETY: every buffer holds the elements these dimensions name.
    unsafe {
        cudarc::cublas::result::gemm_ex(
            *h,
            blas::cublasOperation_t::CUBLAS_OP_T,
            blas::cublasOperation_t::CUBLAS_OP_N,
            rows as i32,
            n as i32,
            cols as i32,
            &alpha as *const f32 as *const c_void,
            w as *const c_void,
            a_type,
            cols as i32,
            b_ptr as *const c_void,
            a_type,
            cols as i32,
            &beta as *const f32 as *const c_void,
            out.addr() as *mut c_void,
            blas::cudaDataType_t::CUDA_R_32F,
            rows as i32,
            blas::cublasComputeType_t::CUBLAS_COMPUTE_32F,
            blas::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
        )
    }
    .map_err(|e| blas_err("cublasGemmEx", e))
}
