//! `subspec passes`: what one SubSpec iteration is made of, measured on any device and any
//! model (no tokenizer needed): a plain target token, the verification of a tree, and a
//! draft step, against the floor the slow tier sets; then tokens/s projected from tau
//! values measured elsewhere (e.g. on the CPU with the real model).

use std::time::Instant;

use clap::Args;
use serde_json::json;
use subspec::backend::{AttnMask, Backend};
use subspec::model::Pass;
use subspec::offload::human;
use subspec::{DraftOptions, Engine, Error};

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

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Times `f` `reps` times after one warm-up run; the median in seconds.
fn time(reps: usize, mut f: impl FnMut() -> Result<(), Error>) -> Result<f64, Error> {
    f()?;
    let mut v = Vec::with_capacity(reps);
    for _ in 0..reps.max(1) {
        let t0 = Instant::now();
        f()?;
        v.push(t0.elapsed().as_secs_f64());
    }
    Ok(median(v))
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
        subspec::DeviceKind::Cpu => super::bench::tier_bandwidth(&opts)?,
        _ => None,
    };
    let t0 = Instant::now();
    let engine = Engine::load(&opts)?;
    let load_s = t0.elapsed().as_secs_f64();
    let model = engine.model();
    let cfg = engine.config();
    let backend = &model.backend;
    let (tier_bw, tier_name) = match backend.as_cuda() {
        Some(c) => (
            Some(c.measure_h2d(64 << 20, 10)?),
            "host-to-device copy from pinned memory",
        ),
        None => (slow_tier_cpu, "O_DIRECT reads of the offloaded layers"),
    };
    let streamed = engine.placement().map_or(0, |p| p.bytes.streamed_per_pass);
    let offloaded = engine.placement().map_or(0, |p| p.offloaded().len());
    let vocab = cfg.vocab as u64;
    let ids = |count: usize, salt: u64| -> Vec<u32> {
        (0..count as u64)
            .map(|i| ((i * 7919 + salt * 104_729 + 13) % vocab) as u32)
            .collect()
    };

    // Commit a prompt.
    let p = a.prompt.max(1);
    let mut cache = model.new_cache(p + n)?;
    let prompt = ids(p, 1);
    let pos: Vec<usize> = (0..p).collect();
    engine.install(|| model.forward(&mut cache, &prompt, &pos, &AttnMask::causal(p), &[p - 1]))?;
    cache.commit(p);

    // The three forwards: a plain target token; a tree of w chains under the root (node
    // i > w hangs under node i - w) verified in one pass; and a draft step over the w
    // nodes of the tree's second level, on top of the first.
    let tok = ids(1, 2);
    let parents: Vec<Option<usize>> = (0..n)
        .map(|i| match i {
            0 => None,
            i if i <= w => Some(0),
            i => Some(i - w),
        })
        .collect();
    let depth = |i: usize| if i == 0 { 0 } else { (i - 1) / w + 1 };
    let tree = ids(n, 3);
    let tree_pos: Vec<usize> = (0..n).map(|i| p + depth(i)).collect();
    let mask = AttnMask::from_parents(&parents)?;
    let rows: Vec<usize> = (0..n).collect();
    let first = 1 + w;
    let dmask = AttnMask::tree_rows(&parents, first..first + w);
    let drows: Vec<usize> = (0..w).collect();
    // cuBLAS only exists on CUDA: the CPU measures its one kind of product once.
    let modes = if backend.as_cuda().is_some() {
        modes
    } else {
        vec![false]
    };
    let mut runs = Vec::new();
    for cublas in modes {
        if let Some(c) = backend.as_cuda() {
            c.set_cublas_gemm(cublas)?;
        }
        let plain_s = time(a.reps, || {
            engine
                .install(|| {
                    model.forward_at(
                        &mut cache,
                        Pass::Target,
                        0,
                        &tok,
                        &[p],
                        &AttnMask::causal(1),
                        &[0],
                    )
                })
                .map(|_| ())
        })?;
        let verify_s = time(a.reps, || {
            engine
                .install(|| {
                    model.forward_at(&mut cache, Pass::Target, 0, &tree, &tree_pos, &mask, &rows)
                })
                .map(|_| ())
        })?;
        let draft_s = time(a.reps.max(10), || {
            engine
                .install(|| {
                    model.forward_at(
                        &mut cache,
                        Pass::Draft,
                        first,
                        &tree[first..first + w],
                        &tree_pos[first..first + w],
                        &dmask,
                        &drows,
                    )
                })
                .map(|_| ())
        })?;
        runs.push((
            if cublas { "cublas" } else { "exact" },
            plain_s,
            verify_s,
            draft_s,
        ));
    }
    let floor_s = tier_bw.map(|bw| streamed as f64 / bw);
    let memory = backend.as_cuda().map(|c| c.memory());
    let mut reports = Vec::new();
    for (gemm, plain_s, verify_s, draft_s) in runs {
        let iteration_s = verify_s + a.draft_steps as f64 * draft_s;
        let mut projections = Vec::new();
        for (name, tau) in &taus {
            projections.push(json!({"name": name, "tau": tau, "tokens_per_s": tau / iteration_s, "speedup": tau / iteration_s * plain_s}));
        }
        reports.push(json!({
            "gemm": gemm,
            "plain_token_s": plain_s,
            "plain_over_floor": floor_s.map(|f| plain_s / f),
            "verify_s": verify_s,
            "verify_over_plain": verify_s / plain_s,
            "draft_step_s": draft_s,
            "iteration_s": iteration_s,
            "plain_tokens_per_s": 1.0 / plain_s,
            "projections": projections,
        }));
    }
    let v = json!({
        "model": engine.model_dir().display().to_string(),
        "device": backend.name(),
        "device_name": backend.as_cuda().map(|c| c.device_name().to_string()),
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
        "memory_used": memory.map(|m| m.0),
        "memory_peak": memory.map(|m| m.1),
        "memory_limit": memory.map(|m| m.2),
        "runs": reports,
    });
    if a.json {
        println!("{v}");
        return Ok(());
    }
    println!("model        {}", engine.model_dir().display());
    println!(
        "device       {}{}",
        backend.name(),
        backend
            .as_cuda()
            .map(|c| format!(" = {}", c.device_name()))
            .unwrap_or_default()
    );
    println!(
        "placement    {offloaded} of {} layers streamed, {} per target pass; loaded in {load_s:.1}s",
        cfg.n_layers,
        human(streamed)
    );
    if let Some((used, peak, limit)) = memory {
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
    for r in &v["runs"].as_array().cloned().unwrap_or_default() {
        let f = |k: &str| r[k].as_f64().unwrap_or(f64::NAN);
        let label = if backend.as_cuda().is_some() {
            format!(" [{}]", r["gemm"].as_str().unwrap_or(""))
        } else {
            String::new()
        };
        println!(
            "plain token  {:.2} ms{}{label}",
            f("plain_token_s") * 1e3,
            r["plain_over_floor"]
                .as_f64()
                .map(|x| format!(" = {x:.2}x the floor"))
                .unwrap_or_default()
        );
        println!(
            "verify {n:>4}  {:.2} ms = {:.2}x a plain token{label}",
            f("verify_s") * 1e3,
            f("verify_over_plain")
        );
        println!(
            "draft step   {:.3} ms at width {w}{label}",
            f("draft_step_s") * 1e3
        );
        for p in r["projections"].as_array().cloned().unwrap_or_default() {
            println!(
                "projection   {}: tau {:.2}, {} draft steps + one verification = {:.1} ms -> {:.1} tokens/s ({:.2}x plain {:.2} tokens/s){label}",
                p["name"].as_str().unwrap_or(""),
                p["tau"].as_f64().unwrap_or(f64::NAN),
                a.draft_steps,
                f("iteration_s") * 1e3,
                p["tokens_per_s"].as_f64().unwrap_or(f64::NAN),
                p["speedup"].as_f64().unwrap_or(f64::NAN),
                f("plain_tokens_per_s")
            );
        }
    }
    Ok(())
}
