//! The narrow interface between the forward pass and the hardware.
//!
//! The model (`model::Model`) writes the transformer once against [`Backend`]; a backend owns
//! where weights and activations live and how each leaf operation runs. The CPU backend
//! ([`cpu::CpuBackend`]) is the reference every other backend is compared with.
//!
//! Every operation is *row-independent*: the result for one token never depends on which
//! other tokens share the batch. Together with a fixed reduction order inside each row
//! this makes the whole forward batch-invariant, bit for bit.

pub mod cpu;
pub mod cuda;
mod device;

#[cfg(test)]
pub(crate) use device::DevKv;
pub use device::{Device, DeviceKind};

use crate::checkpoint::{HostTensor, Weights};
use crate::error::{Error, Result};
use crate::quant::QMatrix;

/// Which uncommitted (scratch) KV slots each token of a batch attends to, besides the
/// committed KV cache.
///
/// Slots are numbered from the first uncommitted position: a forward that writes its batch
/// at scratch offset `first` puts token `i` in scratch slot `first + i`. Row `i` lists the
/// scratch slots token `i` attends to, ascending, ending with its own `first + i` (parents
/// precede children, as in a tree laid out in topological order). A chain at offset 0
/// (plain causal decoding) is row `i` = `0..=i`.
///
/// Every row is an ancestor chain: its last entry is the token itself and the entry `k`
/// places before it is `k` positions back (a chain's earlier tokens, a tree node's
/// ancestors), which is what [`AttnMask::windowed`] relies on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttnMask {
    rows: Vec<Vec<u32>>,
    /// Per row, the first committed slot it attends to (`0` without a window).
    starts: Vec<u32>,
}

impl AttnMask {
    /// Causal mask over `n` tokens (a chain).
    pub fn causal(n: usize) -> AttnMask {
        Self::new((0..n).map(|i| (0..=i as u32).collect()).collect())
    }

    fn new(rows: Vec<Vec<u32>>) -> AttnMask {
        let starts = vec![0; rows.len()];
        AttnMask { rows, starts }
    }

    /// Tree mask from parent indices: `parents[i]` is the batch index of token `i`'s
    /// parent, or `None` for a root. Each token attends to itself and its ancestors.
    pub fn from_parents(parents: &[Option<usize>]) -> Result<AttnMask> {
        let mut rows: Vec<Vec<u32>> = Vec::with_capacity(parents.len());
        for (i, p) in parents.iter().enumerate() {
            let mut row = match p {
                None => Vec::new(),
                Some(p) if *p < i => rows[*p].clone(),
                Some(p) => {
                    return Err(Error::invalid_argument(format!(
                        "tree node {i} has parent {p}; parents must come before their children"
                    )))
                }
            };
            row.push(i as u32);
            rows.push(row);
        }
        Ok(Self::new(rows))
    }

    /// Rows of the tree nodes `nodes` (indices into `parents`, a tree in topological order
    /// laid out in scratch slots `0..parents.len()`): each node's ancestors and itself.
    pub fn tree_rows(parents: &[Option<usize>], nodes: std::ops::Range<usize>) -> AttnMask {
        let rows = nodes
            .map(|n| {
                let mut row = vec![n as u32];
                let mut j = n;
                while let Some(p) = parents[j] {
                    row.push(p as u32);
                    j = p;
                }
                row.reverse();
                row
            })
            .collect();
        Self::new(rows)
    }

    /// This mask with its scratch slots `by` further on (the same tree laid out from slot
    /// `by`).
    pub fn shifted(mut self, by: usize) -> AttnMask {
        for row in &mut self.rows {
            for j in row.iter_mut() {
                *j += by as u32;
            }
        }
        self
    }

    /// This mask under a sliding window of `window` positions: row `i`, a query at
    /// absolute position `positions[i]` on top of `committed` committed slots (slot `j` at
    /// position `j`), keeps only the keys fewer than `window` positions back: committed
    /// slots from `positions[i] + 1 - window` on, and the last `window` entries of its
    /// (ancestor-chain) row.
    pub fn windowed(&self, positions: &[usize], window: usize, committed: usize) -> AttnMask {
        let window = window.max(1);
        let rows = self
            .rows
            .iter()
            .map(|r| r[r.len().saturating_sub(window)..].to_vec())
            .collect();
        let starts = positions
            .iter()
            .map(|&p| (p + 1).saturating_sub(window).min(committed) as u32)
            .collect();
        AttnMask { rows, starts }
    }

    /// The first committed slot row `i` attends to (`0` unless windowed).
    pub fn start(&self, i: usize) -> usize {
        self.starts[i] as usize
    }

