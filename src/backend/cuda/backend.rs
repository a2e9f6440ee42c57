//! [`CudaBackend`] and its [`Backend`] implementation: each leaf operation checks its
//! operands' shapes on the host, uploads the small index arrays it needs, and queues one or
//! two typed kernel launches (kernels.rs) on the compute stream, with the launch shape each
//! kernel's comment in `kernels/subspec.cu` states.

use std::ffi::c_void;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use cudarc::driver::{result as cu, sys};
use rayon::prelude::*;

use super::blas;
use super::context::{cu_err, Inner};
use super::kernels::{
    Kernels, ATT_MAX_PER_LANE, ATT_WARPS, DN_TILE, MM_ROWS, MM_WARPS, QL_TILE, QL_WARPS,
};
use super::launch::DevPtr;
use super::memory::{CudaAct, CudaKv, CudaWeight, Pinned};
use super::tier::CudaTier;
use crate::backend::{AttnMask, AttnShape, Backend, KvDtype, TierStats};
use crate::checkpoint::{DType, GgmlType, HostTensor, Weights};
use crate::error::{Error, ErrorKind, Result};
use crate::quant::QMatrix;

/// Largest head width the attention kernel supports (each lane keeps `ATT_MAX_PER_LANE`
/// values of a head).
/// Reads to the host of at least this many bytes go through pinned memory.
const PINNED_READ_MIN: usize = 1 << 20;

const ATT_MAX_HEAD_DIM: usize = 32 * ATT_MAX_PER_LANE as usize;

/// The CUDA backend on one device.
#[derive(Clone)]
pub struct CudaBackend {
    pub(super) inner: Arc<Inner>,
}

impl CudaBackend {
    /// Opens CUDA device `ordinal` with a device-memory limit of `limit` bytes (`None`: the
    /// memory free on the device now, less 5%). Fails with `DeviceUnavailable` when there is
    /// no driver or no such device. Only the driver is needed: cuBLAS is loaded if present
    /// (for [`CudaBackend::set_cublas_gemm`]).
    pub fn new(ordinal: usize, limit: Option<u64>) -> Result<CudaBackend> {
        let backend = CudaBackend {
            inner: Arc::new(Inner::open(ordinal, limit)?),
        };
        if std::env::var("SUBSPEC_CUDA_GEMM").is_ok_and(|v| v == "cublas") {
            backend.set_cublas_gemm(true)?;
        }
        Ok(backend)
    }

    /// Sends dense products to cuBLAS (`true`: faster for large batches, but a token's
    /// rounding then depends on its batch, so speculative output may differ from plain
    /// output in near-ties) or to our batch-invariant kernels (`false`, the default).
    pub fn set_cublas_gemm(&self, on: bool) -> Result<()> {
        if on && self.inner.blas.is_none() {
            return Err(Error::new(
                ErrorKind::DeviceUnavailable,
                format!(
                    "cuda:{}: cuBLAS requested but libcublas could not be loaded",
                    self.inner.ordinal
                ),
            ));
        }
        self.inner.cublas_gemm.store(on, Ordering::Relaxed);
        Ok(())
    }

    /// Whether dense products go to cuBLAS.
    pub fn cublas_gemm(&self) -> bool {
        self.inner.cublas_gemm.load(Ordering::Relaxed)
    }

    /// The device's name (e.g. "NVIDIA H200").
    pub fn device_name(&self) -> &str {
        &self.inner.name
    }

    /// Device bytes in use, the most ever in use, and the limit.
    pub fn memory(&self) -> (u64, u64, u64) {
        self.inner.mem.snapshot()
    }

    /// Waits for all queued work.
    pub fn synchronize(&self) -> Result<()> {
        self.inner.bind()?;
        self.inner.sync()
    }

    fn check_act(a: &CudaAct, rows: usize, cols: usize, what: &str) -> Result<()> {
        if a.rows != rows || a.cols != cols {
            return Err(Error::internal(format!(
                "{what}: expected a {rows}x{cols} activation, got {}x{}",
                a.rows, a.cols
            )));
        }
        Ok(())
    }
}

