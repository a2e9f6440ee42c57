//! The draft loop: grow a token tree from the draft's logits, one batched draft forward per
//! depth step over the current frontier, until the depth, the node budget or the adaptive
//! stop rule ends it. The forward itself is a closure (the engine runs the model's
//! [`Pass::Draft`](crate::model::Pass)), so the loop is tested here with fake logits.
//!
//! Also here: the default tree shape for a placement, the other drafting heuristic.

use std::time::Instant;

use super::tree::Tree;
use super::TreeParams;
use crate::backend::AttnMask;

/// One draft forward: the frontier's nodes, where their K/V go and what they attend to.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct DraftBatch<'a> {
    /// Scratch slot of the first frontier node (its node index: nodes are laid out in
    /// scratch slots in node order).
    pub first: usize,
    /// The frontier's tokens.
    pub tokens: &'a [u32],
    /// Absolute position of each.
    pub positions: Vec<usize>,
    /// Each node attends to its ancestors in the tree and itself.
    pub mask: AttnMask,
}

/// How far one draft may grow.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct DraftLimits {
    /// Most draft steps (depth below the root).
    pub depth: usize,
    /// Most nodes, root included.
    pub max_nodes: usize,
    /// Seconds one emitted token has cost the sequence so far: set, it turns on the
    /// adaptive stop ([`worth_another_step`]); `None` drafts to `depth`.
    pub token_s: Option<f64>,
}

/// A grown tree and the draft forwards it took.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Draft {
    /// The tree, root included.
    pub tree: Tree,
    /// Draft forwards run.
    pub steps: usize,
}

/// The adaptive stop rule: one more draft step pays when the tokens it can be expected to
/// add, estimated by the draft's probability `mass` on the frontier paths (at the draft
/// temperature, sharpened like an argmax, it tracks how likely the target is to accept
/// each path), are worth more than the step costs: `mass * token_s >= step_s`.
pub(crate) fn worth_another_step(mass: f64, token_s: f64, step_s: f64) -> bool {
    mass * token_s >= step_s
}

/// A [`Grower`] run to the end with `forward` as its draft: how the engine drives one
/// (the tests' fake drafts go through here).
#[cfg(test)]
pub(crate) fn draft_tree(
    root: u32,
    root_pos: usize,
    vocab: usize,
    params: &TreeParams,
    limits: &DraftLimits,
    mut forward: impl FnMut(DraftBatch<'_>) -> crate::error::Result<Vec<f32>>,
) -> crate::error::Result<Draft> {
    let mut g = Grower::new(root, root_pos, vocab, params, limits);
    while let Some(batch) = g.batch() {
        let logits = forward(batch)?;
        g.feed(&logits);
    }
    Ok(g.finish())
}

/// The draft loop, one step at a time: grows a tree under a root (the last chosen token,
/// at absolute position `root_pos`); each step is a draft forward over the frontier
/// ([`Grower::batch`]; `None`: the tree is grown), whose logits ([`Grower::feed`]) add
/// the global top `params.width` children by path probability at
/// `params.draft_temperature` ([`Tree::grow`]). The caller runs the forwards: one tree's
/// alone, several trees' together, or between the layers of a target pass.
pub(crate) struct Grower {
    tree: Tree,
    frontier: std::ops::Range<usize>,
    steps: usize,
    root_pos: usize,
    vocab: usize,
    params: TreeParams,
    limits: DraftLimits,
    t0: Instant,
    done: bool,
}

impl Grower {
    pub(crate) fn new(
        root: u32,
        root_pos: usize,
        vocab: usize,
        params: &TreeParams,
        limits: &DraftLimits,
    ) -> Grower {
        Grower {
            tree: Tree::new(root),
            frontier: 0..1,
            steps: 0,
            root_pos,
            vocab,
            params: *params,
            limits: *limits,
            t0: Instant::now(),
            done: limits.depth == 0,
        }
    }

    /// A grower that goes on from `tree`, grown already down to `frontier` (the nodes
    /// whose draft forward has not run: the last level), as [`Grower::new`] would have.
    pub(crate) fn resume(
        tree: Tree,
        frontier: std::ops::Range<usize>,
        root_pos: usize,
        vocab: usize,
        params: &TreeParams,
        limits: &DraftLimits,
    ) -> Grower {
        let mut g = Grower {
            tree,
            frontier,
            ..Grower::new(0, root_pos, vocab, params, limits)
        };
        g.done = g.grown();
        g
    }

    /// Whether the limits leave nothing to grow: no frontier, the frontier at the depth
    /// limit, or the tree at the node limit (a forward over the frontier would add no
    /// child).
    fn grown(&self) -> bool {
        let f = &self.frontier;
        f.is_empty()
            || self.tree.depth(f.start) >= self.limits.depth
            || self.tree.len() >= self.limits.max_nodes
    }

    /// Goes on growing under new limits (a tree grown to its verified size, deepened while
    /// the target verifies it).
    pub(crate) fn set_limits(&mut self, limits: &DraftLimits) {
        self.limits = *limits;
        self.done = self.grown();
    }

    /// Draft forwards fed so far.
    pub(crate) fn steps(&self) -> usize {
        self.steps
    }

    /// The tree so far.
    pub(crate) fn tree(&self) -> &Tree {
        &self.tree
    }

    /// The tree and its frontier (the nodes whose draft forward has not run).
    pub(crate) fn into_parts(self) -> (Tree, std::ops::Range<usize>) {
        (self.tree, self.frontier)
    }

    /// The next draft forward, or `None` once the tree is grown.
    pub(crate) fn batch(&self) -> Option<DraftBatch<'_>> {
        if self.done {
            return None;
        }
        let (tree, f) = (&self.tree, &self.frontier);
        Some(DraftBatch {
            first: f.start,
            tokens: &tree.tokens()[f.clone()],
            positions: f.clone().map(|n| self.root_pos + tree.depth(n)).collect(),
            mask: AttnMask::tree_rows(tree.parents(), f.clone()),
        })
    }

    /// Grows one level from the draft's logits of the frontier of [`Grower::batch`].
    pub(crate) fn feed(&mut self, logits: &[f32]) {
        self.steps += 1;
        let room = self.limits.max_nodes.saturating_sub(self.tree.len());
        let frontier = self.frontier.clone();
        self.frontier = self.tree.grow(
            frontier,
            logits,
            self.vocab,
            self.params.width,
            self.params.draft_temperature,
            room,
        );
        self.done = self.grown();
        if let (false, Some(token_s)) = (self.done, self.limits.token_s) {
            let f = self.frontier.clone();
            let mass: f64 = f.map(|n| (self.tree.score(n) as f64).exp()).sum();
            let step_s = self.t0.elapsed().as_secs_f64() / self.steps as f64;
            self.done = !worth_another_step(mass, token_s, step_s);
        }
    }

    /// The grown tree and the forwards it took.
    pub(crate) fn finish(self) -> Draft {
        Draft {
            tree: self.tree,
            steps: self.steps,
        }
    }
}

