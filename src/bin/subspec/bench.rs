//! `subspec bench`: decode speed against the memory-bandwidth floor, and the cost of one
//! batched (tree) forward against a single-token forward.

use std::time::Instant;

use clap::Args;
use rayon::prelude::*;
use serde_json::json;
use subspec::backend::AttnMask;
use subspec::{Engine, Error, SamplingParams, StepOptions};

use super::ModelArgs;

#[derive(Args)]
pub struct BenchArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Tokens to decode one at a time.
    #[arg(long, default_value_t = 32)]
    decode_tokens: usize,
    /// Tokens in the batched (tree) forward.
    #[arg(long, default_value_t = 64)]
    tree_tokens: usize,
    /// Repetitions of each forward measurement (the best is kept).
    #[arg(long, default_value_t = 5)]
    reps: usize,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// Best-of-3 read bandwidth (bytes/s) over a 1 GiB buffer, on the engine's threads.
fn read_bandwidth(engine: &Engine) -> f64 {
    let n = (1usize << 30) / 4;
    let buf: Vec<f32> = (0..n).map(|i| (i % 251) as f32).collect();
    let mut best = f64::MAX;
    for _ in 0..3 {
        let t0 = Instant::now();
        let s: f32 = engine.install(|| {
            buf.par_chunks(1 << 16)
                .map(|c| {
                    let mut acc = [0f32; 16];
                    for ch in c.chunks_exact(16) {
                        for l in 0..16 {
                            acc[l] += ch[l];
                        }
                    }
                    acc.iter().sum::<f32>()
                })
                .sum()
        });
        std::hint::black_box(s);
        best = best.min(t0.elapsed().as_secs_f64());
    }
    (n * 4) as f64 / best
}

/// A tree of `n` nodes in topological order: node i's parent is (i - 1) / 3 (width 3).
fn tree_parents(n: usize) -> Vec<Option<usize>> {
    (0..n)
        .map(|i| if i == 0 { None } else { Some((i - 1) / 3) })
        .collect()
}

pub fn run(a: &BenchArgs) -> Result<(), Error> {
    let engine = a.model.load(None)?;
    let model = engine.model();
    let cfg = engine.config();
    let bw = read_bandwidth(&engine);
    let bytes = model.bytes_read_per_token();
    let floor_s = bytes as f64 / bw;

    // Decode: a short prompt, then one token per step.
    let prompt: Vec<u32> = (0..16u32)
        .map(|i| (i * 7919 + 13) % cfg.vocab as u32)
        .collect();
    let mut seq = engine.new_sequence();
    seq.append(&engine, &prompt)?;
    seq.step(&engine, &StepOptions::plain(SamplingParams::greedy()))?;
    let t0 = Instant::now();
    for _ in 0..a.decode_tokens {
        seq.step(&engine, &StepOptions::plain(SamplingParams::greedy()))?;
    }
    let decode_s = t0.elapsed().as_secs_f64() / a.decode_tokens.max(1) as f64;

    // One forward of 1 token vs `tree_tokens` tree tokens, on top of the committed prompt.
    let mut cache = model.new_cache(prompt.len() + a.tree_tokens);
    let rows: Vec<usize> = (0..prompt.len()).collect();
    engine.install(|| {
        model.forward(
            &mut cache,
            &prompt,
            &rows,
            &AttnMask::causal(prompt.len()),
            &[prompt.len() - 1],
        )
    })?;
    cache.commit(prompt.len());
    let time_forward = |n: usize| -> Result<f64, Error> {
        let tokens: Vec<u32> = (0..n as u32)
            .map(|i| (i * 104729 + 7) % cfg.vocab as u32)
            .collect();
        let parents = tree_parents(n);
        let mask = AttnMask::from_parents(&parents)?;
        let positions: Vec<usize> = (0..n)
            .map(|i| {
                let mut d = 0;
                let mut j = i;
                while let Some(p) = parents[j] {
                    d += 1;
                    j = p;
                }
                prompt.len() + d
            })
            .collect();
        let all: Vec<usize> = (0..n).collect();
        let mut best = f64::MAX;
        let mut c = model.new_cache(prompt.len() + n);
        engine.install(|| {
            model.forward(&mut c, &prompt, &rows, &AttnMask::causal(prompt.len()), &[])
        })?;
        c.commit(prompt.len());
        for _ in 0..a.reps.max(1) {
            let t0 = Instant::now();
            engine.install(|| model.forward(&mut c, &tokens, &positions, &mask, &all))?;
            best = best.min(t0.elapsed().as_secs_f64());
        }
        Ok(best)
    };
    let one_s = time_forward(1)?;
    let tree_s = time_forward(a.tree_tokens)?;

    if a.json {
        let v = json!({
            "model": engine.model_dir().display().to_string(),
            "threads": engine.threads(),
            "read_bandwidth_gbs": bw / 1e9,
            "bytes_read_per_token": bytes,
            "floor_ms_per_token": floor_s * 1e3,
            "decode_ms_per_token": decode_s * 1e3,
            "decode_tokens_per_s": 1.0 / decode_s,
            "decode_vs_floor": decode_s / floor_s,
            "forward_1_ms": one_s * 1e3,
            "forward_tree_ms": tree_s * 1e3,
            "tree_tokens": a.tree_tokens,
            "tree_vs_1": tree_s / one_s,
        });
        println!("{v}");
    } else {
        println!("model                 {}", engine.model_dir().display());
        println!("threads               {}", engine.threads());
        println!("read bandwidth        {:.2} GB/s", bw / 1e9);
        println!("weight bytes / token  {:.1} MB", bytes as f64 / 1e6);
        println!("floor                 {:.2} ms/token", floor_s * 1e3);
        println!(
            "decode                {:.2} ms/token ({:.2} tokens/s, {:.2}x the floor)",
            decode_s * 1e3,
            1.0 / decode_s,
            decode_s / floor_s
        );
        println!("forward 1 token       {:.2} ms", one_s * 1e3);
        println!(
            "forward {} tree tokens {:.2} ms ({:.2}x one token)",
            a.tree_tokens,
            tree_s * 1e3,
            tree_s / one_s
        );
    }
    Ok(())
}
