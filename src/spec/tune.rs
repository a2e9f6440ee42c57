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

/// What iterations have cost against what [`TreeCosts`] predicted for them. The costs are
/// measured once, over repeated passes of one kind, their weights warm in the caches;
/// real decoding alternates the draft's weights with the target's. On the CPU a
/// speculative iteration took ~1.2x its prediction, and a plain step never chosen kept a
/// noisy load-time figure (SmolLM2-135M resident, docs/BENCHMARKS.md): enough to choose
/// speculation where it loses. Kept per engine: a property of the machine and the
/// placement.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Observed {
    /// Seconds of a plain step (a moving average), once one was timed.
    plain_s: Option<f64>,
    /// Seconds of a speculative iteration over the seconds predicted for it (a moving
    /// average of the ratio), once one was timed.
    spec_ratio: Option<f64>,
    /// Plain steps timed (the first is not counted).
    plain_timed: usize,
    /// Whether a speculative iteration was seen (the first is not counted).
    spec_seen: bool,
    /// Speculative iterations timed since the last plain step.
    since_plain: usize,
}

/// Weight of a slower timing in [`Observed`]'s averages. The machine's noise (other work,
/// caches refilled after the other kind of step) only ever adds time, so a faster timing
/// replaces the average (down to half of it) and a slower one moves it by this share (up
/// to twice it): the averages follow each kind's least disturbed cost, both alike.
const SLOWER_WEIGHT: f64 = 0.1;
/// After this many speculative iterations one plain step is timed, whatever the costs
/// say: a plain step that was never chosen would keep its prediction (one noisy
/// measurement at load), or one timing, for ever.
const PLAIN_EVERY: usize = 16;
/// Plain steps an engine times first, before any choice: its first steps after a
/// prefill run slower than the rest (the caches refilled with the weights).
const PLAIN_FIRST: usize = 4;

impl Observed {
    /// Records a step of depth `depth` (`0`: plain) predicted to take `predicted_s` that
    /// took `observed_s`. The first step of each kind is not counted (it pays for the
    /// first touch of its weights and buffers: 5x its prediction on the CPU); then a
    /// faster timing replaces the average (down to half of it), a slower one moves it by
    /// [`SLOWER_WEIGHT`] (up to twice it): one disturbed step, a page fault, leaves the
    /// choice as it was. Timings that are not positive and finite are ignored.
    pub fn record(&mut self, depth: usize, predicted_s: f64, observed_s: f64) {
        if !(observed_s > 0.0 && observed_s.is_finite() && predicted_s > 0.0) {
            return;
        }
        let (first, slot, x) = if depth == 0 {
            self.since_plain = 0;
            self.plain_timed += 1;
            (self.plain_timed == 1, &mut self.plain_s, observed_s)
        } else {
            self.since_plain += 1;
            let first = !std::mem::replace(&mut self.spec_seen, true);
            (first, &mut self.spec_ratio, observed_s / predicted_s)
        };
        if first {
            return;
        }
        *slot = Some(match *slot {
            Some(v) if x < v => x.max(v / 2.0),
            Some(v) => v + SLOWER_WEIGHT * (x.min(v * 2.0) - v),
            None => x,
        });
    }

    /// Whether the next step should be plain whatever the costs say, to time one: the
    /// first [`PLAIN_FIRST`] (the first is left out), then one after every
    /// [`PLAIN_EVERY`] speculative iterations.
    pub fn wants_plain(&self) -> bool {
        self.plain_timed < PLAIN_FIRST || self.since_plain >= PLAIN_EVERY
    }

    /// Seconds a step of depth `depth` predicted to take `predicted_s` is expected to take.
    pub fn seconds(&self, depth: usize, predicted_s: f64) -> f64 {
        match (depth, self.plain_s, self.spec_ratio) {
            (0, Some(s), _) => s,
            (0, None, _) => predicted_s,
            (_, _, r) => predicted_s * r.unwrap_or(1.0),
        }
    }
}

/// A depth chosen for one sequence's step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Choice {
    /// The depth (`0`: a plain step).
    pub depth: usize,
    /// Expected tokens per second at it, with [`Observed`]'s corrections.
    pub rate: f64,
    /// Seconds [`TreeCosts`] predict for it (what [`Observed::record`] compares with).
    pub predicted_s: f64,
}

/// The depth (from `depths.0` to `depths.1`; `0`: a plain step) maximising expected
/// tokens per second for a tree of frontier `width` and at most `max_tokens` nodes, the
/// costs corrected by what iterations were `observed` to cost: [`best_batch_depth`]'s
/// model for a step of one sequence.
pub fn best_depth(
    costs: &TreeCosts,
    acc: &Acceptance,
    observed: &Observed,
    width: usize,
    depths: (usize, usize),
    max_tokens: usize,
) -> Choice {
    let one = [Member {
        acc: Some(acc),
        width,
        depths,
        max_tokens,
        prefix: 0,
    }];
    let model = BatchModel::new(costs, &one);
    let choice = |d: usize| {
        let depth = one[0].depth(d);
        let (e, s) = model.at(d);
        Choice {
            depth,
            rate: e / observed.seconds(depth, s).max(1e-9),
            predicted_s: s,
        }
    };
    let mut best = choice(0);
    for c in (1..=model.top).map(choice) {
        if c.rate > best.rate {
            best = c;
        }
    }
    best
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
    let model = BatchModel::new(costs, members);
    let rate = |d: usize| {
        let (e, s) = model.at(d);
        e / s.max(1e-9)
    };
    let mut best = (0, rate(0));
    for d in 1..=model.top {
        let r = rate(d);
        if r > best.1 {
            best = (d, r);
        }
    }
    best
}

