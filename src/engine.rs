//! The engine (a loaded model plus its settings and thread pool) and sequences (one
//! conversation each, with its own KV cache). This is the API the C ABI wraps.
//!
//! A [`Sequence`] holds every token it has seen; the ones not yet run through the model
//! are *pending*. [`Sequence::step`] runs the pending tokens and chooses what comes next:
//! one token (plain decoding), or with speculation every token of one draft-and-verify
//! iteration (the accepted draft tokens plus the target's bonus token). The last token
//! chosen becomes the new pending token. Either way every token is exactly the one plain
//! decoding would choose. A failed call leaves the sequence exactly as it was.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use crate::backend::device::{Device, DeviceKind};
use crate::backend::{AttnMask, Backend};
use crate::error::{Error, ErrorKind, Result};
use crate::model::{KvCache, Model, ModelConfig, Pass, SubstituteStats};
use crate::offload::{minimum_budget, plan, ModelSizes, Placement, PlanRequest};
use crate::quant::QuantConfig;
use crate::sample::{sample, SamplingParams};
use crate::spec::{accept_from, NodeLogits, SpecStats, Tree, TreeParams};
use crate::tokenizer::Tokenizer;

/// The target's logits of a verified tree's nodes, computed as the acceptance walk asks
/// for them from the pass's residual stream. Asked for a node it has no row for, it
/// computes that node's draft-likeliest path ([`Tree::best_path`]) in one lm_head product,
/// so a walk that follows the draft's best guess costs one product of depth + 1 rows
/// instead of one of every tree node (33 rows: ~95 ms on the CPU for Qwen2.5-0.5B). A
/// row's logits are the same bits however rows are batched, so no token changes.
struct LazyLogits<'a> {
    engine: &'a Engine,
    hidden: &'a <Device as Backend>::Act,
    tree: &'a Tree,
    /// Rows computed so far, in the order computed.
    rows: Vec<f32>,
    /// Where each node's row starts in `rows`.
    at: Vec<Option<usize>>,
}

impl NodeLogits for LazyLogits<'_> {
    fn row(&mut self, node: usize) -> Result<&[f32]> {
        let vocab = self.engine.model.config.vocab;
        let start = match self.at[node] {
            Some(start) => start,
            None => {
                let want = self.tree.best_path(node);
                let (model, hidden) = (&self.engine.model, self.hidden);
                let l = self
                    .engine
                    .install(|| model.logits(Pass::Target, hidden, &want))?;
                for (i, &n) in want.iter().enumerate() {
                    self.at[n] = Some(self.rows.len() + i * vocab);
                }
                self.rows.extend_from_slice(&l);
                self.rows.len() - l.len()
            }
        };
        Ok(&self.rows[start..start + vocab])
    }
}

/// How the draft is built from the target.
#[derive(Debug, Clone, PartialEq)]
pub struct DraftOptions {
    /// Quantization of the substitutes (bits, group size, HQQ or RTN).
    pub quant: QuantConfig,
    /// Decoder layers treated as offloaded, i.e. replaced by substitutes in the draft
    /// (`None`: all of them).
    pub offloaded_layers: Option<Vec<usize>>,
    /// Give the draft its own lm_head, quantized like the substitutes (a departure from
    /// the paper, which shares the target's): a draft step then reads a quarter of the
    /// lm_head bytes. It costs the quantized lm_head's memory, counted by the planner.
    pub quantize_lm_head: bool,
    /// Give every decoder layer a substitute, resident ones too, so that a draft step
    /// reads only quantized weights (the planner counts the extra substitutes). On by
    /// default: with layers offloaded on the CPU it made SubSpec ~5% faster at an equal
    /// budget with the same tau (docs/BENCHMARKS.md); with nothing offloaded every layer
    /// has a substitute anyway.
    pub substitute_all_layers: bool,
}