impl Backend for CudaBackend {
    type Weight = CudaWeight;
    type Act = CudaAct;
    type Kv = CudaKv;
    type Tier = CudaTier;
    type Ticket = u64;

    fn name(&self) -> String {
        format!("cuda:{}", self.inner.ordinal)
    }

    fn upload(&self, t: &HostTensor) -> Result<CudaWeight> {
        let inner = &self.inner;
        inner.bind()?;
        match t.shape.len() {
            1 => Ok(CudaWeight::Vector(
                inner.upload(&t.to_f32_vec(), &t.name)?,
                t.numel(),
            )),
            2 => {
                let buf = inner.upload_bytes(t.bytes(), &t.name)?;
                Ok(CudaWeight::Dense {
                    ptr: buf.addr(),
                    buf: Some(buf),
                    rows: t.shape[0],
                    cols: t.shape[1],
                    dtype: t.dtype,
                })
            }
            _ => Err(Error::invalid_model(format!(
                "tensor `{}` has shape {:?}: expected a vector or a matrix",
                t.name, t.shape
            ))),
        }
    }

    fn host_matrix(&self, t: &HostTensor) -> Result<CudaWeight> {
        Ok(CudaWeight::Host(t.clone()))
    }

    fn weight_rows(&self, w: &CudaWeight, rows: usize) -> Result<CudaWeight> {
        match *w {
            // rows are whole blocks, so the first `rows` start where the matrix does
            CudaWeight::Dense {
                ptr,
                rows: n,
                cols,
                dtype,
                ..
            } if rows <= n => Ok(CudaWeight::Dense {
                buf: None,
                ptr,
                rows,
                cols,
                dtype,
            }),
            _ => Err(Error::internal(format!(
                "weight_rows({rows}) of a weight that is not a device matrix of as many rows"
            ))),
        }
    }

    fn weight_row_range(&self, w: &CudaWeight, start: usize, rows: usize) -> Result<CudaWeight> {
        if let CudaWeight::Dense {
            ptr,
            rows: n,
            cols,
            dtype,
            ..
        } = *w
        {
            // The kernels' wide loads want the view as aligned as an allocation's rows.
            let at = dtype.bytes_for(cols).and_then(|b| b.checked_mul(start));
            if let Some(at) = at.filter(|&at| at % 256 == 0 && start + rows <= n) {
                return Ok(CudaWeight::Dense {
                    buf: None,
                    ptr: ptr + at as u64,
                    rows,
                    cols,
                    dtype,
                });
            }
        }
        Err(Error::internal(format!(
            "weight_row_range({start}, {rows}) of a weight that is not a device matrix of as many rows starting 256-byte aligned"
        )))
    }

    fn upload_quant(&self, q: QMatrix) -> Result<CudaWeight> {
        let inner = &self.inner;
        inner.bind()?;
        if !q.cols.is_multiple_of(32) || !q.cols.is_multiple_of(q.group) {
            return Err(Error::unsupported(format!(
                "a {}x{} substitute: the CUDA kernels need columns in multiples of 32 and of the group",
                q.rows, q.cols
            )));
        }
        Ok(CudaWeight::Quant {
            codes: inner.upload_bytes(&q.codes, "substitute codes")?,
            params: inner.upload(&q.params, "substitute params")?,
            rows: q.rows,
            cols: q.cols,
            bits: q.bits,
            group: q.group,
        })
    }

    fn act(&self, rows: usize, cols: usize) -> Result<CudaAct> {
        self.inner.bind()?;
        Ok(CudaAct {
            buf: self.inner.alloc::<f32>(rows * cols, "activations")?,
            rows,
            cols,
        })
    }

    fn reshape(&self, x: &mut CudaAct, rows: usize, cols: usize) -> Result<()> {
        if rows * cols != x.rows * x.cols {
            return Err(Error::internal(format!(
                "reshape of {}x{} to {rows}x{cols}",
                x.rows, x.cols
            )));
        }
        (x.rows, x.cols) = (rows, cols);
        Ok(())
    }