    /// Whether some row skips committed slots (a window is in effect).
    pub fn is_windowed(&self) -> bool {
        self.starts.iter().any(|&s| s > 0)
    }

    /// Checks that row `i` ends with its own slot `first + i` and references only earlier
    /// slots, ascending.
    pub fn validate(&self, first: usize) -> Result<()> {
        for (i, row) in self.rows.iter().enumerate() {
            let own = (first + i) as u32;
            if row.last() != Some(&own) || row.windows(2).any(|w| w[0] >= w[1]) {
                return Err(Error::internal(format!(
                    "attention mask row {i} must be ascending and end with its own slot {own}"
                )));
            }
        }
        Ok(())
    }

    /// Number of tokens.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// Whether the mask covers no tokens.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The batch indices token `i` attends to, ascending.
    pub fn row(&self, i: usize) -> &[u32] {
        &self.rows[i]
    }
}

/// Attention hyper-parameters a backend needs.
#[derive(Debug, Clone, Copy)]
pub struct AttnShape {
    /// Query heads.
    pub n_heads: usize,
    /// Key/value heads.
    pub n_kv_heads: usize,
    /// Width of one head.
    pub head_dim: usize,
    /// Multiplies every query-key dot product (`1 / sqrt(head_dim)` in most models).
    pub scale: f32,
}

/// Element type of the KV cache. Keys and values are computed in f32 and rounded to this
/// type (to nearest, ties to even) as they are written; attention widens them back to f32
/// exactly, so the cache type changes only the values stored, never the order of the
/// arithmetic: speculative decoding stays equal to plain decoding with any of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum KvDtype {
    /// 4 bytes a value: the activations' own precision.
    F32,
    /// 2 bytes a value (llama.cpp's default cache type): half the memory and bandwidth,
    /// 11 significant bits.
    #[default]
    F16,
    /// 2 bytes a value, f32's range with 8 significant bits.
    Bf16,
}

impl KvDtype {
    /// Every cache type, in the order of their names.
    pub const ALL: [KvDtype; 3] = [KvDtype::F32, KvDtype::F16, KvDtype::Bf16];

    /// Bytes one value takes.
    pub fn bytes(self) -> usize {
        match self {
            KvDtype::F32 => 4,
            KvDtype::F16 | KvDtype::Bf16 => 2,
        }
    }

    /// `f32`, `f16` or `bf16`.
    pub fn name(self) -> &'static str {
        match self {
            KvDtype::F32 => "f32",
            KvDtype::F16 => "f16",
            KvDtype::Bf16 => "bf16",
        }
    }
}

impl std::fmt::Display for KvDtype {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for KvDtype {
    type Err = Error;

    /// `f32`, `f16` or `bf16` (any case).
    fn from_str(s: &str) -> Result<KvDtype> {
        KvDtype::ALL
            .into_iter()
            .find(|d| d.name().eq_ignore_ascii_case(s))
            .ok_or_else(|| {
                Error::invalid_argument(format!("KV cache type `{s}` is none of f32, f16, bf16"))
            })
    }
}

/// A compute device: where weights and activations live and how leaf operations run.
///
/// Activations are row-major `[rows, cols]` f32 matrices, one row per token. Operations
/// may run asynchronously (a GPU queues them); an error from a device is reported by the
/// operation that sees it, at the latest by [`Backend::to_host`].
pub trait Backend: Send + Sync {
    /// A weight (matrix or vector) resident on this backend.
    type Weight: Send + Sync;
    /// An activation matrix on this backend.
    type Act: Send;
    /// Key/value storage of one sequence (all layers).
    type Kv: Send;
    /// The slow tier holding the offloaded layers' linears between target passes.
    type Tier: Send;
    /// One streamed layer being computed; hands its staging buffer back on release.
    type Ticket: Send;

