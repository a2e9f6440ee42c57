//! `subspec passes`: what one SubSpec iteration is made of, measured on any device and any
//! model (no tokenizer needed): a plain target token, the verification of a tree, and a
//! draft step, against the floor the slow tier sets; then tokens/s projected from tau
//! values measured elsewhere (e.g. on the CPU with the real model).

use std::time::Instant;

use clap::Args;
use serde_json::{json, Value};
use subspec::internals::human;
use subspec::internals::measure::{self, PassTimes};
use subspec::{DeviceKind, DraftOptions, Error};

use super::{ModelArgs, SpecArgs};

#[derive(Args)]
pub struct PassesArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    spec: SpecArgs,
    /// Tokens in the verified tree (root included).
    #[arg(long, default_value_t = 289)]
    tree_tokens: usize,
    /// Frontier width of a draft step.
    #[arg(long, default_value_t = 6)]
    draft_width: usize,
    /// Prompt tokens committed before measuring.
    #[arg(long, default_value_t = 64)]
    prompt: usize,
    /// Repetitions of each measurement (the median is reported).
    #[arg(long, default_value_t = 5)]
    reps: usize,
    /// Accepted tokens per target pass to project tokens/s with, as NAME=TAU (repeat or
    /// separate with commas), e.g. qwen-cpu=11.9.
    #[arg(long, value_delimiter = ',')]
    tau: Vec<String>,
    /// Draft steps per iteration assumed by the projection.
    #[arg(long, default_value_t = 16)]
    draft_steps: usize,
    /// Dense products on CUDA: exact (our batch-invariant kernels), cublas, or both
    /// (measured one after the other in this process).
    #[arg(long, default_value = "exact")]
    gemm: String,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// One measured run: the products' mode and the three forwards' times.
struct Run {
    gemm: &'static str,
    t: PassTimes,
}

impl Run {
    /// Seconds of one projected iteration: a verification and `draft_steps` draft steps,
    /// less those that ran during the verification where passes wait for streamed layers
    /// (its overlapped time then).
    fn iteration_s(&self, draft_steps: usize) -> f64 {
        let (verify_s, during) = self
            .t
            .overlapped
            .map_or((self.t.verify_s, 0.0), |o| (o.verify_s, o.draft_steps));
        verify_s + (draft_steps as f64 - during).max(0.0) * self.t.draft_s
    }
}