    fn to_host(&self, x: &CudaAct) -> Result<Vec<f32>> {
        let inner = &self.inner;
        inner.bind()?;
        let mut out = vec![0f32; x.len()];
        let bytes = x.len() * 4;
        if bytes < PINNED_READ_MIN {
            super::profile::around(inner.stream, "to_host (copy)", || {
                // SAFETY: `out` holds `x.len()` floats; the stream is synchronised before use.
                unsafe { cu::memcpy_dtoh_async(&mut out, x.addr(), inner.stream) }
                    .map_err(|e| cu_err("cuMemcpyDtoHAsync", e))?;
                inner.sync()
            })?;
            return Ok(out);
        }
        // A large read (a verified tree's logits: 289 rows of 152k floats are 176 MB) is
        // ~10x slower straight into pageable memory: it lands in pinned memory at full
        // PCIe speed and is copied out by every core.
        let mut stage = inner.read_stage.lock().unwrap_or_else(|e| e.into_inner());
        if stage.as_ref().is_none_or(|p| p.bytes() < bytes) {
            *stage = None;
            *stage = Some(Pinned::new(bytes)?);
        }
        let pinned = stage.as_ref().expect("allocated above");
        super::profile::around(inner.stream, "to_host (pinned copy)", || {
            // SAFETY: the pinned buffer holds at least `bytes`; the stream is synchronised
            // before it is read.
            unsafe {
                sys::cuMemcpyDtoHAsync_v2(
                    pinned.ptr() as *mut c_void,
                    x.addr(),
                    bytes,
                    inner.stream,
                )
            }
            .result()
            .map_err(|e| cu_err("cuMemcpyDtoHAsync", e))?;
            inner.sync()
        })?;
        // SAFETY: the copy above wrote `x.len()` floats there and has completed.
        let src = unsafe { std::slice::from_raw_parts(pinned.ptr() as *const f32, x.len()) };
        out.par_chunks_mut(1 << 16)
            .zip(src.par_chunks(1 << 16))
            .for_each(|(d, s)| d.copy_from_slice(s));
        Ok(out)
    }

    fn embed(&self, table: &CudaWeight, ids: &[u32], out: &mut CudaAct) -> Result<()> {
        let inner = &self.inner;
        inner.bind()?;
        match table {
            CudaWeight::Host(t) => {
                let cols = t.shape[1];
                Self::check_act(out, ids.len(), cols, "embed")?;
                if ids.iter().any(|&id| id as usize >= t.shape[0]) {
                    return Err(Error::internal("embed: a token id is outside the table"));
                }
                let mut row = vec![0f32; cols];
                let mut rows = Vec::with_capacity(ids.len() * cols * 4);
                for &id in ids {
                    t.row_f32(id as usize, &mut row);
                    rows.extend(row.iter().flat_map(|v| v.to_le_bytes()));
                }
                super::profile::around(inner.stream, "embed (host rows copy)", || {
                    // SAFETY: `out` holds ids.len() * cols floats.
                    unsafe { cu::memcpy_htod_async(out.addr(), &rows, inner.stream) }
                        .map_err(|e| cu_err("cuMemcpyHtoDAsync", e))
                })
            }
            CudaWeight::Dense {
                ptr,
                rows,
                cols,
                dtype,
                ..
            } => {
                Self::check_act(out, ids.len(), *cols, "embed")?;
                if ids.iter().any(|&id| id as usize >= *rows) {
                    return Err(Error::internal("embed: a token id is outside the table"));
                }
                let d_ids = inner.upload(ids, "token ids")?;
                let at = inner.launch((ids.len() as u32, 1, 1), 256);
                let (t, ids, out, hidden) = (*ptr, d_ids.ptr(), out.ptr_mut(), *cols as i32);
                let k = &inner.kernels;
                // SAFETY: the table holds `rows` rows of `cols` values of `dtype` (whole
                // blocks for a GGUF block type) and every id is below `rows`; `out` holds
                // ids.len() rows of `cols` (checked above).
                unsafe {
                    match dtype {
                        DType::F32 => k.embed_f32(at, DevPtr::from_addr(t), ids, out, hidden),
                        DType::F16 => k.embed_f16(at, DevPtr::from_addr(t), ids, out, hidden),
                        DType::BF16 => k.embed_bf16(at, DevPtr::from_addr(t), ids, out, hidden),
                        DType::Quant(q) => {
                            let t = DevPtr::from_addr(t);
                            match q {
                                GgmlType::Q4_0 => k.embed_q4_0(at, t, ids, out, hidden),
                                GgmlType::Q4_1 => k.embed_q4_1(at, t, ids, out, hidden),
                                GgmlType::Q5_0 => k.embed_q5_0(at, t, ids, out, hidden),
                                GgmlType::Q5_1 => k.embed_q5_1(at, t, ids, out, hidden),
                                GgmlType::Q8_0 => k.embed_q8_0(at, t, ids, out, hidden),
                                GgmlType::Q4_K => k.embed_q4_k(at, t, ids, out, hidden),
                                GgmlType::Q5_K => k.embed_q5_k(at, t, ids, out, hidden),
                                GgmlType::Q6_K => k.embed_q6_k(at, t, ids, out, hidden),
                                other => Err(quant_unsupported(*other)),
                            }
                        }
                    }
                }
            }
            _ => Err(Error::internal("embed: the table is not a matrix")),
        }
    }

