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
use crate::error::Result;

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

/// Grows a tree under `root` (the last chosen token, at absolute position `root_pos`):
/// each step runs `forward` over the frontier and keeps the global top `params.width`
/// children by path probability at `params.draft_temperature` ([`Tree::grow`]).
/// `forward` returns the draft's logits of every frontier node, `vocab` per row.
pub(crate) fn draft_tree(
    root: u32,
    root_pos: usize,
    vocab: usize,
    params: &TreeParams,
    limits: &DraftLimits,
    mut forward: impl FnMut(DraftBatch<'_>) -> Result<Vec<f32>>,
) -> Result<Draft> {
    let mut g = Grower::new(root, root_pos, vocab, params, limits);
    while let Some(batch) = g.batch() {
        let logits = forward(batch)?;
        g.feed(&logits);
    }
    Ok(g.finish())
}

/// [`draft_tree`] one step at a time, for callers that run the forwards of several
/// trees together: [`Grower::batch`] is the next forward (`None`: the tree is grown),
/// [`Grower::feed`] takes its logits.
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
        self.done = self.frontier.is_empty() || self.steps >= self.limits.depth;
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
        // Root, two children, two grandchildren, then one node fills the budget; the
        // empty frontier after it ends the loop.
        assert_eq!(d.steps, 4);
        assert_eq!(d.tree.children(0).len(), 2);
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