impl Default for DraftOptions {
    /// 4-bit HQQ substitutes (group 64) for every layer; the target's lm_head shared.
    fn default() -> Self {
        DraftOptions {
            quant: QuantConfig::default(),
            offloaded_layers: None,
            quantize_lm_head: false,
            substitute_all_layers: true,
        }
    }
}

/// How one step chooses tokens.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepOptions {
    /// Greedy or sampled, with which seed.
    pub sampling: SamplingParams,
    /// Draft a tree and verify it (needs an engine loaded with a draft).
    pub speculate: bool,
    /// Shape of the draft tree.
    pub tree: TreeParams,
    /// Most tokens this step may return (`0`: no limit beyond the context).
    pub max_tokens: usize,
}

impl StepOptions {
    /// Plain decoding: one token per step.
    pub fn plain(sampling: SamplingParams) -> Self {
        StepOptions {
            sampling,
            speculate: false,
            tree: TreeParams::default(),
            max_tokens: 0,
        }
    }

    /// Speculative decoding with the default tree.
    pub fn speculative(sampling: SamplingParams) -> Self {
        StepOptions {
            speculate: true,
            ..Self::plain(sampling)
        }
    }
}

/// Longest run of prompt tokens sent through the model in one forward.
const PREFILL_CHUNK: usize = 256;
/// Default of [`EngineOptions::max_tree_tokens`].
pub const DEFAULT_MAX_TREE_TOKENS: usize = 128;

/// Settings for loading an engine.
#[derive(Debug, Clone)]
pub struct EngineOptions {
    /// Model directory (config.json, safetensors, tokenizer.json).
    pub model_dir: PathBuf,
    /// Worker threads (`0`: one per core).
    pub threads: usize,
    /// Context length per sequence (`0`: the model's `max_position_embeddings`).
    pub max_context: usize,
    /// Whether a missing tokenizer.json is an error (a host that tokenizes itself can say no).
    pub require_tokenizer: bool,
    /// The draft to build (`None`: no draft, plain decoding only).
    pub draft: Option<DraftOptions>,
    /// Device memory budget in bytes (`None`: everything resident). The planner decides
    /// which decoder layers stay resident and which are streamed from the slow tier (the
    /// model file for the CPU, pinned host memory for CUDA) each target pass.
    pub budget: Option<u64>,
    /// The device to run on.
    pub device: DeviceKind,
    /// Largest tree (root included) a step may verify: sizes the KV scratch and the
    /// activations the planner reserves.
    pub max_tree_tokens: usize,
    /// Called during loading with the fraction done (0.0 to 1.0); returning `false`
    /// aborts the load with [`ErrorKind::Aborted`].
    pub progress: Option<Progress>,
}

/// A load-progress callback: fraction done in, `false` out to abort.
#[derive(Clone)]
pub struct Progress(pub Arc<dyn Fn(f32) -> bool + Send + Sync>);

impl std::fmt::Debug for Progress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Progress(..)")
    }
}

impl Progress {
    /// Reports `fraction`; an error if the callback asks to abort.
    fn report(p: &Option<Progress>, fraction: f32) -> Result<()> {
        match p {
            Some(Progress(f)) if !f(fraction) => Err(Error::new(
                ErrorKind::Aborted,
                format!(
                    "loading aborted by the progress callback at {:.0}%",
                    fraction * 100.0
                ),
            )),
            _ => Ok(()),
        }
    }
}

impl EngineOptions {
    /// Defaults for `model_dir`: all cores, the model's context, tokenizer required.
    pub fn new(model_dir: impl Into<PathBuf>) -> Self {
        EngineOptions {
            model_dir: model_dir.into(),
            threads: 0,
            max_context: 0,
            require_tokenizer: true,
            draft: Some(DraftOptions::default()),
            budget: None,
            device: DeviceKind::Cpu,
            max_tree_tokens: DEFAULT_MAX_TREE_TOKENS,
            progress: None,
        }
    }
}