    fn rms_norm(&self, x: &CudaAct, w: &CudaWeight, eps: f32, out: &mut CudaAct) -> Result<()> {
        let inner = &self.inner;
        inner.bind()?;
        let CudaWeight::Vector(wb, len) = w else {
            return Err(Error::internal("rms_norm: the weight is not a vector"));
        };
        Self::check_act(out, x.rows, x.cols, "rms_norm")?;
        if *len != x.cols {
            return Err(Error::internal("rms_norm: weight and row widths differ"));
        }
        // SAFETY: `x` and `out` are x.rows x x.cols, `w` x.cols long (checked above).
        unsafe {
            inner.kernels.rms_norm(
                inner.launch((x.rows as u32, 1, 1), 256),
                x.ptr(),
                wb.ptr(),
                out.ptr_mut(),
                x.cols as i32,
                eps,
            )
        }
    }

    fn linear(
        &self,
        x: &CudaAct,
        w: &CudaWeight,
        bias: Option<&CudaWeight>,
        out: &mut CudaAct,
    ) -> Result<()> {
        let inner = &self.inner;
        inner.bind()?;
        match w {
            CudaWeight::Dense {
                ptr,
                rows,
                cols,
                dtype,
                ..
            } => {
                Self::check_act(x, x.rows, *cols, "linear input")?;
                Self::check_act(out, x.rows, *rows, "linear output")?;
                // cuBLAS has no GGUF block types: those always take our kernels.
                if inner.cublas_gemm.load(Ordering::Relaxed) && !dtype.is_quantized() {
                    super::profile::around(inner.stream, "cublas gemm", || {
                        blas::gemm(inner, x, *ptr, *rows, *cols, *dtype, out)
                    })?;
                } else {
                    if cols % 8 != 0 {
                        return Err(Error::unsupported(format!(
                            "a {rows}x{cols} matrix on CUDA: columns must be a multiple of 8"
                        )));
                    }
                    let at = inner.launch(
                        (
                            rows.div_ceil(QL_WARPS as usize) as u32,
                            x.rows.div_ceil(DN_TILE as usize) as u32,
                            1,
                        ),
                        QL_WARPS * 32,
                    );
                    let (w, xp, o) = (*ptr, x.ptr(), out.ptr_mut());
                    let (r, c, n) = (*rows as i32, *cols as i32, x.rows as i32);
                    let k = &inner.kernels;
                    // SAFETY: the weight holds rows x cols values of `dtype` (for a GGUF
                    // block type, rows of cols / block-size whole blocks, as the tensor was
                    // checked to be when made), `x` is x.rows x cols and `out` x.rows x rows
                    // (checked above); cols is a multiple of 8 as the kernels' 8-wide loads
                    // need (a block holds 32 or 256).
                    unsafe {
                        match dtype {
                            DType::F32 => k.dense_f32(at, DevPtr::from_addr(w), xp, o, r, c, n),
                            DType::F16 => k.dense_f16(at, DevPtr::from_addr(w), xp, o, r, c, n),
                            DType::BF16 => k.dense_bf16(at, DevPtr::from_addr(w), xp, o, r, c, n),
                            DType::Quant(q) => {
                                let w = DevPtr::from_addr(w);
                                match q {
                                    GgmlType::Q4_0 => k.dense_q4_0(at, w, xp, o, r, c, n),
                                    GgmlType::Q4_1 => k.dense_q4_1(at, w, xp, o, r, c, n),
                                    GgmlType::Q5_0 => k.dense_q5_0(at, w, xp, o, r, c, n),
                                    GgmlType::Q5_1 => k.dense_q5_1(at, w, xp, o, r, c, n),
                                    GgmlType::Q8_0 => k.dense_q8_0(at, w, xp, o, r, c, n),
                                    GgmlType::Q4_K => k.dense_q4_k(at, w, xp, o, r, c, n),
                                    GgmlType::Q5_K => k.dense_q5_k(at, w, xp, o, r, c, n),
                                    GgmlType::Q6_K => k.dense_q6_k(at, w, xp, o, r, c, n),
                                    other => Err(quant_unsupported(*other)),
                                }
                            }
                        }
                    }?;
                }
            }
            CudaWeight::Quant {
                codes,
                params,
                rows,
                cols,
                bits,
                group,
            } => {
                Self::check_act(x, x.rows, *cols, "qlinear input")?;
                Self::check_act(out, x.rows, *rows, "qlinear output")?;
                let k = &inner.kernels;
                let kernel = match bits {
                    2 => Kernels::qlinear_b2,
                    3 => Kernels::qlinear_b3,
                    4 => Kernels::qlinear_b4,
                    8 => Kernels::qlinear_b8,
                    b => return Err(Error::unsupported(format!("{b}-bit substitutes on CUDA"))),
                };
                let at = inner.launch(
                    (
                        rows.div_ceil((MM_WARPS * MM_ROWS) as usize) as u32,
                        x.rows.div_ceil(QL_TILE as usize) as u32,
                        1,
                    ),
                    MM_WARPS * 32,
                );
                // SAFETY: `codes` and `params` are the planes of a rows x cols substitute of
                // `bits` bits in groups of `group` (cols a multiple of 32 and of the group,
                // checked at upload), `x` is x.rows x cols and `out` x.rows x rows.
                unsafe {
                    kernel(
                        k,
                        at,
                        codes.ptr(),
                        params.ptr(),
                        x.ptr(),
                        out.ptr_mut(),
                        *rows as i32,
                        *cols as i32,
                        *group as i32,
                        x.rows as i32,
                    )
                }?;
            }
            _ => return Err(Error::internal("linear: the weight is not a matrix")),
        }
        if let Some(b) = bias {
            let CudaWeight::Vector(bb, len) = b else {
                return Err(Error::internal("linear: the bias is not a vector"));
            };
            if *len != out.cols {
                return Err(Error::internal("linear: bias and output widths differ"));
            }
            // SAFETY: `out` is out.rows x out.cols and the bias out.cols long.
            unsafe {
                inner.kernels.add_bias(
                    inner.elementwise(out.len()),
                    out.ptr_mut(),
                    bb.ptr(),
                    out.rows as i32,
                    out.cols as i32,
                )
            }?;
        }
        Ok(())
    }

