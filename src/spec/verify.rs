//! The acceptance walk: lossless verification of a token tree against the target.
//!
//! Walk from the root; at each node take the target's own choice for that node's prefix
//! (argmax when greedy, otherwise a draw from the target's processed distribution with the
//! (seed, position) RNG). If a child carries that token, accept it and descend; otherwise
//! the token is the bonus and the walk ends. Every emitted token is therefore exactly the
//! token plain decoding would have chosen at that position, whatever the draft proposed.

use super::tree::Tree;
use crate::error::Result;
use crate::sample::{sample, SamplingParams};

/// The outcome of one acceptance walk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Walk {
    /// Emitted tokens, in order (accepted tree tokens, then the bonus unless the walk
    /// stopped on a limit or end-of-sequence).
    pub tokens: Vec<u32>,
    /// Tree nodes accepted, in order (node `nodes[i]` carries `tokens[i]`).
    pub nodes: Vec<usize>,
}

impl Walk {
    /// Scratch slots (tree nodes) whose K/V become committed: the root and every accepted
    /// node except one carrying the last emitted token (that token is the next root).
    pub fn keep(&self) -> Vec<usize> {
        let m = self.tokens.len();
        std::iter::once(0)
            .chain(self.nodes.iter().copied().take(m - 1))
            .collect()
    }

    /// Number of draft tokens accepted.
    pub fn accepted(&self) -> usize {
        self.nodes.len()
    }
}

/// The target's logits of tree nodes, as the walk asks for them (a verification may
/// compute only the rows the walk visits).
pub trait NodeLogits {
    /// Row `node`: `vocab` logits, the distribution after that node.
    fn row(&mut self, node: usize) -> Result<&[f32]>;
}

/// Every node's row computed up front: `tree.len()` rows of `vocab`.
#[cfg(test)]
pub struct AllRows<'a> {
    /// The rows, row-major.
    pub logits: &'a [f32],
    /// Row length.
    pub vocab: usize,
}

#[cfg(test)]
impl NodeLogits for AllRows<'_> {
    fn row(&mut self, node: usize) -> Result<&[f32]> {
        Ok(&self.logits[node * self.vocab..(node + 1) * self.vocab])
    }
}

/// [`accept_from`] with every row given up front: `logits` holds `tree.len()` rows of
/// `vocab`.
#[cfg(test)]
pub fn accept(
    tree: &Tree,
    logits: &[f32],
    vocab: usize,
    params: &SamplingParams,
    position: usize,
    max_tokens: usize,
    is_eos: impl Fn(u32) -> bool,
) -> Walk {
    let rows = &mut AllRows { logits, vocab };
    match accept_from(tree, rows, params, position, max_tokens, is_eos) {
        Ok(walk) => walk,
        Err(e) => unreachable!("rows computed up front cannot fail: {e}"),
    }
}

