//! What the benchmarks share: timing and deterministic inputs.

use std::time::Instant;

/// The median of `reps` timed calls of `f`, after `warmups` untimed ones, in seconds.
pub fn median_s(warmups: usize, reps: usize, mut f: impl FnMut()) -> f64 {
    for _ in 0..warmups {
        f();
    }
    let mut t: Vec<f64> = (0..reps)
        .map(|_| {
            let t0 = Instant::now();
            f();
            t0.elapsed().as_secs_f64()
        })
        .collect();
    t.sort_by(f64::total_cmp);
    t[reps / 2]
}

/// `n` deterministic values in [-1, 1].
pub fn values(n: usize, seed: usize) -> Vec<f32> {
    (0..n)
        .map(|i| ((i.wrapping_mul(7919).wrapping_add(seed * 104729)) % 2001) as f32 / 1000.0 - 1.0)
        .collect()
}