    fn rope(&self, x: &mut CudaAct, positions: &[usize], inv_freq: &[f32]) -> Result<()> {
        let inner = &self.inner;
        inner.bind()?;
        if positions.len() != x.rows || !x.cols.is_multiple_of(2 * inv_freq.len()) {
            return Err(Error::internal(
                "rope: positions or head width disagree with x",
            ));
        }
        let pos: Vec<u32> = positions.iter().map(|&p| p as u32).collect();
        let d_pos = inner.upload(&pos, "positions")?;
        let d_f = inner.upload(inv_freq, "rotary frequencies")?;
        // SAFETY: one position per row of `x`, whose width is a whole number of heads of
        // 2 * inv_freq.len() (checked above).
        unsafe {
            inner.kernels.rope(
                inner.launch((x.rows as u32, 1, 1), 128),
                x.ptr_mut(),
                d_pos.ptr(),
                d_f.ptr(),
                x.cols as i32,
                inv_freq.len() as i32,
            )
        }
    }

    fn silu_mul(&self, gate: &mut CudaAct, up: &CudaAct) -> Result<()> {
        let inner = &self.inner;
        inner.bind()?;
        Self::check_act(up, gate.rows, gate.cols, "silu_mul")?;
        // SAFETY: both hold gate.len() floats (checked above).
        unsafe {
            inner.kernels.silu_mul(
                inner.elementwise(gate.len()),
                gate.ptr_mut(),
                up.ptr(),
                gate.len() as i64,
            )
        }
    }