/// A loaded model ready to serve sequences.
pub struct Engine {
    model: Model<Device>,
    tokenizer: Option<Tokenizer>,
    pool: rayon::ThreadPool,
    max_context: usize,
    dir: PathBuf,
    draft: Option<(DraftOptions, SubstituteStats)>,
    max_tree_tokens: usize,
}

impl Engine {
    /// Loads the model directory named in `opts`.
    pub fn load(opts: &EngineOptions) -> Result<Engine> {
        let dir = opts.model_dir.as_path();
        Progress::report(&opts.progress, 0.0)?;
        if opts.max_tree_tokens < 2 {
            return Err(Error::invalid_argument(
                "max_tree_tokens must be at least 2",
            ));
        }
        let placement = match opts.budget {
            None => None,
            Some(b) => Some(Self::plan(opts, b)?),
        };
        let device = Device::open(opts.device, opts.budget)?;
        let mut model = Model::load_placed(dir, device, placement)?;
        Progress::report(&opts.progress, 0.1)?;
        let tokenizer = match Tokenizer::from_dir(dir) {
            Ok(t) => Some(t),
            Err(e) if opts.require_tokenizer => return Err(e),
            Err(_) => None,
        };
        let max_context = match opts.max_context {
            0 => model.config.max_position,
            n if n > model.config.max_position => {
                return Err(Error::invalid_argument(format!(
                    "max_context {n} exceeds the model's max_position_embeddings {}",
                    model.config.max_position
                )))
            }
            n => n,
        };
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(opts.threads)
            .build()
            .map_err(|e| Error::internal(format!("thread pool: {e}")))?;
        let draft = match &opts.draft {
            None => None,
            Some(d) => {
                // The draft substitutes the offloaded layers and shares the resident ones;
                // with nothing offloaded (no budget, or a budget that fits everything),
                // every layer gets a substitute so speculation still has a cheaper draft.
                let offloaded = model
                    .placement
                    .as_ref()
                    .map(|p| p.offloaded())
                    .unwrap_or_default();
                let layers: Vec<usize> = match &d.offloaded_layers {
                    Some(l) => l.clone(),
                    None if !offloaded.is_empty() && !d.substitute_all_layers => offloaded,
                    None => (0..model.config.n_layers).collect(),
                };
                let n = layers.len().max(1) as f32;
                let mut report =
                    |done: usize| Progress::report(&opts.progress, 0.1 + 0.9 * done as f32 / n);
                let stats =
                    pool.install(|| model.build_substitutes(&layers, &d.quant, &mut report))?;
                let head = d.quantize_lm_head.then_some(&d.quant);
                pool.install(|| model.build_draft_lm_head(head))?;
                Some((d.clone(), stats))
            }
        };
        Progress::report(&opts.progress, 1.0)?;
        Ok(Engine {
            model,
            tokenizer,
            pool,
            max_context,
            dir: dir.to_path_buf(),
            draft,
            max_tree_tokens: opts.max_tree_tokens,
        })
    }

    /// The placement `opts` would load with under `budget`, from config.json and the
    /// safetensors headers only (no weights are read).
    pub fn plan(opts: &EngineOptions, budget: u64) -> Result<Placement> {
        let (config, sizes, req) = Self::plan_inputs(opts, budget)?;
        plan(&config, &sizes, &req)
    }

    /// The smallest budget `opts` can load with (headers only, like [`Engine::plan`]).
    pub fn minimum_budget(opts: &EngineOptions) -> Result<u64> {
        let (config, sizes, req) = Self::plan_inputs(opts, 0)?;
        Ok(minimum_budget(&config, &sizes, &req))
    }

