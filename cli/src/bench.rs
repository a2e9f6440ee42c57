//! `subspec bench`: plain offloaded decoding against SubSpec on a prompt set, in one
//! process with one engine; with `--kernels`, decode speed against the memory-bandwidth
//! floor and the cost of one batched (tree) forward against a single-token forward.

use std::time::Instant;

use std::path::PathBuf;

use clap::Args;
use serde_json::json;
use subspec::internals::measure::{self, Forward};
use subspec::{Engine, Error, SamplingParams, StepOptions};

use super::{ModelArgs, SpecArgs};

#[derive(Args)]
pub struct BenchArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    spec: SpecArgs,
    /// Prompt set, one JSON object per line with a "prompt" (and a "category").
    #[arg(long, default_value = "bench/prompts.jsonl")]
    prompts: PathBuf,
    /// Use only the first N prompts (0: all).
    #[arg(long, default_value_t = 0)]
    limit: usize,
    /// New tokens per prompt.
    #[arg(long, default_value_t = 64)]
    max_new: usize,
    /// Measure the kernels instead: decode vs the bandwidth floor, batched forward cost.
    #[arg(long)]
    kernels: bool,
    /// Tokens to decode one at a time.
    #[arg(long, default_value_t = 32)]
    decode_tokens: usize,
    /// Tokens in the batched (tree) forward.
    #[arg(long, default_value_t = 64)]
    tree_tokens: usize,
    /// Repetitions of each forward measurement (the best is kept).
    #[arg(long, default_value_t = 5)]
    reps: usize,
    /// Also run plain decoding on an engine loaded without a draft: with no substitutes
    /// to hold, the budget keeps more full-precision layers (plain decoding's own best
    /// placement), a stronger baseline than the shared placement.
    #[arg(long)]
    own_baseline: bool,
    /// Batched steps instead: for each N in this list (e.g. 1,2,4,8), N requests (the
    /// first N prompts, cycling) decoded together with `Engine::step_batch`, plain and
    /// SubSpec: aggregate tokens/s and per-request latency.
    #[arg(long, value_delimiter = ',')]
    batch: Vec<usize>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(a: &BenchArgs) -> Result<(), Error> {
    if a.kernels {
        kernels(a)
    } else if !a.batch.is_empty() {
        batch(a)
    } else {
        offload(a)
    }
}

/// One prompt's result for one mode.
struct RunStats {
    tokens: usize,
    /// Seconds of the whole generation: the prompt's prefill, then decoding.
    seconds: f64,
    /// Seconds of the prompt's prefill alone (the same work for plain and SubSpec).
    prefill_s: f64,
    tau: f64,
    target_s: f64,
    streamed: u64,
    /// Seconds the reader thread spent reading.
    read_s: f64,
    /// Seconds target passes waited for a streamed layer (the cores idle).
    wait_s: f64,
    /// Target passes and draft steps.
    passes: usize,
    draft_steps: usize,
    /// Draft steps run during target passes, and steps whose tree started from nodes
    /// drafted during the previous pass.
    overlapped_steps: usize,
    reused_trees: usize,
}

impl RunStats {
    /// Tokens per second of the whole generation, the prompt's prefill included.
    fn rate(&self) -> f64 {
        self.tokens as f64 / self.seconds
    }

    /// Tokens per second of decoding alone (after the prefill).
    fn decode_rate(&self) -> f64 {
        self.tokens as f64 / (self.seconds - self.prefill_s)
    }

    /// Bytes streamed per generated token.
    fn bytes_per_token(&self) -> f64 {
        self.streamed as f64 / self.tokens.max(1) as f64
    }

    /// The reader's busy fraction during target passes.
    fn reader_busy(&self) -> f64 {
        self.read_s / self.target_s
    }

    /// The runs of `v` as one: sums, with tau weighted by the tokens of each run.
    fn total(v: &[RunStats]) -> RunStats {
        let tokens = v.iter().map(|r| r.tokens).sum::<usize>();
        let tau_w = v.iter().map(|r| r.tau * r.tokens as f64).sum::<f64>();
        RunStats {
            tokens,
            seconds: v.iter().map(|r| r.seconds).sum(),
            prefill_s: v.iter().map(|r| r.prefill_s).sum(),
            tau: tau_w / tokens.max(1) as f64,
            target_s: v.iter().map(|r| r.target_s).sum(),
            streamed: v.iter().map(|r| r.streamed).sum(),
            read_s: v.iter().map(|r| r.read_s).sum(),
            wait_s: v.iter().map(|r| r.wait_s).sum(),
            passes: v.iter().map(|r| r.passes).sum(),
            draft_steps: v.iter().map(|r| r.draft_steps).sum(),
            overlapped_steps: v.iter().map(|r| r.overlapped_steps).sum(),
            reused_trees: v.iter().map(|r| r.reused_trees).sum(),
        }
    }
}