/// The expected tokens and predicted seconds of a step of `members` by its depth.
struct BatchModel<'a> {
    costs: &'a TreeCosts,
    members: &'a [Member<'a>],
    /// Each member's expected tokens by its depth.
    expected: Vec<Vec<f64>>,
    /// The deepest any member may go.
    top: usize,
}

impl<'a> BatchModel<'a> {
    fn new(costs: &'a TreeCosts, members: &'a [Member<'a>]) -> Self {
        let top = members
            .iter()
            .map(|m| m.depth(usize::MAX))
            .max()
            .unwrap_or(0);
        let expected = members
            .iter()
            .map(|m| match m.acc {
                Some(acc) => acc.expected_by_depth(m.depth(usize::MAX)).0,
                None => vec![1.0; m.depth(usize::MAX) + 1],
            })
            .collect();
        BatchModel {
            costs,
            members,
            expected,
            top,
        }
    }

    /// `(expected tokens, predicted seconds)` of the step at depth `d`.
    fn at(&self, d: usize) -> (f64, f64) {
        let (costs, members) = (self.costs, self.members);
        let depth: Vec<usize> = members.iter().map(|m| m.depth(d)).collect();
        let e: f64 = depth.iter().zip(&self.expected).map(|(&k, e)| e[k]).sum();
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
        (e, s)
    }
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
            let c = best_depth(&costs, &acc, &Observed::default(), 1, (0, 16), 64);
            assert_eq!((d, r), (c.depth, c.rate));
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

    /// The depth [`best_depth`] chooses with no timings observed.
    fn depth(c: &TreeCosts, acc: &Acceptance, width: usize, d: (usize, usize), n: usize) -> usize {
        best_depth(c, acc, &Observed::default(), width, d, n).depth
    }

    #[test]
    fn depth_follows_cost_and_acceptance() {
        // The draft that never agrees: plain steps pay best.
        assert_eq!(depth(&resident(), &observed(0.05, 100), 1, (0, 16), 64), 0);
        // A good draft with everything resident: speculation pays, a short chain.
        let d = depth(&resident(), &observed(0.8, 100), 1, (0, 16), 64);
        assert!((1..=6).contains(&d), "{d}");
        // The same acceptance, offloaded: every pass is expensive, so go deep.
        let deep = depth(&offloaded(), &observed(0.8, 100), 1, (0, 16), 64);
        assert!(deep > d && deep >= 10, "{deep} vs {d}");
        // Offloaded even a poor draft pays.
        assert!(depth(&offloaded(), &observed(0.3, 100), 1, (0, 16), 64) >= 1);
        // An exploring step asks for at least one level.
        assert_eq!(depth(&resident(), &observed(0.05, 100), 1, (1, 16), 64), 1);
        // Never deeper than the tree has room for, nor than asked.
        assert!(depth(&offloaded(), &observed(0.99, 100), 4, (0, 48), 9) <= 2);
        assert!(depth(&offloaded(), &observed(0.99, 100), 1, (0, 5), 64) <= 5);
    }

    #[test]
    fn observed_timings_correct_the_predicted_costs() {
        let (costs, acc) = (resident(), observed(0.8, 100));
        let mut seen = Observed::default();
        let choose = |seen: &Observed| best_depth(&costs, &acc, seen, 1, (0, 16), 64);
        let first = choose(&seen);
        assert!(
            first.depth > 0,
            "the costs alone say speculation pays a little"
        );
        // Speculative iterations take 40% longer than predicted: plain steps pay.
        for _ in 0..20 {
            seen.record(first.depth, first.predicted_s, first.predicted_s * 1.4);
        }
        let slower = choose(&seen);
        assert_eq!(slower.depth, 0, "{slower:?}");
        assert!(slower.rate < first.rate);
        // Plain steps turn out twice as slow as predicted: speculation pays again.
        for _ in 0..20 {
            seen.record(0, slower.predicted_s, slower.predicted_s * 2.0);
        }
        assert!(choose(&seen).depth > 0);
        // Nonsense timings change nothing.
        let before = seen;
        seen.record(3, 0.01, f64::NAN);
        seen.record(0, 0.01, -1.0);
        seen.record(2, 0.0, 0.5);
        assert_eq!(seen, before);
        // The first of each kind is not counted; then a faster timing replaces the
        // average, a slower one moves it by a tenth, counted as twice the average at most.
        let mut one = Observed::default();
        one.record(0, 0.01, 0.500);
        assert!(
            (one.seconds(0, 1.0) - 1.0).abs() < 1e-12,
            "the first is left out"
        );
        one.record(0, 0.01, 0.020);
        one.record(0, 0.01, 0.010);
        assert!((one.seconds(0, 1.0) - 0.010).abs() < 1e-12);
        one.record(0, 0.01, 0.015);
        assert!((one.seconds(0, 1.0) - 0.0105).abs() < 1e-12);
        one.record(0, 0.01, 5.0);
        assert!((one.seconds(0, 1.0) - 0.01155).abs() < 1e-12);
        one.record(0, 0.01, 0.001);
        assert!(
            (one.seconds(0, 1.0) - 0.005775).abs() < 1e-12,
            "down to half"
        );
        assert!(
            (one.seconds(4, 0.5) - 0.5).abs() < 1e-12,
            "no ratio seen yet"
        );
        // The first PLAIN_FIRST steps are plain, then one after every PLAIN_EVERY
        // speculative iterations.
        let mut o = Observed::default();
        for _ in 0..PLAIN_FIRST {
            assert!(o.wants_plain());
            o.record(0, 0.01, 0.01);
        }
        for _ in 0..PLAIN_EVERY {
            assert!(!o.wants_plain());
            o.record(2, 0.01, 0.01);
        }
        assert!(o.wants_plain());
        o.record(0, 0.01, 0.01);
        assert!(!o.wants_plain());
    }
}
