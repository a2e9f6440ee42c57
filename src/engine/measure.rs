//! Measurements for `subspec bench` and `subspec passes`: the forwards one SubSpec
//! iteration is made of (a plain target token, a tree verification, a draft step) timed
//! on a loaded engine, the slow tier's and the memory's bandwidth, the device. Not part
//! of the stable API (reached through `subspec::internals::measure`).

use std::time::Instant;

use rayon::prelude::*;

use super::{Engine, EngineOptions};
use crate::backend::cpu::Streamer;
use crate::backend::{AttnMask, Backend, TierStats};
use crate::checkpoint::names::linear_names;
use crate::checkpoint::Weights;
use crate::error::Result;
use crate::model::{DraftWork, KvCache, Pass};
use crate::spec::tune::TreeCosts;

/// Median seconds of one plain target token, one tree verification and one draft step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PassTimes {
    /// A plain target token (one streamed pass when layers are offloaded).
    pub plain_s: f64,
    /// The verification of a tree of `tree_tokens` nodes in one target pass.
    pub verify_s: f64,
    /// One draft step over `draft_width` frontier nodes.
    pub draft_s: f64,
    /// Where a pass waits for streamed layers (offloaded layers and a draft): the same
    /// verification with the draft running in its waits as a step's does (a layer or a
    /// part of its output head at a time), and the draft steps it finished meanwhile
    /// (medians).
    pub overlapped: Option<Overlapped>,
}

/// A verification with the draft running in its waits ([`PassTimes::overlapped`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Overlapped {
    /// Seconds of the verification (against [`PassTimes::verify_s`] without the draft).
    pub verify_s: f64,
    /// Draft steps finished during it.
    pub draft_steps: f64,
}

/// What the engine runs on.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceReport {
    /// The backend's short name ("cpu", "cuda:0").
    pub name: String,
    /// The GPU's name, on CUDA.
    pub device_name: Option<String>,
    /// Device memory (in use, peak, limit) on CUDA.
    pub memory: Option<(u64, u64, u64)>,
}

/// The device of `engine`.
pub fn device(engine: &Engine) -> DeviceReport {
    let be = engine.shared.model.backend();
    DeviceReport {
        name: be.name(),
        device_name: be.as_cuda().map(|c| c.device_name().to_string()),
        memory: be.as_cuda().map(|c| c.memory()),
    }
}

/// Sends the dense products to cuBLAS (`true`) or to the batch-invariant kernels
/// (`false`); returns whether the engine runs on CUDA (elsewhere nothing changes).
pub fn set_cublas_gemm(engine: &Engine, on: bool) -> Result<bool> {
    match engine.shared.model.backend().as_cuda() {
        Some(c) => c.set_cublas_gemm(on).map(|()| true),
        None => Ok(false),
    }
}

/// Host-to-device bandwidth (bytes/s) of copies from pinned memory on CUDA; `None` on
/// the CPU.
pub fn link_bandwidth(engine: &Engine, bytes: usize, reps: usize) -> Result<Option<f64>> {
    engine
        .shared
        .model
        .backend()
        .as_cuda()
        .map(|c| c.measure_h2d(bytes, reps))
        .transpose()
}

/// The slow tier's counters when layers are offloaded.
pub fn stream_stats(engine: &Engine) -> Option<TierStats> {
    engine.shared.model.stream_stats()
}

/// Weight bytes one decode step reads.
pub fn bytes_read_per_token(engine: &Engine) -> usize {
    engine.shared.model.bytes_read_per_token()
}

/// Bytes/s of the CPU's slow tier for `opts`: the best of three full O_DIRECT reads of
/// the layers its budget offloads (run before the engine is loaded, so that nothing else
/// reads at the same time); `None` without a budget or with nothing offloaded.
pub fn slow_tier_bandwidth(opts: &EngineOptions) -> Result<Option<f64>> {
    let Some(budget) = opts.budget else {
        return Ok(None);
    };
    let layers = Engine::plan(opts, budget)?.offloaded();
    if layers.is_empty() {
        return Ok(None);
    }
    let weights = Weights::open(&opts.model_path)?;
    let mut best = 0f64;
    for _ in 0..3 {
        let mut s = Streamer::new(&weights, &layers, |l| linear_names(l).to_vec(), 2)?;
        let t0 = Instant::now();
        let mut bytes = 0u64;
        for &l in &layers {
            let layer = s.next_layer(l)?;
            bytes += layer
                .tensors
                .iter()
                .map(|t| t.bytes().len() as u64)
                .sum::<u64>();
            s.release(layer);
        }
        best = best.max(bytes as f64 / t0.elapsed().as_secs_f64());
    }
    Ok(Some(best))
}