fn load_prompts(a: &BenchArgs) -> Result<Vec<(String, String)>, Error> {
    let text = std::fs::read_to_string(&a.prompts).map_err(|e| Error::io(&a.prompts, e))?;
    let mut out = Vec::new();
    for (i, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let v: serde_json::Value = serde_json::from_str(line).map_err(|e| {
            Error::invalid_argument(format!("{}:{}: {e}", a.prompts.display(), i + 1))
        })?;
        let prompt = v["prompt"].as_str().ok_or_else(|| {
            Error::invalid_argument(format!(
                "{}:{}: no \"prompt\" string",
                a.prompts.display(),
                i + 1
            ))
        })?;
        out.push((
            v["category"].as_str().unwrap_or("").to_string(),
            prompt.to_string(),
        ));
    }
    if a.limit > 0 {
        out.truncate(a.limit);
    }
    Ok(out)
}

fn offload(a: &BenchArgs) -> Result<(), Error> {
    let prompts = load_prompts(a)?;
    let draft = a
        .spec
        .draft()?
        .ok_or_else(|| Error::invalid_argument("bench compares with SubSpec: drop --no-spec"))?;
    let opts = a.model.options(Some(draft))?;
    let bw = measure::slow_tier_bandwidth(&opts)?;
    let t0 = Instant::now();
    let engine = super::load_engine(opts.clone())?;
    let load_s = t0.elapsed().as_secs_f64();
    let own = match a.own_baseline {
        true => Some(super::load_engine(a.model.options(None)?)?),
        false => None,
    };
    let tok = engine.tokenizer()?;
    let streamed = |e: &Engine| measure::stream_stats(e).map_or(0, |s| s.bytes);
    let reading = |e: &Engine| measure::stream_stats(e).map_or(0.0, |s| s.read_s);
    let waiting = |e: &Engine| measure::stream_stats(e).map_or(0.0, |s| s.wait_s);
    let spec_opts = a.spec.step(&engine, SamplingParams::greedy())?;
    let plain_opts = StepOptions::plain(SamplingParams::greedy());
    let run =
        |engine: &Engine, ids: &[u32], opts: &StepOptions| -> Result<(Vec<u32>, RunStats), Error> {
            let mut seq = engine.new_sequence()?;
            seq.append(ids)?;
            let t0 = Instant::now();
            seq.prefill_pending()?;
            let prefill_s = t0.elapsed().as_secs_f64();
            // Bytes and reading from here on: decoding's, like the target-pass seconds.
            let (b0, r0, w0) = (streamed(engine), reading(engine), waiting(engine));
            let out = seq.generate(opts, a.max_new, |_| true)?;
            let st = seq.stats();
            Ok((
                out.clone(),
                RunStats {
                    tokens: out.len(),
                    seconds: t0.elapsed().as_secs_f64(),
                    prefill_s,
                    tau: st.tau(),
                    target_s: st.verify_s,
                    streamed: streamed(engine) - b0,
                    read_s: reading(engine) - r0,
                    wait_s: waiting(engine) - w0,
                    passes: st.iterations,
                    draft_steps: st.draft_steps,
                    overlapped_steps: st.overlapped_steps,
                    reused_trees: st.reused_trees,
                },
            ))
        };
    let encoded = prompts
        .iter()
        .map(|(_, prompt)| tok.encode(&super::chatml_text(prompt), false))
        .collect::<Result<Vec<_>, Error>>()?;
    // Warm up (first touches of the KV cache and buffers, the reader's first cycle) on
    // the first prompt, untimed.
    if let Some(ids) = encoded.first() {
        let warm = [(&engine, &plain_opts), (&engine, &spec_opts)];
        for (e, opts) in warm.into_iter().chain(own.iter().map(|e| (e, &plain_opts))) {
            let mut seq = e.new_sequence()?;
            seq.append(ids)?;
            seq.generate(opts, 4, |_| true)?;
        }
    }
    let mut rows = Vec::new();
    let (mut plain_tot, mut spec_tot, mut own_tot) = (Vec::new(), Vec::new(), Vec::new());
    if !a.json {
        println!(
            "{:<14} {:>9} {:>9} {:>8} {:>10} {:>10} {:>8} {:>6} {:>13} {:>5}",
            "category",
            "plain t/s",
            "spec t/s",
            "speedup",
            "decode: plain",
            "spec",
            "speedup",
            "tau",
            "MB/token",
            "same"
        );
    }
    for ((cat, prompt), ids) in prompts.iter().zip(&encoded) {
        let (p_out, p) = run(&engine, ids, &plain_opts)?;
        let (s_out, s) = run(&engine, ids, &spec_opts)?;
        let mut same = p_out == s_out;
        let mut own_rates = None;
        if let Some(e) = &own {
            let (o_out, o) = run(e, ids, &plain_opts)?;
            same &= o_out == p_out;
            own_rates = Some((o.rate(), o.decode_rate()));
            own_tot.push(o);
        }
        let (pt, stps) = (p.rate(), s.rate());
        let (pd, sd) = (p.decode_rate(), s.decode_rate());
        if !a.json {
            println!(
                "{:<14} {:>9.2} {:>9.2} {:>7.2}x {:>13.2} {:>10.2} {:>7.2}x {:>6.2} {:>6.1} / {:<5.1} {:>5}",
                cat,
                pt,
                stps,
                stps / pt,
                pd,
                sd,
                sd / pd,
                s.tau,
                p.bytes_per_token() / 1e6,
                s.bytes_per_token() / 1e6,
                same
            );
        }
        rows.push(json!({"category": cat, "prompt": prompt, "plain_tokens_per_s": pt, "spec_tokens_per_s": stps, "speedup": stps / pt,
            "plain_decode_tokens_per_s": pd, "spec_decode_tokens_per_s": sd, "decode_speedup": sd / pd,
            "plain_prefill_s": p.prefill_s, "spec_prefill_s": s.prefill_s, "tau": s.tau,
            "plain_bytes_per_token": p.bytes_per_token(), "spec_bytes_per_token": s.bytes_per_token(),
            "own_plain_tokens_per_s": own_rates.map(|r| r.0), "own_plain_decode_tokens_per_s": own_rates.map(|r| r.1),
            "identical": same, "tokens": s.tokens}));
        plain_tot.push(p);
        spec_tot.push(s);
    }
    let (p, s) = (RunStats::total(&plain_tot), RunStats::total(&spec_tot));
    let (pd, sd) = (p.decode_rate(), s.decode_rate());
    let util = |r: &RunStats| bw.map(|bw| r.streamed as f64 / (r.target_s * bw));
    let all_same = rows.iter().all(|r| r["identical"] == true);
    // Plain decoding on the engine without a draft: its own placement.
    let own = own.as_ref().map(|e| {
        let p = e.placement();
        (
            RunStats::total(&own_tot),
            p.map_or(0, |p| p.offloaded().len()),
            p.map_or(0, |p| p.bytes.streamed_per_pass),
        )
    });
    let own_json = own.as_ref().map(|(o, offloaded, streamed)| {
        json!({"tokens_per_s": o.rate(), "decode_tokens_per_s": o.decode_rate(),
            "speedup": s.rate() / o.rate(), "decode_speedup": sd / o.decode_rate(),
            "placement_offloaded_layers": offloaded, "streamed_per_pass": streamed})
    });
    let total = json!({
        "prompts": prompts.len(), "max_new": a.max_new,
        "tier_bandwidth_gbs": bw.map(|b| b / 1e9),
        "placement_offloaded_layers": engine.placement().map(|p| p.offloaded().len()).unwrap_or(0),
        "streamed_per_pass": engine.placement().map(|p| p.bytes.streamed_per_pass).unwrap_or(0),
        "plain_tokens_per_s": p.rate(), "spec_tokens_per_s": s.rate(),
        "speedup": s.rate() / p.rate(), "tau": s.tau,
        "plain_decode_tokens_per_s": pd, "spec_decode_tokens_per_s": sd, "decode_speedup": sd / pd,
        "plain_bytes_per_token": p.bytes_per_token(), "spec_bytes_per_token": s.bytes_per_token(),
        "plain_link_utilisation": util(&p), "spec_link_utilisation": util(&s),
        "plain_reader_busy": p.reader_busy(), "spec_reader_busy": s.reader_busy(),
        "plain_compute_waiting": p.wait_s / p.target_s, "spec_compute_waiting": s.wait_s / s.target_s,
        "spec_passes": s.passes, "spec_draft_steps": s.draft_steps,
        "spec_overlapped_steps": s.overlapped_steps, "spec_reused_trees": s.reused_trees,
        "identical": all_same, "tree": {"width": spec_opts.tree.width, "depth": spec_opts.tree.depth, "max_tokens": spec_opts.tree.max_tokens},
        "own_baseline": own_json,
        "load_s": load_s,
    });
    if a.json {
        println!("{}", json!({"total": total, "runs": rows}));
    } else {
        println!("loaded in {load_s:.1}s (weights, tokenizer and the draft's substitutes)");
        println!("total: plain {:.2} tokens/s, SubSpec {:.2} tokens/s, speedup {:.2}x, tau {:.2}, identical output: {all_same}",
            p.rate(), s.rate(), s.rate() / p.rate(), s.tau);
        println!("decoding alone (the prompt's prefill, the same work for both, left out): plain {pd:.2} tokens/s, SubSpec {sd:.2} tokens/s, speedup {:.2}x",
            sd / pd);
        if let Some((o, offloaded, streamed)) = &own {
            println!("plain without a draft (its own placement: {offloaded} layers streamed, {:.1} MB per pass): {:.2} tokens/s, decoding {:.2}; SubSpec's speedup over it {:.2}x, decoding {:.2}x",
                *streamed as f64 / 1e6, o.rate(), o.decode_rate(), s.rate() / o.rate(), sd / o.decode_rate());
        }
        if let Some(bw) = bw {
            println!("slow tier: {:.2} GB/s measured; streamed {:.1} MB/token plain, {:.1} MB/token SubSpec; link utilisation during target passes: plain {:.0}%, SubSpec {:.0}%",
                bw / 1e9, p.bytes_per_token() / 1e6, s.bytes_per_token() / 1e6,
                100.0 * util(&p).unwrap_or(0.0), 100.0 * util(&s).unwrap_or(0.0));
            println!("reader busy (seconds reading / seconds in target passes, self-calibrated): plain {:.0}%, SubSpec {:.0}%",
                100.0 * p.reader_busy(), 100.0 * s.reader_busy());
            println!("compute waiting for a streamed layer (seconds waited / seconds in target passes): plain {:.0}%, SubSpec {:.0}%",
                100.0 * p.wait_s / p.target_s, 100.0 * s.wait_s / s.target_s);
            println!("SubSpec's draft: {:.2} steps per target pass, {:.2} of them during the pass; {} of {} passes verified a tree started during the one before",
                s.draft_steps as f64 / s.passes.max(1) as f64,
                s.overlapped_steps as f64 / s.passes.max(1) as f64,
                s.reused_trees, s.passes);
        } else {
            println!("everything resident (no --budget, or it fits): nothing streamed");
        }
        if spec_opts.tree.auto_depth {
            print_costs(&engine)?;
            println!(
                "draft steps per target pass {:.2}",
                s.draft_steps as f64 / s.passes.max(1) as f64
            );
        }
    }
    if !all_same {
        return Err(Error::internal(
            "speculative output differed from plain output",
        ));
    }
    Ok(())
}

