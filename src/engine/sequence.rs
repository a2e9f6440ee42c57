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
use crate::model::{DraftWork, KvCache, Pass, Segment};
use crate::sample::{sample, SamplingParams};
use crate::spec::draft::{DraftLimits, Grower};
use crate::spec::tune::{self, Acceptance};
use crate::spec::{accept_from, NodeLogits, SpecStats, Tree, Walk};
use crate::util::AbortHandle;

/// A verified tree and the target's residual stream of its nodes; a node's logits are
/// computed as a walk asks for them. Asked for a node it has no row for, it computes that
/// node's draft-likeliest path ([`Tree::best_path`]) in one lm_head product, so a walk that
/// follows the draft's best guess costs one product of depth + 1 rows instead of one of
/// every tree node (33 rows: ~95 ms on the CPU for Qwen2.5-0.5B). A row's logits are the
/// same bits however rows are batched, so no token changes. A plain pass (no draft) is a
/// tree of the root alone with its row given.
struct Verified {
    tree: Tree,
    /// The pass's residual stream, one row per node; `None` when every row is given.
    hidden: Option<<Device as Backend>::Act>,
    /// Rows computed so far (since the walk last left the computed path), in order.
    rows: Vec<f32>,
    /// Where each node's row starts in `rows`.
    at: Vec<Option<usize>>,
}

impl Verified {
    /// Where node `node`'s row starts in `rows`, computing it if needed.
    fn ensure(&mut self, engine: &Engine, node: usize) -> Result<usize> {
        if let Some(start) = self.at[node] {
            return Ok(start);
        }
        let model = &engine.shared.model;
        let vocab = model.config().vocab;
        let hidden = self.hidden.as_ref().ok_or_else(|| {
            Error::internal(format!(
                "no residual stream to compute node {node}'s logits"
            ))
        })?;
        let want = self.tree.best_path(node);
        let l = engine.install(|| model.logits(Pass::Target, hidden, &want))?;
        // A walk (ours or the host's) never goes back to a node it left: the rows computed
        // before are done with, and the buffer holds one path's rows at most.
        self.rows.clear();
        self.at.fill(None);
        self.give(&want, &l, vocab);
        Ok(self.at[node].unwrap_or(0))
    }

    /// Takes the logits of `nodes` computed elsewhere (a batched step computes every
    /// sequence's likeliest path in one product), `vocab` per node, in order.
    fn give(&mut self, nodes: &[usize], logits: &[f32], vocab: usize) {
        self.rows.reserve_exact(logits.len());
        for (i, &n) in nodes.iter().enumerate() {
            self.at[n] = Some(self.rows.len() + i * vocab);
        }
        self.rows.extend_from_slice(logits);
    }

    /// Node `node`'s logits.
    fn row(&mut self, engine: &Engine, node: usize) -> Result<&[f32]> {
        let vocab = engine.shared.model.config().vocab;
        let start = self.ensure(engine, node)?;
        Ok(&self.rows[start..start + vocab])
    }
}

/// [`Verified`] as the acceptance walk reads it.
struct LazyLogits<'a> {
    engine: &'a Engine,
    verified: &'a mut Verified,
}

/// The grower deepens the tree during a target pass ([`Sequence::draft_and_verify`]).
impl DraftWork for Grower {
    fn next(&mut self) -> Option<(usize, Vec<u32>, Vec<usize>, crate::backend::AttnMask)> {
        let b = self.batch()?;
        Some((b.first, b.tokens.to_vec(), b.positions, b.mask))
    }

    fn done(&mut self, logits: Vec<f32>) {
        self.feed(&logits);
    }
}

impl NodeLogits for LazyLogits<'_> {
    fn row(&mut self, node: usize) -> Result<&[f32]> {
        self.verified.row(self.engine, node)
    }
}

/// A draft-and-verify pass ready to be walked, with its timings.
struct Pending {
    verified: Verified,
    /// Whether a tree was drafted (its scratch K/V must be compacted on commit); `false`:
    /// a plain pass whose K/V is committed already.
    speculative: bool,
    /// Pending tokens that went through the pass before the root (their K/V in the first
    /// scratch slots, committed with the walk's).
    prefix: usize,
    /// Scratch slot of the pass's first token (after the draft's region when it drafted).
    verify_at: usize,
    /// The draft's tree, grown on during the pass, and its frontier: what the next step
    /// may start from ([`Carry`]).
    grown: Option<(Tree, std::ops::Range<usize>)>,
    draft_s: f64,
    verify_s: f64,
    draft_steps: usize,
    overlapped_steps: usize,
    reused: bool,
}

/// Nodes the draft grew during a pass beyond the tree it verified, kept for the next
/// step: the subtree under the token the step emitted last (its root), their draft K/V in
/// scratch slots `0..tree.len()` (the draft's region, in node order), the frontier's not
/// computed yet. Valid while the sequence and its cache have the lengths `at`.
struct Carry {
    tree: Tree,
    frontier: std::ops::Range<usize>,
    at: (usize, usize),
}

/// A drafted tree waiting for its target pass.
struct Drafted {
    tree: Tree,
    /// Position of the tree's root (the last token of the sequence).
    root_pos: usize,
    /// Pending tokens before the root that run in the same pass (then the tree is the
    /// root alone: a plain step whose prompt joins a batched pass).
    prefix: Vec<u32>,
    /// Scratch slot of the pass's first token: after the draft's region when a tree was
    /// drafted (its K/V stays for the draft to go on from), else 0.
    verify_at: usize,
    prefill_s: f64,
    draft_s: f64,
    draft_steps: usize,
    /// Whether the tree started from a [`Carry`].
    reused: bool,
}

impl Drafted {
    /// Tokens, positions and attention mask of the pass: the prefix and root as a chain,
    /// or the tree's nodes.
    fn verify_input(&self) -> (Vec<u32>, Vec<usize>, AttnMask) {
        let t = &self.tree;
        if !self.prefix.is_empty() {
            let p = self.prefix.len();
            let mut tokens = self.prefix.clone();
            tokens.push(t.tokens()[0]);
            let pos = (self.root_pos - p..=self.root_pos).collect();
            return (tokens, pos, AttnMask::causal(p + 1));
        }
        let pos = (0..t.len()).map(|n| self.root_pos + t.depth(n)).collect();
        (
            t.tokens().to_vec(),
            pos,
            AttnMask::tree_rows(t.parents(), 0..t.len()).shifted(self.verify_at),
        )
    }

    /// The pass, given the target's residual stream of the tree's nodes, which took
    /// `verify_s`.
    fn verified(self, hidden: <Device as Backend>::Act, verify_s: f64) -> Pending {
        let at = vec![None; self.tree.len()];
        Pending {
            verified: Verified {
                tree: self.tree,
                hidden: Some(hidden),
                rows: Vec::new(),
                at,
            },
            speculative: true,
            prefix: self.prefix.len(),
            verify_at: self.verify_at,
            grown: None,
            draft_s: self.draft_s,
            verify_s: verify_s + self.prefill_s,
            draft_steps: self.draft_steps,
            overlapped_steps: 0,
            reused: self.reused,
        }
    }
}

/// A sequence of a batched step before the drafting: its tree drafted already (or no tree
/// to draft), or growing with the others' (the tree's root position).
enum Prepared {
    Drafted(Drafted),
    Grow(Grower, usize),
}

/// An open host-sampled iteration (see [`Sequence::begin`]).
struct Open {
    pass: Pending,
    /// Sequence and committed-cache lengths before [`Sequence::begin`] (for a cancel).
    len_before: usize,
    cached_before: usize,
    /// The node whose successor the host samples next; `None` once a push ended the walk.
    node: Option<usize>,
    walk: Walk,
}

fn no_iteration() -> Error {
    Error::new(
        ErrorKind::InvalidState,
        "no host-sampled iteration is open on this sequence (begin one first)",
    )
}

