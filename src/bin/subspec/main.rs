//! The `subspec` command: generate text, measure perplexity, benchmark.

mod bench;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use clap::{Args, Parser, Subcommand};
use serde_json::json;
use subspec::tokenizer::TextStream;
use subspec::{Engine, EngineOptions, Error, SamplingParams};

/// subspec: lossless speculative decoding for offloaded LLM inference.
#[derive(Parser)]
#[command(name = "subspec", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate text from a prompt, streaming it as it is produced.
    Generate(GenerateArgs),
    /// Perplexity of a text file.
    Perplexity(PerplexityArgs),
    /// Decode speed, batched forward cost and memory bandwidth.
    Bench(bench::BenchArgs),
}

/// Options shared by every command that loads a model.
#[derive(Args)]
pub struct ModelArgs {
    /// Model directory in Hugging Face layout (config.json, model.safetensors, tokenizer.json).
    #[arg(long)]
    model: PathBuf,
    /// Worker threads (0: one per core).
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// Context length (0: the model's maximum).
    #[arg(long, default_value_t = 0)]
    ctx_len: usize,
}

impl ModelArgs {
    /// Loads the engine these options describe.
    pub fn load(&self) -> Result<Engine, Error> {
        let mut o = EngineOptions::new(&self.model);
        o.threads = self.threads;
        o.max_context = self.ctx_len;
        Engine::load(&o)
    }
}

#[derive(Args)]
struct GenerateArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// The prompt.
    #[arg(long)]
    prompt: String,
    /// Wrap the prompt as a user turn in the ChatML template (SmolLM2 and Qwen2.5 use it).
    #[arg(long)]
    chat: bool,
    /// Most tokens to generate.
    #[arg(short = 'n', long = "max-new", default_value_t = 128)]
    max_new: usize,
    /// Sampling temperature (0: greedy).
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    /// Nucleus sampling threshold.
    #[arg(long, default_value_t = 1.0)]
    top_p: f32,
    /// Keep only the k most likely tokens (0: all).
    #[arg(long, default_value_t = 0)]
    top_k: usize,
    /// Random seed for sampling.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Print one JSON object at the end instead of streaming text.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct PerplexityArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Text file to score.
    #[arg(long)]
    file: PathBuf,
    /// Window length in tokens (0: the whole file in one window, up to the context length).
    #[arg(long, default_value_t = 0)]
    ctx: usize,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

fn chatml(engine: &Engine, prompt: &str) -> Result<String, Error> {
    let tok = engine.tokenizer()?;
    if tok.token_to_id("<|im_start|>").is_none() {
        return Err(Error::invalid_argument(
            "--chat: this model's tokenizer has no <|im_start|> token (not a ChatML model)",
        ));
    }
    Ok(format!(
        "<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n"
    ))
}

fn generate(a: &GenerateArgs) -> Result<(), Error> {
    let engine = a.model.load()?;
    let tok = engine.tokenizer()?;
    let text = if a.chat {
        chatml(&engine, &a.prompt)?
    } else {
        a.prompt.clone()
    };
    let ids = tok.encode(&text, !a.chat)?;
    let params = SamplingParams {
        temperature: a.temperature,
        top_k: a.top_k,
        top_p: a.top_p,
        seed: a.seed,
    };
    params.validate()?;
    let mut seq = engine.new_sequence();
    seq.append(&engine, &ids)?;
    let mut stream = TextStream::new(tok);
    let mut out = std::io::stdout().lock();
    let t0 = Instant::now();
    let mut first_token_s = None;
    let generated = seq.generate(&engine, &params, a.max_new, |new| {
        first_token_s.get_or_insert(t0.elapsed().as_secs_f64());
        if !a.json {
            let ids: Vec<u32> = new.iter().copied().filter(|&t| !engine.is_eos(t)).collect();
            if let Ok(piece) = stream.push(&ids) {
                let _ = out.write_all(piece.as_bytes());
                let _ = out.flush();
            }
        }
        true
    })?;
    let total_s = t0.elapsed().as_secs_f64();
    let prefill_s = first_token_s.unwrap_or(total_s);
    let decode_tokens = generated.len().saturating_sub(1);
    let decode_tps = if total_s > prefill_s {
        decode_tokens as f64 / (total_s - prefill_s)
    } else {
        0.0
    };
    if a.json {
        let shown: Vec<u32> = generated
            .iter()
            .copied()
            .filter(|&t| !engine.is_eos(t))
            .collect();
        let v = json!({
            "prompt_tokens": ids.len(),
            "generated_tokens": generated,
            "text": tok.decode(&shown)?,
            "stopped_at_eos": generated.last().is_some_and(|&t| engine.is_eos(t)),
            "prefill_s": prefill_s,
            "total_s": total_s,
            "decode_tokens_per_s": decode_tps,
        });
        println!("{v}");
    } else {
        println!();
        eprintln!(
            "[{} prompt tokens, {} generated, prefill {:.2}s, decode {:.2} tokens/s]",
            ids.len(),
            generated.len(),
            prefill_s,
            decode_tps
        );
    }
    Ok(())
}

fn perplexity(a: &PerplexityArgs) -> Result<(), Error> {
    let engine = a.model.load()?;
    let text = std::fs::read_to_string(&a.file).map_err(|e| Error::io(&a.file, e))?;
    let ids = engine.tokenizer()?.encode(&text, true)?;
    let ctx = if a.ctx == 0 {
        ids.len().min(engine.max_context())
    } else {
        a.ctx
    };
    let t0 = Instant::now();
    let (n, mean_nll) = engine.perplexity(&ids, ctx)?;
    let ppl = mean_nll.exp();
    if a.json {
        let v = json!({"tokens": ids.len(), "scored": n, "ctx": ctx, "mean_nll": mean_nll, "perplexity": ppl, "seconds": t0.elapsed().as_secs_f64()});
        println!("{v}");
    } else {
        println!("tokens: {} (scored {n}, window {ctx})", ids.len());
        println!("mean NLL: {mean_nll:.6}");
        println!("perplexity: {ppl:.4}");
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let r = match &cli.command {
        Command::Generate(a) => generate(a),
        Command::Perplexity(a) => perplexity(a),
        Command::Bench(a) => bench::run(a),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
