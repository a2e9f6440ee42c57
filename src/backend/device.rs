//! [`Device`]: the backend the engine runs on, chosen at load time (CPU or a CUDA device).
//!
//! It forwards every [`Backend`] operation to the backend it holds; weights, activations
//! and caches carry the same tag, so mixing them is an internal error, never undefined
//! behaviour.

use super::cpu::{CpuAct, CpuBackend, CpuKv, CpuWeight, StreamedLayer, Streamer};
use super::cuda::{CudaAct, CudaBackend, CudaKv, CudaTier, CudaWeight};
use super::{AttnMask, AttnShape, Backend, KvDtype, TierStats};
use crate::checkpoint::{HostTensor, Weights};
use crate::error::{Error, Result};
use crate::quant::QMatrix;

/// Which device to run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum DeviceKind {
    /// The CPU backend.
    #[default]
    Cpu,
    /// CUDA device with this ordinal.
    Cuda(usize),
}

impl DeviceKind {
    /// Parses "cpu", "cuda" or "cuda:N".
    pub fn parse(s: &str) -> Result<DeviceKind> {
        match s.trim() {
            "cpu" => Ok(DeviceKind::Cpu),
            "cuda" => Ok(DeviceKind::Cuda(0)),
            s => s
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(DeviceKind::Cuda)
                .ok_or_else(|| {
                    Error::invalid_argument(format!(
                        "unknown device `{s}`: expected cpu, cuda or cuda:N"
                    ))
                }),
        }
    }
}

impl std::fmt::Display for DeviceKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeviceKind::Cpu => f.write_str("cpu"),
            DeviceKind::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

/// A backend chosen at run time.
#[derive(Clone)]
pub enum Device {
    /// The CPU.
    Cpu(CpuBackend),
    /// A CUDA GPU.
    Cuda(CudaBackend),
}

