//! The `subspec` command: generate text, measure perplexity, benchmark.

mod batcher;
mod bench;
mod passes;
mod serve;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use clap::{Args, Parser, Subcommand};
use serde_json::json;
use subspec::internals::{human, parse_bytes};
use subspec::{
    ChatMessage, DeviceKind, DraftOptions, Engine, EngineOptions, Error, Pass, Progress,
    QuantConfig, QuantMethod, Residency, SamplingParams, StepOptions, TextStream, TreeParams,
};

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
    /// Benchmark: plain offloaded decoding vs SubSpec on a prompt set (or, with
    /// --kernels, decode speed and batched forward cost against memory bandwidth).
    Bench(bench::BenchArgs),
    /// Time one plain target token, one tree verification and one draft step, against
    /// the slow tier's floor (no tokenizer needed; works on random-weight models).
    Passes(passes::PassesArgs),
    /// Write a random-weight model shaped like a real one (for benchmarks and GPU checks
    /// on machines that cannot download models).
    Synth(SynthArgs),
    /// Show the placement a memory budget gives (dry run: reads only the config and the
    /// tensor headers).
    Plan(PlanArgs),
    /// What a model holds: architecture, shape, tensor types and bytes, context, chat
    /// template, the minimum budget (headers only).
    Info(PlanArgs),
    /// Serve the model over HTTP: OpenAI-compatible /v1/chat/completions, /v1/completions,
    /// /v1/models, and llama.cpp-server-compatible /completion, /tokenize, /detokenize,
    /// /health, /props, /metrics.
    Serve(serve::ServeArgs),
}

#[derive(Args)]
struct SynthArgs {
    /// Shape: tiny, smollm2-135m, qwen2.5-0.5b or qwen2.5-7b.
    #[arg(long)]
    shape: String,
    /// Weight type: f16, bf16 or f32.
    #[arg(long, default_value = "f16")]
    dtype: String,
    /// Output directory (config.json and model.safetensors; no tokenizer).
    #[arg(long)]
    out: PathBuf,
    /// Random seed.
    #[arg(long, default_value_t = 7)]
    seed: u64,
}