/// One batched run: N requests decoded together; what each produced and the figures.
struct BatchRun {
    outputs: Vec<Vec<u32>>,
    seconds: f64,
    /// Seconds from the start of decoding to each request's last token.
    latency: Vec<f64>,
    streamed: u64,
    passes: usize,
}

impl BatchRun {
    fn tokens(&self) -> usize {
        self.outputs.iter().map(Vec::len).sum()
    }

    fn rate(&self) -> f64 {
        self.tokens() as f64 / self.seconds
    }

    fn mean_latency(&self) -> f64 {
        self.latency.iter().sum::<f64>() / self.latency.len().max(1) as f64
    }
}

/// Decodes `prompts` together with batched steps, `max_new` tokens each (or to an end
/// token); prefills are done first and not timed (they are the same work either way).
fn batch_run(
    engine: &Engine,
    prompts: &[Vec<u32>],
    opts: &StepOptions,
    max_new: usize,
) -> Result<BatchRun, Error> {
    let mut seqs = Vec::with_capacity(prompts.len());
    for p in prompts {
        let mut s = engine.new_sequence()?;
        s.append(p)?;
        s.prefill_pending()?;
        seqs.push(s);
    }
    let streamed = |e: &Engine| measure::stream_stats(e).map_or(0, |s| s.bytes);
    let b0 = streamed(engine);
    let n = prompts.len();
    let mut outputs = vec![Vec::new(); n];
    let mut latency = vec![0.0; n];
    let mut done = vec![false; n];
    let mut passes = 0;
    let t0 = Instant::now();
    while done.iter().any(|d| !d) {
        let live: Vec<usize> = (0..n).filter(|&i| !done[i]).collect();
        let step: Vec<StepOptions> = live
            .iter()
            .map(|&i| opts.with_max_tokens(max_new - outputs[i].len()))
            .collect();
        let mut batch: Vec<&mut subspec::Sequence> = seqs
            .iter_mut()
            .enumerate()
            .filter(|(i, _)| !done[*i])
            .map(|(_, s)| s)
            .collect();
        let results = engine.step_batch(&mut batch, &step)?;
        passes += 1;
        for (&i, r) in live.iter().zip(results) {
            let new = r?;
            let eos = new.iter().any(|&t| engine.is_eos(t));
            outputs[i].extend_from_slice(&new);
            if eos || outputs[i].len() >= max_new {
                done[i] = true;
                latency[i] = t0.elapsed().as_secs_f64();
            }
        }
    }
    Ok(BatchRun {
        outputs,
        seconds: t0.elapsed().as_secs_f64(),
        latency,
        streamed: streamed(engine) - b0,
        passes,
    })
}