/// Walks `tree` with the target's rows from `rows` (row `n`: the distribution after node
/// `n`), each asked for only as the walk reaches its node. The root's successor is the
/// token at absolute position `position`. Emits at most `max_tokens` (>= 1) tokens and
/// stops after one `is_eos` says ends the sequence.
pub fn accept_from(
    tree: &Tree,
    rows: &mut impl NodeLogits,
    params: &SamplingParams,
    position: usize,
    max_tokens: usize,
    is_eos: impl Fn(u32) -> bool,
) -> Result<Walk> {
    let mut walk = Walk {
        tokens: Vec::new(),
        nodes: Vec::new(),
    };
    let mut node = 0;
    loop {
        let t = sample(rows.row(node)?, params, position + tree.depth(node));
        walk.tokens.push(t);
        let child = tree.child(node, t);
        if let Some(c) = child {
            walk.nodes.push(c);
        }
        match child {
            Some(c) if walk.tokens.len() < max_tokens && !is_eos(t) => node = c,
            _ => return Ok(walk),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Target logits (vocab 4) that make `want[n]` the argmax after node `n`.
    fn target(want: &[u32]) -> Vec<f32> {
        want.iter()
            .flat_map(|&w| (0..4).map(move |t| if t == w { 5.0 } else { 0.0 }))
            .collect()
    }

    /// root(0) -> 1:[tok 1] -> 3:[tok 2]
    ///         -> 2:[tok 3] -> 4:[tok 0]
    fn tree() -> Tree {
        let mut t = Tree::new(0);
        t.push(0, 1, -0.1);
        t.push(0, 3, -0.2);
        t.push(1, 2, -0.3);
        t.push(2, 0, -0.4);
        t
    }

    #[test]
    fn greedy_walk_accepts_the_matching_path_and_adds_a_bonus() {
        let t = tree();
        // After root the target says 3 (node 2), after node 2 it says 0 (node 4), after 4 it says 2.
        let l = target(&[3, 0, 0, 0, 2]);
        let w = accept(&t, &l, 4, &SamplingParams::greedy(), 10, 100, |_| false);
        assert_eq!(w.tokens, vec![3, 0, 2]);
        assert_eq!(w.nodes, vec![2, 4]);
        assert_eq!(w.keep(), vec![0, 2, 4]);
        assert_eq!(w.accepted(), 2);
    }

    #[test]
    fn rejection_at_the_root_emits_only_the_bonus() {
        let w = accept(
            &tree(),
            &target(&[2, 0, 0, 0, 0]),
            4,
            &SamplingParams::greedy(),
            0,
            100,
            |_| false,
        );
        assert_eq!(w.tokens, vec![2]);
        assert!(w.nodes.is_empty());
        assert_eq!(w.keep(), vec![0]);
    }

    #[test]
    fn limits_and_end_of_sequence_stop_the_walk() {
        let l = target(&[1, 2, 0, 1, 0]);
        // The whole path 1, 2 is accepted, then the leaf's bonus 1.
        let w = accept(&tree(), &l, 4, &SamplingParams::greedy(), 0, 100, |_| false);
        assert_eq!(w.tokens, vec![1, 2, 1]);
        // max_tokens 2: stop after the second token even though it was accepted.
        let w = accept(&tree(), &l, 4, &SamplingParams::greedy(), 0, 2, |_| false);
        assert_eq!(w.tokens, vec![1, 2]);
        assert_eq!(w.nodes, vec![1, 3]);
        assert_eq!(
            w.keep(),
            vec![0, 1],
            "node 3 carries the last token: it is the next root"
        );
        // EOS (token 1) accepted at depth 1: stop there.
        let w = accept(&tree(), &l, 4, &SamplingParams::greedy(), 0, 100, |t| {
            t == 1
        });
        assert_eq!(w.tokens, vec![1]);
        assert_eq!(w.keep(), vec![0]);
    }

    #[test]
    fn sampled_walk_uses_the_position_of_each_token() {
        // Flat target: every token equally likely; the draw at each position decides.
        let t = tree();
        let flat = vec![0.0f32; 5 * 4];
        let p = SamplingParams {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            seed: 3,
        };
        let w = accept(&t, &flat, 4, &p, 7, 100, |_| false);
        // The first token is exactly what sampling at position 7 gives.
        assert_eq!(w.tokens[0], sample(&flat[..4], &p, 7));
        for (i, &tok) in w.tokens.iter().enumerate() {
            assert_eq!(tok, sample(&flat[..4], &p, 7 + i));
        }
    }

    /// Rows served from a dense table, recording which nodes were asked for.
    struct Counting<'a> {
        all: AllRows<'a>,
        asked: Vec<usize>,
    }

    impl NodeLogits for Counting<'_> {
        fn row(&mut self, node: usize) -> Result<&[f32]> {
            self.asked.push(node);
            self.all.row(node)
        }
    }

    #[test]
    fn the_walk_asks_only_for_the_rows_it_visits() {
        let t = tree();
        let l = target(&[3, 0, 0, 0, 2]);
        let rows = &mut Counting {
            all: AllRows {
                logits: &l,
                vocab: 4,
            },
            asked: Vec::new(),
        };
        let params = SamplingParams::greedy();
        let w = accept_from(&t, rows, &params, 10, 100, |_| false).unwrap();
        assert_eq!(w, accept(&t, &l, 4, &params, 10, 100, |_| false));
        assert_eq!(rows.asked, vec![0, 2, 4]);
    }
}
