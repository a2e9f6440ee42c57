//! Trees sized by measured cost ([`TreeParams::auto_depth`]): before each iteration the
//! depth (`0`: a plain step) that maximises expected tokens per second is chosen from the
//! engine's measured costs ([`TreeCosts`]: a draft step at a width, a target pass over
//! `T` tokens, one more logits row) and the sequence's acceptance by depth so far
//! ([`Acceptance`]). Any choice is lossless; only speed depends on it.
//!
//! [`TreeParams::auto_depth`]: super::TreeParams::auto_depth

/// Seconds of the forwards an iteration is made of, measured once per engine on its own
/// placement (`Engine::tree_costs`).
#[derive(Debug, Clone, PartialEq)]
pub struct TreeCosts {
    /// `(frontier width, seconds of one draft step over it)`, widths ascending.
    pub draft: Vec<(usize, f64)>,
    /// `(tokens, seconds of one target pass over them, one logits row)`, ascending; the
    /// first is one token: a plain step.
    pub verify: Vec<(usize, f64)>,
    /// Seconds of one more logits row (each emitted token of a walk needs one).
    pub logits_row: f64,
}

/// Linear interpolation in ascending `(x, y)` points, extended flat below the first and
/// along the last segment's slope above the last.
fn interpolate(points: &[(usize, f64)], x: usize) -> f64 {
    let x = x as f64;
    let at = |i: usize| (points[i].0 as f64, points[i].1);
    match points.len() {
        0 => 0.0,
        1 => points[0].1,
        n => {
            let i = (1..n).find(|&i| at(i).0 >= x).unwrap_or(n - 1);
            let ((x0, y0), (x1, y1)) = (at(i - 1), at(i));
            if x <= x0 {
                return y0;
            }
            (y0 + (y1 - y0) * (x - x0) / (x1 - x0)).max(0.0)
        }
    }
}

impl TreeCosts {
    /// One draft step over `width` frontier nodes.
    pub fn draft_s(&self, width: usize) -> f64 {
        interpolate(&self.draft, width)
    }

    /// One target pass over `tokens` tokens with one logits row.
    pub fn verify_s(&self, tokens: usize) -> f64 {
        interpolate(&self.verify, tokens)
    }
}

/// Prior probability that a draft token is accepted given its parent was, before the
/// sequence has shown its own (about what the test models show on the CPU: chains of 8
/// emit ~3.2 tokens per pass, docs/BENCHMARKS.md).
const PRIOR: f64 = 0.7;
/// Weight of the prior, in observations.
const PRIOR_WEIGHT: f64 = 2.0;
/// Each iteration's observations keep this share of their weight at the next: the
/// estimate follows the text as it changes.
const DECAY: f64 = 0.95;
/// After this many plain steps in a row, one speculative iteration re-measures the
/// acceptance (it may have risen); each such iteration after which plain steps still pay
/// doubles the wait, up to [`EXPLORE_MAX`].
const EXPLORE_AFTER: usize = 8;
const EXPLORE_MAX: usize = 128;

/// A sequence's acceptance by depth: how often a draft token at depth `d` was tried
/// (its parent accepted) and accepted, decayed over iterations.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Acceptance {
    tried: Vec<f64>,
    hit: Vec<f64>,
    /// Plain steps chosen in a row.
    plain_streak: usize,
    /// Plain steps in a row before the next exploring iteration (0: [`EXPLORE_AFTER`]).
    explore_after: usize,
    /// Whether the last speculative iteration was one.
    explored: bool,
}

impl Acceptance {
    /// Whether the next step should speculate whatever the costs say, to measure the
    /// acceptance again.
    pub fn explore(&self) -> bool {
        self.plain_streak >= self.explore_after.max(EXPLORE_AFTER)
    }

    /// Notes the depth chosen for a step (`0`: plain; `exploring`: forced by
    /// [`Acceptance::explore`]).
    pub fn chose(&mut self, depth: usize, exploring: bool) {
        if depth == 0 {
            if self.explored {
                // The exploration did not win speculation back: wait longer next time.
                self.explore_after = (self.explore_after.max(EXPLORE_AFTER) * 2).min(EXPLORE_MAX);
            }
            self.plain_streak += 1;
        } else {
            if !exploring {
                self.explore_after = EXPLORE_AFTER;
            }
            self.plain_streak = 0;
        }
        self.explored = depth > 0 && exploring;
    }