/// Prints the costs `--auto-depth` chooses depths by ([`Engine::tree_costs`]).
fn print_costs(engine: &Engine) -> Result<(), Error> {
    let c = engine.tree_costs()?;
    let ms = |v: &[(usize, f64)]| {
        v.iter()
            .map(|(n, s)| format!("{n}: {:.1}", s * 1e3))
            .collect::<Vec<_>>()
            .join(", ")
    };
    println!(
        "depth by measured cost: target pass by tokens (ms) {}; draft step by rows (ms) {}; logits row {:.2} ms",
        ms(&c.verify),
        ms(&c.draft),
        c.logits_row * 1e3
    );
    Ok(())
}

/// `--batch`: aggregate tokens/s and latency by the number of requests decoded together.
fn batch(a: &BenchArgs) -> Result<(), Error> {
    let prompts = load_prompts(a)?;
    let draft = a
        .spec
        .draft()?
        .ok_or_else(|| Error::invalid_argument("bench compares with SubSpec: drop --no-spec"))?;
    if let Some(&bad) = a.batch.iter().find(|&&n| n == 0) {
        return Err(Error::invalid_argument(format!(
            "--batch takes request counts of at least 1, got {bad}"
        )));
    }
    let engine = super::load_engine(a.model.options(Some(draft))?)?;
    let tok = engine.tokenizer()?;
    let encoded = prompts
        .iter()
        .map(|(_, prompt)| tok.encode(&super::chatml_text(prompt), false))
        .collect::<Result<Vec<_>, Error>>()?;
    if encoded.is_empty() {
        return Err(Error::invalid_argument("the prompt set is empty"));
    }
    let spec_opts = a.spec.step(&engine, SamplingParams::greedy())?;
    let plain_opts = StepOptions::plain(SamplingParams::greedy());
    // Warm up, untimed.
    batch_run(&engine, &encoded[..1], &spec_opts, 4)?;
    let mut rows = Vec::new();
    if !a.json {
        println!(
            "{:>3} {:>10} {:>10} {:>8} {:>12} {:>12} {:>9} {:>9} {:>7} {:>5}",
            "N",
            "plain t/s",
            "spec t/s",
            "speedup",
            "plain lat s",
            "spec lat s",
            "MB/tok p",
            "MB/tok s",
            "passes",
            "same"
        );
    }
    let mut base = None;
    for &n in &a.batch {
        let ids: Vec<Vec<u32>> = (0..n).map(|i| encoded[i % encoded.len()].clone()).collect();
        let p = batch_run(&engine, &ids, &plain_opts, a.max_new)?;
        let s = batch_run(&engine, &ids, &spec_opts, a.max_new)?;
        let same = p.outputs == s.outputs;
        let mb = |r: &BatchRun| r.streamed as f64 / r.tokens().max(1) as f64 / 1e6;
        let base_rate = *base.get_or_insert(s.rate());
        if !a.json {
            println!(
                "{n:>3} {:>10.2} {:>10.2} {:>7.2}x {:>12.2} {:>12.2} {:>9.1} {:>9.1} {:>3}/{:<3} {same:>5}",
                p.rate(),
                s.rate(),
                s.rate() / p.rate(),
                p.mean_latency(),
                s.mean_latency(),
                mb(&p),
                mb(&s),
                p.passes,
                s.passes
            );
        }
        rows.push(
            json!({"n": n, "plain_tokens_per_s": p.rate(), "spec_tokens_per_s": s.rate(),
            "speedup": s.rate() / p.rate(), "spec_over_first": s.rate() / base_rate,
            "plain_mean_latency_s": p.mean_latency(), "spec_mean_latency_s": s.mean_latency(),
            "plain_bytes_per_token": mb(&p) * 1e6, "spec_bytes_per_token": mb(&s) * 1e6,
            "plain_passes": p.passes, "spec_passes": s.passes, "identical": same}),
        );
        if !same {
            return Err(Error::internal(format!(
                "batched speculative output differed from batched plain output at N = {n}"
            )));
        }
    }
    if spec_opts.tree.auto_depth && !a.json {
        print_costs(&engine)?;
    }
    let placement = engine.placement();
    let total = json!({"max_new": a.max_new,
        "placement_offloaded_layers": placement.map_or(0, |p| p.offloaded().len()),
        "tree": {"width": spec_opts.tree.width, "depth": spec_opts.tree.depth, "max_tokens": spec_opts.tree.max_tokens}});
    if a.json {
        println!("{}", json!({"total": total, "runs": rows}));
    } else if let Some(first) = rows.first() {
        let last = rows.last().unwrap_or(first);
        println!(
            "SubSpec aggregate at N = {} is {:.2}x N = {}; {} layers streamed per target pass",
            last["n"],
            last["spec_over_first"].as_f64().unwrap_or(0.0),
            first["n"],
            placement.map_or(0, |p| p.offloaded().len())
        );
    }
    Ok(())
}