    fn gelu_tanh_mul(&self, gate: &mut CudaAct, up: &CudaAct) -> Result<()> {
        let inner = &self.inner;
        inner.bind()?;
        Self::check_act(up, gate.rows, gate.cols, "gelu_tanh_mul")?;
        // SAFETY: both hold gate.len() floats (checked above).
        unsafe {
            inner.kernels.gelu_tanh_mul(
                inner.elementwise(gate.len()),
                gate.ptr_mut(),
                up.ptr(),
                gate.len() as i64,
            )
        }
    }

    fn scale(&self, x: &mut CudaAct, s: f32) -> Result<()> {
        let inner = &self.inner;
        inner.bind()?;
        // SAFETY: x holds x.len() floats.
        unsafe {
            inner
                .kernels
                .scale_inplace(inner.elementwise(x.len()), x.ptr_mut(), s, x.len() as i64)
        }
    }

    fn add(&self, x: &mut CudaAct, y: &CudaAct) -> Result<()> {
        let inner = &self.inner;
        inner.bind()?;
        Self::check_act(y, x.rows, x.cols, "add")?;
        // SAFETY: both hold x.len() floats (checked above).
        unsafe {
            inner.kernels.add_inplace(
                inner.elementwise(x.len()),
                x.ptr_mut(),
                y.ptr(),
                x.len() as i64,
            )
        }
    }

    fn gather_rows(&self, x: &CudaAct, rows: &[usize], out: &mut CudaAct) -> Result<()> {
        let inner = &self.inner;
        inner.bind()?;
        Self::check_act(out, rows.len(), x.cols, "gather_rows")?;
        if rows.iter().any(|&r| r >= x.rows) {
            return Err(Error::internal("gather_rows: a row index is out of range"));
        }
        if rows.is_empty() {
            return Ok(());
        }
        let r: Vec<u32> = rows.iter().map(|&r| r as u32).collect();
        let d_r = inner.upload(&r, "row indices")?;
        // SAFETY: every index is a row of `x`; `out` has one row of x.cols per index.
        unsafe {
            inner.kernels.gather_rows(
                inner.launch((rows.len() as u32, 1, 1), 256),
                x.ptr(),
                d_r.ptr(),
                out.ptr_mut(),
                x.cols as i32,
            )
        }
    }