fn iteration_open(what: &str) -> Error {
    Error::new(
        ErrorKind::InvalidState,
        format!("cannot {what} while a host-sampled iteration is open: end or cancel it first"),
    )
}

/// One conversation: its engine, tokens, KV cache and statistics.
pub struct Sequence {
    engine: Engine,
    cache: KvCache<Device>,
    tokens: Vec<u32>,
    stats: SpecStats,
    open: Option<Open>,
    /// Acceptance by depth, for depths chosen by measured cost.
    acceptance: Acceptance,
    /// What the last step's draft grew beyond its verified tree. Every call but
    /// [`Sequence::step`] that may run a forward drops it (its K/V would be overwritten).
    carry: Option<Carry>,
    /// Depth of the last verified tree (the levels its walk could accept).
    last_depth: usize,
}

impl std::fmt::Debug for Sequence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sequence")
            .field("tokens", &self.tokens.len())
            .field("cached", &self.cache.len())
            .finish_non_exhaustive()
    }
}

impl Drop for Sequence {
    fn drop(&mut self) {
        self.engine
            .shared
            .live
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Sequence {
    /// An empty sequence on `engine` with `cache` (see [`Engine::new_sequence`]).
    pub(super) fn new(engine: Engine, cache: KvCache<Device>) -> Sequence {
        Sequence {
            acceptance: engine.acceptance(),
            engine,
            cache,
            tokens: Vec::new(),
            stats: SpecStats::default(),
            open: None,
            carry: None,
            last_depth: 0,
        }
    }

    /// The flag that stops this sequence's running call from another thread: before its
    /// next decoder layer (so between draft steps too), with `ErrorKind::Aborted` and the
    /// sequence as before the call. See [`AbortHandle`].
    pub fn abort_handle(&self) -> AbortHandle {
        self.cache.abort_handle().clone()
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

    /// How many of the tokens have their KV in the cache; the rest run at the next step.
    /// After [`Sequence::truncate`] to a prefix, what that prefix keeps (a server reusing
    /// a sequence for a prompt that starts the same way runs only the rest).
    pub fn cached(&self) -> usize {
        self.cache.len()
    }

    /// Nodes of the tree the last step's draft grew on during its pass and kept for the
    /// next step (0: none). For tests, through `internals::carried_nodes`.
    pub(crate) fn carried_nodes(&self) -> usize {
        self.carry.as_ref().map_or(0, |c| c.tree.len())
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
        self.carry = None;
        self.tokens.extend_from_slice(tokens);
        Ok(())
    }

    /// Forgets everything from token `len` on (prompt reuse); `0` resets, statistics too.
    /// An open host-sampled iteration is cancelled first ([`Sequence::cancel`]).
    pub fn truncate(&mut self, len: usize) {
        if self.open.is_some() {
            self.cancel_open();
        }
        self.carry = None;
        self.tokens.truncate(len);
        self.cache.truncate(len);
        if len == 0 {
            self.stats = SpecStats::default();
            self.acceptance = self.engine.acceptance();
        }
    }

    /// Runs the pending tokens and chooses the next token(s) as `opts` says; returns them
    /// (already appended). On error nothing changes. `InvalidState` while a host-sampled
    /// iteration is open.
    pub fn step(&mut self, opts: &StepOptions) -> Result<Vec<u32>> {
        let carry = self.carry.take();
        let limit = self.step_limit(opts)?;
        let committed = self.cache.len();
        let r = if opts.speculate && limit > 1 && opts.tree.auto_depth {
            self.auto_depth_step(opts, limit, carry)
        } else if opts.speculate && limit > 1 {
            self.speculative_step(opts, limit, carry)
        } else {
            self.plain_step(&opts.sampling)
        };
        if r.is_err() {
            self.cache.truncate(committed);
        }
        r
    }

    /// The checks of a step with `opts` (no host-sampled iteration open, the sampling and
    /// [`Sequence::check_pass`]'s); returns how many tokens it may emit at most.
    fn step_limit(&self, opts: &StepOptions) -> Result<usize> {
        if self.open.is_some() {
            return Err(iteration_open("step"));
        }
        opts.sampling.validate()?;
        self.check_pass(opts)
    }

    /// Pending tokens a batched step runs (see [`Sequence::prepare_batched`]): all not
    /// yet cached, the last (the tree's root) at least.
    fn batch_pending(&self) -> usize {
        self.tokens.len() - self.cache.len().min(self.tokens.len() - 1)
    }

    /// Checks `opts`' tree fields against the engine and the sequence against the context;
    /// returns how many tokens the next pass may emit at most.
    fn check_pass(&self, opts: &StepOptions) -> Result<usize> {
        let (max_context, max_tree) = (self.engine.max_context(), self.engine.max_tree_tokens());
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
        Ok(if opts.max_tokens == 0 {
            room
        } else {
            opts.max_tokens.min(room)
        })
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

    /// A step whose depth (`0`: plain) maximises expected tokens per second
    /// ([`TreeParams::auto_depth`](crate::TreeParams::auto_depth)); after
    /// a run of plain steps, one speculative iteration measures the acceptance again
    /// ([`Acceptance::explore`]).
    fn auto_depth_step(
        &mut self,
        opts: &StepOptions,
        limit: usize,
        carry: Option<Carry>,
    ) -> Result<Vec<u32>> {
        let costs = self.engine.tree_costs()?;
        let t = &opts.tree;
        let (explore, observed) = (self.acceptance.explore(), self.engine.observed());
        // (a plain step when one is to be timed, unless this step explores speculation)
        let most = if !explore && observed.wants_plain() {
            0
        } else {
            t.depth.min(limit - 1)
        };
        let choice = tune::best_depth(
            &costs,
            &self.acceptance,
            &observed,
            t.width,
            (explore as usize, most),
            t.max_tokens.min(self.engine.max_tree_tokens()),
        );
        let (depth, before, t0) = (choice.depth, self.stats.accepted, Instant::now());
        let out = if depth == 0 {
            self.plain_step(&opts.sampling)?
        } else {
            self.speculative_step(&opts.with_tree(t.with_depth(depth)), limit, carry)?
        };
        // (a step cut short costs less than predicted: only whole ones are timed)
        if !self.cut_short(&out, limit) {
            let s = t0.elapsed().as_secs_f64();
            self.engine.observe(depth, choice.predicted_s, s);
        }
        self.chose_depth(depth, explore, before, &out, limit);
        Ok(out)
    }

    /// Records a step whose depth was chosen by cost (`0`: plain; `exploring`: forced by
    /// [`Acceptance::explore`]) that emitted `out` of at most `limit` tokens; `before`:
    /// the accepted tokens counted before it.
    fn chose_depth(
        &mut self,
        depth: usize,
        exploring: bool,
        before: usize,
        out: &[u32],
        limit: usize,
    ) {
        if depth > 0 {
            let accepted = self.stats.accepted - before;
            // A walk cut short tried no deeper level.
            let drafted = self.last_depth;
            let cut = self.cut_short(out, limit);
            self.acceptance
                .record(if cut { drafted.min(accepted) } else { drafted }, accepted);
        }
        self.acceptance.chose(depth, exploring);
        self.engine.keep_acceptance(&self.acceptance);
    }

    /// Whether a step that emitted `out` of at most `limit` tokens was cut short by the
    /// token limit or an end token.
    fn cut_short(&self, out: &[u32], limit: usize) -> bool {
        out.len() >= limit || out.last().is_some_and(|&t| self.engine.is_eos(t))
    }

    /// One draft-and-verify iteration emitting at most `limit` (>= 2) tokens, its tree
    /// started from `carry` when that is still valid; keeps what the draft grew during
    /// the pass under the last emitted token for the next.
    fn speculative_step(
        &mut self,
        opts: &StepOptions,
        limit: usize,
        carry: Option<Carry>,
    ) -> Result<Vec<u32>> {
        let pass = self.draft_and_verify(opts, limit, carry, true)?;
        self.finish(pass, opts, limit)
    }

    /// Walks a verified pass (accepts what the target agrees with, at most `limit`
    /// tokens) and commits the walk.
    fn finish(&mut self, mut pass: Pending, opts: &StepOptions, limit: usize) -> Result<Vec<u32>> {
        let engine = self.engine.clone();
        let root_pos = self.tokens.len() - 1;
        let t0 = Instant::now();
        let rows = &mut LazyLogits {
            engine: &engine,
            verified: &mut pass.verified,
        };
        let walk = accept_from(
            &rows.verified.tree.clone(),
            rows,
            &opts.sampling,
            root_pos + 1,
            limit,
            |t| engine.is_eos(t),
        )?;
        pass.verify_s += t0.elapsed().as_secs_f64();
        let grown = pass.grown.take();
        let verified = pass.verified.tree.len();
        self.commit_walk(pass, &walk)?;
        if let Some((tree, frontier)) = grown {
            self.keep_carry(tree, frontier, verified, &walk);
        }
        Ok(walk.tokens)
    }

    /// After a walk's commit, keeps the subtree of `tree` (the draft's, grown during the
    /// pass past its first `verified` nodes down to `frontier`) under the walk's last
    /// token, if the draft grew one: the target's token after the accepted path was a
    /// child the draft added during the pass. Its K/V moves to the start of the draft's
    /// region. The step is committed already: should the move fail, nothing is kept.
    fn keep_carry(
        &mut self,
        tree: Tree,
        frontier: std::ops::Range<usize>,
        verified: usize,
        walk: &Walk,
    ) {
        // A bonus token ends the walk (not the token limit, not a node of the tree).
        let bonus = walk.nodes.len() + 1 == walk.tokens.len();
        let Some(&last) = walk.tokens.last().filter(|_| bonus) else {
            return;
        };
        let parent = walk.nodes.last().copied().unwrap_or(0);
        let child = tree.child(parent, last);
        // The walk took every verified child it could, so a match is a node grown during
        // the pass: past the verified nodes, and the committed path's slots.
        let Some(root) = child.filter(|&c| c >= verified && !self.engine.is_eos(last)) else {
            return;
        };
        let (sub, from) = tree.subtree(root);
        let committed = walk.nodes.len() + 1;
        let src: Vec<usize> = from.iter().map(|&n| n - committed).collect();
        let backend = self.engine.shared.model.backend();
        if self.cache.keep_scratch(backend, &src).is_err() {
            return;
        }
        let f = from.partition_point(|&n| n < frontier.start)..sub.len();
        self.carry = Some(Carry {
            tree: sub,
            frontier: f,
            at: (self.tokens.len(), self.cache.len()),
        });
    }

    /// Keeps the K/V of `walk`'s accepted path, appends its tokens and records the pass.
    fn commit_walk(&mut self, pass: Pending, walk: &Walk) -> Result<()> {
        if pass.speculative && !walk.tokens.is_empty() {
            let backend = self.engine.shared.model.backend();
            let p = pass.prefix;
            let keep: Vec<usize> = (0..p)
                .chain(walk.keep().into_iter().map(|k| p + k))
                .map(|j| pass.verify_at + j)
                .collect();
            self.cache.commit_subset(backend, &keep)?;
        }
        self.tokens.extend_from_slice(&walk.tokens);
        let t = &pass.verified.tree;
        self.last_depth = t.depth(t.len() - 1);
        let s = &mut self.stats;
        s.draft_s += pass.draft_s;
        s.verify_s += pass.verify_s;
        s.draft_steps += pass.draft_steps + pass.overlapped_steps;
        s.overlapped_steps += pass.overlapped_steps;
        s.reused_trees += usize::from(pass.reused);
        if !walk.tokens.is_empty() {
            s.record(walk.tokens.len(), walk.accepted());
        }
        Ok(())
    }

    /// Runs the pending tokens but the last into the cache, drafts a tree from the last
    /// (from `carry` when it is still valid; no path longer than `limit - 1`: no walk may
    /// emit more than `limit` tokens) and verifies it in one target pass. With `deepen`,
    /// on an engine whose passes wait for streamed layers, the draft grows the tree on
    /// meanwhile (the pass's `grown`). The tree's K/V is left in the cache's scratch.
    fn draft_and_verify(
        &mut self,
        opts: &StepOptions,
        limit: usize,
        carry: Option<Carry>,
        deepen: bool,
    ) -> Result<Pending> {
        let engine = self.engine.clone();
        let model = &engine.shared.model;
        let (drafted, grower) = self.draft(opts, limit, carry)?;
        // Verify: one target pass over the root and every tree node.
        let t0 = Instant::now();
        let (tokens, pos, mask) = drafted.verify_input();
        let first = drafted.verify_at;
        let depth = self.draft_limits(opts, limit).depth + opts.tree.depth;
        let cache = &mut self.cache;
        let Some(mut g) = grower.filter(|_| deepen && engine.drafts_during_passes()) else {
            let hidden = engine.install(|| {
                model.forward_hidden(cache, Pass::Target, first, &tokens, &pos, &mask, None)
            })?;
            return Ok(drafted.verified(hidden, t0.elapsed().as_secs_f64()));
        };
        // While the pass waits for a streamed layer, one draft layer at a time deepens
        // the tree from its frontier, in the draft's region (slots below `first`).
        g.set_limits(&DraftLimits {
            depth,
            max_nodes: first,
            token_s: None,
        });
        let (hidden, steps) = engine.install(|| {
            model.forward_hidden_drafting(cache, first, &tokens, &pos, &mask, &mut g)
        })?;
        let mut pass = drafted.verified(hidden, t0.elapsed().as_secs_f64());
        pass.overlapped_steps = steps;
        pass.grown = Some(g.into_parts());
        Ok(pass)
    }

    /// The first half of [`Sequence::draft_and_verify`]: the pending tokens but the last
    /// into the cache, then the tree drafted from the last (a tree of the root alone when
    /// `opts` does not speculate or `limit` is 1: a plain step's pass), and the grower
    /// that drafted it.
    fn draft(
        &mut self,
        opts: &StepOptions,
        limit: usize,
        carry: Option<Carry>,
    ) -> Result<(Drafted, Option<Grower>)> {
        let engine = self.engine.clone();
        let model = &engine.shared.model;
        // Everything but the last token goes into the cache; the last is the tree's root.
        let root_pos = self.tokens.len() - 1;
        let t0 = Instant::now();
        self.prefill(root_pos, false)?;
        let prefill_s = t0.elapsed().as_secs_f64();
        if !opts.speculate || limit < 2 {
            let d = Drafted {
                tree: Tree::new(self.tokens[root_pos]),
                root_pos,
                prefix: Vec::new(),
                verify_at: 0,
                prefill_s,
                draft_s: 0.0,
                draft_steps: 0,
                reused: false,
            };
            return Ok((d, None));
        }

        // Draft: grow the tree level by level, in scratch slots `0..` (node order), from
        // where the last step's draft left off if it grew this far.
        let t0 = Instant::now();
        let tp = &opts.tree;
        let limits = self.draft_limits(opts, limit);
        let vocab = model.draft_vocab();
        let carry = carry.filter(|c| c.at == (self.tokens.len(), self.cache.len()));
        let reused = carry.is_some();
        let mut g = match carry {
            Some(c) => Grower::resume(c.tree, c.frontier, root_pos, vocab, tp, &limits),
            None => Grower::new(self.tokens[root_pos], root_pos, vocab, tp, &limits),
        };
        let cache = &mut self.cache;
        while let Some(b) = g.batch() {
            let rows: Vec<usize> = (0..b.tokens.len()).collect();
            let logits = engine.install(|| {
                model.forward_at(
                    cache,
                    Pass::Draft,
                    b.first,
                    b.tokens,
                    &b.positions,
                    &b.mask,
                    &rows,
                )
            })?;
            g.feed(&logits);
        }
        // A tree started from a carry may be deeper or larger than this step verifies.
        let n = g.tree().prefix_len(limits.depth, limits.max_nodes);
        let d = Drafted {
            tree: g.tree().truncated(n),
            root_pos,
            prefix: Vec::new(),
            verify_at: engine.max_tree_tokens(),
            prefill_s,
            draft_s: t0.elapsed().as_secs_f64(),
            draft_steps: g.steps(),
            reused,
        };
        Ok((d, Some(g)))
    }

    /// How far this step's tree may grow: `opts`' depth and size, no path longer than
    /// `limit - 1`, and with the adaptive stop the time one emitted token has cost so far.
    fn draft_limits(&self, opts: &StepOptions, limit: usize) -> DraftLimits {
        let (tp, s) = (&opts.tree, &self.stats);
        DraftLimits {
            depth: tp.depth.min(limit - 1),
            max_nodes: tp.max_tokens.min(self.engine.max_tree_tokens()),
            token_s: (tp.adaptive && s.generated > 0)
                .then(|| (s.draft_s + s.verify_s) / s.generated as f64),
        }
    }

    /// Opens a host-sampled iteration: appends `input` (may be empty if the sequence is
    /// not), then with `opts.speculate` drafts a tree (shaped by `opts.tree`) and verifies
    /// it in one target pass, or else runs the target alone. `opts.sampling` is ignored:
    /// the host samples. The iteration is then at the position after the last token: read
    /// its logits with [`Sequence::logits`], choose a token, [`Sequence::push`] it while
    /// `push` returns `true`, then [`Sequence::end`] (or [`Sequence::cancel`]).
    ///
    /// Every logits row is the target's own at its position, so a host sampler driven this
    /// way emits exactly the tokens it would emit in plain decoding. On error nothing
    /// changes (input not appended, no iteration open); `InvalidState` if one is open.
    pub fn begin(&mut self, input: &[u32], opts: &StepOptions) -> Result<()> {
        if self.open.is_some() {
            return Err(iteration_open("begin another iteration"));
        }
        let (len_before, cached_before) = (self.tokens.len(), self.cache.len());
        self.append(input)?;
        let r = self.check_pass(opts).and_then(|limit| {
            if opts.speculate && limit > 1 {
                self.draft_and_verify(opts, limit, None, false)
            } else {
                let t0 = Instant::now();
                let root = self.tokens[self.tokens.len() - 1];
                let rows = self.prefill(self.tokens.len(), true)?;
                Ok(Pending {
                    verified: Verified {
                        tree: Tree::new(root),
                        hidden: None,
                        rows,
                        at: vec![Some(0)],
                    },
                    speculative: false,
                    prefix: 0,
                    verify_at: 0,
                    grown: None,
                    draft_s: 0.0,
                    verify_s: t0.elapsed().as_secs_f64(),
                    draft_steps: 0,
                    overlapped_steps: 0,
                    reused: false,
                })
            }
        });
        match r {
            Ok(pass) => {
                self.open = Some(Open {
                    pass,
                    len_before,
                    cached_before,
                    node: Some(0),
                    walk: Walk {
                        tokens: Vec::new(),
                        nodes: Vec::new(),
                    },
                });
                Ok(())
            }
            Err(e) => {
                self.tokens.truncate(len_before);
                self.cache.truncate(cached_before);
                Err(e)
            }
        }
    }

    /// Whether a host-sampled iteration is open ([`Sequence::begin`] .. `end`/`cancel`).
    pub fn is_iterating(&self) -> bool {
        self.open.is_some()
    }

    /// The open iteration, at a position whose logits are known.
    fn current(&mut self) -> Result<(&mut Open, usize)> {
        let open = self.open.as_mut().ok_or_else(no_iteration)?;
        match open.node {
            Some(node) => Ok((open, node)),
            None => Err(Error::new(
                ErrorKind::InvalidState,
                "the iteration has ended (the last pushed token was not in the verified                  tree): end it and begin the next",
            )),
        }
    }

    /// The target's exact logits (`vocab` floats) at the open iteration's current
    /// position, computed on demand. `InvalidState` if no iteration is open or it has
    /// ended (a push returned `false`); nothing changes on error.
    pub fn logits(&mut self) -> Result<&[f32]> {
        let engine = self.engine.clone();
        let (open, node) = self.current()?;
        let t0 = Instant::now();
        open.pass.verified.ensure(&engine, node)?;
        open.pass.verify_s += t0.elapsed().as_secs_f64();
        open.pass.verified.row(&engine, node)
    }

    /// The `n` most likely tokens at the open iteration's current position with their
    /// log-probabilities (log-softmax of [`Sequence::logits`]), most likely first, ties by
    /// lower id; fewer if the vocabulary is smaller. Errors as [`Sequence::logits`].
    pub fn top_logprobs(&mut self, n: usize) -> Result<Vec<(u32, f32)>> {
        Ok(crate::sample::top_logprobs(self.logits()?, n))
    }

    /// The host chose `token` at the current position: it joins the sequence at once.
    /// Returns `true` if it is a child in the verified tree (the next position's logits
    /// are known: sample again), `false` if it ends the iteration (its K/V is computed by
    /// the next pass; only [`Sequence::end`] or [`Sequence::cancel`] may follow).
    /// Errors, each leaving the iteration unchanged: `InvalidState` (none open, or it has
    /// ended), `InvalidToken` (outside the vocabulary), `ContextFull` (the sequence is at
    /// the context length).
    pub fn push(&mut self, token: u32) -> Result<bool> {
        let (len, max_context) = (self.tokens.len(), self.engine.max_context());
        let engine = self.engine.clone();
        let (open, node) = self.current()?;
        engine.check_tokens(&[token])?;
        if len >= max_context {
            return Err(Error::new(
                ErrorKind::ContextFull,
                format!("the sequence has reached the context length {max_context}"),
            ));
        }
        let child = open.pass.verified.tree.child(node, token);
        open.walk.tokens.push(token);
        open.walk.nodes.extend(child);
        open.node = child;
        self.tokens.push(token);
        Ok(child.is_some())
    }

    /// Commits the open iteration: the sequence keeps its input and every pushed token,
    /// the K/V of the accepted path is kept and the rest of the tree dropped, statistics
    /// are updated. Returns the number of tokens pushed (0 is valid: the input is
    /// committed). `InvalidState` if none is open (nothing changes). Should keeping the
    /// K/V fail (a device error), the iteration is cancelled instead: the sequence is as
    /// before [`Sequence::begin`].
    pub fn end(&mut self) -> Result<usize> {
        let open = self.open.take().ok_or_else(no_iteration)?;
        let n = open.walk.tokens.len();
        // `commit_walk` appends the pushed tokens itself.
        self.tokens.truncate(self.tokens.len() - n);
        let (len_before, cached_before) = (open.len_before, open.cached_before);
        if let Err(e) = self.commit_walk(open.pass, &open.walk) {
            self.tokens.truncate(len_before);
            self.cache.truncate(cached_before);
            return Err(e);
        }
        Ok(n)
    }

    /// Abandons the open iteration: the sequence is exactly as before [`Sequence::begin`]
    /// (its input and pushed tokens dropped, statistics unchanged). `InvalidState` if
    /// none is open.
    pub fn cancel(&mut self) -> Result<()> {
        if self.open.is_none() {
            return Err(no_iteration());
        }
        self.cancel_open();
        Ok(())
    }

    fn cancel_open(&mut self) {
        if let Some(open) = self.open.take() {
            self.tokens.truncate(open.len_before);
            self.cache.truncate(open.cached_before);
        }
    }

    /// Plain exact logits: appends `input` (may be empty if the sequence is not), runs the
    /// target alone over the pending tokens and returns the logits of the next position
    /// (`vocab` floats). The tokens stay in the sequence; nothing is sampled. On error
    /// nothing changes; `InvalidState` while an iteration is open.
    pub fn eval(&mut self, input: &[u32]) -> Result<Vec<f32>> {
        if self.open.is_some() {
            return Err(iteration_open("eval"));
        }
        let (len_before, cached_before) = (self.tokens.len(), self.cache.len());
        self.append(input)?;
        let t0 = Instant::now();
        let r = if self.tokens.is_empty() {
            Err(Error::invalid_argument(
                "the sequence is empty: pass at least one input token",
            ))
        } else {
            self.prefill(self.tokens.len(), true)
        };
        match r {
            Ok(logits) => {
                self.stats.verify_s += t0.elapsed().as_secs_f64();
                Ok(logits)
            }
            Err(e) => {
                self.tokens.truncate(len_before);
                self.cache.truncate(cached_before);
                Err(e)
            }
        }
    }

    /// Runs every pending token but the last into the KV cache (a prompt's prefill), so
    /// that the next step's time is decoding alone. The last token stays pending, as every
    /// step expects; a step after this gives exactly what it would have without it. On an
    /// error the cache is left as it was.
    pub fn prefill_pending(&mut self) -> Result<()> {
        if self.open.is_some() {
            return Err(iteration_open("prefill"));
        }
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

impl Sequence {
    /// What [`Engine::step_batch`] does for one sequence before the shared target pass:
    /// the checks of [`Sequence::step`], the pending tokens but the last into the cache,
    /// the tree drafted. Returns the tree and the most tokens the step may emit.
    fn prepare_batched(&mut self, opts: &StepOptions) -> Result<(Prepared, usize)> {
        self.carry = None; // a batched step drafts in the same slots
        let limit = self.step_limit(opts)?;
        let root_pos = self.tokens.len() - 1;
        let pending = self.batch_pending();
        // Cached up to the root already (after a truncate): the root runs again.
        self.cache.truncate(self.tokens.len() - pending);
        if pending == 1 && opts.speculate && limit > 1 {
            // Its tree grows with the others' (one draft forward per level for all).
            let vocab = self.engine.shared.model.draft_vocab();
            let limits = self.draft_limits(opts, limit);
            let root = self.tokens[root_pos];
            let grower = Grower::new(root, root_pos, vocab, &opts.tree, &limits);
            return Ok((Prepared::Grow(grower, root_pos), limit));
        }
        if pending == 1 {
            return Ok((Prepared::Drafted(self.draft(opts, limit, None)?.0), limit));
        }
        // A new prompt or turn: this step is a plain one whose pending tokens (up to the
        // tree size the engine plans activations for; any before them prefilled alone
        // first) join the batch's pass. The next step speculates.
        let t0 = Instant::now();
        let k = pending.min(self.engine.max_tree_tokens()).max(1);
        self.prefill(self.tokens.len() - k, false)?;
        Ok((
            Prepared::Drafted(Drafted {
                tree: Tree::new(self.tokens[root_pos]),
                root_pos,
                prefix: self.tokens[root_pos + 1 - k..root_pos].to_vec(),
                verify_at: 0,
                prefill_s: t0.elapsed().as_secs_f64(),
                draft_s: 0.0,
                draft_steps: 0,
                reused: false,
            }),
            limit,
        ))
    }
}

/// Which of the `live` sequences a failed batched pass fails, and with what: an abort
/// taken in a pass of several sequences fails those that asked to stop (none: the request
/// was withdrawn, the pass may run again), and any other error fails them all.
fn failed_pass(
    seqs: &[&mut Sequence],
    live: &[usize],
    e: Error,
    during: &str,
) -> Vec<(usize, Error)> {
    if e.kind() == ErrorKind::Aborted && live.len() > 1 {
        let at = || during.to_string();
        return live
            .iter()
            .filter_map(|&i| seqs[i].cache.abort_handle().check(at).err().map(|a| (i, a)))
            .collect();
    }
    live.iter().map(|&i| (i, e.clone())).collect()
}

impl Engine {
    /// Steps several sequences of this engine together. Each runs its pending tokens and
    /// drafts its tree as [`Sequence::step`] would (plain: a tree of its last token alone),
    /// then one target pass verifies every tree, so an offloaded layer streams once for
    /// all of them, and each keeps what the target accepts. Every sequence gets exactly
    /// the tokens its own steps would give, in the same order: a row's values do not
    /// depend on the other rows of the pass, whichever sequence they belong to. Only their
    /// split into steps may differ: in a batch of two or more, a step with pending input
    /// (a prompt, a turn) is a plain one (one token, its input in the shared pass) and the
    /// next speculates.
    ///
    /// Results are per sequence, in order. One that fails (its options, a full context,
    /// an open host-sampled iteration, an abort request) fails alone and is left exactly
    /// as it was; the others step. Sequences may differ in prompts, lengths, sampling and
    /// tree shape, speculate or not, and may join or leave between calls (continuous
    /// batching). Each sequence's statistics count the whole shared pass as its
    /// verification time. The sequences whose trees have
    /// [`auto_depth`](crate::TreeParams::auto_depth) choose one depth together
    /// (`spec::tune::best_batch_depth`): the one that maximises the expected tokens per
    /// second of the whole batch, whose target pass grows with every tree in it (so trees
    /// get shallower as the batch grows where verification is compute-bound). A batch of
    /// one is that sequence's [`Sequence::step`].
    /// The call itself fails only when `opts` does not have one entry per sequence or a
    /// sequence belongs to another engine.
    pub fn step_batch(
        &self,
        seqs: &mut [&mut Sequence],
        opts: &[StepOptions],
    ) -> Result<Vec<Result<Vec<u32>>>> {
        if seqs.len() != opts.len() {
            return Err(Error::invalid_argument(format!(
                "{} sequences but {} step options: give one per sequence",
                seqs.len(),
                opts.len()
            )));
        }
        if let Some(i) = seqs
            .iter()
            .position(|s| !std::sync::Arc::ptr_eq(&s.engine.shared, &self.shared))
        {
            return Err(Error::invalid_argument(format!(
                "sequence {i} of the batch belongs to another engine"
            )));
        }
        if let [seq] = seqs {
            // One sequence: its own step (which also takes `auto_depth`).
            return Ok(vec![seq.step(&opts[0])]);
        }
        let n = seqs.len();
        let committed: Vec<usize> = seqs.iter().map(|s| s.cache.len()).collect();
        let mut results: Vec<Option<Result<Vec<u32>>>> = (0..n).map(|_| None).collect();
        let mut prepared: Vec<Option<(Prepared, usize)>> = (0..n).map(|_| None).collect();
        // Sequences that choose their depth by cost choose one together; the others'
        // trees count in the choice as they are.
        let mut eff = opts.to_vec();
        let mut chosen = vec![None; n];
        match self.batch_depths(seqs, opts) {
            Ok(depths) => {
                for (i, d) in depths.into_iter().enumerate() {
                    if let Some((depth, _, _)) = d {
                        let o = &mut eff[i];
                        o.speculate = depth > 0;
                        o.tree = o.tree.with_depth(depth.max(1)).with_auto_depth(false);
                        let st = &seqs[i].stats;
                        chosen[i] = d.map(|d| (d, st.accepted));
                    }
                }
            }
            Err(e) => {
                for (i, o) in opts.iter().enumerate() {
                    if o.speculate && o.tree.auto_depth {
                        results[i] = Some(Err(e.clone()));
                    }
                }
            }
        }
        let opts = &eff[..];
        for (i, seq) in seqs.iter_mut().enumerate() {
            if results[i].is_some() {
                continue;
            }
            match seq.prepare_batched(&opts[i]) {
                Ok(d) => prepared[i] = Some(d),
                Err(e) => {
                    seq.cache.truncate(committed[i]);
                    results[i] = Some(Err(e));
                }
            }
        }
        self.grow_together(seqs, &mut prepared, &mut results, &committed);
        let mut drafted: Vec<Option<(Drafted, usize)>> = prepared
            .into_iter()
            .map(|p| match p {
                Some((Prepared::Drafted(d), limit)) => Some((d, limit)),
                _ => None,
            })
            .collect();
        // One target pass over every drafted tree. Sequences that asked to stop during it
        // leave the batch, and the pass runs again for the others.
        loop {
            let live: Vec<usize> = (0..n).filter(|&i| drafted[i].is_some()).collect();
            if live.is_empty() {
                break;
            }
            let t0 = Instant::now();
            let inputs: Vec<(Vec<u32>, Vec<usize>, AttnMask, usize)> = live
                .iter()
                .filter_map(|&i| {
                    let (d, _) = drafted[i].as_ref()?;
                    let (tokens, pos, mask) = d.verify_input();
                    Some((tokens, pos, mask, d.verify_at))
                })
                .collect();
            let mut segs = Vec::with_capacity(live.len());
            for (seq, (tokens, pos, mask, first)) in seqs
                .iter_mut()
                .zip(&drafted)
                .filter(|(_, d)| d.is_some())
                .map(|(s, _)| s)
                .zip(&inputs)
            {
                segs.push(Segment {
                    cache: &mut seq.cache,
                    first: *first,
                    tokens,
                    positions: pos,
                    mask,
                });
            }
            let model = &self.shared.model;
            let r = self.install(|| model.forward_hidden_batch(Pass::Target, &mut segs));
            drop(segs);
            let fail = |seq: &mut Sequence, i: usize, e: Error| {
                seq.cache.truncate(committed[i]);
                Some(Err(e))
            };
            match r {
                Ok(hidden) => {
                    // Every sequence's walk starts with the logits of its draft-likeliest
                    // path: one lm_head product for all (the same bits as one each), so
                    // the head's weights are read once per step, not once per sequence.
                    // Each sequence's span: its tree's first row in the pass (after its
                    // prefix), where its path's rows start in `want`, and the path.
                    let mut spans = Vec::with_capacity(live.len());
                    let mut want = Vec::new();
                    let mut row = 0;
                    for &i in &live {
                        let (d, _) = drafted[i].as_ref().expect("live");
                        let at = row + d.prefix.len();
                        let path = d.tree.best_path(0);
                        let first = want.len();
                        want.extend(path.iter().map(|&n| at + n));
                        spans.push((at, first, path));
                        row = at + d.tree.len();
                    }
                    let vocab = model.config().vocab;
                    let head = self.install(|| model.logits(Pass::Target, &hidden, &want));
                    let verify_s = t0.elapsed().as_secs_f64();
                    let mut hidden = Some(hidden);
                    for (&i, (at, first, path)) in live.iter().zip(&spans) {
                        let (d, limit) = drafted[i].take().expect("live");
                        let given = first * vocab..(first + path.len()) * vocab;
                        // The tree's rows (the walk reads them); the pass's own activation
                        // when it is the only segment.
                        let part = if live.len() == 1 && d.prefix.is_empty() {
                            hidden
                                .take()
                                .ok_or_else(|| Error::internal("one pass, one owner"))
                        } else {
                            self.rows_of(hidden.as_ref(), *at..at + d.tree.len())
                        };
                        let seq = &mut *seqs[i];
                        let r = match &head {
                            Ok(l) => part.and_then(|h| {
                                let mut pass = d.verified(h, verify_s);
                                pass.verified.give(path, &l[given], vocab);
                                seq.finish(pass, &opts[i], limit)
                            }),
                            Err(e) => Err(e.clone()),
                        };
                        results[i] = match r {
                            Ok(tokens) => Some(Ok(tokens)),
                            Err(e) => fail(seq, i, e),
                        };
                    }
                    break;
                }
                Err(e) => {
                    let failed = failed_pass(seqs, &live, e, "during a batched target pass");
                    if failed.is_empty() {
                        // The abort request was withdrawn meanwhile: run the pass again.
                        continue;
                    }
                    let all = failed.len() == live.len();
                    for (i, e) in failed {
                        drafted[i] = None;
                        results[i] = fail(&mut *seqs[i], i, e);
                    }
                    if all {
                        break;
                    }
                }
            }
        }
        for (i, c) in chosen.into_iter().enumerate() {
            if let (Some(((depth, exploring, limit), before)), Some(Ok(out))) = (c, &results[i]) {
                seqs[i].chose_depth(depth, exploring, before, out, limit);
            }
        }
        Ok(results
            .into_iter()
            .map(|r| {
                r.unwrap_or_else(|| {
                    Err(Error::internal(
                        "a batched step left a sequence without a result",
                    ))
                })
            })
            .collect())
    }

    /// The depths of the sequences of a batched step that choose theirs by cost
    /// ([`TreeParams::auto_depth`](crate::TreeParams::auto_depth)), chosen together
    /// ([`tune::best_batch_depth`]): `(depth, exploring, limit)` (`0`: a plain step),
    /// `None` for the others and for those whose step is a prompt's or fails anyway.
    #[allow(clippy::type_complexity)]
    fn batch_depths(
        &self,
        seqs: &[&mut Sequence],
        opts: &[StepOptions],
    ) -> Result<Vec<Option<(usize, bool, usize)>>> {
        let n = seqs.len();
        if !opts.iter().any(|o| o.speculate && o.tree.auto_depth) {
            return Ok(vec![None; n]);
        }
        let max_tree = self.max_tree_tokens();
        let mut members = Vec::with_capacity(n);
        let mut auto = vec![None; n];
        for (i, (seq, o)) in seqs.iter().zip(opts).enumerate() {
            let Ok(limit) = seq.step_limit(o) else {
                continue; // it fails in its preparation, alone
            };
            let pending = seq.batch_pending();
            let t = &o.tree;
            let mut m = tune::Member {
                acc: None,
                width: 1,
                depths: (0, 0),
                max_tokens: t.max_tokens.min(max_tree),
                prefix: 0,
            };
            if pending > 1 {
                // A prompt's step: plain, its pending tokens in the pass.
                m.prefix = pending.min(max_tree) - 1;
            } else if o.speculate && limit > 1 {
                let most = t.depth.min(limit - 1);
                let exploring = t.auto_depth && seq.acceptance.explore();
                if t.auto_depth {
                    auto[i] = Some((members.len(), exploring, limit));
                }
                m.acc = Some(&seq.acceptance);
                m.width = t.width;
                m.depths = (
                    if t.auto_depth {
                        exploring as usize
                    } else {
                        most
                    },
                    most,
                );
            }
            members.push(m);
        }
        if auto.iter().all(Option::is_none) {
            return Ok(vec![None; n]);
        }
        let costs = self.tree_costs()?;
        let (d, _) = tune::best_batch_depth(&costs, &members);
        Ok(auto
            .into_iter()
            .map(|a| a.map(|(k, exploring, limit)| (members[k].depth(d), exploring, limit)))
            .collect())
    }

    /// Grows the trees of every `Prepared::Grow` sequence together, one draft forward per
    /// level for all of them (a sequence whose tree is grown leaves the forwards), and
    /// turns them into `Prepared::Drafted`. A sequence that fails (an abort request) gets
    /// its result and is left as it was; an abort request drops only its sequence.
    fn grow_together(
        &self,
        seqs: &mut [&mut Sequence],
        prepared: &mut [Option<(Prepared, usize)>],
        results: &mut [Option<Result<Vec<u32>>>],
        committed: &[usize],
    ) {
        let model = &self.shared.model;
        let vocab = model.draft_vocab();
        let t0 = Instant::now();
        let growing = |p: &Option<(Prepared, usize)>| match p {
            Some((Prepared::Grow(g, _), _)) => g.batch().is_some(),
            _ => false,
        };
        loop {
            let live: Vec<usize> = (0..seqs.len()).filter(|&i| growing(&prepared[i])).collect();
            if live.is_empty() {
                break;
            }
            let batches: Vec<_> = live
                .iter()
                .filter_map(|&i| match &prepared[i] {
                    Some((Prepared::Grow(g, _), _)) => g.batch(),
                    _ => None,
                })
                .collect();
            let rows: Vec<usize> = batches.iter().map(|b| b.tokens.len()).collect();
            let mut segs = Vec::with_capacity(live.len());
            for (seq, b) in seqs
                .iter_mut()
                .enumerate()
                .filter(|(i, _)| live.contains(i))
                .map(|(_, s)| s)
                .zip(&batches)
            {
                segs.push(Segment {
                    cache: &mut seq.cache,
                    first: b.first,
                    tokens: b.tokens,
                    positions: &b.positions,
                    mask: &b.mask,
                });
            }
            let r = self.install(|| {
                let hidden = model.forward_hidden_batch(Pass::Draft, &mut segs)?;
                let all: Vec<usize> = (0..rows.iter().sum()).collect();
                model.logits(Pass::Draft, &hidden, &all)
            });
            drop(segs);
            drop(batches);
            let mut fail = |seqs: &mut [&mut Sequence], i: usize, e: Error| {
                seqs[i].cache.truncate(committed[i]);
                prepared[i] = None;
                results[i] = Some(Err(e));
            };
            match r {
                Ok(logits) => {
                    let mut at = 0;
                    for (&i, m) in live.iter().zip(&rows) {
                        if let Some((Prepared::Grow(g, _), _)) = &mut prepared[i] {
                            g.feed(&logits[at * vocab..(at + m) * vocab]);
                        }
                        at += m;
                    }
                }
                Err(e) => {
                    for (i, e) in failed_pass(seqs, &live, e, "during a batched draft step") {
                        fail(seqs, i, e);
                    }
                }
            }
        }
        let draft_s = t0.elapsed().as_secs_f64();
        for p in prepared.iter_mut() {
            *p = match p.take() {
                Some((Prepared::Grow(g, root_pos), limit)) => {
                    let draft = g.finish();
                    let d = Drafted {
                        tree: draft.tree,
                        root_pos,
                        prefix: Vec::new(),
                        verify_at: self.max_tree_tokens(),
                        prefill_s: 0.0,
                        draft_s,
                        draft_steps: draft.steps,
                        reused: false,
                    };
                    Some((Prepared::Drafted(d), limit))
                }
                other => other,
            };
        }
    }

    /// Rows `rows` of a batched pass's residual stream, as an activation of their own.
    fn rows_of(
        &self,
        hidden: Option<&<Device as Backend>::Act>,
        rows: std::ops::Range<usize>,
    ) -> Result<<Device as Backend>::Act> {
        let hidden =
            hidden.ok_or_else(|| Error::internal("the batch's residual stream was taken"))?;
        let be = self.shared.model.backend();
        let idx: Vec<usize> = rows.collect();
        let mut out = be.act(idx.len(), self.shared.model.config().hidden)?;
        self.install(|| be.gather_rows(hidden, &idx, &mut out))?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::DevKv;
    use crate::checkpoint::DType;
    use crate::engine::{DraftOptions, EngineOptions};
    use crate::quant::QuantConfig;
    use crate::spec::TreeParams;
    use crate::synth::{write_model, SynthShape};

    /// Every slot of every layer of `seq`'s cache from `first` on, `n` of them, relative
    /// to the committed positions.
    fn scratch(seq: &Sequence, first: usize, n: usize) -> Vec<Vec<f32>> {
        let DevKv::Cpu(kv) = seq.cache.store() else {
            panic!("a CPU cache")
        };
        let c = seq.cache.len() + first;
        (c..c + n)
            .map(|s| (0..kv.layers()).flat_map(|l| kv.slot(l, s)).collect())
            .collect()
    }

    /// A synth model in a fresh directory: "tiny" with `vocab` tokens, untied.
    fn engine(tag: &str, vocab: usize) -> (Engine, std::path::PathBuf) {
        let dir = std::env::temp_dir().join(format!("subspec-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut shape = SynthShape::named("tiny").unwrap();
        shape.vocab = vocab;
        shape.tie_embeddings = false;
        write_model(&dir, &shape, DType::F16, 5).unwrap();
        (Engine::load(&options(&dir, None)).unwrap(), dir)
    }

    /// Options for the model in `dir` with `draft` (`None`: the default draft).
    fn options(dir: &std::path::Path, draft: Option<DraftOptions>) -> EngineOptions {
        let mut o = EngineOptions::new(dir);
        o.require_tokenizer = false;
        o.max_context = 64;
        o.max_tree_tokens = 24;
        if let Some(d) = draft {
            o.draft = Some(d);
        }
        o
    }

    #[test]
    fn verified_rows_are_the_logits_and_hold_one_path_at_most() {
        let (engine, dir) = engine("verified-rows", 64);
        let (mut seq, tokens, positions, mask) = three_rows(&engine, 23);
        let model = &engine.shared.model;
        // root 0 -> 1 (the likelier child) and 2; node 2 is off the best path from 0
        let mut tree = Tree::new(tokens[0]);
        tree.push(0, tokens[1], -0.1);
        tree.push(0, tokens[2], -0.5);
        let x = model
            .forward_hidden(
                &mut seq.cache,
                Pass::Target,
                3,
                &tokens,
                &positions,
                &mask,
                None,
            )
            .unwrap();
        let want = model.logits(Pass::Target, &x, &[0, 1, 2]).unwrap();
        let mut v = Verified {
            tree,
            hidden: Some(x),
            rows: Vec::new(),
            at: vec![None; 3],
        };
        let vocab = 64;
        for node in [0, 1, 2] {
            let got = v.row(&engine, node).unwrap().to_vec();
            assert_eq!(got, want[node * vocab..(node + 1) * vocab], "node {node}");
            // the best path from 0 is [0, 1]; leaving it for 2 drops those two rows
            let held = if node == 2 { 1 } else { 2 };
            assert_eq!(v.rows.len(), held * vocab, "rows held at node {node}");
        }
        std::fs::remove_dir_all(dir).ok();
    }

    /// A tree's root and two children (the second `last`) over a prefilled 5-token
    /// prompt, at scratch slots 3..6: the sequence, the tokens, their positions and mask.
    fn three_rows(engine: &Engine, last: u32) -> (Sequence, Vec<u32>, Vec<usize>, AttnMask) {
        let mut seq = engine.new_sequence().unwrap();
        seq.append(&[1, 2, 3, 4, 5]).unwrap();
        seq.prefill_pending().unwrap();
        let mask = AttnMask::tree_rows(&[None, Some(0), Some(0)], 0..3).shifted(3);
        (seq, vec![5, 17, last], vec![4, 5, 5], mask)
    }

    /// The draft's logits of [`three_rows`] in one forward.
    fn draft_rows(
        seq: &mut Sequence,
        tokens: &[u32],
        positions: &[usize],
        mask: &AttnMask,
    ) -> Vec<f32> {
        let model = &seq.engine.shared.model;
        model
            .forward_at(
                &mut seq.cache,
                Pass::Draft,
                3,
                tokens,
                positions,
                mask,
                &[0, 1, 2],
            )
            .unwrap()
    }

    /// A ranking head gives the tokens it ranks first the target head's logits: the
    /// draft's top tokens and their logits are those of the draft sharing the f16 head,
    /// where the 2-bit head's own logits are not.
    #[test]
    fn a_ranking_head_gives_its_shortlist_the_target_heads_logits() {
        let (_, dir) = engine("ranking", 2000);
        let load = |d: DraftOptions| Engine::load(&options(&dir, Some(d))).unwrap();
        let draft_logits = |e: &Engine| {
            let (mut seq, tokens, positions, mask) = three_rows(e, 1999);
            draft_rows(&mut seq, &tokens, &positions, &mask)
        };
        let none = DraftOptions::default().with_shortlist(Some(0));
        let shared = draft_logits(&load(none.clone()));
        let ranked = load(DraftOptions::default().with_shortlist(Some(32)));
        assert_eq!(ranked.shared.model.draft_shortlist(), 32);
        let ranked = draft_logits(&ranked);
        let two_bits = QuantConfig {
            bits: 2,
            ..QuantConfig::default()
        };
        let raw = none
            .with_quantize_lm_head(true)
            .with_head_quant(Some(two_bits));
        let raw = draft_logits(&load(raw));
        let close = |a: f32, b: f32| (a - b).abs() <= 1e-4 * a.abs().max(1.0);
        let top = |row: &[f32]| crate::sample::top_logits(row, 4);
        let mut raw_differs = false;
        for r in 0..3 {
            let row = |l: &[f32]| l[r * 2000..(r + 1) * 2000].to_vec();
            let (s, k, q) = (row(&shared), row(&ranked), row(&raw));
            let exact = top(&s);
            assert_eq!(
                top(&k)[0].1,
                exact[0].1,
                "row {r}: the f16 head's first token"
            );
            for &(x, t) in &exact {
                assert!(
                    close(k[t as usize], x),
                    "row {r}, token {t}: {} vs {x}",
                    k[t as usize]
                );
                raw_differs |= !close(q[t as usize], x);
            }
            // The other tokens keep the ranking head's own logits.
            let own = (0..2000)
                .filter(|&t| k[t].to_bits() == q[t].to_bits())
                .count();
            assert!(
                own >= 2000 - 32,
                "row {r}: {own} of the ranking head's logits kept"
            );
        }
        assert!(
            raw_differs,
            "the 2-bit head's own logits match the f16 head's"
        );
        // A shortlist larger than the vocabulary is refused, naming it.
        let e = Engine::load(&options(
            &dir,
            Some(DraftOptions::default().with_shortlist(Some(2001))),
        ))
        .unwrap_err();
        assert!(
            e.message().contains("shortlist of 2001 tokens exceeds"),
            "{e}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// The draft forward a layer (or a part of the head) at a time gives the bits of the
    /// forward in one call: with the target's f16 head, in parts of 8192 rows (20,000:
    /// three parts), and with a ranking head (its shortlist rescored after the last part).
    #[test]
    fn a_draft_forward_in_steps_gives_the_bits_of_one_call() {
        let (_, dir) = engine("steps", 20_000);
        for (shortlist, head_steps) in [(0, Some(3)), (64, None)] {
            let d = DraftOptions::default().with_shortlist(Some(shortlist));
            let engine = Engine::load(&options(&dir, Some(d))).unwrap();
            let model = &engine.shared.model;
            let (mut seq, tokens, positions, mask) = three_rows(&engine, 19_999);
            let whole = draft_rows(&mut seq, &tokens, &positions, &mask);
            let mut r = model
                .draft_begin(&seq.cache, 3, tokens, positions, mask)
                .unwrap();
            let mut steps = 1;
            let stepped = loop {
                match model.draft_advance(&mut r, &mut seq.cache).unwrap() {
                    Some(l) => break l,
                    None => steps += 1,
                }
            };
            if let Some(h) = head_steps {
                assert_eq!(steps, engine.config().n_layers + h);
            }
            assert_eq!(whole.len(), 3 * 20_000);
            assert!(
                whole
                    .iter()
                    .zip(&stepped)
                    .all(|(a, b)| a.to_bits() == b.to_bits()),
                "shortlist {shortlist}"
            );
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A kept tree's draft K/V moves from where the draft wrote it (slot = node in the
    /// grown tree) to the start of the draft's region (slot = node in the kept tree),
    /// past the slots the walk's commit overwrote.
    #[test]
    fn a_kept_tree_takes_its_draft_kv_to_the_start_of_the_region() {
        let (engine, dir) = engine("carry", 128);
        let mut seq = engine.new_sequence().unwrap();
        seq.append(&[1, 2, 3, 4, 5]).unwrap();
        // Two levels of width 2 verified, grown on to four.
        let tree = TreeParams::default().with_width(2).with_depth(2);
        let opts = StepOptions::speculative(SamplingParams::greedy()).with_tree(tree);
        let (drafted, g) = seq.draft(&opts, 32, None).unwrap();
        let mut g = g.unwrap();
        let verified = drafted.tree.len();
        assert_eq!(verified, 5);
        g.set_limits(&DraftLimits {
            depth: 4,
            max_nodes: drafted.verify_at,
            token_s: None,
        });
        let model = &engine.shared.model;
        while let Some(b) = g.batch() {
            let rows: Vec<usize> = (0..b.tokens.len()).collect();
            let (t, p, m) = (b.tokens, &b.positions, &b.mask);
            let l = model
                .forward_at(&mut seq.cache, Pass::Draft, b.first, t, p, m, &rows)
                .unwrap();
            g.feed(&l);
        }
        let (grown, frontier) = g.into_parts();
        assert_eq!(grown.depth(grown.len() - 1), 4);
        let before = scratch(&seq, 0, grown.len());
        let (tokens, pos, mask) = drafted.verify_input();
        let at = drafted.verify_at;
        let hidden = model
            .forward_hidden(&mut seq.cache, Pass::Target, at, &tokens, &pos, &mask, None)
            .unwrap();
        let pass = drafted.verified(hidden, 0.0);
        // A walk down to a verified leaf whose child the draft grew during the pass.
        let leaf = (0..verified)
            .rev()
            .find(|&n| !grown.children(n).is_empty())
            .unwrap();
        let child = grown.children(leaf)[0];
        let parent = grown.parents()[leaf].unwrap();
        let t = grown.tokens();
        let walk = Walk {
            tokens: vec![t[parent], t[leaf], t[child]],
            nodes: vec![parent, leaf],
        };
        let committed = seq.cache.len();
        seq.commit_walk(pass, &walk).unwrap();
        assert_eq!(seq.cache.len(), committed + 3);
        seq.keep_carry(grown.clone(), frontier, verified, &walk);
        let (sub, from) = grown.subtree(child);
        assert_eq!(seq.carried_nodes(), sub.len());
        assert!(
            sub.len() > 1,
            "the kept tree has the child's descendants too"
        );
        let after = scratch(&seq, 0, sub.len());
        for (i, &n) in from.iter().enumerate() {
            assert_eq!(after[i], before[n], "kept node {i} (grown node {n})");
        }
        assert_ne!(before[from[1]], before[from[0]], "the slots differ");
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Steps whose depth is chosen by cost time plain steps on the engine (their cost is
    /// observed, not predicted, from then on), and the acceptance a sequence recorded
    /// last is where a new or reset sequence starts.
    #[test]
    fn depths_chosen_by_cost_learn_on_the_engine() {
        let (engine, dir) = engine("auto-learn", 128);
        assert_eq!(engine.acceptance(), Acceptance::default());
        let tree = TreeParams::default().with_depth(6).with_max_tokens(16);
        let opts = StepOptions::speculative(SamplingParams::greedy())
            .with_tree(tree.with_auto_depth(true));
        let mut seq = engine.new_sequence().unwrap();
        seq.append(&[1, 2, 3, 4, 5]).unwrap();
        let want = engine.new_sequence().unwrap();
        seq.generate(&opts, 30, |_| true).unwrap();
        // The first steps were plain and timed: the plain cost is now what they took.
        let predicted = 1e6;
        assert!(engine.observed().seconds(0, predicted) < 1.0);
        // The sequence's acceptance is the engine's; a new sequence starts from it, and
        // one made before keeps its own.
        assert_ne!(seq.acceptance, Acceptance::default());
        assert_eq!(engine.acceptance(), seq.acceptance);
        assert_eq!(engine.new_sequence().unwrap().acceptance, seq.acceptance);
        assert_eq!(want.acceptance, Acceptance::default());
        let mut other = want;
        other.append(&[9, 8, 7]).unwrap();
        other.generate(&opts, 20, |_| true).unwrap();
        assert_eq!(engine.acceptance(), other.acceptance);
        seq.truncate(0);
        assert_eq!(seq.acceptance, other.acceptance, "reset: the engine's");
        std::fs::remove_dir_all(dir).ok();
    }
}
