//! The engine (a loaded model plus its settings and thread pool) and sequences (one
//! conversation each, with its own KV cache). This is the API the C ABI wraps.
//!
//! A [`Sequence`] holds every token it has seen; the ones not yet run through the model
//! are *pending*. [`Sequence::step`] runs the pending tokens, chooses the next token and
//! appends it (it becomes the new pending token). A failed call leaves the sequence exactly
//! as it was.

use std::path::{Path, PathBuf};

use crate::backend::cpu::CpuBackend;
use crate::backend::AttnMask;
use crate::error::{Error, ErrorKind, Result};
use crate::model::{KvCache, Model, ModelConfig};
use crate::sample::{sample, SamplingParams};
use crate::tokenizer::Tokenizer;

/// Longest run of prompt tokens sent through the model in one forward.
const PREFILL_CHUNK: usize = 256;

/// Settings for loading an engine.
#[derive(Debug, Clone)]
pub struct EngineOptions {
    /// Model directory (config.json, safetensors, tokenizer.json).
    pub model_dir: PathBuf,
    /// Worker threads (`0`: one per core).
    pub threads: usize,
    /// Context length per sequence (`0`: the model's `max_position_embeddings`).
    pub max_context: usize,
    /// Whether a missing tokenizer.json is an error (a host that tokenizes itself can say no).
    pub require_tokenizer: bool,
}

impl EngineOptions {
    /// Defaults for `model_dir`: all cores, the model's context, tokenizer required.
    pub fn new(model_dir: impl Into<PathBuf>) -> Self {
        EngineOptions {
            model_dir: model_dir.into(),
            threads: 0,
            max_context: 0,
            require_tokenizer: true,
        }
    }
}

/// A loaded model ready to serve sequences.
pub struct Engine {
    model: Model<CpuBackend>,
    tokenizer: Option<Tokenizer>,
    pool: rayon::ThreadPool,
    max_context: usize,
    dir: PathBuf,
}

impl Engine {
    /// Loads the model directory named in `opts`.
    pub fn load(opts: &EngineOptions) -> Result<Engine> {
        let dir = opts.model_dir.as_path();
        let model = Model::load(dir, CpuBackend)?;
        let tokenizer = match Tokenizer::from_dir(dir) {
            Ok(t) => Some(t),
            Err(e) if opts.require_tokenizer => return Err(e),
            Err(_) => None,
        };
        let max_context = match opts.max_context {
            0 => model.config.max_position,
            n if n > model.config.max_position => {
                return Err(Error::invalid_argument(format!(
                    "max_context {n} exceeds the model's max_position_embeddings {}",
                    model.config.max_position
                )))
            }
            n => n,
        };
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(opts.threads)
            .build()
            .map_err(|e| Error::internal(format!("thread pool: {e}")))?;
        Ok(Engine {
            model,
            tokenizer,
            pool,
            max_context,
            dir: dir.to_path_buf(),
        })
    }

    /// The model directory.
    pub fn model_dir(&self) -> &Path {
        &self.dir
    }

    /// The model's configuration.
    pub fn config(&self) -> &ModelConfig {
        &self.model.config
    }

    /// The model.
    pub fn model(&self) -> &Model<CpuBackend> {
        &self.model
    }

    /// The tokenizer, or an error if the model directory has none.
    pub fn tokenizer(&self) -> Result<&Tokenizer> {
        self.tokenizer.as_ref().ok_or_else(|| {
            Error::new(
                ErrorKind::Tokenizer,
                format!("{}: no tokenizer.json", self.dir.display()),
            )
        })
    }

    /// Context length of each sequence.
    pub fn max_context(&self) -> usize {
        self.max_context
    }

    /// Number of worker threads.
    pub fn threads(&self) -> usize {
        self.pool.current_num_threads()
    }

    /// Whether `token` ends generation.
    pub fn is_eos(&self, token: u32) -> bool {
        self.model.config.eos_ids.contains(&token)
    }

    /// A new, empty sequence.
    pub fn new_sequence(&self) -> Sequence {
        Sequence {
            cache: self.model.new_cache(self.max_context),
            tokens: Vec::new(),
        }
    }

    /// Runs `f` on the engine's thread pool.
    pub fn install<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        self.pool.install(f)
    }

    /// Mean negative log-likelihood (nats) of `ids`, scored in independent windows of
    /// `ctx` tokens (each window predicts its tokens 1.. from its own prefix). Returns the
    /// number of scored tokens and the mean NLL.
    pub fn perplexity(&self, ids: &[u32], ctx: usize) -> Result<(usize, f64)> {
        if ctx < 2 || ctx > self.max_context {
            return Err(Error::invalid_argument(format!(
                "perplexity window must be in 2..={}, got {ctx}",
                self.max_context
            )));
        }
        if ids.len() < 2 {
            return Err(Error::invalid_argument(
                "perplexity needs at least 2 tokens",
            ));
        }
        self.model.check_tokens(ids)?;
        let vocab = self.model.config.vocab;
        let (mut total, mut count) = (0f64, 0usize);
        for window in ids.chunks(ctx).filter(|w| w.len() >= 2) {
            let mut cache = self.model.new_cache(window.len());
            for start in (0..window.len()).step_by(PREFILL_CHUNK) {
                let chunk = &window[start..(start + PREFILL_CHUNK).min(window.len())];
                let positions: Vec<usize> = (start..start + chunk.len()).collect();
                let rows: Vec<usize> = (0..chunk.len()).collect();
                let logits = self.install(|| {
                    self.model.forward(
                        &mut cache,
                        chunk,
                        &positions,
                        &AttnMask::causal(chunk.len()),
                        &rows,
                    )
                })?;
                cache.commit(chunk.len());
                for (r, row) in logits.chunks_exact(vocab).enumerate() {
                    let next = start + r + 1;
                    if next < window.len() {
                        total += nll(row, window[next]);
                        count += 1;
                    }
                }
            }
        }
        Ok((count, total / count as f64))
    }
}