    fn plan_inputs(
        opts: &EngineOptions,
        budget: u64,
    ) -> Result<(ModelConfig, ModelSizes, PlanRequest)> {
        let dir = opts.model_dir.as_path();
        let config = ModelConfig::from_dir(dir)?;
        let weights = crate::model::Weights::open(dir)?;
        let quant = opts.draft.as_ref().map(|d| d.quant).unwrap_or_default();
        let sizes = ModelSizes::from_weights(&config, &weights, &quant)?;
        let context = match opts.max_context {
            0 => config.max_position,
            n => n,
        };
        let req = PlanRequest {
            budget,
            context,
            tree_tokens: opts.max_tree_tokens,
            draft: opts.draft.is_some(),
            quant,
            draft_lm_head: opts.draft.as_ref().is_some_and(|d| d.quantize_lm_head),
            substitute_resident: opts
                .draft
                .as_ref()
                .is_some_and(|d| d.substitute_all_layers || d.offloaded_layers.is_some()),
        };
        Ok((config, sizes, req))
    }

    /// The placement the engine runs with (`None`: everything resident).
    pub fn placement(&self) -> Option<&Placement> {
        self.model.placement.as_ref()
    }

    /// The tree shape that pays best for this engine: with offloaded layers a target pass
    /// costs a full stream of them, so a deeper and wider tree pays (docs/BENCHMARKS.md);
    /// with everything resident, [`TreeParams::default`] (a chain).
    pub fn default_tree(&self) -> TreeParams {
        let offloaded = self.placement().is_some_and(|p| !p.offloaded().is_empty());
        if offloaded {
            TreeParams {
                width: 2,
                depth: 16,
                max_tokens: 64.min(self.max_tree_tokens),
                ..TreeParams::default()
            }
        } else {
            TreeParams {
                max_tokens: TreeParams::default().max_tokens.min(self.max_tree_tokens),
                ..TreeParams::default()
            }
        }
    }

    /// Largest tree a step may verify.
    pub fn max_tree_tokens(&self) -> usize {
        self.max_tree_tokens
    }

    /// The draft's settings and sizes, if the engine has one.
    pub fn draft(&self) -> Option<&(DraftOptions, SubstituteStats)> {
        self.draft.as_ref()
    }

    /// The model directory.
    pub fn model_dir(&self) -> &Path {
        &self.dir
    }

    /// The model's configuration.
    pub fn config(&self) -> &ModelConfig {
        &self.model.config
    }

    /// The model.
    pub fn model(&self) -> &Model<Device> {
        &self.model
    }

    /// The tokenizer, or an error if the model directory has none.
    pub fn tokenizer(&self) -> Result<&Tokenizer> {
        self.tokenizer.as_ref().ok_or_else(|| {
            Error::new(
                ErrorKind::Tokenizer,
                format!("{}: no tokenizer.json", self.dir.display()),
            )
        })
    }

    /// Context length of each sequence.
    pub fn max_context(&self) -> usize {
        self.max_context
    }

    /// Number of worker threads.
    pub fn threads(&self) -> usize {
        self.pool.current_num_threads()
    }

    /// Whether `token` ends generation.
    pub fn is_eos(&self, token: u32) -> bool {
        self.model.config.eos_ids.contains(&token)
    }

    /// A new, empty sequence. Its KV cache holds the context plus room for the largest
    /// tree a step may verify (tree slots are scratch, never part of the context).
    pub fn new_sequence(&self) -> Result<Sequence> {
        Ok(Sequence {
            cache: self
                .model
                .new_cache(self.max_context + self.max_tree_tokens)?,
            tokens: Vec::new(),
            stats: SpecStats::default(),
        })
    }