    /// Records an iteration that drafted `depth` levels and accepted `accepted` tokens.
    pub fn record(&mut self, depth: usize, accepted: usize) {
        for v in self.tried.iter_mut().chain(self.hit.iter_mut()) {
            *v *= DECAY;
        }
        if self.tried.len() < depth {
            self.tried.resize(depth, 0.0);
            self.hit.resize(depth, 0.0);
        }
        // Depth d + 1 was tried when the d before it were accepted.
        for d in 0..depth.min(accepted + 1) {
            self.tried[d] += 1.0;
            if d < accepted {
                self.hit[d] += 1.0;
            }
        }
    }

    /// Probability that the draft token at depth `d + 1` is accepted given its parent was:
    /// observed, pulled towards the level above's rate (the prior's at depth 1); deeper
    /// than ever tried, the deepest level's.
    #[cfg(test)]
    fn conditional(&self, d: usize) -> f64 {
        self.expected_by_depth(d + 1).1
    }

    /// Expected tokens of an iteration drafting `depth` levels: the bonus token plus the
    /// chance of accepting each depth.
    #[cfg(test)]
    fn expected_tokens(&self, depth: usize) -> f64 {
        self.expected_by_depth(depth).0[depth]
    }

    /// Expected tokens for every depth from 0 to `depth` (one pass over the levels), and
    /// the conditional rate of the last level counted (the prior's when `depth` is 0).
    fn expected_by_depth(&self, depth: usize) -> (Vec<f64>, f64) {
        let (mut rate, mut p) = (PRIOR, 1.0);
        let mut e = Vec::with_capacity(depth + 1);
        e.push(1.0);
        for d in 0..depth {
            if let (Some(&tried), Some(&hit)) = (self.tried.get(d), self.hit.get(d)) {
                rate = (hit + rate * PRIOR_WEIGHT) / (tried + PRIOR_WEIGHT);
            }
            p *= rate;
            e.push(e[d] + p);
        }
        (e, rate)
    }
}

/// The depth (from `min_depth` to `max_depth`; `0`: a plain step) maximising expected
/// tokens per second for a tree of frontier `width` and at most `max_tokens` nodes, and
/// that rate: [`best_batch_depth`] for a step of one sequence.
pub fn best_depth(
    costs: &TreeCosts,
    acc: &Acceptance,
    width: usize,
    depths: (usize, usize),
    max_tokens: usize,
) -> (usize, f64) {
    let one = Member {
        acc: Some(acc),
        width,
        depths,
        max_tokens,
        prefix: 0,
    };
    let (d, rate) = best_batch_depth(costs, &[one]);
    (one.depth(d), rate)
}

/// One sequence of a batched step (one target pass for all, their trees grown together,
/// one draft forward per level) whose depth is being chosen.
#[derive(Debug, Clone, Copy)]
pub struct Member<'a> {
    /// Its acceptance by depth; `None`: a step that emits one token whatever its depth
    /// (a plain step, a prompt's).
    pub acc: Option<&'a Acceptance>,
    /// Frontier width of its tree.
    pub width: usize,
    /// The depths it may take, `(least, most)`: equal for a sequence whose depth is given.
    pub depths: (usize, usize),
    /// Most nodes of its tree, root included.
    pub max_tokens: usize,
    /// Tokens it puts in the pass before its tree's root (a prompt's).
    pub prefix: usize,
}

impl Member<'_> {
    /// Its depth when the step's depth is `d`.
    pub fn depth(&self, d: usize) -> usize {
        let deepest = self.depths.1.min(
            self.max_tokens
                .saturating_sub(1)
                .div_ceil(self.width.max(1)),
        );
        d.clamp(self.depths.0.min(deepest), deepest)
    }

    /// Tokens it puts in the target pass at depth `depth`.
    fn tokens(&self, depth: usize) -> usize {
        self.prefix + (1 + self.width * depth).min(self.max_tokens.max(1))
    }
}