    /// Short name for messages ("cpu", "cuda:0").
    fn name(&self) -> String;
    /// Makes a host tensor usable by kernels (a copy to the device, or a view on the CPU).
    fn upload(&self, t: &HostTensor) -> Result<Self::Weight>;
    /// A matrix only ever read a few rows at a time ([`Backend::embed`]), left in host
    /// memory (the untied embedding table).
    fn host_matrix(&self, t: &HostTensor) -> Result<Self::Weight>;
    /// The first `rows` rows of a full-precision matrix `w` from [`Backend::upload`], as a
    /// view that shares its memory (`w` must outlive it).
    fn weight_rows(&self, w: &Self::Weight, rows: usize) -> Result<Self::Weight>;
    /// Rows `start..start + rows` of a full-precision matrix `w`, as a view like
    /// [`Backend::weight_rows`]'s. A backend that has no such views says so with an error
    /// (the caller then uses the whole matrix).
    fn weight_row_range(
        &self,
        _w: &Self::Weight,
        start: usize,
        rows: usize,
    ) -> Result<Self::Weight> {
        Err(Error::internal(format!(
            "{} has no views of rows {start}..{} of a matrix",
            self.name(),
            start + rows
        )))
    }
    /// Makes a quantized substitute usable by [`Backend::linear`].
    fn upload_quant(&self, q: QMatrix) -> Result<Self::Weight>;
    /// An activation matrix (contents unspecified until written).
    fn act(&self, rows: usize, cols: usize) -> Result<Self::Act>;
    /// Views `x` (row-major) as `rows x cols`, the same elements in the same order (e.g.
    /// one row per attention head); an error if the element count differs.
    fn reshape(&self, x: &mut Self::Act, rows: usize, cols: usize) -> Result<()>;
    /// Copies an activation matrix to host memory (waits for the work queued before).
    fn to_host(&self, x: &Self::Act) -> Result<Vec<f32>>;

    /// `out[i] = table[ids[i]]`. Ids are validated by the caller.
    fn embed(&self, table: &Self::Weight, ids: &[u32], out: &mut Self::Act) -> Result<()>;
    /// `out = rmsnorm(x) * w`, row by row.
    fn rms_norm(
        &self,
        x: &Self::Act,
        w: &Self::Weight,
        eps: f32,
        out: &mut Self::Act,
    ) -> Result<()>;
    /// `out = x @ w^T (+ bias)`; `w` is `[out_features, in_features]`.
    fn linear(
        &self,
        x: &Self::Act,
        w: &Self::Weight,
        bias: Option<&Self::Weight>,
        out: &mut Self::Act,
    ) -> Result<()>;
    /// Rotary embedding in place over heads of width `inv_freq.len() * 2`, each row at its
    /// own position (rotate-half layout, as Hugging Face Llama/Qwen2).
    fn rope(&self, x: &mut Self::Act, positions: &[usize], inv_freq: &[f32]) -> Result<()>;
    /// `gate = silu(gate) * up`.
    fn silu_mul(&self, gate: &mut Self::Act, up: &Self::Act) -> Result<()>;
    /// `gate = gelu_tanh(gate) * up`, with GeLU's tanh approximation computed as PyTorch
    /// does: `0.5 * x * (1 + tanh(sqrt(2 / pi) * (x + 0.044715 * x^3)))`.
    fn gelu_tanh_mul(&self, gate: &mut Self::Act, up: &Self::Act) -> Result<()>;
    /// `x *= s`, every element.
    fn scale(&self, x: &mut Self::Act, s: f32) -> Result<()>;
    /// `x += y`.
    fn add(&self, x: &mut Self::Act, y: &Self::Act) -> Result<()>;
    /// `out[i] = x[rows[i]]`.
    fn gather_rows(&self, x: &Self::Act, rows: &[usize], out: &mut Self::Act) -> Result<()>;
    /// `x[first + i] = y[i]` for every row of `y` (same width; the rows must fit).
    fn set_rows(&self, x: &mut Self::Act, first: usize, y: &Self::Act) -> Result<()>;

    /// Key/value storage for `layers` layers of `kv_heads` heads of `head_dim` values,
    /// up to `capacity` slots, holding `dtype` values (an error naming the type if this
    /// backend has no kernels for it). Rows written and read are `kv_heads * head_dim`
    /// wide, head after head.
    fn kv_new(
        &self,
        layers: usize,
        kv_heads: usize,
        head_dim: usize,
        capacity: usize,
        dtype: KvDtype,
    ) -> Result<Self::Kv>;
    /// Writes `k`, `v` (one row per token) of `layer` into slots `first..first + rows`.
    fn kv_write(
        &self,
        kv: &mut Self::Kv,
        layer: usize,
        first: usize,
        k: &Self::Act,
        v: &Self::Act,
    ) -> Result<()>;
    /// Moves the slots `src[i]` to `dst_first + i` in every layer (`src` ascending,
    /// `src[i] >= dst_first + i`).
    fn kv_compact(&self, kv: &mut Self::Kv, src: &[usize], dst_first: usize) -> Result<()>;
    /// Attention of batch token `i` (query row `i` of `q`) over cache slots
    /// `mask.start(i)..committed` and the scratch slots `committed + j` for `j` in
    /// `mask.row(i)`.
    #[allow(clippy::too_many_arguments)]
    fn attention(
        &self,
        q: &Self::Act,
        kv: &Self::Kv,
        layer: usize,
        committed: usize,
        mask: &AttnMask,
        shape: AttnShape,
        out: &mut Self::Act,
    ) -> Result<()>;