    /// Runs `f` on the engine's thread pool.
    pub fn install<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        self.pool.install(f)
    }

    /// Mean negative log-likelihood (nats) of `ids`, scored in independent windows of
    /// `ctx` tokens (each window predicts its tokens 1.. from its own prefix). Returns the
    /// number of scored tokens and the mean NLL. `pass` picks the target or the draft.
    pub fn perplexity(&self, ids: &[u32], ctx: usize, pass: Pass) -> Result<(usize, f64)> {
        if pass == Pass::Draft && !self.model.has_draft() {
            return Err(Error::invalid_argument(
                "the engine was loaded without a draft",
            ));
        }
        if ctx < 2 || ctx > self.max_context {
            return Err(Error::invalid_argument(format!(
                "perplexity window must be in 2..={}, got {ctx}",
                self.max_context
            )));
        }
        if ids.len() < 2 {
            return Err(Error::invalid_argument(
                "perplexity needs at least 2 tokens",
            ));
        }
        self.model.check_tokens(ids)?;
        let vocab = self.model.config.vocab;
        let (mut total, mut count) = (0f64, 0usize);
        for window in ids.chunks(ctx).filter(|w| w.len() >= 2) {
            let mut cache = self.model.new_cache(window.len())?;
            for start in (0..window.len()).step_by(PREFILL_CHUNK) {
                let chunk = &window[start..(start + PREFILL_CHUNK).min(window.len())];
                let positions: Vec<usize> = (start..start + chunk.len()).collect();
                let rows: Vec<usize> = (0..chunk.len()).collect();
                let logits = self.install(|| {
                    self.model.forward_at(
                        &mut cache,
                        pass,
                        0,
                        chunk,
                        &positions,
                        &AttnMask::causal(chunk.len()),
                        &rows,
                    )
                })?;
                cache.commit(chunk.len());
                for (r, row) in logits.chunks_exact(vocab).enumerate() {
                    let next = start + r + 1;
                    if next < window.len() {
                        total += nll(row, window[next]);
                        count += 1;
                    }
                }
            }
        }
        Ok((count, total / count as f64))
    }
}

/// `-log softmax(logits)[target]` in f64.
pub fn nll(logits: &[f32], target: u32) -> f64 {
    log_sum_exp(logits) - logits[target as usize] as f64
}

/// `ln(sum(exp(x)))`, in f64.
fn log_sum_exp(x: &[f32]) -> f64 {
    let max = x.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)) as f64;
    max + x.iter().map(|&v| (v as f64 - max).exp()).sum::<f64>().ln()
}

/// One conversation: its tokens, KV cache and statistics.
pub struct Sequence {
    cache: KvCache<Device>,
    tokens: Vec<u32>,
    stats: SpecStats,
}

impl Sequence {
    /// Every token of the sequence (prompt and generated), in order.
    pub fn tokens(&self) -> &[u32] {
        &self.tokens
    }

    /// Number of tokens.
    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    /// Whether the sequence has no tokens.
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// Statistics of the steps so far (reset by [`Sequence::truncate`] to 0).
    pub fn stats(&self) -> &SpecStats {
        &self.stats
    }

    /// Appends tokens (a prompt or a user turn); they are run at the next step.
    pub fn append(&mut self, engine: &Engine, tokens: &[u32]) -> Result<()> {
        engine.model.check_tokens(tokens)?;
        if self.tokens.len() + tokens.len() > engine.max_context {
            return Err(Error::new(
                ErrorKind::ContextFull,
                format!(
                    "{} tokens in the sequence + {} new exceed the context length {}",
                    self.tokens.len(),
                    tokens.len(),
                    engine.max_context
                ),
            ));
        }
        self.tokens.extend_from_slice(tokens);
        Ok(())
    }

    /// Forgets everything from token `len` on (prompt reuse); `0` resets, statistics too.
    pub fn truncate(&mut self, len: usize) {
        self.tokens.truncate(len);
        self.cache.truncate(len);
        if len == 0 {
            self.stats = SpecStats::default();
        }
    }

