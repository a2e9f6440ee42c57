//! The CPU backend: weights stay in the memory-mapped checkpoint (zero copy), activations
//! are f32 in RAM and the KV cache f32, f16 or bf16, threads come from the caller's rayon
//! pool.
//!
//! It is the reference implementation: every other backend is tested against it.

mod attn;
pub(crate) mod dequant;
mod kv;
mod math;
pub mod matmul;
pub mod tier;

use rayon::prelude::*;

use super::TierStats;
use super::{AttnMask, AttnShape, Backend, KvDtype};
pub use kv::CpuKv;
pub use tier::{StreamedLayer, Streamer};

use crate::checkpoint::names::linear_names;
use crate::checkpoint::{HostTensor, Weights};
use crate::error::{Error, Result};
use crate::quant::QMatrix;

/// The CPU backend (stateless; threads come from the rayon pool it runs in).
#[derive(Debug, Default, Clone, Copy)]
pub struct CpuBackend;

/// A weight on the CPU: matrices stay views into the checkpoint, vectors (norms, biases)
/// are converted to f32 once, substitutes are packed low-bit matrices.
pub enum CpuWeight {
    /// A 2-D weight, `[out_features, in_features]` (or `[vocab, hidden]`).
    Matrix(HostTensor),
    /// A quantized substitute of a linear weight.
    Quant(QMatrix),
    /// A 1-D weight in f32.
    Vector(Vec<f32>),
}

impl CpuWeight {
    fn matrix(&self) -> &HostTensor {
        match self {
            CpuWeight::Matrix(t) => t,
            _ => panic!("expected a full-precision matrix weight"),
        }
    }
    fn vector(&self) -> &[f32] {
        match self {
            CpuWeight::Vector(v) => v,
            _ => panic!("expected a vector weight"),
        }
    }
}

/// A row-major `[rows, cols]` f32 matrix.
#[derive(Debug, Clone, PartialEq)]
pub struct CpuAct {
    /// Number of rows (tokens).
    pub rows: usize,
    /// Number of columns.
    pub cols: usize,
    /// `rows * cols` values.
    pub data: Vec<f32>,
}

impl CpuAct {
    fn row(&self, i: usize) -> &[f32] {
        &self.data[i * self.cols..(i + 1) * self.cols]
    }
}

/// Fixed-order dot product of two f32 slices (8 lanes, then the 8-lane sum, then the
/// tail). Plain multiply-add, not fused: the compiler vectorises the lanes on any x86-64.
#[inline]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let body = a.len() - a.len() % 8;
    for (ca, cb) in a[..body].chunks_exact(8).zip(b[..body].chunks_exact(8)) {
        for l in 0..8 {
            acc[l] += ca[l] * cb[l];
        }
    }
    let b4 = [
        acc[0] + acc[4],
        acc[1] + acc[5],
        acc[2] + acc[6],
        acc[3] + acc[7],
    ];
    let mut s = (b4[0] + b4[2]) + (b4[1] + b4[3]);
    for i in body..a.len() {
        s += a[i] * b[i];
    }
    s
}

/// Query heads of a KV head's group (`group` of them) that one attention task takes,
/// with `tasks` (rows times KV heads) tasks when each takes its whole group: the whole
/// group (each key and value read once for all of its heads) unless that leaves threads
/// without a task, then the largest divisor of the group that gives every thread one.
/// (Splitting further to balance, say, 3 tasks on 2 threads re-reads the keys of each
/// head: SmolLM2 at 6.4k tokens of KV decoded 6% slower with one head a task.)
fn heads_per_task(tasks: usize, group: usize, threads: usize) -> usize {
    (1..=group)
        .rev()
        .find(|&per| group.is_multiple_of(per) && tasks * (group / per) >= threads)
        .unwrap_or(1)
}