/// The depth (`0`: plain steps) for the sequences of a step that maximises their
/// expected tokens per second together: each `member` takes it within its own
/// [`Member::depths`], the draft forwards of a level carry every tree still growing,
/// and the target pass every tree. Returns the depth and the rate. With one member, the
/// choice for one sequence; with many, the shared pass's cost grows with their tokens,
/// so the trees get shallower where verification is compute-bound.
pub fn best_batch_depth(costs: &TreeCosts, members: &[Member]) -> (usize, f64) {
    let top = members
        .iter()
        .map(|m| m.depth(usize::MAX))
        .max()
        .unwrap_or(0);
    let expected: Vec<Vec<f64>> = members
        .iter()
        .map(|m| match m.acc {
            Some(acc) => acc.expected_by_depth(m.depth(usize::MAX)).0,
            None => vec![1.0; m.depth(usize::MAX) + 1],
        })
        .collect();
    let rate = |d: usize| {
        let depth: Vec<usize> = members.iter().map(|m| m.depth(d)).collect();
        let e: f64 = depth.iter().zip(&expected).map(|(&k, e)| e[k]).sum();
        let levels = depth.iter().copied().max().unwrap_or(0);
        let draft: f64 = (1..=levels)
            .map(|l| {
                let rows: usize = members
                    .iter()
                    .zip(&depth)
                    .filter(|(_, &k)| k >= l)
                    .map(|(m, _)| m.width)
                    .sum();
                costs.draft_s(rows)
            })
            .sum();
        let tokens: usize = members.iter().zip(&depth).map(|(m, &k)| m.tokens(k)).sum();
        let s =
            draft + costs.verify_s(tokens) + (e - members.len() as f64).max(0.0) * costs.logits_row;
        e / s.max(1e-9)
    };
    let mut best = (0, rate(0));
    for d in 1..=top {
        let r = rate(d);
        if r > best.1 {
            best = (d, r);
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Costs like the CPU with everything resident: a draft step about half a one-token
    /// target pass, verification growing with its tokens.
    fn resident() -> TreeCosts {
        TreeCosts {
            draft: vec![(1, 0.005), (8, 0.012)],
            verify: vec![(1, 0.010), (8, 0.020), (64, 0.110)],
            logits_row: 0.001,
        }
    }

    /// Costs like offloading: every target pass streams the offloaded layers (0.3 s)
    /// whatever its tokens.
    fn offloaded() -> TreeCosts {
        TreeCosts {
            draft: vec![(1, 0.005), (8, 0.012)],
            verify: vec![(1, 0.300), (64, 0.330)],
            logits_row: 0.001,
        }
    }

    fn observed(conditional: f64, n: usize) -> Acceptance {
        // Iterations of depth 12 accepting a run drawn at `conditional` per level.
        let mut a = Acceptance::default();
        let mut x = 0.37f64;
        for _ in 0..n {
            let mut accepted = 0;
            while accepted < 12 {
                x = (x * 9301.0 + 0.49297).fract();
                if x >= conditional {
                    break;
                }
                accepted += 1;
            }
            a.record(12, accepted);
        }
        a
    }

    #[test]
    fn interpolation_is_linear_between_points_and_extends_the_last_slope() {
        let c = resident();
        assert!((c.verify_s(1) - 0.010).abs() < 1e-12);
        assert!((c.verify_s(36) - 0.065).abs() < 1e-9);
        assert!((c.verify_s(120) - 0.200).abs() < 1e-9);
        assert!((c.draft_s(0) - 0.005).abs() < 1e-12);
    }

    #[test]
    fn acceptance_is_estimated_per_depth_with_a_prior() {
        let fresh = Acceptance::default();
        assert!((fresh.conditional(0) - PRIOR).abs() < 1e-12);
        assert!((fresh.expected_tokens(0) - 1.0).abs() < 1e-12);
        let mut a = Acceptance::default();
        for _ in 0..200 {
            a.record(4, 4); // every draft token accepted
        }
        assert!(a.conditional(0) > 0.95 && a.conditional(3) > 0.95);
        assert!(
            a.conditional(7) > 0.95,
            "deeper than observed: the deepest rate"
        );
        for _ in 0..200 {
            a.record(4, 0); // none: only depth 1 is tried
        }
        assert!(a.conditional(0) < 0.1, "{}", a.conditional(0));
        assert!(a.expected_tokens(4) < 1.1);
    }

    #[test]
    fn exploring_waits_longer_each_time_it_does_not_pay() {
        let mut a = Acceptance::default();
        let plain_until_explore = |a: &mut Acceptance| {
            let mut n = 0;
            while !a.explore() {
                a.chose(0, false);
                n += 1;
            }
            n
        };
        assert_eq!(plain_until_explore(&mut a), 8);
        a.chose(3, true);
        assert_eq!(
            plain_until_explore(&mut a),
            16,
            "it did not pay: wait twice as long"
        );
        a.chose(3, true);
        assert_eq!(plain_until_explore(&mut a), 32);
        for _ in 0..10 {
            a.chose(3, true);
            plain_until_explore(&mut a);
        }
        a.chose(3, true);
        assert_eq!(plain_until_explore(&mut a), EXPLORE_MAX);
        // Speculation chosen on its merits starts the waits over.
        a.chose(3, true);
        a.chose(4, false);
        assert_eq!(plain_until_explore(&mut a), 8);
    }

    #[test]
    fn a_batch_chooses_shallower_trees_where_its_pass_is_compute_bound() {
        let acc = observed(0.8, 100);
        let member = |depths| Member {
            acc: Some(&acc),
            width: 1,
            depths,
            max_tokens: 64,
            prefix: 0,
        };
        let many = |k: usize| vec![member((0, 16)); k];
        // One member: the single-sequence choice.
        for costs in [resident(), offloaded()] {
            let (d, r) = best_batch_depth(&costs, &many(1));
            let (d1, r1) = best_depth(&costs, &acc, 1, (0, 16), 64);
            assert_eq!((d, r), (d1, r1));
        }
        // Compute-bound verification (cost growing with every token): the more trees share
        // the pass, the shallower each.
        let (one, eight) = (
            best_batch_depth(&resident(), &many(1)).0,
            best_batch_depth(&resident(), &many(8)).0,
        );
        assert!(eight < one, "8 sequences: depth {eight}, 1: {one}");
        // A pass that costs its stream whatever its tokens: trees stay deep.
        let (deep1, deep8) = (
            best_batch_depth(&offloaded(), &many(1)).0,
            best_batch_depth(&offloaded(), &many(8)).0,
        );
        println!("resident {one} -> {eight}, offloaded {deep1} -> {deep8}");
        assert!(deep8 > eight && deep8 >= 6, "{deep8} vs {eight}");
        // A member whose depth is given keeps it; a prompt's step stays plain, and its
        // tokens make the pass dearer whatever the depth, so speculating in it costs the
        // other member relatively less: its tree is no shallower than alone.
        let fixed = member((5, 5));
        let (d, _) = best_batch_depth(&resident(), &[member((0, 16)), fixed]);
        assert_eq!(fixed.depth(d), 5);
        let prompt = Member {
            acc: None,
            width: 1,
            depths: (0, 0),
            max_tokens: 64,
            prefix: 63,
        };
        let with_prompt = best_batch_depth(&resident(), &[member((0, 16)), prompt]).0;
        assert!(with_prompt >= one, "{with_prompt} vs {one}");
        assert_eq!(prompt.depth(with_prompt), 0);
    }

    #[test]
    fn depth_follows_cost_and_acceptance() {
        // The draft that never agrees: plain steps pay best.
        assert_eq!(
            best_depth(&resident(), &observed(0.05, 100), 1, (0, 16), 64).0,
            0
        );
        // A good draft with everything resident: speculation pays, a short chain.
        let (d, _) = best_depth(&resident(), &observed(0.8, 100), 1, (0, 16), 64);
        assert!((1..=6).contains(&d), "{d}");
        // The same acceptance, offloaded: every pass is expensive, so go deep.
        let (deep, _) = best_depth(&offloaded(), &observed(0.8, 100), 1, (0, 16), 64);
        assert!(deep > d && deep >= 10, "{deep} vs {d}");
        // Offloaded even a poor draft pays.
        assert!(best_depth(&offloaded(), &observed(0.3, 100), 1, (0, 16), 64).0 >= 1);
        // An exploring step asks for at least one level.
        assert!(best_depth(&resident(), &observed(0.05, 100), 1, (1, 16), 64).0 == 1);
        // Never deeper than the tree has room for, nor than asked.
        assert!(best_depth(&offloaded(), &observed(0.99, 100), 4, (0, 48), 9).0 <= 2);
        assert!(best_depth(&offloaded(), &observed(0.99, 100), 1, (0, 5), 64).0 <= 5);
    }
}
