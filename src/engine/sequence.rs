//! Sequences: one conversation each, with its own KV cache, on the engine it holds.
//!
//! A [`Sequence`] holds every token it has seen; the ones not yet run through the model
//! are *pending*. [`Sequence::step`] runs the pending tokens and chooses what comes next:
//! one token (plain decoding), or with speculation every token of one draft-and-verify
//! iteration (the accepted draft tokens plus the target's bonus token). The last token
//! chosen becomes the new pending token. Either way every token is exactly the one plain
//! decoding would choose. A failed call leaves the sequence exactly as it was.

use std::time::Instant;

use super::{Engine, StepOptions, PREFILL_CHUNK};
use crate::backend::{AttnMask, Backend, Device};
use crate::error::{Error, ErrorKind, Result};
use crate::model::{KvCache, Pass};
use crate::sample::{sample, SamplingParams};
use crate::spec::draft::{draft_tree, DraftLimits};
use crate::spec::{accept_from, NodeLogits, SpecStats, Tree};

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
        let model = &self.engine.shared.model;
        let vocab = model.config().vocab;
        let start = match self.at[node] {
            Some(start) => start,
            None => {
                let want = self.tree.best_path(node);
                let hidden = self.hidden;
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

/// One conversation: its engine, tokens, KV cache and statistics.
pub struct Sequence {
    engine: Engine,
    cache: KvCache<Device>,
    tokens: Vec<u32>,
    stats: SpecStats,
}

impl std::fmt::Debug for Sequence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sequence")
            .field("tokens", &self.tokens.len())
            .field("cached", &self.cache.len())
            .finish_non_exhaustive()
    }
}

impl Sequence {
    /// An empty sequence on `engine` with `cache` (see [`Engine::new_sequence`]).
    pub(super) fn new(engine: Engine, cache: KvCache<Device>) -> Sequence {
        Sequence {
            engine,
            cache,
            tokens: Vec::new(),
            stats: SpecStats::default(),
        }
    }