fn synth(a: &SynthArgs) -> Result<(), Error> {
    use subspec::internals::{write_model, DType, SynthShape};
    let shape = SynthShape::named(&a.shape)?;
    let dtype = match a.dtype.as_str() {
        "f16" => DType::F16,
        "bf16" => DType::BF16,
        "f32" => DType::F32,
        d => {
            return Err(Error::invalid_argument(format!(
                "--dtype {d}: expected f16, bf16 or f32"
            )))
        }
    };
    let t0 = Instant::now();
    write_model(&a.out, &shape, dtype, a.seed)?;
    eprintln!(
        "wrote {} ({}) to {} in {:.1}s",
        a.shape,
        human(shape.weight_bytes(dtype)),
        a.out.display(),
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}

#[derive(Args)]
struct PlanArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    spec: SpecArgs,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

fn plan(a: &PlanArgs) -> Result<(), Error> {
    // `--no-spec`: the placement of an engine without a draft (no substitutes).
    let opts = a.model.options(a.spec.draft()?)?;
    let budget = opts
        .budget
        .ok_or_else(|| Error::invalid_argument("plan needs --budget (e.g. --budget 1.5GiB)"))?;
    let p = Engine::plan(&opts, budget)?;
    let b = &p.bytes;
    if a.json {
        let layers: Vec<&str> = p
            .layers
            .iter()
            .map(|r| {
                if *r == Residency::Resident {
                    "resident"
                } else {
                    "offloaded"
                }
            })
            .collect();
        let v = json!({
            "layers": layers, "staging_buffers": p.staging_buffers, "budget": b.budget, "total": b.total,
            "lm_head": b.lm_head, "norms_and_biases": b.vectors, "substitutes": b.substitutes, "draft_lm_head": b.draft_lm_head,
            "resident_layers": b.resident_layers, "kv_cache": b.kv_cache, "kv_dtype": opts.kv_dtype().name(), "staging": b.staging,
            "activations": b.activations, "headroom": b.headroom, "streamed_per_pass": b.streamed_per_pass,
        });
        println!("{v}");
        return Ok(());
    }
    for (l, r) in p.layers.iter().enumerate() {
        let what = match (r, opts.draft.is_some()) {
            (Residency::Resident, true) => "resident (full precision, shared by the draft)",
            (Residency::Offloaded, true) => {
                "offloaded (streamed every target pass; draft uses a substitute)"
            }
            (Residency::Resident, false) => "resident (full precision)",
            (Residency::Offloaded, false) => "offloaded (streamed every target pass)",
        };
        println!("layer {l:3}  {what}");
    }
    let kv_row = format!("KV cache ({})", opts.kv_dtype());
    let rows = [
        ("lm_head", b.lm_head),
        ("norms and biases", b.vectors),
        ("substitutes", b.substitutes),
        ("draft lm_head", b.draft_lm_head),
        ("resident layers", b.resident_layers),
        (&kv_row, b.kv_cache),
        ("staging buffers", b.staging),
        ("activations", b.activations),
        ("headroom", b.headroom),
    ];
    for (name, v) in rows {
        println!("{name:18} {:>12}", human(v));
    }
    println!(
        "{:18} {:>12} of {} budget",
        "total",
        human(b.total),
        human(b.budget)
    );
    println!(
        "{:18} {:>12} per target pass",
        "streamed",
        human(b.streamed_per_pass)
    );
    Ok(())
}

/// A progress bar on stderr for loading, when stderr is a terminal.
fn load_bar() -> Option<indicatif::ProgressBar> {
    use std::io::IsTerminal;
    if !std::io::stderr().is_terminal() {
        return None;
    }
    let bar = indicatif::ProgressBar::new(1000);
    let style = indicatif::ProgressStyle::with_template(
        "{spinner} loading {bar:30} {percent:>3}% {elapsed} {msg}",
    )
    .ok()?;
    bar.set_style(style);
    bar.set_message("reading weights");
    Some(bar)
}

/// Loads an engine, with a progress bar on a terminal (see [`load_bar`]).
pub fn load_engine(mut opts: EngineOptions) -> Result<Engine, Error> {
    let bar = load_bar();
    if let Some(bar) = &bar {
        let b = bar.clone();
        opts.progress = Some(Progress::new(move |f| {
            b.set_position((f * 1000.0) as u64);
            if f >= 0.1 {
                b.set_message("quantizing substitutes");
            }
            true
        }));
    }
    let r = Engine::load(&opts);
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    r
}

fn info(a: &PlanArgs) -> Result<(), Error> {
    let opts = a.model.options(a.spec.draft()?)?;
    let i = Engine::inspect(&opts)?;
    let c = &i.config;
    if a.json {
        let types: Vec<serde_json::Value> = i
            .tensor_types
            .iter()
            .map(|(t, n, b)| json!({"type": t, "tensors": n, "bytes": b}))
            .collect();
        let v = json!({
            "path": i.path.display().to_string(), "format": i.format,
            "architecture": c.arch.hf_name(), "layers": c.n_layers, "hidden": c.hidden,
            "intermediate": c.intermediate, "heads": c.n_heads, "kv_heads": c.n_kv_heads,
            "head_dim": c.head_dim, "vocab": c.vocab, "context": c.max_position,
            "tied_embeddings": c.tie_embeddings, "tensor_types": types,
            "weight_bytes": i.weight_bytes, "tokenizer": i.tokenizer,
            "chat_template": i.chat_template, "minimum_budget": i.minimum_budget,
        });
        println!("{v}");
        return Ok(());
    }
    println!("model          {} ({})", i.path.display(), i.format);
    println!(
        "architecture   {}: {} layers, hidden {}, MLP {}, {} heads / {} kv heads of {}, vocab {}{}",
        c.arch.hf_name(),
        c.n_layers,
        c.hidden,
        c.intermediate,
        c.n_heads,
        c.n_kv_heads,
        c.head_dim,
        c.vocab,
        if c.tie_embeddings {
            ", tied embeddings"
        } else {
            ""
        }
    );
    println!("context        {} positions", c.max_position);
    for (t, n, b) in &i.tensor_types {
        println!("tensors        {t:6} {n:4} tensors {:>12}", human(*b));
    }
    println!("weights        {}", human(i.weight_bytes));
    println!(
        "tokenizer      {}; chat template: {}",
        if i.tokenizer { "yes" } else { "none" },
        if i.chat_template {
            "the model's own"
        } else {
            "none (ChatML fallback)"
        }
    );
    println!(
        "minimum budget {} ({} positions of context, {})",
        human(i.minimum_budget),
        if opts.max_context == 0 {
            c.max_position
        } else {
            opts.max_context
        },
        if opts.draft.is_some() {
            "with the substitute draft"
        } else {
            "plain decoding"
        }
    );
    Ok(())
}

/// Options shared by every command that loads a model.
#[derive(Args, Clone)]
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
    /// Device memory budget (e.g. 800MiB, 1.5GiB): layers that do not fit are streamed
    /// from the slow tier every target pass (disk for the CPU, pinned host memory for
    /// CUDA); `min` is the smallest budget that works. Default: everything resident.
    #[arg(long)]
    budget: Option<String>,
    /// Largest verified tree the engine reserves room for.
    #[arg(long, default_value_t = subspec::DEFAULT_MAX_TREE_TOKENS)]
    max_tree_tokens: usize,
    /// Device: cpu, cuda or cuda:N. With CUDA the budget is GPU memory and offloaded
    /// layers stream from pinned host memory.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Load without tokenizer.json (commands that need text then fail).
    #[arg(long)]
    no_tokenizer: bool,
    /// Sequences alive at once: the plan reserves a KV cache and activations for each
    /// (a budget too small says how many it holds). `serve` runs this many generations
    /// at once (default 1 there); elsewhere the default plans for one.
    #[arg(long)]
    pub parallel: Option<usize>,
    /// Element type of the KV cache: f32, f16 or bf16 (default: f16 on the CPU, f32 on
    /// CUDA). The plan counts its bytes.
    #[arg(long)]
    kv_dtype: Option<String>,
}