/// [`Backend::attention`] over one layer's keys and values, whatever their type, laid
/// out as `lay` says.
#[allow(clippy::too_many_arguments)]
fn attention_over<T: kv::KvElem>(
    q: &CpuAct,
    ks: &[T],
    vs: &[T],
    lay: kv::Layout,
    committed: usize,
    mask: &AttnMask,
    shape: AttnShape,
    out: &mut CpuAct,
) {
    let hd = shape.head_dim;
    let group = shape.n_heads / shape.n_kv_heads;
    let isa = crate::util::isa::isa();
    thread_local! {
        /// A task's slots and scratch (kept, so long contexts do not allocate per head).
        static SCRATCH: std::cell::RefCell<(Vec<usize>, attn::Scratch)> =
            std::cell::RefCell::new(Default::default());
    }
    // One task per block of rows and KV head: the query heads that share a KV head read
    // each key and value once (a row's heads are laid out group after group), and so do
    // up to `rows_per_task` consecutive rows for the committed slots they all read (a
    // tree's nodes, a prompt chunk's rows). With few tasks (a decode step, a small tree)
    // cores would idle (one KV head: one task), so the group's heads are split between
    // tasks until there are enough. Each head's bits are the same whichever heads and
    // rows it is computed with.
    // (as even as the cap allows: 16 rows in 12s would be tasks of 12 and 4)
    let cap = q.rows.div_ceil(q.rows.div_ceil(rows_per_task(isa)).max(1));
    let mut blocks: Vec<(usize, usize)> = Vec::new(); // (first row, rows)
    for t in 0..q.rows {
        match blocks.last_mut() {
            Some((t0, n)) if *n < cap && mask.start(*t0) == mask.start(t) => *n += 1,
            _ => blocks.push((t, 1)),
        }
    }
    let per = heads_per_task(
        blocks.len() * shape.n_kv_heads,
        group,
        rayon::current_num_threads(),
    );
    let w = per * hd;
    let tasks_per_block = shape.n_heads / per;
    let task = |i: usize| {
        let (b, h0) = (i / tasks_per_block, i % tasks_per_block * per);
        (blocks[b], h0)
    };
    let parts: Vec<Vec<f32>> = (0..blocks.len() * tasks_per_block)
        .into_par_iter()
        .map(|i| {
            let ((t0, n), h0) = task(i);
            let g = h0 / group;
            let head = attn::KvHead {
                k: &ks[lay.k_head(g)],
                v: &vs[lay.v_head(g)],
            };
            let mut o = vec![0f32; n * w];
            SCRATCH.with_borrow_mut(|(slots, scratch)| {
                // the shared committed slots, then each row's own
                slots.clear();
                slots.extend(mask.start(t0).min(committed)..committed);
                let shared = slots.len();
                for t in t0..t0 + n {
                    slots.extend(mask.row(t).iter().map(|&j| committed + j as usize));
                }
                let mut at = shared;
                let rows: Vec<attn::Row<'_>> = (t0..t0 + n)
                    .map(|t| {
                        let own = &slots[at..at + mask.row(t).len()];
                        at += own.len();
                        attn::Row {
                            q: &q.data[t * q.cols + h0 * hd..][..w],
                            own,
                        }
                    })
                    .collect();
                let shared = &slots[..shared];
                attn::attend_rows(isa, &rows, hd, head, shared, shape.scale, scratch, &mut o);
            });
            o
        })
        .collect();
    for (i, o) in parts.iter().enumerate() {
        let ((t0, n), h0) = task(i);
        for (r, part) in o.chunks_exact(w).take(n).enumerate() {
            out.data[(t0 + r) * out.cols + h0 * hd..][..w].copy_from_slice(part);
        }
    }
}

/// Most rows an attention task takes together (see [`attention_over`]): on AVX2 4 (3
/// query vectors go over each key at a time); on AVX-512, where 12 do, 12 (Qwen's 7 heads
/// a KV head make 84 vectors, not 28 = 12 + 12 + 3 + 1, and each block of keys loaded into
/// L1 serves more of them: `cargo bench --bench attention`, 256 rows at 2k and 8k slots
/// 1.1-1.2x faster than 4 on all three models).
fn rows_per_task(isa: crate::util::isa::Isa) -> usize {
    match isa {
        crate::util::isa::Isa::Avx512 => 12,
        _ => 4,
    }
}

impl Backend for CpuBackend {
    type Weight = CpuWeight;
    type Act = CpuAct;
    type Kv = CpuKv;
    type Tier = Streamer;
    type Ticket = StreamedLayer;

    fn name(&self) -> String {
        "cpu".into()
    }

    fn upload(&self, t: &HostTensor) -> Result<CpuWeight> {
        Ok(if t.shape.len() == 1 {
            CpuWeight::Vector(t.to_f32_vec())
        } else {
            CpuWeight::Matrix(t.clone())
        })
    }