    fn set_rows(&self, x: &mut CudaAct, first: usize, y: &CudaAct) -> Result<()> {
        let inner = &self.inner;
        inner.bind()?;
        if y.cols != x.cols || first + y.rows > x.rows {
            return Err(Error::internal(format!(
                "set_rows: {}x{} into rows {first}.. of {}x{}",
                y.rows, y.cols, x.rows, x.cols
            )));
        }
        if y.len() == 0 {
            return Ok(());
        }
        let off = (first * x.cols * 4) as u64;
        // SAFETY: rows first..first + y.rows of `x` exist and hold y.len() floats (checked).
        unsafe { cu::memcpy_dtod_async(x.addr() + off, y.addr(), y.len() * 4, inner.stream) }
            .map_err(|e| cu_err("cuMemcpyDtoDAsync", e))
    }

    fn kv_new(
        &self,
        layers: usize,
        kv_heads: usize,
        head_dim: usize,
        capacity: usize,
        dtype: KvDtype,
    ) -> Result<CudaKv> {
        if dtype != KvDtype::F32 {
            return Err(Error::unsupported(format!(
                "a {dtype} KV cache on CUDA: this backend's attention reads an f32 cache \
                 (kv_dtype f32)"
            )));
        }
        let kv_dim = kv_heads * head_dim;
        self.inner.bind()?;
        Ok(CudaKv {
            buf: self
                .inner
                .alloc::<f32>(layers * 2 * capacity * kv_dim, "the KV cache")?,
            layers,
            kv_dim,
            capacity,
        })
    }

    fn kv_write(
        &self,
        kv: &mut CudaKv,
        layer: usize,
        first: usize,
        k: &CudaAct,
        v: &CudaAct,
    ) -> Result<()> {
        let inner = &self.inner;
        inner.bind()?;
        Self::check_act(k, k.rows, kv.kv_dim, "kv_write keys")?;
        Self::check_act(v, k.rows, kv.kv_dim, "kv_write values")?;
        if layer >= kv.layers || first + k.rows > kv.capacity {
            return Err(Error::internal("kv_write: out of the cache's bounds"));
        }
        for (plane, src) in [(0, k), (1, v)] {
            let off = (((layer * 2 + plane) * kv.capacity + first) * kv.kv_dim * 4) as u64;
            // SAFETY: both ranges lie inside their buffers (checked above).
            unsafe {
                cu::memcpy_dtod_async(kv.buf.addr() + off, src.addr(), src.len() * 4, inner.stream)
            }
            .map_err(|e| cu_err("cuMemcpyDtoDAsync", e))?;
        }
        Ok(())
    }

    fn kv_compact(&self, kv: &mut CudaKv, src: &[usize], dst_first: usize) -> Result<()> {
        let inner = &self.inner;
        inner.bind()?;
        if src.is_empty() || src.iter().enumerate().all(|(i, &s)| s == dst_first + i) {
            return Ok(());
        }
        if src.iter().any(|&s| s >= kv.capacity) || dst_first + src.len() > kv.capacity {
            return Err(Error::internal("kv_compact: out of the cache's bounds"));
        }
        let len = src.len();
        let mut tmp = inner.alloc::<f32>(kv.layers * 2 * len * kv.kv_dim, "KV compaction")?;
        let s: Vec<u32> = src.iter().map(|&s| s as u32).collect();
        let d_s = inner.upload(&s, "kept slots")?;
        let at = inner.launch((len as u32, (kv.layers * 2) as u32, 1), 128);
        let (len, cap, dim) = (len as i32, kv.capacity as i32, kv.kv_dim as i32);
        // SAFETY: every kept slot and the destination range lie inside the cache (checked
        // above); `tmp` holds `len` slots of every plane.
        unsafe {
            inner
                .kernels
                .kv_gather(at, kv.buf.ptr(), tmp.ptr_mut(), d_s.ptr(), len, cap, dim)?;
            inner.kernels.kv_scatter(
                at,
                kv.buf.ptr_mut(),
                tmp.ptr(),
                dst_first as i32,
                len,
                cap,
                dim,
            )
        }
    }