/// Generates an enum with a CPU and a CUDA variant and its accessors.
macro_rules! tagged {
    ($(#[$m:meta])* $name:ident, $cpu:ty, $cuda:ty) => {
        $(#[$m])*
        pub enum $name {
            /// On the CPU.
            Cpu($cpu),
            /// On a CUDA device.
            Cuda($cuda),
        }
        #[allow(dead_code)]
        impl $name {
            fn cpu(&self) -> Result<&$cpu> {
                match self {
                    $name::Cpu(v) => Ok(v),
                    _ => Err(mixed()),
                }
            }
            fn cpu_mut(&mut self) -> Result<&mut $cpu> {
                match self {
                    $name::Cpu(v) => Ok(v),
                    _ => Err(mixed()),
                }
            }
            fn cuda(&self) -> Result<&$cuda> {
                match self {
                    $name::Cuda(v) => Ok(v),
                    _ => Err(mixed()),
                }
            }
            fn cuda_mut(&mut self) -> Result<&mut $cuda> {
                match self {
                    $name::Cuda(v) => Ok(v),
                    _ => Err(mixed()),
                }
            }
        }
    };
}

fn mixed() -> Error {
    Error::internal("a CPU value was given to the CUDA backend, or the reverse")
}

tagged!(
    /// A weight on either backend.
    DevWeight,
    CpuWeight,
    CudaWeight
);
tagged!(
    /// An activation on either backend.
    DevAct,
    CpuAct,
    CudaAct
);
tagged!(
    /// A KV cache on either backend.
    DevKv,
    CpuKv,
    CudaKv
);
tagged!(
    /// A slow tier on either backend.
    DevTier,
    Streamer,
    CudaTier
);
tagged!(
    /// A streamed-layer ticket on either backend.
    DevTicket,
    StreamedLayer,
    u64
);

impl Device {
    /// Opens `kind`; `limit` bounds CUDA device memory (`None`: what is free).
    pub fn open(kind: DeviceKind, limit: Option<u64>) -> Result<Device> {
        match kind {
            DeviceKind::Cpu => Ok(Device::Cpu(CpuBackend)),
            DeviceKind::Cuda(n) => Ok(Device::Cuda(CudaBackend::new(n, limit)?)),
        }
    }

    /// The CUDA backend, if that is what this is.
    pub fn as_cuda(&self) -> Option<&CudaBackend> {
        match self {
            Device::Cuda(c) => Some(c),
            Device::Cpu(_) => None,
        }
    }

    /// Waits for queued work (a no-op on the CPU).
    pub fn synchronize(&self) -> Result<()> {
        match self {
            Device::Cpu(_) => Ok(()),
            Device::Cuda(c) => c.synchronize(),
        }
    }
}

fn opt_cpu(w: Option<&DevWeight>) -> Result<Option<&CpuWeight>> {
    w.map(|w| w.cpu()).transpose()
}

fn opt_cuda(w: Option<&DevWeight>) -> Result<Option<&CudaWeight>> {
    w.map(|w| w.cuda()).transpose()
}

impl Backend for Device {
    type Weight = DevWeight;
    type Act = DevAct;
    type Kv = DevKv;
    type Tier = DevTier;
    type Ticket = DevTicket;

    fn name(&self) -> String {
        match self {
            Device::Cpu(b) => b.name(),
            Device::Cuda(b) => b.name(),
        }
    }

    fn upload(&self, t: &HostTensor) -> Result<DevWeight> {
        Ok(match self {
            Device::Cpu(b) => DevWeight::Cpu(b.upload(t)?),
            Device::Cuda(b) => DevWeight::Cuda(b.upload(t)?),
        })
    }

    fn host_matrix(&self, t: &HostTensor) -> Result<DevWeight> {
        Ok(match self {
            Device::Cpu(b) => DevWeight::Cpu(b.host_matrix(t)?),
            Device::Cuda(b) => DevWeight::Cuda(b.host_matrix(t)?),
        })
    }

    fn weight_rows(&self, w: &DevWeight, rows: usize) -> Result<DevWeight> {
        Ok(match self {
            Device::Cpu(b) => DevWeight::Cpu(b.weight_rows(w.cpu()?, rows)?),
            Device::Cuda(b) => DevWeight::Cuda(b.weight_rows(w.cuda()?, rows)?),
        })
    }

    fn weight_row_range(&self, w: &DevWeight, start: usize, rows: usize) -> Result<DevWeight> {
        Ok(match self {
            Device::Cpu(b) => DevWeight::Cpu(b.weight_row_range(w.cpu()?, start, rows)?),
            Device::Cuda(b) => DevWeight::Cuda(b.weight_row_range(w.cuda()?, start, rows)?),
        })
    }

    fn upload_quant(&self, q: QMatrix) -> Result<DevWeight> {
        Ok(match self {
            Device::Cpu(b) => DevWeight::Cpu(b.upload_quant(q)?),
            Device::Cuda(b) => DevWeight::Cuda(b.upload_quant(q)?),
        })
    }

    fn act(&self, rows: usize, cols: usize) -> Result<DevAct> {
        Ok(match self {
            Device::Cpu(b) => DevAct::Cpu(b.act(rows, cols)?),
            Device::Cuda(b) => DevAct::Cuda(b.act(rows, cols)?),
        })
    }

    fn reshape(&self, x: &mut DevAct, rows: usize, cols: usize) -> Result<()> {
        match self {
            Device::Cpu(b) => b.reshape(x.cpu_mut()?, rows, cols),
            Device::Cuda(b) => b.reshape(x.cuda_mut()?, rows, cols),
        }
    }

    fn to_host(&self, x: &DevAct) -> Result<Vec<f32>> {
        match self {
            Device::Cpu(b) => b.to_host(x.cpu()?),
            Device::Cuda(b) => b.to_host(x.cuda()?),
        }
    }

    fn embed(&self, table: &DevWeight, ids: &[u32], out: &mut DevAct) -> Result<()> {
        match self {
            Device::Cpu(b) => b.embed(table.cpu()?, ids, out.cpu_mut()?),
            Device::Cuda(b) => b.embed(table.cuda()?, ids, out.cuda_mut()?),
        }
    }

    fn rms_norm(&self, x: &DevAct, w: &DevWeight, eps: f32, out: &mut DevAct) -> Result<()> {
        match self {
            Device::Cpu(b) => b.rms_norm(x.cpu()?, w.cpu()?, eps, out.cpu_mut()?),
            Device::Cuda(b) => b.rms_norm(x.cuda()?, w.cuda()?, eps, out.cuda_mut()?),
        }
    }

    fn linear(
        &self,
        x: &DevAct,
        w: &DevWeight,
        bias: Option<&DevWeight>,
        out: &mut DevAct,
    ) -> Result<()> {
        match self {
            Device::Cpu(b) => b.linear(x.cpu()?, w.cpu()?, opt_cpu(bias)?, out.cpu_mut()?),
            Device::Cuda(b) => b.linear(x.cuda()?, w.cuda()?, opt_cuda(bias)?, out.cuda_mut()?),
        }
    }

    fn rope(&self, x: &mut DevAct, positions: &[usize], inv_freq: &[f32]) -> Result<()> {
        match self {
            Device::Cpu(b) => b.rope(x.cpu_mut()?, positions, inv_freq),
            Device::Cuda(b) => b.rope(x.cuda_mut()?, positions, inv_freq),
        }
    }

    fn silu_mul(&self, gate: &mut DevAct, up: &DevAct) -> Result<()> {
        match self {
            Device::Cpu(b) => b.silu_mul(gate.cpu_mut()?, up.cpu()?),
            Device::Cuda(b) => b.silu_mul(gate.cuda_mut()?, up.cuda()?),
        }
    }

    fn gelu_tanh_mul(&self, gate: &mut DevAct, up: &DevAct) -> Result<()> {
        match self {
            Device::Cpu(b) => b.gelu_tanh_mul(gate.cpu_mut()?, up.cpu()?),
            Device::Cuda(b) => b.gelu_tanh_mul(gate.cuda_mut()?, up.cuda()?),
        }
    }

    fn scale(&self, x: &mut DevAct, s: f32) -> Result<()> {
        match self {
            Device::Cpu(b) => b.scale(x.cpu_mut()?, s),
            Device::Cuda(b) => b.scale(x.cuda_mut()?, s),
        }
    }

    fn add(&self, x: &mut DevAct, y: &DevAct) -> Result<()> {
        match self {
            Device::Cpu(b) => b.add(x.cpu_mut()?, y.cpu()?),
            Device::Cuda(b) => b.add(x.cuda_mut()?, y.cuda()?),
        }
    }

    fn gather_rows(&self, x: &DevAct, rows: &[usize], out: &mut DevAct) -> Result<()> {
        match self {
            Device::Cpu(b) => b.gather_rows(x.cpu()?, rows, out.cpu_mut()?),
            Device::Cuda(b) => b.gather_rows(x.cuda()?, rows, out.cuda_mut()?),
        }
    }

    fn set_rows(&self, x: &mut DevAct, first: usize, y: &DevAct) -> Result<()> {
        match self {
            Device::Cpu(b) => b.set_rows(x.cpu_mut()?, first, y.cpu()?),
            Device::Cuda(b) => b.set_rows(x.cuda_mut()?, first, y.cuda()?),
        }
    }

    fn kv_new(
        &self,
        layers: usize,
        kv_heads: usize,
        head_dim: usize,
        capacity: usize,
        dtype: KvDtype,
    ) -> Result<DevKv> {
        let (h, hd) = (kv_heads, head_dim);
        Ok(match self {
            Device::Cpu(b) => DevKv::Cpu(b.kv_new(layers, h, hd, capacity, dtype)?),
            Device::Cuda(b) => DevKv::Cuda(b.kv_new(layers, h, hd, capacity, dtype)?),
        })
    }

    fn kv_write(
        &self,
        kv: &mut DevKv,
        layer: usize,
        first: usize,
        k: &DevAct,
        v: &DevAct,
    ) -> Result<()> {
        match self {
            Device::Cpu(b) => b.kv_write(kv.cpu_mut()?, layer, first, k.cpu()?, v.cpu()?),
            Device::Cuda(b) => b.kv_write(kv.cuda_mut()?, layer, first, k.cuda()?, v.cuda()?),
        }
    }

    fn kv_compact(&self, kv: &mut DevKv, src: &[usize], dst_first: usize) -> Result<()> {
        match self {
            Device::Cpu(b) => b.kv_compact(kv.cpu_mut()?, src, dst_first),
            Device::Cuda(b) => b.kv_compact(kv.cuda_mut()?, src, dst_first),
        }
    }

    fn attention(
        &self,
        q: &DevAct,
        kv: &DevKv,
        layer: usize,
        committed: usize,
        mask: &AttnMask,
        shape: AttnShape,
        out: &mut DevAct,
    ) -> Result<()> {
        match self {
            Device::Cpu(b) => b.attention(
                q.cpu()?,
                kv.cpu()?,
                layer,
                committed,
                mask,
                shape,
                out.cpu_mut()?,
            ),
            Device::Cuda(b) => b.attention(
                q.cuda()?,
                kv.cuda()?,
                layer,
                committed,
                mask,
                shape,
                out.cuda_mut()?,
            ),
        }
    }

    fn tier_new(&self, weights: &Weights, layers: &[usize], staging: usize) -> Result<DevTier> {
        Ok(match self {
            Device::Cpu(b) => DevTier::Cpu(b.tier_new(weights, layers, staging)?),
            Device::Cuda(b) => DevTier::Cuda(b.tier_new(weights, layers, staging)?),
        })
    }

    fn tier_begin(&self, tier: &mut DevTier) -> Result<()> {
        match self {
            Device::Cpu(b) => b.tier_begin(tier.cpu_mut()?),
            Device::Cuda(b) => b.tier_begin(tier.cuda_mut()?),
        }
    }

    fn tier_fetch(&self, tier: &mut DevTier, layer: usize) -> Result<(DevTicket, Vec<DevWeight>)> {
        Ok(match self {
            Device::Cpu(b) => {
                let (t, w) = b.tier_fetch(tier.cpu_mut()?, layer)?;
                (
                    DevTicket::Cpu(t),
                    w.into_iter().map(DevWeight::Cpu).collect(),
                )
            }
            Device::Cuda(b) => {
                let (t, w) = b.tier_fetch(tier.cuda_mut()?, layer)?;
                (
                    DevTicket::Cuda(t),
                    w.into_iter().map(DevWeight::Cuda).collect(),
                )
            }
        })
    }

    fn tier_release(&self, tier: &mut DevTier, ticket: DevTicket) -> Result<()> {
        match (self, ticket) {
            (Device::Cpu(b), DevTicket::Cpu(t)) => b.tier_release(tier.cpu_mut()?, t),
            (Device::Cuda(b), DevTicket::Cuda(t)) => b.tier_release(tier.cuda_mut()?, t),
            _ => Err(mixed()),
        }
    }

    fn tier_ready(&self, tier: &mut DevTier) -> bool {
        match (self, tier) {
            (Device::Cpu(b), DevTier::Cpu(t)) => b.tier_ready(t),
            (Device::Cuda(b), DevTier::Cuda(t)) => b.tier_ready(t),
            _ => true,
        }
    }

    fn tier_stats(&self, tier: &DevTier) -> TierStats {
        match (self, tier) {
            (Device::Cpu(b), DevTier::Cpu(t)) => b.tier_stats(t),
            (Device::Cuda(b), DevTier::Cuda(t)) => b.tier_stats(t),
            _ => TierStats::default(),
        }
    }
}
