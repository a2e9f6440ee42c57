//! `cargo bench --bench attention`: the CPU attention of one layer alone, at the test
//! models' head shapes, over 0, 2k and 8k committed slots of an f16 cache: a decode row,
//! a 16-token tree (a chain), and a 256-row prefill chunk; Gemma 3's sliding-window
//! layers too (`w512`: each row reads the last 512 positions). Prints milliseconds per call
//! and the GB/s of keys and values it must read (every committed slot's, once per KV
//! head). Deterministic inputs; median of `REPS` timed calls after warm-up. No
//! assertions: a ratio between two rows of one run is the result.

mod common;

use common::values;

use subspec::internals::{AttnMask, AttnShape, Backend, CpuBackend};
use subspec::KvDtype;

const REPS: usize = 9;

/// Timed calls of `f`: the median of `REPS` after 1 untimed.
fn median_s(f: impl FnMut()) -> f64 {
    common::median_s(1, REPS, f)
}

fn main() {
    let be = CpuBackend;
    // (name, heads, KV heads, head width, sliding window)
    let models = [
        ("SmolLM2-135M", 9, 3, 64, None),
        ("Qwen2.5-0.5B", 14, 2, 64, None),
        ("Gemma3-270M", 4, 1, 256, None),
        ("Gemma3 w512", 4, 1, 256, Some(512)),
    ];
    println!(
        "{:<14} {:>6} {:>5} {:>10} {:>8}",
        "model", "KV", "rows", "ms", "GB/s"
    );
    for (name, heads, kv_heads, hd, window) in models {
        let shape = AttnShape {
            n_heads: heads,
            n_kv_heads: kv_heads,
            head_dim: hd,
            scale: 1.0 / (hd as f32).sqrt(),
        };
        let kv_dim = kv_heads * hd;
        for committed in [0usize, 2048, 8192] {
            for rows in [1usize, 16, 256] {
                let cap = committed + rows;
                let mut kv = be.kv_new(1, kv_heads, hd, cap, KvDtype::F16).unwrap();
                let act = |r: usize, c: usize, seed: usize| {
                    let mut a = be.act(r, c).unwrap();
                    a.data.copy_from_slice(&values(r * c, seed));
                    a
                };
                if committed > 0 {
                    let (k, v) = (act(committed, kv_dim, 1), act(committed, kv_dim, 2));
                    be.kv_write(&mut kv, 0, 0, &k, &v).unwrap();
                }
                let (k, v) = (act(rows, kv_dim, 3), act(rows, kv_dim, 4));
                be.kv_write(&mut kv, 0, committed, &k, &v).unwrap();
                let q = act(rows, heads * hd, 5);
                let mut out = be.act(rows, heads * hd).unwrap();
                let positions: Vec<usize> = (committed..committed + rows).collect();
                let mask = match window {
                    Some(w) => AttnMask::causal(rows).windowed(&positions, w, committed),
                    None => AttnMask::causal(rows),
                };
                let s = median_s(|| {
                    be.attention(&q, &kv, 0, committed, &mask, shape, &mut out)
                        .unwrap()
                });
                // keys and values of every slot a row reads, once per row and KV head
                let read = window.map_or(committed, |w: usize| committed.min(w));
                let bytes = (read + rows) * kv_dim * 2 * 2;
                println!(
                    "{name:<14} {committed:>6} {rows:>5} {:>10.3} {:>8.2}",
                    s * 1e3,
                    bytes as f64 / s / 1e9
                );
            }
        }
    }
}