impl ModelArgs {
    /// Loads the engine these options describe, with `draft` if given; on a terminal a
    /// progress bar shows the load and the substitutes' quantization (stderr only, so
    /// `--json` output stays clean).
    pub fn load(&self, draft: Option<DraftOptions>) -> Result<Engine, Error> {
        load_engine(self.options(draft)?)
    }

    /// The engine options these arguments describe.
    pub fn options(&self, draft: Option<DraftOptions>) -> Result<EngineOptions, Error> {
        let mut o = EngineOptions::new(&self.model);
        o.threads = self.threads;
        o.max_context = self.ctx_len;
        o.draft = draft;
        o.max_tree_tokens = self.max_tree_tokens;
        o.device = DeviceKind::parse(&self.device)?;
        o.require_tokenizer = !self.no_tokenizer;
        o.max_sequences = self.parallel.unwrap_or(0);
        o.kv_dtype = self.kv_dtype.as_deref().map(str::parse).transpose()?;
        o.budget = match self.budget.as_deref() {
            None => None,
            Some("min") => Some(Engine::minimum_budget(&o)?),
            Some(b) => Some(parse_bytes(b)?),
        };
        Ok(o)
    }
}

/// How the draft is built and the tree is shaped.
#[derive(Args)]
pub struct SpecArgs {
    /// Speculative decoding (the default).
    #[arg(long, overrides_with = "no_spec")]
    spec: bool,
    /// Plain decoding, one token per target pass.
    #[arg(long = "no-spec")]
    no_spec: bool,
    /// Tree width: nodes kept per draft step (default: the engine's, which depends on
    /// whether layers are offloaded).
    #[arg(long)]
    tree_width: Option<usize>,
    /// Tree depth: draft steps per iteration (default: the engine's).
    #[arg(long)]
    tree_depth: Option<usize>,
    /// Most tokens in one verified tree, root included (default: the engine's).
    #[arg(long)]
    tree_max_tokens: Option<usize>,
    /// Draft softmax temperature for ranking tree paths.
    #[arg(long, default_value_t = TreeParams::default().draft_temperature)]
    draft_temperature: f32,
    /// Bits of the substitutes (2, 3, 4 or 8).
    #[arg(long, default_value_t = 4)]
    draft_bits: u8,
    /// Quantization group size of the substitutes.
    #[arg(long, default_value_t = 64)]
    draft_group: usize,
    /// Quantizer of the substitutes: hqq or rtn.
    #[arg(long, default_value = "hqq")]
    draft_method: String,
    /// Give the draft a quantized copy of lm_head whose logits are the draft's (cheaper
    /// draft steps, more memory); with --draft-shortlist above 0 it ranks instead.
    #[arg(long)]
    draft_lm_head: bool,
    /// Bits of the draft's own lm_head (default: 2 for a ranking head, otherwise
    /// --draft-bits).
    #[arg(long)]
    draft_head_bits: Option<u8>,
    /// A ranking head: the draft's own quantized lm_head only ranks the vocabulary and
    /// this many tokens it ranks first per draft row get the target head's logits (the
    /// draft proposes what the full-precision head would, reading a fraction of its
    /// bytes). 0: none. Default: none with --draft-lm-head, otherwise 128 on the CPU and
    /// none on CUDA.
    #[arg(long)]
    draft_shortlist: Option<usize>,
    /// The draft proposes only token ids below this: its output head is the first rows
    /// of the target's (cheaper draft steps, no memory). 0: the whole vocabulary.
    #[arg(long)]
    draft_vocab: Option<usize>,
    /// Whether resident layers get substitutes too, so the draft reads only quantized
    /// weights: on (default) or off.
    #[arg(long, default_value = "on")]
    draft_all_layers: String,
    /// Stop drafting early when another step costs more than it is expected to return:
    /// on or off (default: the engine's, off).
    #[arg(long)]
    adaptive_depth: Option<String>,
    /// Choose each step's depth (0: a plain step) by the engine's measured costs and the
    /// acceptance so far, --tree-depth the most: on or off (default: on with everything
    /// resident, otherwise the engine's, off; `serve` with --parallel above 1: on, the
    /// depth chosen for each batch of steps together).
    #[arg(long)]
    pub auto_depth: Option<String>,
}