/// `-log softmax(logits)[target]` in f64.
pub fn nll(logits: &[f32], target: u32) -> f64 {
    let max = logits.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x)) as f64;
    let lse = logits
        .iter()
        .map(|&x| (x as f64 - max).exp())
        .sum::<f64>()
        .ln()
        + max;
    lse - logits[target as usize] as f64
}

/// One conversation: its tokens and KV cache.
pub struct Sequence {
    cache: KvCache<CpuBackend>,
    tokens: Vec<u32>,
}

impl Sequence {
    /// Every token of the sequence (prompt and generated), in order.
    pub fn tokens(&self) -> &[u32] {
        &self.tokens
    }

    /// Number of tokens.
    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    /// Whether the sequence has no tokens.
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// Appends tokens (a prompt or a user turn); they are run at the next step.
    pub fn append(&mut self, engine: &Engine, tokens: &[u32]) -> Result<()> {
        engine.model.check_tokens(tokens)?;
        if self.tokens.len() + tokens.len() > engine.max_context {
            return Err(Error::new(
                ErrorKind::ContextFull,
                format!(
                    "{} tokens in the sequence + {} new exceed the context length {}",
                    self.tokens.len(),
                    tokens.len(),
                    engine.max_context
                ),
            ));
        }
        self.tokens.extend_from_slice(tokens);
        Ok(())
    }

    /// Forgets everything from token `len` on (prompt reuse); `0` resets.
    pub fn truncate(&mut self, len: usize) {
        self.tokens.truncate(len);
        self.cache.truncate(len);
    }

    /// Runs the pending tokens, chooses the next token with `params` and appends it.
    /// Returns the new tokens (one for plain decoding). On error nothing changes.
    pub fn step(&mut self, engine: &Engine, params: &SamplingParams) -> Result<Vec<u32>> {
        params.validate()?;
        if self.tokens.is_empty() {
            return Err(Error::invalid_argument(
                "the sequence is empty: append at least one token first",
            ));
        }
        if self.tokens.len() >= engine.max_context {
            return Err(Error::new(
                ErrorKind::ContextFull,
                format!(
                    "the sequence has reached the context length {}",
                    engine.max_context
                ),
            ));
        }
        let committed = self.cache.len();
        let logits = match self.prefill(engine) {
            Ok(l) => l,
            Err(e) => {
                self.cache.truncate(committed);
                return Err(e);
            }
        };
        let position = self.tokens.len();
        let next = sample(&logits, params, position);
        self.tokens.push(next);
        Ok(vec![next])
    }

    /// Runs the pending tokens (in chunks), commits them, and returns the logits of the last.
    fn prefill(&mut self, engine: &Engine) -> Result<Vec<f32>> {
        let model = &engine.model;
        if self.cache.len() == self.tokens.len() {
            // Everything is cached (after a truncate): re-run the last token for its logits.
            self.cache.truncate(self.tokens.len() - 1);
        }
        let mut logits = Vec::new();
        while self.cache.len() < self.tokens.len() {
            let start = self.cache.len();
            let end = (start + PREFILL_CHUNK).min(self.tokens.len());
            let chunk = &self.tokens[start..end];
            let positions: Vec<usize> = (start..end).collect();
            let last = if end == self.tokens.len() {
                vec![chunk.len() - 1]
            } else {
                vec![]
            };
            let cache = &mut self.cache;
            logits = engine.install(|| {
                model.forward(
                    cache,
                    chunk,
                    &positions,
                    &AttnMask::causal(chunk.len()),
                    &last,
                )
            })?;
            self.cache.commit(chunk.len());
        }
        Ok(logits)
    }

    /// Generates up to `max_new` tokens, stopping after an end-of-sequence token; calls
    /// `on_tokens` with each step's tokens (return `false` to stop early).
    pub fn generate(
        &mut self,
        engine: &Engine,
        params: &SamplingParams,
        max_new: usize,
        mut on_tokens: impl FnMut(&[u32]) -> bool,
    ) -> Result<Vec<u32>> {
        let mut out = Vec::new();
        while out.len() < max_new && self.tokens.len() < engine.max_context {
            let new = self.step(engine, params)?;
            let stop = new.iter().any(|&t| engine.is_eos(t));
            out.extend_from_slice(&new);
            if !on_tokens(&new) || stop {
                break;
            }
        }
        Ok(out)
    }
}