    fn upload_quant(&self, q: QMatrix) -> Result<CpuWeight> {
        Ok(CpuWeight::Quant(q))
    }

    fn host_matrix(&self, t: &HostTensor) -> Result<CpuWeight> {
        self.upload(t)
    }

    fn weight_rows(&self, w: &CpuWeight, rows: usize) -> Result<CpuWeight> {
        match w {
            CpuWeight::Matrix(t) if rows <= t.shape[0] => Ok(CpuWeight::Matrix(t.first_rows(rows))),
            _ => Err(crate::error::Error::internal(format!(
                "weight_rows({rows}) of a weight that is not a matrix of as many rows"
            ))),
        }
    }

    fn weight_row_range(&self, w: &CpuWeight, start: usize, rows: usize) -> Result<CpuWeight> {
        match w {
            CpuWeight::Matrix(t) if start + rows <= t.shape[0] => {
                Ok(CpuWeight::Matrix(t.row_range(start, rows)))
            }
            _ => Err(crate::error::Error::internal(format!(
                "weight_row_range({start}, {rows}) of a weight that is not a matrix of as many rows"
            ))),
        }
    }

    fn act(&self, rows: usize, cols: usize) -> Result<CpuAct> {
        Ok(CpuAct {
            rows,
            cols,
            data: vec![0.0; rows * cols],
        })
    }

    fn reshape(&self, x: &mut CpuAct, rows: usize, cols: usize) -> Result<()> {
        if rows * cols != x.data.len() {
            return Err(crate::error::Error::internal(format!(
                "reshape of {}x{} to {rows}x{cols}",
                x.rows, x.cols
            )));
        }
        (x.rows, x.cols) = (rows, cols);
        Ok(())
    }

    fn to_host(&self, x: &CpuAct) -> Result<Vec<f32>> {
        Ok(x.data.clone())
    }

    fn embed(&self, table: &CpuWeight, ids: &[u32], out: &mut CpuAct) -> Result<()> {
        let t = table.matrix();
        let cols = t.shape[1];
        for (i, &id) in ids.iter().enumerate() {
            t.row_f32(id as usize, &mut out.data[i * cols..(i + 1) * cols]);
        }
        Ok(())
    }

    fn rms_norm(&self, x: &CpuAct, w: &CpuWeight, eps: f32, out: &mut CpuAct) -> Result<()> {
        let w = w.vector();
        for r in 0..x.rows {
            let row = x.row(r);
            let mean = dot(row, row) / row.len() as f32;
            let inv = 1.0 / (mean + eps).sqrt();
            for ((o, &v), &g) in out.data[r * x.cols..(r + 1) * x.cols]
                .iter_mut()
                .zip(row)
                .zip(w)
            {
                *o = g * (v * inv);
            }
        }
        Ok(())
    }

    fn linear(
        &self,
        x: &CpuAct,
        w: &CpuWeight,
        bias: Option<&CpuWeight>,
        out: &mut CpuAct,
    ) -> Result<()> {
        let bias = bias.map(|b| b.vector());
        match w {
            CpuWeight::Quant(q) => matmul::qlinear(&x.data, x.rows, q, bias, &mut out.data),
            w => matmul::linear(&x.data, x.rows, w.matrix(), bias, &mut out.data),
        }
        Ok(())
    }

    fn rope(&self, x: &mut CpuAct, positions: &[usize], inv_freq: &[f32]) -> Result<()> {
        let half = inv_freq.len();
        let hd = 2 * half;
        let mut cos = vec![0f32; half];
        let mut sin = vec![0f32; half];
        for (r, &pos) in positions.iter().enumerate() {
            for i in 0..half {
                let a = pos as f32 * inv_freq[i];
                cos[i] = a.cos();
                sin[i] = a.sin();
            }
            let row = &mut x.data[r * x.cols..(r + 1) * x.cols];
            for head in row.chunks_exact_mut(hd) {
                for i in 0..half {
                    let (a, b) = (head[i], head[i + half]);
                    head[i] = a * cos[i] - b * sin[i];
                    head[i + half] = b * cos[i] + a * sin[i];
                }
            }
        }
        Ok(())
    }

    fn silu_mul(&self, gate: &mut CpuAct, up: &CpuAct) -> Result<()> {
        math::gated::<math::Silu>(crate::util::isa::isa(), &mut gate.data, &up.data);
        Ok(())
    }

