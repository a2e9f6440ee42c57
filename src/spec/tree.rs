//! The token tree the draft grows: nodes in topological order (parents before children),
//! node 0 the root (the last token already chosen, whose K/V is not cached yet).
//!
//! Growth follows the SubSpec reference: each depth step takes the draft's logits for the
//! current frontier and keeps the global top-`k` (frontier node, token) pairs by cumulative
//! path log-probability at the draft temperature; they become the next frontier.

use std::cmp::Ordering;
use std::ops::Range;

use crate::sample::{log_sum_exp, top_logits};

/// A token tree. Its node lists only grow together (through [`Tree::push`] and
/// [`Tree::grow`]), so they always agree.
#[derive(Debug, Clone, PartialEq)]
pub struct Tree {
    /// Token of each node.
    tokens: Vec<u32>,
    /// Parent of each node (`None` for the root).
    parents: Vec<Option<usize>>,
    /// Depth of each node (root 0).
    depth: Vec<usize>,
    /// Cumulative draft log-probability of the path to each node (root 0).
    score: Vec<f32>,
    children: Vec<Vec<usize>>,
}

/// One candidate child: (score, frontier row, token).
type Candidate = (f32, usize, u32);

/// Orders candidates best first: higher score, then earlier frontier node, then lower id.
fn better(a: &Candidate, b: &Candidate) -> Ordering {
    b.0.partial_cmp(&a.0)
        .unwrap_or(Ordering::Equal)
        .then(a.1.cmp(&b.1))
        .then(a.2.cmp(&b.2))
}

impl Tree {
    /// A tree holding only `root`.
    pub fn new(root: u32) -> Tree {
        Tree {
            tokens: vec![root],
            parents: vec![None],
            depth: vec![0],
            score: vec![0.0],
            children: vec![Vec::new()],
        }
    }

    /// Number of nodes (root included).
    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    /// Token of every node, in node order.
    pub fn tokens(&self) -> &[u32] {
        &self.tokens
    }

    /// Parent of every node (`None` for the root), in node order.
    pub fn parents(&self) -> &[Option<usize>] {
        &self.parents
    }

    /// Depth of node `n` (the root is 0).
    pub fn depth(&self, n: usize) -> usize {
        self.depth[n]
    }

    /// Cumulative draft log-probability of the path to node `n` (the root is 0).
    pub fn score(&self, n: usize) -> f32 {
        self.score[n]
    }

    /// Children of node `n`, in the order they were added.
    #[cfg(test)]
    pub fn children(&self, n: usize) -> &[usize] {
        &self.children[n]
    }

    /// The child of node `n` carrying `token`, if the tree has one.
    pub fn child(&self, n: usize, token: u32) -> Option<usize> {
        self.children[n]
            .iter()
            .copied()
            .find(|&c| self.tokens[c] == token)
    }

    /// `from` and its draft-likeliest descendants: each node's best-scored child (the
    /// first added among equals), down to a leaf.
    pub fn best_path(&self, from: usize) -> Vec<usize> {
        let mut path = vec![from];
        let mut n = from;
        while let Some(&c) = self.children[n].iter().reduce(|a, b| {
            if self.score[*b] > self.score[*a] {
                b
            } else {
                a
            }
        }) {
            path.push(c);
            n = c;
        }
        path
    }

    /// Adds one node.
    pub fn push(&mut self, parent: usize, token: u32, score: f32) -> usize {
        let id = self.tokens.len();
        self.tokens.push(token);
        self.parents.push(Some(parent));
        self.depth.push(self.depth[parent] + 1);
        self.score.push(score);
        self.children.push(Vec::new());
        self.children[parent].push(id);
        id
    }

    /// Its first `n` nodes (parents come first, so they form a tree): the part of a grown
    /// tree a pass verifies.
    pub fn truncated(&self, n: usize) -> Tree {
        let n = n.clamp(1, self.len());
        Tree {
            tokens: self.tokens[..n].to_vec(),
            parents: self.parents[..n].to_vec(),
            depth: self.depth[..n].to_vec(),
            score: self.score[..n].to_vec(),
            children: self.children[..n]
                .iter()
                .map(|c| c.iter().copied().filter(|&x| x < n).collect())
                .collect(),
        }
    }

    /// The nodes with depth at most `depth`, at most `max` of them: how many leading nodes
    /// a pass verifies (nodes are added level by level, so they are a prefix).
    pub fn prefix_len(&self, depth: usize, max: usize) -> usize {
        self.depth
            .iter()
            .take(max)
            .take_while(|&&d| d <= depth)
            .count()
    }

    /// Node `root` and its descendants as a tree of their own (depths from `root`, scores
    /// relative to it), and the node each came from, ascending.
    pub fn subtree(&self, root: usize) -> (Tree, Vec<usize>) {
        let mut from = vec![root];
        let mut new_id = vec![None; self.len()];
        new_id[root] = Some(0);
        let mut t = Tree::new(self.tokens[root]);
        // Descendants come after their ancestors: one pass in node order finds them all.
        for n in root + 1..self.len() {
            if let Some(p) = self.parents[n].and_then(|p| new_id[p]) {
                let score = self.score[n] - self.score[root];
                new_id[n] = Some(t.push(p, self.tokens[n], score));
                from.push(n);
            }
        }
        (t, from)
    }