fn kernels(a: &BenchArgs) -> Result<(), Error> {
    let engine = a.model.load(None)?;
    let cfg = engine.config();
    let bw = measure::memory_bandwidth(&engine);
    let bytes = measure::bytes_read_per_token(&engine);
    let floor_s = bytes as f64 / bw;

    // Decode: a short prompt, then one token per step.
    let prompt: Vec<u32> = (0..16u32)
        .map(|i| (i * 7919 + 13) % cfg.vocab as u32)
        .collect();
    let mut seq = engine.new_sequence()?;
    seq.append(&prompt)?;
    let plain = StepOptions::plain(SamplingParams::greedy());
    seq.step(&plain)?;
    let t0 = Instant::now();
    for _ in 0..a.decode_tokens {
        seq.step(&plain)?;
    }
    let decode_s = t0.elapsed().as_secs_f64() / a.decode_tokens.max(1) as f64;

    // One forward of 1 token vs `tree_tokens` tree tokens, on top of the committed prompt.
    let forward = |n, shape| measure::forward_time(&engine, prompt.len(), n, a.reps, shape);
    let one_s = forward(1, Forward::Tree)?;
    let tree_s = forward(a.tree_tokens, Forward::Tree)?;
    // The same tokens as a chunk of a prompt (llama-bench's pp): the last row's logits only.
    let chunk_s = forward(a.tree_tokens, Forward::Prompt)?;

    if a.json {
        let v = json!({
            "model": engine.model_path().display().to_string(),
            "threads": engine.threads(),
            "read_bandwidth_gbs": bw / 1e9,
            "bytes_read_per_token": bytes,
            "floor_ms_per_token": floor_s * 1e3,
            "decode_ms_per_token": decode_s * 1e3,
            "decode_tokens_per_s": 1.0 / decode_s,
            "decode_vs_floor": decode_s / floor_s,
            "forward_1_ms": one_s * 1e3,
            "forward_tree_ms": tree_s * 1e3,
            "forward_prompt_ms": chunk_s * 1e3,
            "tree_tokens": a.tree_tokens,
            "tree_vs_1": tree_s / one_s,
        });
        println!("{v}");
    } else {
        println!("model                 {}", engine.model_path().display());
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
        println!(
            "forward {} prompt tokens {:.2} ms (the last row's logits only)",
            a.tree_tokens,
            chunk_s * 1e3
        );
    }
    Ok(())
}