    /// Runs the pending tokens and chooses the next token(s) as `opts` says; returns them
    /// (already appended). On error nothing changes.
    pub fn step(&mut self, engine: &Engine, opts: &StepOptions) -> Result<Vec<u32>> {
        opts.sampling.validate()?;
        if opts.speculate {
            opts.tree.validate()?;
            if opts.tree.depth >= engine.max_context {
                return Err(Error::invalid_argument(format!(
                    "tree depth {} is beyond the context length {}",
                    opts.tree.depth, engine.max_context
                )));
            }
            if opts.tree.max_tokens > engine.max_tree_tokens {
                return Err(Error::invalid_argument(format!(
                    "tree max tokens {} exceeds the engine's max_tree_tokens ({})",
                    opts.tree.max_tokens, engine.max_tree_tokens
                )));
            }
            if !engine.model.has_draft() {
                return Err(Error::invalid_argument(
                    "speculation needs a draft: load the engine with draft options",
                ));
            }
        }
        if self.tokens.is_empty() {
            return Err(Error::invalid_argument(
                "the sequence is empty: append at least one token first",
            ));
        }
        let room = engine.max_context - self.tokens.len().min(engine.max_context);
        if room == 0 {
            return Err(Error::new(
                ErrorKind::ContextFull,
                format!(
                    "the sequence has reached the context length {}",
                    engine.max_context
                ),
            ));
        }
        let limit = if opts.max_tokens == 0 {
            room
        } else {
            opts.max_tokens.min(room)
        };
        let committed = self.cache.len();
        let r = if opts.speculate && limit > 1 {
            self.speculative_step(engine, opts, limit)
        } else {
            self.plain_step(engine, &opts.sampling)
        };
        if r.is_err() {
            self.cache.truncate(committed);
        }
        r
    }

    fn plain_step(&mut self, engine: &Engine, params: &SamplingParams) -> Result<Vec<u32>> {
        let t0 = Instant::now();
        let logits = self.prefill(engine, self.tokens.len(), true)?;
        let next = sample(&logits, params, self.tokens.len());
        self.tokens.push(next);
        self.stats.verify_s += t0.elapsed().as_secs_f64();
        self.stats.record(1, 0);
        Ok(vec![next])
    }

    /// One draft-and-verify iteration emitting at most `limit` (>= 2) tokens.
    fn speculative_step(
        &mut self,
        engine: &Engine,
        opts: &StepOptions,
        limit: usize,
    ) -> Result<Vec<u32>> {
        let model = &engine.model;
        let vocab = model.config.vocab;
        // Everything but the last token goes into the cache; the last is the tree's root.
        let root_pos = self.tokens.len() - 1;
        let t0 = Instant::now();
        self.prefill(engine, root_pos, false)?;
        let prefill_s = t0.elapsed().as_secs_f64();

        // Draft: grow the tree level by level; emitting more than `limit` tokens is
        // impossible, so no path needs to be longer than `limit - 1`.
        let t0 = Instant::now();
        let tp = &opts.tree;
        let max_nodes = tp.max_tokens.min(engine.max_tree_tokens);
        let depth = tp.depth.min(limit - 1);
        let mut tree = Tree::new(self.tokens[root_pos]);
        let mut frontier = 0..1;
        let mut draft_steps = 0;
        // For the adaptive stop: the time one emitted token has cost this sequence so far.
        let s = &self.stats;
        let token_s =
            (tp.adaptive && s.generated > 0).then(|| (s.draft_s + s.verify_s) / s.generated as f64);
        for _ in 0..depth {
            let toks = &tree.tokens[frontier.clone()];
            let pos: Vec<usize> = tree.depth[frontier.clone()]
                .iter()
                .map(|d| root_pos + d)
                .collect();
            let mask = AttnMask::tree_rows(&tree.parents, frontier.clone());
            let rows: Vec<usize> = (0..toks.len()).collect();
            let cache = &mut self.cache;
            let logits = engine.install(|| {
                model.forward_at(cache, Pass::Draft, frontier.start, toks, &pos, &mask, &rows)
            })?;
            draft_steps += 1;
            let room = max_nodes - tree.len();
            frontier = tree.grow(
                frontier,
                &logits,
                vocab,
                tp.width,
                tp.draft_temperature,
                room,
            );
            if frontier.is_empty() {
                break;
            }
            if let Some(token_s) = token_s {
                // The frontier's path probability at the draft temperature: sharpened like
                // an argmax, it tracks how likely the target is to accept each path.
                let mass: f64 = frontier.clone().map(|n| (tree.score[n] as f64).exp()).sum();
                let step_s = t0.elapsed().as_secs_f64() / draft_steps as f64;
                if mass * token_s < step_s {
                    break;
                }
            }
        }
        let draft_s = t0.elapsed().as_secs_f64();

        // Verify: one target pass over the root and every tree node.
        let t0 = Instant::now();
        let pos: Vec<usize> = tree.depth.iter().map(|d| root_pos + d).collect();
        let mask = AttnMask::tree_rows(&tree.parents, 0..tree.len());
        let cache = &mut self.cache;
        let hidden = engine
            .install(|| model.forward_hidden(cache, Pass::Target, 0, &tree.tokens, &pos, &mask))?;
        let rows = &mut LazyLogits {
            engine,
            hidden: &hidden,
            tree: &tree,
            rows: Vec::new(),
            at: vec![None; tree.len()],
        };
        let walk = accept_from(&tree, rows, &opts.sampling, root_pos + 1, limit, |t| {
            engine.is_eos(t)
        })?;
        self.cache.commit_subset(&model.backend, &walk.keep())?;
        self.tokens.extend_from_slice(&walk.tokens);

        let s = &mut self.stats;
        s.draft_s += draft_s;
        s.verify_s += t0.elapsed().as_secs_f64() + prefill_s;
        s.draft_steps += draft_steps;
        s.record(walk.tokens.len(), walk.accepted());
        Ok(walk.tokens)
    }