impl SpecArgs {
    /// Whether speculation is on.
    pub fn enabled(&self) -> bool {
        !self.no_spec
    }

    /// The draft to build (none with --no-spec).
    pub fn draft(&self) -> Result<Option<DraftOptions>, Error> {
        if !self.enabled() {
            return Ok(None);
        }
        let method = match self.draft_method.as_str() {
            "hqq" => QuantMethod::Hqq,
            "rtn" => QuantMethod::Rtn,
            m => {
                return Err(Error::invalid_argument(format!(
                    "--draft-method must be hqq or rtn, got {m}"
                )))
            }
        };
        let quant = QuantConfig {
            bits: self.draft_bits,
            group: self.draft_group,
            method,
        };
        quant.validate()?;
        let mut d = DraftOptions::default();
        d.quant = quant;
        d.quantize_lm_head = self.draft_lm_head;
        if let Some(bits) = self.draft_head_bits {
            let q = QuantConfig { bits, ..quant };
            q.validate()?;
            d.head_quant = Some(q);
        }
        d.shortlist = self.draft_shortlist.or(d.shortlist);
        d.vocab = self.draft_vocab.unwrap_or(d.vocab);
        d.substitute_all_layers = match self.draft_all_layers.as_str() {
            "on" => true,
            "off" => false,
            v => {
                return Err(Error::invalid_argument(format!(
                    "--draft-all-layers {v}: expected on or off"
                )))
            }
        };
        Ok(Some(d))
    }