pub fn run(a: &PassesArgs) -> Result<(), Error> {
    let (w, n) = (a.draft_width.max(1), a.tree_tokens);
    if n < 1 + 2 * w {
        return Err(Error::invalid_argument(format!(
            "--tree-tokens {n} is too small for two levels of width {w}"
        )));
    }
    // Arguments first: a typo should not cost a model load and minutes of measuring.
    let modes: Vec<bool> = match a.gemm.as_str() {
        "exact" => vec![false],
        "cublas" => vec![true],
        "both" => vec![false, true],
        g => {
            return Err(Error::invalid_argument(format!(
                "--gemm {g}: expected exact, cublas or both"
            )))
        }
    };
    let taus = a
        .tau
        .iter()
        .map(|t| {
            let (name, v) = t.split_once('=').unwrap_or(("tau", t.as_str()));
            v.parse::<f64>()
                .map(|tau| (name.to_string(), tau))
                .map_err(|_| Error::invalid_argument(format!("--tau {t}: expected NAME=NUMBER")))
        })
        .collect::<Result<Vec<_>, Error>>()?;
    let mut opts = a
        .model
        .options(a.spec.draft()?.or(Some(DraftOptions::default())))?;
    opts.max_tree_tokens = opts.max_tree_tokens.max(n);
    let slow_tier_cpu = match opts.device {
        DeviceKind::Cpu => measure::slow_tier_bandwidth(&opts)?,
        _ => None,
    };
    let t0 = Instant::now();
    let engine = super::load_engine(opts.clone())?;
    let load_s = t0.elapsed().as_secs_f64();
    let cfg = engine.config();
    let (tier_bw, tier_name) = match measure::link_bandwidth(&engine, 64 << 20, 10)? {
        Some(bw) => (Some(bw), "host-to-device copy from pinned memory"),
        None => (slow_tier_cpu, "O_DIRECT reads of the offloaded layers"),
    };
    let streamed = engine.placement().map_or(0, |p| p.bytes.streamed_per_pass);
    let offloaded = engine.placement().map_or(0, |p| p.offloaded().len());
    let device = measure::device(&engine);
    // cuBLAS only exists on CUDA: the CPU measures its one kind of product once.
    let modes = if device.device_name.is_some() {
        modes
    } else {
        vec![false]
    };
    let mut runs = Vec::new();
    for cublas in modes {
        measure::set_cublas_gemm(&engine, cublas)?;
        let t = measure::passes(&engine, a.prompt, n, w, a.reps)?;
        let gemm = if cublas { "cublas" } else { "exact" };
        runs.push(Run { gemm, t });
    }
    let device = measure::device(&engine); // memory after the runs
    let floor_s = tier_bw.map(|bw| streamed as f64 / bw);

    if a.json {
        let reports: Vec<Value> = runs
            .iter()
            .map(|r| {
                let it = r.iteration_s(a.draft_steps);
                let projections: Vec<Value> = taus
                    .iter()
                    .map(|(name, tau)| json!({"name": name, "tau": tau, "tokens_per_s": tau / it, "speedup": tau / it * r.t.plain_s}))
                    .collect();
                json!({
                    "gemm": r.gemm,
                    "plain_token_s": r.t.plain_s,
                    "plain_over_floor": floor_s.map(|f| r.t.plain_s / f),
                    "verify_s": r.t.verify_s,
                    "verify_over_plain": r.t.verify_s / r.t.plain_s,
                    "draft_step_s": r.t.draft_s,
                    "overlapped_verify_s": r.t.overlapped.map(|o| o.verify_s),
                    "overlapped_draft_steps": r.t.overlapped.map(|o| o.draft_steps),
                    "iteration_s": it,
                    "plain_tokens_per_s": 1.0 / r.t.plain_s,
                    "projections": projections,
                })
            })
            .collect();
        let v = json!({
            "model": engine.model_path().display().to_string(),
            "device": device.name,
            "device_name": device.device_name,
            "load_s": load_s,
            "layers": cfg.n_layers,
            "offloaded_layers": offloaded,
            "streamed_bytes_per_pass": streamed,
            "slow_tier": tier_name,
            "slow_tier_bytes_per_s": tier_bw,
            "floor_s": floor_s,
            "tree_tokens": n,
            "draft_width": w,
            "draft_steps": a.draft_steps,
            "memory_used": device.memory.map(|m| m.0),
            "memory_peak": device.memory.map(|m| m.1),
            "memory_limit": device.memory.map(|m| m.2),
            "runs": reports,
        });
        println!("{v}");
        return Ok(());
    }
    println!("model        {}", engine.model_path().display());
    println!(
        "device       {}{}",
        device.name,
        device
            .device_name
            .as_ref()
            .map(|d| format!(" = {d}"))
            .unwrap_or_default()
    );
    println!(
        "placement    {offloaded} of {} layers streamed, {} per target pass; loaded in {load_s:.1}s",
        cfg.n_layers,
        human(streamed)
    );
    if let Some((used, peak, limit)) = device.memory {
        println!(
            "memory       {} in use, {} peak, of a {} limit",
            human(used),
            human(peak),
            human(limit)
        );
    }
    match (tier_bw, floor_s) {
        (Some(bw), Some(f)) => println!(
            "slow tier    {:.2} GB/s ({tier_name}); floor {:.2} ms per pass",
            bw / 1e9,
            f * 1e3
        ),
        _ => println!("slow tier    nothing streamed"),
    }
    for r in &runs {
        let label = if device.device_name.is_some() {
            format!(" [{}]", r.gemm)
        } else {
            String::new()
        };
        let t = &r.t;
        println!(
            "plain token  {:.2} ms{}{label}",
            t.plain_s * 1e3,
            floor_s
                .map(|f| format!(" = {:.2}x the floor", t.plain_s / f))
                .unwrap_or_default()
        );
        println!(
            "verify {n:>4}  {:.2} ms = {:.2}x a plain token{label}",
            t.verify_s * 1e3,
            t.verify_s / t.plain_s
        );
        println!("draft step   {:.3} ms at width {w}{label}", t.draft_s * 1e3);
        if let Some(o) = t.overlapped {
            println!(
                "overlapped   {:.2} ms = {:.2}x the verification alone, {:.0} draft steps in its waits{label}",
                o.verify_s * 1e3,
                o.verify_s / t.verify_s,
                o.draft_steps
            );
        }
        let it = r.iteration_s(a.draft_steps);
        for (name, tau) in &taus {
            println!(
                "projection   {name}: tau {tau:.2}, {} draft steps + one verification{} = {:.1} ms -> {:.1} tokens/s ({:.2}x plain {:.2} tokens/s){label}",
                a.draft_steps,
                if t.overlapped.is_some() { " (those in its waits overlapped)" } else { "" },
                it * 1e3,
                tau / it,
                tau / it * t.plain_s,
                1.0 / t.plain_s
            );
        }
    }
    Ok(())
}