    /// Grows one level: `logits` holds the draft logits of the nodes in `frontier`
    /// (`frontier.len()` rows of `vocab`). Adds the global top-`min(k, limit)` children by
    /// cumulative log-probability at `temperature` and returns their node range (the new
    /// frontier). Candidates are ordered by score, then frontier node, then token id, so
    /// growth is deterministic.
    pub fn grow(
        &mut self,
        frontier: Range<usize>,
        logits: &[f32],
        vocab: usize,
        k: usize,
        temperature: f32,
        limit: usize,
    ) -> Range<usize> {
        let take = k.min(limit);
        let start = self.len();
        if take == 0 {
            return start..start;
        }
        let mut cands: Vec<Candidate> = Vec::with_capacity(frontier.len() * take);
        let t = temperature as f64;
        for (row, node) in frontier.clone().enumerate() {
            let logits = &logits[row * vocab..(row + 1) * vocab];
            // Only the row's own top `take` can be in the global top `take`, and the
            // log-softmax keeps a row's order: rank by logit, then score the few kept.
            let top = top_logits(logits, take);
            let max = top.first().map_or(f32::NEG_INFINITY, |c| c.0);
            let lse = log_sum_exp(logits, max, temperature);
            let base = self.score[node];
            cands.extend(top.into_iter().map(|(x, tok)| {
                let lp = ((x as f64 - max as f64) / t - lse) as f32;
                (base + lp, row, tok)
            }));
        }
        cands.sort_by(better);
        cands.truncate(take);
        // Keep children grouped by parent in frontier order (topological order holds
        // either way; grouping keeps the layout easy to read).
        cands.sort_by(|a, b| a.1.cmp(&b.1).then(better(a, b)));
        for (score, row, token) in cands {
            self.push(frontier.start + row, token, score);
        }
        start..self.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sample::log_softmax;

    /// Logits whose temperature-1 softmax is the given probabilities.
    fn logits(p: &[f64]) -> Vec<f32> {
        p.iter().map(|&x| x.ln() as f32).collect()
    }

    /// Root 0 with children 1 (token 5) and 2 (token 6); 3 under 1, 4 and 5 under 2, 6
    /// under 4.
    fn sample_tree() -> Tree {
        let mut t = Tree::new(9);
        t.push(0, 5, -0.5);
        t.push(0, 6, -1.0);
        t.push(1, 7, -0.7);
        t.push(2, 8, -1.5);
        t.push(2, 3, -2.0);
        t.push(4, 4, -1.75);
        t
    }

    #[test]
    fn a_subtree_keeps_its_shape_relative_to_its_root() {
        let t = sample_tree();
        let (s, from) = t.subtree(2);
        assert_eq!(from, vec![2, 4, 5, 6]);
        assert_eq!(s.tokens(), &[6, 8, 3, 4]);
        assert_eq!(s.parents(), &[None, Some(0), Some(0), Some(1)]);
        assert_eq!(s.depth, vec![0, 1, 1, 2]);
        assert_eq!(s.score, vec![0.0, -0.5, -1.0, -0.75]);
        assert_eq!(s.children(0), &[1, 2]);
        assert_eq!(
            (t.child(2, 3), t.child(2, 7), t.child(0, 6)),
            (Some(5), None, Some(2))
        );
        let (leaf, from) = t.subtree(3);
        assert_eq!((leaf.len(), from), (1, vec![3]));
    }

    #[test]
    fn truncation_and_the_verified_prefix() {
        let t = sample_tree();
        assert_eq!(t.prefix_len(1, 100), 3);
        assert_eq!(t.prefix_len(2, 100), 6);
        assert_eq!(t.prefix_len(2, 4), 4);
        assert_eq!(t.prefix_len(9, 100), 7);
        let p = t.truncated(4);
        assert_eq!(p.tokens(), &[9, 5, 6, 7]);
        assert_eq!(p.children(2), &[] as &[usize]);
        assert_eq!(p.children(1), &[3]);
        assert_eq!(p.best_path(0), vec![0, 1, 3]);
        assert_eq!(t.truncated(0).len(), 1);
    }

    #[test]
    fn first_step_takes_the_root_top_k() {
        let mut t = Tree::new(9);
        let l = logits(&[0.1, 0.5, 0.05, 0.3, 0.05]);
        let r = t.grow(0..1, &l, 5, 2, 1.0, 100);
        assert_eq!(r, 1..3);
        assert_eq!(t.tokens, vec![9, 1, 3]);
        assert_eq!(t.parents, vec![None, Some(0), Some(0)]);
        assert_eq!(t.depth, vec![0, 1, 1]);
        assert!((t.score[1] - (0.5f32).ln()).abs() < 1e-6);
        assert_eq!(t.children(0), &[1, 2]);
    }

    #[test]
    fn second_step_is_a_global_top_k_over_paths() {
        let mut t = Tree::new(0);
        t.grow(0..1, &logits(&[0.0001, 0.6, 0.4]), 3, 2, 1.0, 100); // node 1: tok 1 (0.6), node 2: tok 2 (0.4)
                                                                    // Under node 1 the draft is unsure (0.5/0.5): paths 0.3, 0.3.
                                                                    // Under node 2 it is sure (0.99): path 0.396 -> the best path overall.
        let mut l = logits(&[0.0001, 0.5, 0.4999]);
        l.extend(logits(&[0.99, 0.005, 0.005]));
        let r = t.grow(1..3, &l, 3, 2, 1.0, 100);
        assert_eq!(r, 3..5);
        // Grouped by parent: node 1's child (token 1, 0.3) then node 2's child (token 0, 0.396).
        assert_eq!(t.tokens[3..], [1, 0]);
        assert_eq!(t.parents[3..], [Some(1), Some(2)]);
        assert_eq!(t.depth[3..], [2, 2]);
    }

    #[test]
    fn limit_and_temperature() {
        let mut t = Tree::new(0);
        let r = t.grow(0..1, &logits(&[0.2, 0.3, 0.5]), 3, 3, 1.0, 1);
        assert_eq!(r, 1..2);
        assert_eq!(t.tokens[1], 2);
        assert_eq!(t.grow(1..2, &logits(&[0.2, 0.3, 0.5]), 3, 3, 1.0, 0), 2..2);
        // Low temperature sharpens: log p of the best token approaches 0.
        let sharp = log_softmax(&logits(&[0.2, 0.3, 0.5]), 0.2);
        assert!(sharp[2] > -0.2 && sharp[0] < -3.0, "{sharp:?}");
    }

    #[test]
    fn one_pass_growth_equals_a_full_sort() {
        // Rows with repeated values (ties inside and across rows), a NaN and -inf.
        let vocab = 500;
        let mut seed = 7u64;
        let mut next = || {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((seed >> 33) % 64) as f32 / 4.0 - 8.0
        };
        let mut logits: Vec<f32> = (0..3 * vocab).map(|_| next()).collect();
        logits[17] = f32::NAN;
        logits[vocab + 3] = f32::NEG_INFINITY;
        for take in [1, 2, 5, 9] {
            let mut t = Tree::new(0);
            t.grow(0..1, &logits[..vocab], vocab, 3, 1.0, 100);
            let start = t.len();
            t.grow(1..4, &logits, vocab, take, 0.2, 100);
            // Reference: every (row, token) scored with the full log-softmax, sorted.
            let mut all: Vec<Candidate> = Vec::new();
            for row in 0..3 {
                let lp = log_softmax(&logits[row * vocab..(row + 1) * vocab], 0.2);
                for (tok, &l) in lp.iter().enumerate() {
                    if !l.is_nan() {
                        all.push((t.score[1 + row] + l, row, tok as u32));
                    }
                }
            }
            all.sort_by(better);
            all.truncate(take);
            all.sort_by(|a, b| a.1.cmp(&b.1).then(better(a, b)));
            let got: Vec<(usize, u32)> = (start..t.len())
                .map(|n| (t.parents[n].unwrap() - 1, t.tokens[n]))
                .collect();
            let want: Vec<(usize, u32)> = all.iter().map(|c| (c.1, c.2)).collect();
            assert_eq!(got, want, "take {take}");
            for (n, c) in (start..t.len()).zip(&all) {
                assert!(
                    (t.score[n] - c.0).abs() < 1e-5,
                    "take {take}: {} {}",
                    t.score[n],
                    c.0
                );
            }
        }
    }

    #[test]
    fn best_path_follows_the_best_scored_child() {
        let mut t = Tree::new(0);
        let a = t.push(0, 1, -0.5);
        let b = t.push(0, 2, -0.2);
        let c = t.push(b, 3, -0.9);
        let d = t.push(b, 4, -0.3);
        let e = t.push(d, 5, -0.4);
        let f = t.push(a, 6, -0.6);
        assert_eq!(t.best_path(0), vec![0, b, d, e]);
        assert_eq!(t.best_path(a), vec![a, f]);
        assert_eq!(t.best_path(c), vec![c]);
        // Equal scores: the first child added.
        let g = t.push(e, 7, -1.0);
        t.push(e, 8, -1.0);
        assert_eq!(t.best_path(d), vec![d, e, g]);
    }

    #[test]
    fn ties_break_by_frontier_then_token() {
        let mut t = Tree::new(0);
        let r = t.grow(0..1, &[1.0, 1.0, 1.0, 0.0], 4, 2, 1.0, 10);
        assert_eq!(t.tokens[r], [0, 1]);
    }
}