    /// Runs every pending token but the last into the KV cache (a prompt's prefill), so
    /// that the next step's time is decoding alone. The last token stays pending, as every
    /// step expects; a step after this gives exactly what it would have without it. On an
    /// error the cache is left as it was.
    pub fn prefill_pending(&mut self, engine: &Engine) -> Result<()> {
        let (committed, upto) = (self.cache.len(), self.tokens.len().saturating_sub(1));
        if committed >= upto {
            return Ok(());
        }
        let r = self.prefill(engine, upto, false).map(drop);
        if r.is_err() {
            self.cache.truncate(committed);
        }
        r
    }

    /// Runs tokens `cache.len()..upto` (in chunks) and commits them; returns the logits of
    /// token `upto - 1` when `want_logits` (re-running it if it was already cached).
    fn prefill(&mut self, engine: &Engine, upto: usize, want_logits: bool) -> Result<Vec<f32>> {
        let model = &engine.model;
        if self.cache.len() > upto || (want_logits && self.cache.len() == upto) {
            // Already cached (after a truncate): re-run the last token for its logits.
            self.cache.truncate(upto - usize::from(want_logits));
        }
        let mut logits = Vec::new();
        while self.cache.len() < upto {
            let start = self.cache.len();
            let end = (start + PREFILL_CHUNK).min(upto);
            let chunk = &self.tokens[start..end];
            let positions: Vec<usize> = (start..end).collect();
            let last = if want_logits && end == upto {
                vec![chunk.len() - 1]
            } else {
                vec![]
            };
            let cache = &mut self.cache;
            logits = engine.install(|| {
                model.forward(
                    cache,
                    chunk,
                    &positions,
                    &AttnMask::causal(chunk.len()),
                    &last,
                )
            })?;
            self.cache.commit(chunk.len());
        }
        Ok(logits)
    }

    /// Generates up to `max_new` tokens, stopping after an end-of-sequence token; calls
    /// `on_tokens` with each step's tokens (return `false` to stop early).
    pub fn generate(
        &mut self,
        engine: &Engine,
        opts: &StepOptions,
        max_new: usize,
        mut on_tokens: impl FnMut(&[u32]) -> bool,
    ) -> Result<Vec<u32>> {
        let mut out = Vec::new();
        while out.len() < max_new && self.tokens.len() < engine.max_context {
            let step = StepOptions {
                max_tokens: max_new - out.len(),
                ..*opts
            };
            let new = self.step(engine, &step)?;
            let stop = new.iter().any(|&t| engine.is_eos(t));
            out.extend_from_slice(&new);
            if !on_tokens(&new) || stop {
                break;
            }
        }
        Ok(out)
    }
}