/// The tree shape that pays best for a placement, at most `max_tree_tokens` nodes: with
/// offloaded layers a target pass costs a full stream of them, so a deeper and wider tree
/// pays (docs/BENCHMARKS.md: width 2, depth 16, 64 nodes); with everything resident,
/// [`TreeParams::default`] (a chain).
pub(crate) fn default_tree(offloaded: bool, max_tree_tokens: usize) -> TreeParams {
    let base = TreeParams::default();
    if offloaded {
        TreeParams {
            width: 2,
            depth: 16,
            max_tokens: 64.min(max_tree_tokens),
            ..base
        }
    } else {
        TreeParams {
            max_tokens: base.max_tokens.min(max_tree_tokens),
            ..base
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VOCAB: usize = 8;

    /// Draft logits that rank `(token + 1) % VOCAB` first after each node, then
    /// `(token + 2) % VOCAB`, the rest far behind.
    fn successor_logits(batch: &DraftBatch<'_>) -> Vec<f32> {
        batch
            .tokens
            .iter()
            .flat_map(|&t| {
                (0..VOCAB as u32).map(move |v| {
                    if v == (t + 1) % VOCAB as u32 {
                        4.0
                    } else if v == (t + 2) % VOCAB as u32 {
                        3.0
                    } else {
                        -10.0
                    }
                })
            })
            .collect()
    }

    fn limits(depth: usize, max_nodes: usize) -> DraftLimits {
        DraftLimits {
            depth,
            max_nodes,
            token_s: None,
        }
    }

    #[test]
    fn a_chain_follows_the_draft_and_sees_its_ancestors() {
        let mut seen = Vec::new();
        let d = draft_tree(3, 10, VOCAB, &TreeParams::default(), &limits(4, 64), |b| {
            seen.push(b.clone().first);
            assert_eq!(b.tokens.len(), 1);
            // A chain's frontier node at depth d sits at position root + d and attends
            // to the root and every node above it.
            let d = b.first;
            assert_eq!(b.positions, vec![10 + d]);
            assert_eq!(b.mask.row(0), (0..=d as u32).collect::<Vec<_>>());
            Ok(successor_logits(&b))
        })
        .unwrap();
        assert_eq!(d.steps, 4);
        assert_eq!(seen, vec![0, 1, 2, 3]);
        assert_eq!(d.tree.tokens(), &[3, 4, 5, 6, 7]);
        assert_eq!(d.tree.depth(4), 4);
    }

    #[test]
    fn growth_stops_at_the_node_budget() {
        let params = TreeParams {
            width: 2,
            ..TreeParams::default()
        };
        let d = draft_tree(0, 0, VOCAB, &params, &limits(16, 6), |b| {
            Ok(successor_logits(&b))
        })
        .unwrap();
        assert_eq!(d.tree.len(), 6);
        // Root, two children, two grandchildren, then one node fills the budget: no
        // forward over it (it could add no child).
        assert_eq!(d.steps, 3);
        assert_eq!(d.tree.children(0).len(), 2);
    }

    /// Runs `g` to the end with [`successor_logits`]; returns the forwards' first slots.
    fn run(g: &mut Grower) -> Vec<usize> {
        let mut firsts = Vec::new();
        while let Some(b) = g.batch() {
            firsts.push(b.first);
            let l = successor_logits(&b);
            g.feed(&l);
        }
        firsts
    }

    #[test]
    fn growth_goes_on_under_new_limits_and_from_a_subtree() {
        let params = TreeParams::default().with_width(2);
        let whole = draft_tree(0, 5, VOCAB, &params, &limits(6, 64), |b| {
            Ok(successor_logits(&b))
        })
        .unwrap();
        // Grown to depth 3, then on to 6: the same tree as growing to 6 at once.
        let mut g = Grower::new(0, 5, VOCAB, &params, &limits(3, 64));
        assert_eq!(run(&mut g).len(), 3);
        let verified = g.tree().len();
        g.set_limits(&limits(6, 64));
        // The deepening starts with the forward of the last level (no K/V yet).
        assert_eq!(run(&mut g)[0], verified - 2);
        assert_eq!(g.tree(), &whole.tree);
        // Resumed from the subtree under node 1 (depth 1): two more levels reach depth 3
        // below it, the same nodes the whole tree has there.
        let (tree, frontier) = g.into_parts();
        let (sub, from) = tree.subtree(1);
        let last = tree.depth(frontier.start) - 1;
        let f = sub.prefix_len(last - 1, usize::MAX)..sub.len();
        assert_eq!(sub.depth(f.start), 5);
        let mut r = Grower::resume(sub.clone(), f.clone(), 6, VOCAB, &params, &limits(7, 64));
        assert_eq!(run(&mut r), vec![f.start, f.end]);
        assert_eq!(r.tree().truncated(sub.len()), sub);
        assert_eq!(from[0], 1);
        // Already as deep as the limits allow: nothing to grow.
        let done = Grower::resume(sub, f, 6, VOCAB, &params, &limits(5, 64));
        assert!(done.batch().is_none());
    }

    #[test]
    fn the_adaptive_stop_ends_a_draft_that_cannot_pay() {
        let slow = |b: DraftBatch<'_>| {
            std::thread::sleep(std::time::Duration::from_millis(1));
            Ok(successor_logits(&b))
        };
        // Tokens worth nothing: one step, then the rule stops.
        let mut l = limits(8, 64);
        l.token_s = Some(0.0);
        let d = draft_tree(0, 0, VOCAB, &TreeParams::default(), &l, slow).unwrap();
        assert_eq!(d.steps, 1);
        // Tokens worth an hour each: drafts to full depth.
        l.token_s = Some(3600.0);
        let d = draft_tree(0, 0, VOCAB, &TreeParams::default(), &l, slow).unwrap();
        assert_eq!(d.steps, 8);
    }

    #[test]
    fn a_failed_forward_fails_the_draft() {
        let e = draft_tree(0, 0, VOCAB, &TreeParams::default(), &limits(4, 64), |_| {
            Err(crate::error::Error::internal("boom"))
        })
        .unwrap_err();
        assert!(e.message().contains("boom"));
    }

    #[test]
    fn the_stop_rule_compares_expected_tokens_with_cost() {
        assert!(worth_another_step(0.5, 0.1, 0.05));
        assert!(!worth_another_step(0.4, 0.1, 0.05));
        assert!(!worth_another_step(1.0, 0.0, 1e-9));
    }

    #[test]
    fn default_trees_by_placement() {
        let t = default_tree(true, 128);
        assert_eq!((t.width, t.depth, t.max_tokens), (2, 16, 64));
        assert_eq!(default_tree(true, 40).max_tokens, 40);
        let r = default_tree(false, 128);
        assert_eq!(r, TreeParams::default());
        assert_eq!(default_tree(false, 16).max_tokens, 16);
    }
}
