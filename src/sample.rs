//! Turning logits into tokens: greedy argmax, and seeded sampling with temperature, top-k
//! and top-p from a counter-based RNG keyed by (seed, absolute position).
//!
//! Because the random number for position `p` depends only on `(seed, p)`, the token drawn
//! at `p` depends only on the logits there: plain decoding and speculative verification,
//! which see the same logits, draw the same token.

use crate::error::{Error, Result};

/// How the next token is chosen.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub struct SamplingParams {
    /// Softmax temperature; `0` means greedy (argmax).
    pub temperature: f32,
    /// Keep only the `top_k` most likely tokens (`0`: all).
    pub top_k: usize,
    /// Keep the smallest set of tokens whose probability reaches `top_p` (`1.0`: all).
    pub top_p: f32,
    /// RNG seed.
    pub seed: u64,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            seed: 0,
        }
    }
}

impl SamplingParams {
    /// Greedy decoding.
    pub fn greedy() -> Self {
        Self::default()
    }

    /// Sampling at `temperature` (`0`: greedy) from the `top_k` most likely tokens (`0`:
    /// all) whose probability reaches `top_p` (`1.0`: all), with the RNG seeded by `seed`.
    pub fn new(temperature: f32, top_k: usize, top_p: f32, seed: u64) -> Self {
        SamplingParams {
            temperature,
            top_k,
            top_p,
            seed,
        }
    }

    /// With softmax temperature `t` (`0`: greedy).
    pub fn with_temperature(self, t: f32) -> Self {
        SamplingParams {
            temperature: t,
            ..self
        }
    }

    /// Keeping only the `k` most likely tokens (`0`: all).
    pub fn with_top_k(self, k: usize) -> Self {
        SamplingParams { top_k: k, ..self }
    }

    /// Keeping the smallest set of tokens whose probability reaches `p` (`1.0`: all).
    pub fn with_top_p(self, p: f32) -> Self {
        SamplingParams { top_p: p, ..self }
    }

    /// With the RNG seeded by `seed`.
    pub fn with_seed(self, seed: u64) -> Self {
        SamplingParams { seed, ..self }
    }

    /// Checks the ranges.
    pub fn validate(&self) -> Result<()> {
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return Err(Error::invalid_argument(format!(
                "temperature must be a finite number >= 0, got {}",
                self.temperature
            )));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(Error::invalid_argument(format!(
                "top_p must be in (0, 1], got {}",
                self.top_p
            )));
        }
        Ok(())
    }

    /// Whether this is greedy decoding.
    pub fn is_greedy(&self) -> bool {
        self.temperature == 0.0
    }
}

/// Terms of the softmax sum below `exp(-CUT)` of the largest are skipped: 152k of them
/// add less than 1e-12 relative, far below f32's resolution of the result.
const CUT: f64 = 40.0;

/// `ln(sum(exp((x - max) / temperature)))` over `logits` (`max` their maximum), in f64,
/// skipping terms too small to change the result (see `CUT`).
pub(crate) fn log_sum_exp(logits: &[f32], max: f32, temperature: f32) -> f64 {
    let t = temperature as f64;
    let floor = (max as f64 - CUT * t) as f32;
    logits
        .iter()
        .filter(|&&x| x > floor)
        .map(|&x| ((x as f64 - max as f64) / t).exp())
        .sum::<f64>()
        .ln()
}

/// Log-softmax of `logits / temperature`, in f32 (computed through f64 sums).
#[cfg(test)]
pub fn log_softmax(logits: &[f32], temperature: f32) -> Vec<f32> {
    let max = logits.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
    let lse = log_sum_exp(logits, max, temperature);
    let t = temperature as f64;
    logits
        .iter()
        .map(|&x| ((x as f64 - max as f64) / t - lse) as f32)
        .collect()
}

/// `-log softmax(logits)[target]` in f64: the negative log-likelihood of `target`.
///
/// A `target` past the end of `logits` (a draft whose head covers fewer tokens) has
/// probability zero: infinite.
pub fn nll(logits: &[f32], target: u32) -> f64 {
    if target as usize >= logits.len() {
        return f64::INFINITY;
    }
    let max = logits.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
    max as f64 + log_sum_exp(logits, max, 1.0) - logits[target as usize] as f64
}

/// The `take` largest logits of a row with their token ids, best first (ties: lower id
/// first; NaN never ranks), in one pass: a short sorted list and its threshold.
pub(crate) fn top_logits(logits: &[f32], take: usize) -> Vec<(f32, u32)> {
    let mut top: Vec<(f32, u32)> = Vec::with_capacity(take + 1);
    let mut floor = f32::NEG_INFINITY;
    for (i, &x) in logits.iter().enumerate() {
        if top.len() == take && x <= floor || x.is_nan() {
            continue;
        }
        let at = top.iter().position(|&(y, _)| x > y).unwrap_or(top.len());
        top.insert(at, (x, i as u32));
        top.truncate(take);
        if top.len() == take {
            floor = top[take - 1].0;
        }
    }
    top
}