/// Best-of-3 read bandwidth (bytes/s) of main memory over a 1 GiB buffer, on the
/// engine's threads.
pub fn memory_bandwidth(engine: &Engine) -> f64 {
    let n = (1usize << 30) / 4;
    let buf: Vec<f32> = (0..n).map(|i| (i % 251) as f32).collect();
    let mut best = f64::MAX;
    for _ in 0..3 {
        let t0 = Instant::now();
        let s: f32 = engine.install(|| {
            buf.par_chunks(1 << 16)
                .map(|c| {
                    let mut acc = [0f32; 16];
                    for ch in c.chunks_exact(16) {
                        for l in 0..16 {
                            acc[l] += ch[l];
                        }
                    }
                    acc.iter().sum::<f32>()
                })
                .sum()
        });
        std::hint::black_box(s);
        best = best.min(t0.elapsed().as_secs_f64());
    }
    (n * 4) as f64 / best
}

/// The same draft forward again and again: [`passes`]' overlapped verification counts
/// how many fit in a pass's waits.
struct Repeat {
    first: usize,
    tokens: Vec<u32>,
    positions: Vec<usize>,
    mask: AttnMask,
}

impl DraftWork for Repeat {
    fn next(&mut self) -> Option<(usize, Vec<u32>, Vec<usize>, AttnMask)> {
        let (t, p, m) = (&self.tokens, &self.positions, &self.mask);
        Some((self.first, t.clone(), p.clone(), m.clone()))
    }