    fn attention(
        &self,
        q: &CudaAct,
        kv: &CudaKv,
        layer: usize,
        committed: usize,
        mask: &AttnMask,
        shape: AttnShape,
        out: &mut CudaAct,
    ) -> Result<()> {
        let inner = &self.inner;
        inner.bind()?;
        let hd = shape.head_dim;
        if !hd.is_multiple_of(32)
            || hd > ATT_MAX_HEAD_DIM
            || !shape.n_heads.is_multiple_of(shape.n_kv_heads)
        {
            return Err(Error::unsupported(format!(
                "attention with head_dim {hd} on CUDA (multiples of 32 up to {ATT_MAX_HEAD_DIM})"
            )));
        }
        Self::check_act(out, q.rows, q.cols, "attention")?;
        if q.cols != shape.n_heads * hd
            || kv.kv_dim != shape.n_kv_heads * hd
            || layer >= kv.layers
            || mask.len() < q.rows
        {
            return Err(Error::internal(
                "attention: the shape disagrees with the queries, the cache or the mask",
            ));
        }
        let mut offs = Vec::with_capacity(mask.len() + 1);
        let mut slots = Vec::new();
        offs.push(0u32);
        for i in 0..mask.len() {
            slots.extend_from_slice(mask.row(i));
            offs.push(slots.len() as u32);
        }
        if committed + slots.iter().map(|&s| s as usize + 1).max().unwrap_or(0) > kv.capacity {
            return Err(Error::internal("attention: a slot is outside the cache"));
        }
        // The first committed slot of each row (past 0 only under a sliding window).
        let starts: Vec<u32> = (0..q.rows)
            .map(|i| mask.start(i).min(committed) as u32)
            .collect();
        let d_offs = inner.upload(&offs, "attention rows")?;
        let d_slots = inner.upload(&slots, "attention slots")?;
        let d_starts = inner.upload(&starts, "attention window starts")?;
        let scale = shape.scale;
        // SAFETY: `q` and `out` hold q.rows rows of n_heads heads of hd, the cache holds
        // layer `layer` with n_kv_heads heads of hd, `offs` has a row per query and every
        // slot it names lies inside the cache (checked above), every start is at most
        // `committed`; hd is a multiple of 32 up to
        // ATT_MAX_HEAD_DIM and the block has ATT_WARPS warps, as the kernel is written for.
        unsafe {
            inner.kernels.attention(
                inner.launch((q.rows as u32, shape.n_heads as u32, 1), ATT_WARPS * 32),
                q.ptr(),
                kv.buf.ptr(),
                d_offs.ptr(),
                d_slots.ptr(),
                d_starts.ptr(),
                out.ptr_mut(),
                layer as i32,
                kv.capacity as i32,
                committed as i32,
                shape.n_heads as i32,
                shape.n_kv_heads as i32,
                hd as i32,
                scale,
            )
        }
    }

    fn tier_new(&self, weights: &Weights, layers: &[usize], staging: usize) -> Result<CudaTier> {
        CudaTier::new(&self.inner, weights, layers, staging)
    }

    fn tier_begin(&self, tier: &mut CudaTier) -> Result<()> {
        tier.begin(&self.inner)
    }

    fn tier_fetch(&self, tier: &mut CudaTier, layer: usize) -> Result<(u64, Vec<CudaWeight>)> {
        tier.fetch(&self.inner, layer)
    }

    fn tier_ready(&self, tier: &mut CudaTier) -> bool {
        tier.ready(&self.inner)
    }

    fn tier_release(&self, tier: &mut CudaTier, ticket: u64) -> Result<()> {
        tier.release(&self.inner, ticket)
    }

    fn tier_stats(&self, tier: &CudaTier) -> TierStats {
        TierStats {
            bytes: tier.bytes(),
            read_s: 0.0,
            wait_s: 0.0,
            direct: true,
        }
    }
}

/// A GGUF block type without a CUDA kernel.
fn quant_unsupported(t: GgmlType) -> Error {
    Error::unsupported(format!("{} weights have no CUDA kernel", t.name()))
}