    /// Puts the linears of `layers` (offloaded, ascending) into the slow tier, with
    /// `staging` staging buffers for streaming them.
    fn tier_new(&self, weights: &Weights, layers: &[usize], staging: usize) -> Result<Self::Tier>;
    /// Starts a target pass: the next fetch is the first offloaded layer (a pass that
    /// failed midway may have left the stream elsewhere).
    fn tier_begin(&self, tier: &mut Self::Tier) -> Result<()>;
    /// The seven linears of offloaded layer `layer` (the next one in order), ready for
    /// compute; the next layers keep streaming meanwhile.
    fn tier_fetch(
        &self,
        tier: &mut Self::Tier,
        layer: usize,
    ) -> Result<(Self::Ticket, Vec<Self::Weight>)>;
    /// Hands a fetched layer's staging buffer back once its compute is queued.
    fn tier_release(&self, tier: &mut Self::Tier, ticket: Self::Ticket) -> Result<()>;
    /// Whether the pass should fetch its next layer now: on the CPU, whether
    /// [`Backend::tier_fetch`] would return without waiting (never blocks); on CUDA, whether
    /// the layer's copy is done, or else `false` once the compute stream has drained (it
    /// may wait for one of the two). A pass that has other work (drafting) does it while
    /// this says `false`. Default: `true` (nothing runs in a pass's waits).
    fn tier_ready(&self, _tier: &mut Self::Tier) -> bool {
        true
    }
    /// Streaming counters.
    fn tier_stats(&self, tier: &Self::Tier) -> TierStats;
}

/// What the slow tier has moved.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct TierStats {
    /// Bytes moved from the slow tier.
    pub bytes: u64,
    /// Seconds the reader spent reading (CPU tier; `0` where copies are asynchronous).
    pub read_s: f64,
    /// Seconds compute waited for a layer (CPU tier; `0` where copies are asynchronous).
    pub wait_s: f64,
    /// Whether reads bypass the page cache (O_DIRECT) or come from pinned memory.
    pub direct: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shifted_mask_names_the_slots_further_on() {
        let m = AttnMask::tree_rows(&[None, Some(0), Some(0), Some(1)], 1..4).shifted(10);
        assert_eq!(
            (m.row(0), m.row(2)),
            (&[10u32, 11][..], &[10u32, 11, 13][..])
        );
        assert!(m.validate(11).is_ok());
    }

    #[test]
    fn tree_mask_from_parents() {
        // 0 is the root; 1 and 2 its children; 3 a child of 2.
        let m = AttnMask::from_parents(&[None, Some(0), Some(0), Some(2)]).unwrap();
        assert_eq!(m.row(0), &[0]);
        assert_eq!(m.row(1), &[0, 1]);
        assert_eq!(m.row(2), &[0, 2]);
        assert_eq!(m.row(3), &[0, 2, 3]);
        assert_eq!(AttnMask::causal(3).row(2), &[0, 1, 2]);
        assert!(AttnMask::from_parents(&[Some(1), None]).is_err());
        m.validate(0).unwrap();
        assert!(m.validate(1).is_err());
        // The frontier {2, 3} of the same tree, as a draft step sees it at offset 2.
        let parents = [None, Some(0), Some(0), Some(2)];
        let f = AttnMask::tree_rows(&parents, 2..4);
        assert_eq!(f.row(0), &[0, 2]);
        assert_eq!(f.row(1), &[0, 2, 3]);
        f.validate(2).unwrap();
        assert!(!f.is_windowed());
    }

    #[test]
    fn a_window_keeps_the_last_positions() {
        // Four new tokens at positions 10..14 on 10 committed slots, window 3: token 0 (at
        // 10) sees committed 8, 9 and itself; token 3 (at 13) sees scratch 1, 2, 3 only.
        let m = AttnMask::causal(4).windowed(&[10, 11, 12, 13], 3, 10);
        assert_eq!((m.start(0), m.row(0)), (8, &[0u32][..]));
        assert_eq!((m.start(1), m.row(1)), (9, &[0u32, 1][..]));
        assert_eq!((m.start(3), m.row(3)), (10, &[1u32, 2, 3][..]));
        assert!(m.is_windowed());
        m.validate(0).unwrap();
        // A window wider than everything changes nothing.
        let w = AttnMask::causal(4).windowed(&[10, 11, 12, 13], 100, 10);
        assert_eq!(w, AttnMask::causal(4));
    }
}
