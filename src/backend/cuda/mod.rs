//! The CUDA backend: weights, activations and the KV cache in GPU memory, offloaded layers
//! in pinned host memory streamed over PCIe.
//!
//! - Everything runs through the CUDA driver API (cudarc, loaded at run time): with no
//!   driver installed the crate still builds and runs, and asking for this backend is a
//!   clear [`ErrorKind::DeviceUnavailable`] error.
//! - The kernels (`kernels/subspec.cu`) are compiled to PTX ahead of time and embedded;
//!   the driver compiles the PTX for the card at load. They are launched only through
//!   typed wrappers generated from the .cu file (`kernels.rs`, by
//!   `scripts/build-kernels.py`): a launch that does not fit a kernel's signature does
//!   not compile, and tests/kernel_abi.rs checks the wrappers against the PTX.
//! - f16/bf16/f32 matrix products run in our batch-invariant kernels by default: a token's
//!   logits do not depend on what else is in the batch, so speculative output equals plain
//!   output exactly, as on the CPU. `SUBSPEC_CUDA_GEMM=cublas` sends them to cuBLAS
//!   instead (`cublasGemmEx`, f32 accumulation and output, activations rounded to the
//!   weight's type first): faster for big batches, but a row's rounding then depends on
//!   the batch. The draft's quantized substitutes run in our fused dequantize-multiply
//!   kernels.
//! - All compute is queued on one stream; host code only waits in [`Backend::to_host`].
//!   Activations come from the stream-ordered allocator (`cuMemAllocAsync`).
//! - Every device allocation goes through one `MemAccount` with the engine's budget as
//!   its limit: the budget is enforced here, not by the driver running out.
//! - The slow tier ([`CudaTier`]) keeps offloaded layers in pinned host memory and
//!   copies them on a second stream into a ring of device staging buffers, ordered with
//!   events, so layer i+1 copies while layer i computes and the first layers of the next
//!   verification copy while the draft runs.
//!
//! Files: `context.rs` (opening the device, [`driver_present`], driver errors), `memory.rs`
//! (the budget, typed device buffers, pinned memory, the weight/activation/KV types),
//! `kernels.rs` (generated: the kernels' signatures and shared constants) and `launch.rs`
//! (typed pointers, module loading, the launch wrappers), `blas.rs` (cuBLAS products),
//! `probe.rs` (the bandwidth probe), `backend.rs` ([`CudaBackend`] and its [`Backend`]
//! implementation), `tier.rs` (the slow tier).
//!
//! [`Backend`]: super::Backend
//! [`ErrorKind::DeviceUnavailable`]: crate::error::ErrorKind::DeviceUnavailable
//! [`Backend::to_host`]: super::Backend::to_host

mod backend;
mod blas;
mod context;
#[rustfmt::skip]
mod kernels;
mod launch;
mod memory;
mod probe;
pub mod profile;
mod tier;

pub use backend::CudaBackend;
pub use context::driver_present;
pub use kernels::KERNEL_ABI;
pub use launch::{KernelAbi, ParamAbi, ParamKind, KERNELS_PTX};
pub use memory::{CudaAct, CudaKv, CudaWeight};
pub use tier::CudaTier;
