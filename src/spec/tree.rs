//! The token tree the draft grows: nodes in topological order (parents before children),
//! node 0 the root (the last token already chosen, whose K/V is not cached yet).
//!
//! Growth follows the SubSpec reference: each depth step takes the draft's logits for the
//! current frontier and keeps the global top-`k` (frontier node, token) pairs by cumulative
//! path log-probability at the draft temperature; they become the next frontier.

use std::cmp::Ordering;
use std::ops::Range;

/// A token tree.
#[derive(Debug, Clone, PartialEq)]
pub struct Tree {
    /// Token of each node.
    pub tokens: Vec<u32>,
    /// Parent of each node (`None` for the root).
    pub parents: Vec<Option<usize>>,
    /// Depth of each node (root 0).
    pub depth: Vec<usize>,
    /// Cumulative draft log-probability of the path to each node (root 0).
    pub score: Vec<f32>,
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

/// Log-softmax of `logits / temperature`, in f32 (computed through f64 sums).
pub fn log_softmax(logits: &[f32], temperature: f32) -> Vec<f32> {
    let t = temperature as f64;
    let max = logits.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x)) as f64;
    let lse = logits
        .iter()
        .map(|&x| ((x as f64 - max) / t).exp())
        .sum::<f64>()
        .ln();
    logits
        .iter()
        .map(|&x| ((x as f64 - max) / t - lse) as f32)
        .collect()
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

    /// Whether the tree is empty (never: it always has a root).
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// Children of node `n`, in the order they were added.
    pub fn children(&self, n: usize) -> &[usize] {
        &self.children[n]
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
        for (row, node) in frontier.clone().enumerate() {
            let lp = log_softmax(&logits[row * vocab..(row + 1) * vocab], temperature);
            let base = self.score[node];
            let mut row_cands: Vec<Candidate> = lp
                .iter()
                .enumerate()
                .map(|(t, &l)| (base + l, row, t as u32))
                .collect();
            // Only the row's own top `take` can be in the global top `take`.
            if row_cands.len() > take {
                row_cands.select_nth_unstable_by(take - 1, better);
                row_cands.truncate(take);
            }
            cands.extend(row_cands);
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

    /// Logits whose temperature-1 softmax is the given probabilities.
    fn logits(p: &[f64]) -> Vec<f32> {
        p.iter().map(|&x| x.ln() as f32).collect()
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
    fn ties_break_by_frontier_then_token() {
        let mut t = Tree::new(0);
        let r = t.grow(0..1, &[1.0, 1.0, 1.0, 0.0], 4, 2, 1.0, 10);
        assert_eq!(t.tokens[r], [0, 1]);
    }
}