    fn done(&mut self, _logits: Vec<f32>) {}
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Times `f` `reps` times after one warm-up run; the median in seconds.
fn time(reps: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    f()?;
    let mut v = Vec::with_capacity(reps);
    for _ in 0..reps.max(1) {
        let t0 = Instant::now();
        f()?;
        v.push(t0.elapsed().as_secs_f64());
    }
    Ok(median(v))
}

/// `count` token ids spread over the vocabulary (`salt` picks another spread).
fn ids(vocab: usize, count: usize, salt: u64) -> Vec<u32> {
    (0..count as u64)
        .map(|i| ((i * 7919 + salt * 104_729 + 13) % vocab as u64) as u32)
        .collect()
}

/// A KV cache with `prompt` tokens committed and room for `extra` more.
fn committed_prompt(
    engine: &Engine,
    prompt: usize,
    extra: usize,
) -> Result<KvCache<crate::backend::Device>> {
    let model = &engine.shared.model;
    let p = prompt.max(1);
    let mut cache = model.new_cache(p + extra)?;
    let tokens = ids(model.config().vocab, p, 1);
    let pos: Vec<usize> = (0..p).collect();
    engine.install(|| model.forward(&mut cache, &tokens, &pos, &AttnMask::causal(p), &[]))?;
    cache.commit(p);
    Ok(cache)
}

/// The three forwards of an iteration on top of a committed prompt of `prompt` tokens:
/// a plain target token; a tree of `draft_width` chains under the root (node `i >
/// draft_width` hangs under node `i - draft_width`), `tree_tokens` nodes verified in one
/// pass; and a draft step over the tree's second level. Medians of `reps` runs (draft
/// steps at least 10). Every row's logits are computed, as a verification without
/// logits on demand would. Where passes wait for streamed layers, the verification
/// again with draft steps over the second level running in its waits
/// ([`PassTimes::overlapped`]).
pub fn passes(
    engine: &Engine,
    prompt: usize,
    tree_tokens: usize,
    draft_width: usize,
    reps: usize,
) -> Result<PassTimes> {
    let model = &engine.shared.model;
    let (w, n) = (draft_width.max(1), tree_tokens);
    if n < 1 + 2 * w {
        return Err(crate::error::Error::invalid_argument(format!(
            "a tree of {n} tokens is too small for two levels of width {w}"
        )));
    }
    let p = prompt.max(1);
    // room for the tree, then (the overlapped verification's) the tree after the draft's
    // slots: its root and two levels
    let first = 1 + w;
    let mut cache = committed_prompt(engine, p, first + w + n)?;
    let vocab = model.config().vocab;
    let tok = ids(vocab, 1, 2);
    let parents: Vec<Option<usize>> = (0..n)
        .map(|i| match i {
            0 => None,
            i if i <= w => Some(0),
            i => Some(i - w),
        })
        .collect();
    let depth = |i: usize| if i == 0 { 0 } else { (i - 1) / w + 1 };
    let tree = ids(vocab, n, 3);
    let tree_pos: Vec<usize> = (0..n).map(|i| p + depth(i)).collect();
    let mask = AttnMask::from_parents(&parents)?;
    let rows: Vec<usize> = (0..n).collect();
    let dmask = AttnMask::tree_rows(&parents, first..first + w);
    let drows: Vec<usize> = (0..w).collect();
    let profile = crate::backend::cuda::profile::phase;
    profile("plain");
    let plain_s = time(reps, || {
        engine
            .install(|| {
                model.forward_at(
                    &mut cache,
                    Pass::Target,
                    0,
                    &tok,
                    &[p],
                    &AttnMask::causal(1),
                    &[0],
                )
            })
            .map(drop)
    })?;
    profile("verify");
    let verify_s = time(reps, || {
        engine
            .install(|| {
                model.forward_at(&mut cache, Pass::Target, 0, &tree, &tree_pos, &mask, &rows)
            })
            .map(drop)
    })?;
    profile("draft");
    let draft_s = time(reps.max(10), || {
        engine
            .install(|| {
                model.forward_at(
                    &mut cache,
                    Pass::Draft,
                    first,
                    &tree[first..first + w],
                    &tree_pos[first..first + w],
                    &dmask,
                    &drows,
                )
            })
            .map(drop)
    })?;
    let overlapped = if engine.drafts_during_passes() {
        profile("overlapped");
        let mut steps = Vec::new();
        let at = first + w;
        let tree_mask = mask.clone().shifted(at);
        let verify_s = time(reps, || {
            // As a step lays them out: the draft's slots first, the verified tree after.
            let mut work = Repeat {
                first,
                tokens: tree[first..first + w].to_vec(),
                positions: tree_pos[first..first + w].to_vec(),
                mask: dmask.clone(),
            };
            let done = engine.install(|| {
                let (x, done) = model.forward_hidden_drafting(
                    &mut cache, at, &tree, &tree_pos, &tree_mask, &mut work,
                )?;
                model.logits(Pass::Target, &x, &rows)?;
                Ok(done)
            })?;
            steps.push(done as f64);
            Ok(())
        })?;
        Some(Overlapped {
            verify_s,
            draft_steps: median(steps),
        })
    } else {
        None
    };
    profile("");
    Ok(PassTimes {
        plain_s,
        verify_s,
        draft_s,
        overlapped,
    })
}

/// What [`forward_time`] runs: a tree's verification or a chunk of a prompt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Forward {
    /// A tree of width 3 (node `i`'s parent is `(i - 1) / 3`), every row's logits: what a
    /// verification of `n` tokens costs.
    Tree,
    /// A chain (each token after the one before), the last row's logits only: a chunk of
    /// a prompt, as llama.cpp's `llama-bench -p` times it.
    Prompt,
}