    /// The step options for `sampling` on `engine` (its default tree, overridden by the
    /// flags given).
    pub fn step(&self, engine: &Engine, sampling: SamplingParams) -> Result<StepOptions, Error> {
        let mut tree = engine.default_tree();
        tree.width = self.tree_width.unwrap_or(tree.width);
        tree.depth = self.tree_depth.unwrap_or(tree.depth);
        tree.max_tokens = self.tree_max_tokens.unwrap_or(tree.max_tokens);
        tree.draft_temperature = self.draft_temperature;
        let on_off = |flag: &str, v: Option<&str>, default: bool| match v {
            None => Ok(default),
            Some("on") => Ok(true),
            Some("off") => Ok(false),
            Some(v) => Err(Error::invalid_argument(format!(
                "--{flag} {v}: expected on or off"
            ))),
        };
        tree.adaptive = on_off(
            "adaptive-depth",
            self.adaptive_depth.as_deref(),
            tree.adaptive,
        )?;
        // With everything resident a target pass costs about a draft step on a CPU, so a
        // fixed tree can lose to plain decoding (Qwen2.5-0.5B on 2 AVX2 cores: the chain of
        // 8 at 0.75x): there the depth is chosen by measured cost unless the flag says.
        let resident = engine.placement().is_none_or(|p| p.offloaded().is_empty());
        let auto_default = tree.auto_depth || resident;
        tree.auto_depth = on_off("auto-depth", self.auto_depth.as_deref(), auto_default)?;
        if self.enabled() {
            tree.validate()?;
        }
        let mut opts = StepOptions::plain(sampling);
        opts.speculate = self.enabled();
        opts.tree = tree;
        Ok(opts)
    }
}

#[derive(Args)]
struct GenerateArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    spec: SpecArgs,
    /// The prompt.
    #[arg(
        long,
        required_unless_present = "prompt_file",
        conflicts_with = "prompt_file"
    )]
    prompt: Option<String>,
    /// Read the prompt from this UTF-8 file (a long document, a chat history).
    #[arg(long)]
    prompt_file: Option<PathBuf>,
    /// Wrap the prompt as a user turn with the model's own chat template (ChatML when the
    /// model ships none).
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
    /// Score the draft (the target with 4-bit substitutes) instead of the target.
    #[arg(long)]
    draft: bool,
    #[command(flatten)]
    spec: SpecArgs,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// `prompt` as one user turn in the model's chat template, ready for the answer.
fn chat_prompt(engine: &Engine, prompt: &str) -> Result<String, Error> {
    engine
        .tokenizer()?
        .apply_chat_template(&[ChatMessage::new("user", prompt)], true)
}

/// `prompt` as one ChatML user turn, ready for the assistant's answer.
fn chatml_text(prompt: &str) -> String {
    format!("<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n")
}

impl GenerateArgs {
    /// The prompt's text: `--prompt`, or the contents of `--prompt-file`.
    fn prompt_text(&self) -> Result<String, Error> {
        match (&self.prompt, &self.prompt_file) {
            (Some(p), _) => Ok(p.clone()),
            (None, Some(f)) => std::fs::read_to_string(f).map_err(|e| Error::io(f, e)),
            (None, None) => Err(Error::invalid_argument(
                "generate needs --prompt or --prompt-file",
            )),
        }
    }
}