/// The `n` most likely tokens of `logits` (fewer if the vocabulary is smaller) with their
/// log-probabilities under the softmax of `logits` (temperature 1), most likely first, ties
/// by lower id (NaN logits rank last).
pub fn top_logprobs(logits: &[f32], n: usize) -> Vec<(u32, f32)> {
    let n = n.min(logits.len());
    if n == 0 {
        return Vec::new();
    }
    let key = |x: f32| if x.is_nan() { f32::NEG_INFINITY } else { x };
    let order = |a: &u32, b: &u32| {
        key(logits[*b as usize])
            .total_cmp(&key(logits[*a as usize]))
            .then(a.cmp(b))
    };
    let mut ids: Vec<u32> = (0..logits.len() as u32).collect();
    if n < ids.len() {
        ids.select_nth_unstable_by(n - 1, order);
        ids.truncate(n);
    }
    ids.sort_unstable_by(order);
    let max = key(logits[ids[0] as usize]);
    let lse = log_sum_exp(logits, max, 1.0);
    ids.iter()
        .map(|&i| (i, (logits[i as usize] as f64 - max as f64 - lse) as f32))
        .collect()
}

/// Philox-4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3"): a
/// counter-based generator, here keyed by the seed and counted by the position.
fn philox4x32(counter: [u32; 4], key: [u32; 2]) -> [u32; 4] {
    const M0: u64 = 0xD251_1F53;
    const M1: u64 = 0xCD9E_8D57;
    const W0: u32 = 0x9E37_79B9;
    const W1: u32 = 0xBB67_AE85;
    let (mut c, mut k) = (counter, key);
    for _ in 0..10 {
        let p0 = M0 * c[0] as u64;
        let p1 = M1 * c[2] as u64;
        c = [
            ((p1 >> 32) as u32) ^ c[1] ^ k[0],
            p1 as u32,
            ((p0 >> 32) as u32) ^ c[3] ^ k[1],
            p0 as u32,
        ];
        k = [k[0].wrapping_add(W0), k[1].wrapping_add(W1)];
    }
    c
}

/// The uniform number in `[0, 1)` used to sample the token at absolute `position`.
pub fn uniform(seed: u64, position: usize) -> f64 {
    let p = position as u64;
    let r = philox4x32(
        [p as u32, (p >> 32) as u32, 0, 0],
        [seed as u32, (seed >> 32) as u32],
    );
    // 53 random bits.
    let bits = ((r[0] as u64) << 21) ^ (r[1] as u64 >> 11);
    (bits & ((1u64 << 53) - 1)) as f64 / (1u64 << 53) as f64
}

/// Index of the largest logit; ties go to the lowest id.
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &l) in logits.iter().enumerate() {
        if l > logits[best] {
            best = i;
        }
    }
    best as u32
}

/// The processed distribution: `(token, probability)` pairs, most likely first (ties by
/// id), after temperature, top-k and top-p, renormalised. Probabilities in f64.
pub fn distribution(logits: &[f32], p: &SamplingParams) -> Vec<(u32, f64)> {
    let t = p.temperature as f64;
    let mut order: Vec<u32> = (0..logits.len() as u32).collect();
    order.sort_by(|&a, &b| {
        logits[b as usize]
            .partial_cmp(&logits[a as usize])
            .unwrap_or(std::cmp::Ordering::Equal)
            .then(a.cmp(&b))
    });
    if p.top_k > 0 && p.top_k < order.len() {
        order.truncate(p.top_k);
    }
    let max = logits[order[0] as usize] as f64;
    let mut probs: Vec<(u32, f64)> = order
        .iter()
        .map(|&i| (i, ((logits[i as usize] as f64 - max) / t).exp()))
        .collect();
    let sum: f64 = probs.iter().map(|x| x.1).sum();
    for x in probs.iter_mut() {
        x.1 /= sum;
    }
    if p.top_p < 1.0 {
        let mut acc = 0.0;
        let mut keep = probs.len();
        for (i, x) in probs.iter().enumerate() {
            acc += x.1;
            if acc >= p.top_p as f64 {
                keep = i + 1;
                break;
            }
        }
        probs.truncate(keep);
        let sum: f64 = probs.iter().map(|x| x.1).sum();
        for x in probs.iter_mut() {
            x.1 /= sum;
        }
    }
    probs
}