/// The best of `reps` target forwards of `n` tokens shaped as `shape` on top of a
/// committed prompt of `prompt` tokens.
pub fn forward_time(
    engine: &Engine,
    prompt: usize,
    n: usize,
    reps: usize,
    shape: Forward,
) -> Result<f64> {
    let model = &engine.shared.model;
    let p = prompt.max(1);
    let tokens: Vec<u32> = (0..n as u32)
        .map(|i| (i * 104729 + 7) % model.config().vocab as u32)
        .collect();
    let parents: Vec<Option<usize>> = (0..n)
        .map(|i| match (i, shape) {
            (0, _) => None,
            (_, Forward::Tree) => Some((i - 1) / 3),
            (_, Forward::Prompt) => Some(i - 1),
        })
        .collect();
    let mask = AttnMask::from_parents(&parents)?;
    let positions: Vec<usize> = (0..n)
        .map(|i| {
            let (mut d, mut j) = (0, i);
            while let Some(pj) = parents[j] {
                d += 1;
                j = pj;
            }
            p + d
        })
        .collect();
    let rows: Vec<usize> = match shape {
        Forward::Tree => (0..n).collect(),
        Forward::Prompt => vec![n.saturating_sub(1)],
    };
    let mut cache = committed_prompt(engine, p, n)?;
    let mut best = f64::MAX;
    for _ in 0..reps.max(1) {
        let t0 = Instant::now();
        engine.install(|| model.forward(&mut cache, &tokens, &positions, &mask, &rows))?;
        best = best.min(t0.elapsed().as_secs_f64());
    }
    Ok(best)
}

/// The costs [`TreeCosts`] of `engine`'s placement, for trees sized by measured cost: on
/// top of a committed prompt of 32 tokens, a target pass over chains of 1, 4, 16, 64 and
/// the engine's largest tree (one logits row), one draft step over frontiers of 1 to 16
/// nodes, and one logits row (from 8 rows against 1). Medians of 3 runs (2 when layers
/// are streamed: each pass then reads them all).
pub(crate) fn tree_costs(engine: &Engine) -> Result<TreeCosts> {
    let model = &engine.shared.model;
    if !model.has_draft() {
        return Err(crate::error::Error::invalid_argument(
            "tree costs need a draft: load the engine with draft options",
        ));
    }
    let max = engine.max_tree_tokens();
    let reps = if engine.streams() { 2 } else { 3 };
    let p = 32;
    let mut cache = committed_prompt(engine, p, max)?;
    let vocab = model.config().vocab;
    let chain = |n: usize| -> Result<(Vec<u32>, Vec<usize>, AttnMask)> {
        let parents: Vec<Option<usize>> = (0..n).map(|i| i.checked_sub(1)).collect();
        Ok((
            ids(vocab, n, 5),
            (p..p + n).collect(),
            AttnMask::from_parents(&parents)?,
        ))
    };
    let mut target = |n: usize, rows: &[usize]| -> Result<f64> {
        let (tokens, pos, mask) = chain(n)?;
        time(reps, || {
            engine
                .install(|| {
                    model.forward_at(&mut cache, Pass::Target, 0, &tokens, &pos, &mask, rows)
                })
                .map(drop)
        })
    };
    let mut sizes: Vec<usize> = [1, 4, 16, 64].into_iter().filter(|&n| n < max).collect();
    sizes.push(max);
    let verify = sizes
        .iter()
        .map(|&n| Ok((n, target(n, &[0])?)))
        .collect::<Result<Vec<_>>>()?;
    let all: Vec<usize> = (0..8.min(max)).collect();
    let logits_row =
        ((target(all.len(), &all)? - target(all.len(), &[0])?) / (all.len() - 1) as f64).max(0.0);
    let mut draft = Vec::new();
    for w in [1, 2, 4, 8, 16].into_iter().filter(|&w| w < max) {
        let parents: Vec<Option<usize>> = (0..=w).map(|i| (i > 0).then_some(0)).collect();
        let mask = AttnMask::tree_rows(&parents, 1..1 + w);
        let (tokens, pos) = (ids(vocab, w, 6), vec![p + 1; w]);
        let rows: Vec<usize> = (0..w).collect();
        let s = time(reps.max(5), || {
            engine
                .install(|| {
                    model.forward_at(&mut cache, Pass::Draft, 1, &tokens, &pos, &mask, &rows)
                })
                .map(drop)
        })?;
        draft.push((w, s));
    }
    Ok(TreeCosts {
        draft,
        verify,
        logits_row,
    })
}