fn generate(a: &GenerateArgs) -> Result<(), Error> {
    let sampling = SamplingParams::new(a.temperature, a.top_k, a.top_p, a.seed);
    sampling.validate()?;
    // Read before the load, so a missing file fails at once.
    let prompt = a.prompt_text()?;
    let engine = a.model.load(a.spec.draft()?)?;
    let opts = a.spec.step(&engine, sampling)?;
    let tok = engine.tokenizer()?;
    let text = if a.chat {
        chat_prompt(&engine, &prompt)?
    } else {
        prompt
    };
    let ids = tok.encode(&text, !a.chat)?;
    let mut seq = engine.new_sequence()?;
    seq.append(&ids)?;
    let mut stream = TextStream::new(tok);
    let mut out = std::io::stdout().lock();
    let t0 = Instant::now();
    let mut first_token_s = None;
    let generated = seq.generate(&opts, a.max_new, |new| {
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
    let st = seq.stats();
    let tokens_per_s = generated.len() as f64 / total_s;
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
            "tokens_per_s": tokens_per_s,
            "speculative": opts.speculate,
            "tau": st.tau(),
            "iterations": st.iterations,
            "accepted": st.accepted,
            "accepted_by_depth": st.accepted_by_depth,
            "draft_steps": st.draft_steps,
            "overlapped_steps": st.overlapped_steps,
            "reused_trees": st.reused_trees,
            "draft_s": st.draft_s,
            "verify_s": st.verify_s,
        });
        println!("{v}");
    } else {
        println!();
        eprintln!(
            "[{} prompt tokens, {} generated in {:.2}s: {:.2} tokens/s; {}; tau {:.2} tokens per target pass over {} passes; draft {:.2}s, target {:.2}s]",
            ids.len(),
            generated.len(),
            total_s,
            tokens_per_s,
            if opts.speculate { "speculative" } else { "plain" },
            st.tau(),
            st.iterations,
            st.draft_s,
            st.verify_s
        );
    }
    Ok(())
}

fn perplexity(a: &PerplexityArgs) -> Result<(), Error> {
    let draft = if a.draft { a.spec.draft()? } else { None };
    let engine = a.model.load(draft)?;
    let pass = if a.draft { Pass::Draft } else { Pass::Target };
    let text = std::fs::read_to_string(&a.file).map_err(|e| Error::io(&a.file, e))?;
    let ids = engine.tokenizer()?.encode(&text, true)?;
    let ctx = if a.ctx == 0 {
        ids.len().min(engine.max_context())
    } else {
        a.ctx
    };
    let t0 = Instant::now();
    let (n, mean_nll) = engine.perplexity(&ids, ctx, pass)?;
    let ppl = mean_nll.exp();
    if a.json {
        let v = json!({"pass": if a.draft { "draft" } else { "target" }, "tokens": ids.len(), "scored": n, "ctx": ctx, "mean_nll": mean_nll, "perplexity": ppl, "seconds": t0.elapsed().as_secs_f64()});
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
        Command::Plan(a) => plan(a),
        Command::Info(a) => info(a),
        Command::Passes(a) => passes::run(a),
        Command::Synth(a) => synth(a),
        Command::Serve(a) => serve::run(a),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn generate_args(args: &[&str]) -> Result<GenerateArgs, clap::Error> {
        let all = ["subspec", "generate", "--model", "m"].iter().chain(args);
        match Cli::try_parse_from(all)?.command {
            Command::Generate(a) => Ok(a),
            _ => unreachable!("a generate command"),
        }
    }

    #[test]
    fn the_prompt_comes_from_the_flag_or_a_file() {
        let dir = std::env::temp_dir().join(format!("subspec-cli-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("prompt.txt");
        std::fs::write(&file, "A long document\nwith two lines.").unwrap();
        let f = file.to_str().unwrap();
        let a = generate_args(&["--prompt", "Hello"]).unwrap();
        assert_eq!(a.prompt_text().unwrap(), "Hello");
        let a = generate_args(&["--prompt-file", f]).unwrap();
        assert_eq!(a.prompt_text().unwrap(), "A long document\nwith two lines.");
        // both, or neither: refused by the parser
        assert!(generate_args(&["--prompt", "x", "--prompt-file", f]).is_err());
        assert!(generate_args(&[]).is_err());
        // a missing file and one that is not UTF-8 are errors naming the file
        let missing = dir.join("missing.txt");
        let a = generate_args(&["--prompt-file", missing.to_str().unwrap()]).unwrap();
        let e = a.prompt_text().unwrap_err();
        assert!(e.to_string().contains("missing.txt"), "{e}");
        std::fs::write(&file, [0xffu8, 0xfe, 0x00]).unwrap();
        let e = generate_args(&["--prompt-file", f])
            .unwrap()
            .prompt_text()
            .unwrap_err();
        assert!(e.to_string().contains("prompt.txt"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