    fn gelu_tanh_mul(&self, gate: &mut CpuAct, up: &CpuAct) -> Result<()> {
        math::gated::<math::GeluTanh>(crate::util::isa::isa(), &mut gate.data, &up.data);
        Ok(())
    }

    fn scale(&self, x: &mut CpuAct, s: f32) -> Result<()> {
        for a in x.data.iter_mut() {
            *a *= s;
        }
        Ok(())
    }

    fn add(&self, x: &mut CpuAct, y: &CpuAct) -> Result<()> {
        for (a, &b) in x.data.iter_mut().zip(&y.data) {
            *a += b;
        }
        Ok(())
    }

    fn gather_rows(&self, x: &CpuAct, rows: &[usize], out: &mut CpuAct) -> Result<()> {
        for (i, &r) in rows.iter().enumerate() {
            out.data[i * x.cols..(i + 1) * x.cols].copy_from_slice(x.row(r));
        }
        Ok(())
    }

    fn set_rows(&self, x: &mut CpuAct, first: usize, y: &CpuAct) -> Result<()> {
        if y.cols != x.cols || first + y.rows > x.rows {
            return Err(Error::internal(format!(
                "set_rows: {}x{} into rows {first}.. of {}x{}",
                y.rows, y.cols, x.rows, x.cols
            )));
        }
        x.data[first * x.cols..(first + y.rows) * x.cols].copy_from_slice(&y.data);
        Ok(())
    }

    fn kv_new(
        &self,
        layers: usize,
        kv_heads: usize,
        head_dim: usize,
        capacity: usize,
        dtype: KvDtype,
    ) -> Result<CpuKv> {
        Ok(CpuKv::new(layers, kv_heads, head_dim, capacity, dtype))
    }

    fn kv_write(
        &self,
        kv: &mut CpuKv,
        layer: usize,
        first: usize,
        k: &CpuAct,
        v: &CpuAct,
    ) -> Result<()> {
        kv.write(layer, first, &k.data, &v.data)
    }

    fn kv_compact(&self, kv: &mut CpuKv, src: &[usize], dst_first: usize) -> Result<()> {
        kv.compact(src, dst_first)
    }

    fn attention(
        &self,
        q: &CpuAct,
        kv: &CpuKv,
        layer: usize,
        committed: usize,
        mask: &AttnMask,
        shape: AttnShape,
        out: &mut CpuAct,
    ) -> Result<()> {
        let lay = kv.layout;
        let last = (0..mask.len().min(q.rows))
            .filter_map(|i| mask.row(i).last())
            .map(|&j| committed + j as usize + 1)
            .max()
            .unwrap_or(0);
        if q.cols != shape.n_heads * shape.head_dim
            || out.rows != q.rows
            || out.cols != q.cols
            || (lay.kv_heads, lay.head_dim) != (shape.n_kv_heads, shape.head_dim)
            || !shape.n_heads.is_multiple_of(shape.n_kv_heads.max(1))
            || layer >= kv.layers()
            || mask.len() < q.rows
            || committed.max(last) > lay.capacity
        {
            return Err(Error::internal(format!(
                "attention of {} rows over {committed} + {} slots in layer {layer}: the shape \
                 disagrees with the queries, the cache ({} slots) or the mask",
                q.rows,
                mask.len(),
                lay.capacity
            )));
        }
        kv::with_planes!(&kv.store, p => {
            attention_over(q, &p.k[layer], &p.v[layer], kv.layout, committed, mask, shape, out)
        });
        Ok(())
    }

    fn tier_new(&self, weights: &Weights, layers: &[usize], staging: usize) -> Result<Streamer> {
        Streamer::new(weights, layers, |l| linear_names(l).to_vec(), staging)
    }

    fn tier_begin(&self, tier: &mut Streamer) -> Result<()> {
        tier.reset();
        Ok(())
    }

    fn tier_fetch(
        &self,
        tier: &mut Streamer,
        layer: usize,
    ) -> Result<(StreamedLayer, Vec<CpuWeight>)> {
        let st = tier.next_layer(layer)?;
        let w = st
            .tensors
            .iter()
            .map(|t| self.upload(t))
            .collect::<Result<Vec<_>>>()?;
        Ok((st, w))
    }

    fn tier_ready(&self, tier: &mut Streamer) -> bool {
        tier.ready()
    }

    fn tier_release(&self, tier: &mut Streamer, ticket: StreamedLayer) -> Result<()> {
        tier.release(ticket);
        Ok(())
    }