    /// The engine this sequence runs on.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

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
    pub fn append(&mut self, tokens: &[u32]) -> Result<()> {
        self.engine.check_tokens(tokens)?;
        let max_context = self.engine.max_context();
        if self.tokens.len() + tokens.len() > max_context {
            return Err(Error::new(
                ErrorKind::ContextFull,
                format!(
                    "{} tokens in the sequence + {} new exceed the context length {max_context}",
                    self.tokens.len(),
                    tokens.len(),
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
    pub fn step(&mut self, opts: &StepOptions) -> Result<Vec<u32>> {
        let (max_context, max_tree) = (self.engine.max_context(), self.engine.max_tree_tokens());
        opts.sampling.validate()?;
        if opts.speculate {
            opts.tree.validate()?;
            if opts.tree.depth >= max_context {
                return Err(Error::invalid_argument(format!(
                    "tree depth {} is beyond the context length {max_context}",
                    opts.tree.depth
                )));
            }
            if opts.tree.max_tokens > max_tree {
                return Err(Error::invalid_argument(format!(
                    "tree max tokens {} exceeds the engine's max_tree_tokens ({max_tree})",
                    opts.tree.max_tokens
                )));
            }
            if !self.engine.shared.model.has_draft() {
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
        let room = max_context - self.tokens.len().min(max_context);
        if room == 0 {
            return Err(Error::new(
                ErrorKind::ContextFull,
                format!("the sequence has reached the context length {max_context}"),
            ));
        }
        let limit = if opts.max_tokens == 0 {
            room
        } else {
            opts.max_tokens.min(room)
        };
        let committed = self.cache.len();
        let r = if opts.speculate && limit > 1 {
            self.speculative_step(opts, limit)
        } else {
            self.plain_step(&opts.sampling)
        };
        if r.is_err() {
            self.cache.truncate(committed);
        }
        r
    }

    fn plain_step(&mut self, params: &SamplingParams) -> Result<Vec<u32>> {
        let t0 = Instant::now();
        let logits = self.prefill(self.tokens.len(), true)?;
        let next = sample(&logits, params, self.tokens.len());
        self.tokens.push(next);
        self.stats.verify_s += t0.elapsed().as_secs_f64();
        self.stats.record(1, 0);
        Ok(vec![next])
    }

    /// One draft-and-verify iteration emitting at most `limit` (>= 2) tokens.
    fn speculative_step(&mut self, opts: &StepOptions, limit: usize) -> Result<Vec<u32>> {
        let engine = self.engine.clone();
        let model = &engine.shared.model;
        // Everything but the last token goes into the cache; the last is the tree's root.
        let root_pos = self.tokens.len() - 1;
        let t0 = Instant::now();
        self.prefill(root_pos, false)?;
        let prefill_s = t0.elapsed().as_secs_f64();

        // Draft: grow the tree level by level; emitting more than `limit` tokens is
        // impossible, so no path needs to be longer than `limit - 1`.
        let t0 = Instant::now();
        let tp = &opts.tree;
        let s = &self.stats;
        let limits = DraftLimits {
            depth: tp.depth.min(limit - 1),
            max_nodes: tp.max_tokens.min(engine.max_tree_tokens()),
            // For the adaptive stop: the time one emitted token has cost so far.
            token_s: (tp.adaptive && s.generated > 0)
                .then(|| (s.draft_s + s.verify_s) / s.generated as f64),
        };
        let cache = &mut self.cache;
        let vocab = model.config().vocab;
        let draft = draft_tree(self.tokens[root_pos], root_pos, vocab, tp, &limits, |b| {
            let rows: Vec<usize> = (0..b.tokens.len()).collect();
            engine.install(|| {
                model.forward_at(
                    cache,
                    Pass::Draft,
                    b.first,
                    b.tokens,
                    &b.positions,
                    &b.mask,
                    &rows,
                )
            })
        })?;
        let draft_s = t0.elapsed().as_secs_f64();

        // Verify: one target pass over the root and every tree node.
        let t0 = Instant::now();
        let tree = &draft.tree;
        let pos: Vec<usize> = (0..tree.len()).map(|n| root_pos + tree.depth(n)).collect();
        let mask = AttnMask::tree_rows(tree.parents(), 0..tree.len());
        let cache = &mut self.cache;
        let hidden = engine
            .install(|| model.forward_hidden(cache, Pass::Target, 0, tree.tokens(), &pos, &mask))?;
        let rows = &mut LazyLogits {
            engine: &engine,
            hidden: &hidden,
            tree,
            rows: Vec::new(),
            at: vec![None; tree.len()],
        };
        let walk = accept_from(tree, rows, &opts.sampling, root_pos + 1, limit, |t| {
            engine.is_eos(t)
        })?;
        self.cache.commit_subset(model.backend(), &walk.keep())?;
        self.tokens.extend_from_slice(&walk.tokens);

        let s = &mut self.stats;
        s.draft_s += draft_s;
        s.verify_s += t0.elapsed().as_secs_f64() + prefill_s;
        s.draft_steps += draft.steps;
        s.record(walk.tokens.len(), walk.accepted());
        Ok(walk.tokens)
    }

    /// Runs every pending token but the last into the KV cache (a prompt's prefill), so
    /// that the next step's time is decoding alone. The last token stays pending, as every
    /// step expects; a step after this gives exactly what it would have without it. On an
    /// error the cache is left as it was.
    pub fn prefill_pending(&mut self) -> Result<()> {
        let (committed, upto) = (self.cache.len(), self.tokens.len().saturating_sub(1));
        if committed >= upto {
            return Ok(());
        }
        let r = self.prefill(upto, false).map(drop);
        if r.is_err() {
            self.cache.truncate(committed);
        }
        r
    }

    /// Runs tokens `cache.len()..upto` (in chunks) and commits them; returns the logits of
    /// token `upto - 1` when `want_logits` (re-running it if it was already cached).
    fn prefill(&mut self, upto: usize, want_logits: bool) -> Result<Vec<f32>> {
        let engine = &self.engine;
        let model = &engine.shared.model;
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
        opts: &StepOptions,
        max_new: usize,
        mut on_tokens: impl FnMut(&[u32]) -> bool,
    ) -> Result<Vec<u32>> {
        let mut out = Vec::new();
        while out.len() < max_new && self.tokens.len() < self.engine.max_context() {
            let step = StepOptions {
                max_tokens: max_new - out.len(),
                ..*opts
            };
            let new = self.step(&step)?;
            let stop = new.iter().any(|&t| self.engine.is_eos(t));
            out.extend_from_slice(&new);
            if !on_tokens(&new) || stop {
                break;
            }
        }
        Ok(out)
    }
}