/// The token chosen at absolute `position` from `logits`: argmax when greedy, otherwise a
/// draw from [`distribution`] with the uniform number of `(seed, position)`.
pub fn sample(logits: &[f32], p: &SamplingParams, position: usize) -> u32 {
    if p.is_greedy() {
        return argmax(logits);
    }
    let probs = distribution(logits, p);
    let u = uniform(p.seed, position);
    let mut acc = 0.0;
    for &(tok, pr) in &probs {
        acc += pr;
        if u < acc {
            return tok;
        }
    }
    probs.last().map(|x| x.0).unwrap_or(0)
}

#[cfg(test)]
mod tests {

    #[test]
    fn top_logprobs_rank_ties_by_lower_id_and_normalize() {
        let l = [1.0f32, 3.0, 3.0, f32::NAN, 0.5];
        let top = top_logprobs(&l, 3);
        assert_eq!(top.iter().map(|t| t.0).collect::<Vec<_>>(), vec![1, 2, 0]);
        let lse = (1f64.exp() + 2.0 * 3f64.exp() + 0.5f64.exp()).ln();
        assert!((top[0].1 as f64 - (3.0 - lse)).abs() < 1e-6);
        assert!((top[2].1 as f64 - (1.0 - lse)).abs() < 1e-6);
        assert_eq!(top_logprobs(&l, 99).len(), 5);
        assert_eq!(top_logprobs(&l, 99)[4].0, 3, "NaN ranks last");
        assert!(top_logprobs(&l, 0).is_empty());
    }
    use super::*;

    #[test]
    fn nll_is_minus_the_log_probability() {
        let logits = [1.0f32, 2.0, 3.0];
        let z: f64 = logits.iter().map(|&x| (x as f64).exp()).sum();
        for t in 0..3 {
            let want = -((logits[t] as f64).exp() / z).ln();
            assert!((nll(&logits, t as u32) - want).abs() < 1e-12);
        }
        let lp = log_softmax(&logits, 1.0);
        assert!((lp[2] as f64 + nll(&logits, 2)).abs() < 1e-6);
    }

    #[test]
    fn philox_known_answer() {
        // Known-answer vectors from the Random123 distribution (kat_vectors, philox4x32_10).
        assert_eq!(
            philox4x32([0, 0, 0, 0], [0, 0]),
            [0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8]
        );
        assert_eq!(
            philox4x32([0xffffffff; 4], [0xffffffff, 0xffffffff]),
            [0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd]
        );
    }

    #[test]
    fn uniform_depends_on_seed_and_position_only() {
        assert_eq!(uniform(7, 100), uniform(7, 100));
        assert_ne!(uniform(7, 100), uniform(7, 101));
        assert_ne!(uniform(7, 100), uniform(8, 100));
        let mean: f64 = (0..10000).map(|p| uniform(1, p)).sum::<f64>() / 10000.0;
        assert!((mean - 0.5).abs() < 0.02, "{mean}");
    }

    #[test]
    fn argmax_ties_go_low() {
        assert_eq!(argmax(&[1.0, 3.0, 3.0, 2.0]), 1);
    }

    #[test]
    fn distribution_applies_top_k_top_p_and_temperature() {
        let logits = [0.0f32, (2.0f32).ln(), (4.0f32).ln(), f32::NEG_INFINITY];
        let p = SamplingParams {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            seed: 0,
        };
        let d = distribution(&logits, &p);
        assert_eq!(d[0].0, 2);
        assert!((d[0].1 - 4.0 / 7.0).abs() < 1e-9);
        assert_eq!(d[3], (3, 0.0));
        let d = distribution(&logits, &SamplingParams { top_k: 2, ..p });
        assert_eq!(d.len(), 2);
        assert!((d[1].1 - 1.0 / 3.0).abs() < 1e-9);
        let d = distribution(&logits, &SamplingParams { top_p: 0.8, ..p });
        assert_eq!(d.iter().map(|x| x.0).collect::<Vec<_>>(), vec![2, 1]);
        let d = distribution(
            &logits,
            &SamplingParams {
                temperature: 0.5,
                ..p
            },
        );
        assert!((d[0].1 - 16.0 / 21.0).abs() < 1e-9);
    }

    #[test]
    fn sampling_follows_the_distribution() {
        let logits = [0.0f32, (3.0f32).ln()];
        let p = SamplingParams {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            seed: 42,
        };
        let ones = (0..20000)
            .filter(|&pos| sample(&logits, &p, pos) == 1)
            .count();
        assert!((ones as f64 / 20000.0 - 0.75).abs() < 0.015, "{ones}");
    }
}