    fn tier_stats(&self, tier: &Streamer) -> TierStats {
        use std::sync::atomic::Ordering::Relaxed;
        let c = tier.counters();
        TierStats {
            bytes: c.bytes.load(Relaxed),
            read_s: c.read_ns.load(Relaxed) as f64 * 1e-9,
            wait_s: c.wait_ns.load(Relaxed) as f64 * 1e-9,
            direct: tier.direct(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attention_tasks_split_a_group_only_when_cores_would_idle() {
        // 256 prefill rows x 3 KV heads: whole groups.
        assert_eq!(heads_per_task(256 * 3, 3, 2), 3);
        // A decode step of SmolLM2 (3 KV heads of 3) on 2 threads: whole groups.
        assert_eq!(heads_per_task(3, 3, 2), 3);
        // Gemma 3 270M (1 KV head of 4): halves of the group on 2 threads, quarters on 4
        // or more.
        assert_eq!(heads_per_task(1, 4, 1), 4);
        assert_eq!(heads_per_task(1, 4, 2), 2);
        assert_eq!(heads_per_task(1, 4, 3), 1);
        assert_eq!(heads_per_task(1, 4, 16), 1);
        // Qwen2.5-0.5B (2 KV heads of 7): 7 is prime, so whole or single heads.
        assert_eq!(heads_per_task(2, 7, 2), 7);
        assert_eq!(heads_per_task(2, 7, 4), 1);
    }

    #[test]
    fn attention_gives_the_same_bits_however_the_heads_are_split() {
        let shape = AttnShape {
            n_heads: 8,
            n_kv_heads: 2,
            head_dim: 20,
            scale: 0.2,
        };
        let (committed, rows) = (37, 3);
        let lay = kv::Layout {
            kv_heads: shape.n_kv_heads,
            head_dim: shape.head_dim,
            capacity: committed + rows,
        };
        let noise = |n: usize, seed: usize| -> Vec<f32> {
            (0..n)
                .map(|i| ((i * 7919 + seed * 104729) % 2003) as f32 / 1001.0 - 1.0)
                .collect()
        };
        let (ks, vs) = (
            noise(lay.k_head(shape.n_kv_heads).start, 1),
            noise(lay.v_head(shape.n_kv_heads).start, 2),
        );
        let q = CpuAct {
            rows,
            cols: shape.n_heads * shape.head_dim,
            data: noise(rows * shape.n_heads * shape.head_dim, 3),
        };
        let mask = AttnMask::causal(rows);
        let run = |threads: usize| {
            let mut out = CpuAct {
                rows,
                cols: q.cols,
                data: vec![0.0; q.data.len()],
            };
            rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap()
                .install(|| attention_over(&q, &ks, &vs, lay, committed, &mask, shape, &mut out));
            out.data
        };
        // 6 tasks of whole groups on 1 thread; 2 heads a task on 8; single heads on 16.
        let whole = run(1);
        assert!(whole.iter().all(|v| v.is_finite()) && whole.iter().any(|&v| v != 0.0));
        for threads in [8, 16] {
            let split = run(threads);
            assert!(
                whole
                    .iter()
                    .zip(&split)
                    .all(|(a, b)| a.to_bits() == b.to_bits()),
                "{threads} threads"
            );
        }
    }

    #[test]
    fn attention_refuses_a_shape_or_slots_the_cache_does_not_have() {
        let be = CpuBackend;
        let shape = AttnShape {
            n_heads: 4,
            n_kv_heads: 2,
            head_dim: 8,
            scale: 0.3,
        };
        let kv = be.kv_new(2, 2, 8, 16, KvDtype::F16).unwrap();
        let q = be.act(3, 32).unwrap();
        let mut out = be.act(3, 32).unwrap();
        let mask = AttnMask::causal(3);
        be.attention(&q, &kv, 1, 13, &mask, shape, &mut out)
            .unwrap();
        let wrong_heads = AttnShape {
            n_kv_heads: 1,
            ..shape
        };
        for (layer, committed, shape) in [(2, 0, shape), (0, 14, shape), (0, 0, wrong_heads)] {
            let e = be
                .attention(&q, &kv, layer, committed, &mask, shape, &mut out)
                .unwrap_err();
            assert!(e.to_string().contains("attention of 3 rows"), "{e}");
        }
    }
}
