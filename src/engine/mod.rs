//! The engine (a loaded model plus its settings and thread pool) and sequences (one
//! conversation each, with its own KV cache). This is the API the C ABI wraps.
//!
//! - `options.rs`: what an engine is loaded with, how a step runs;
//! - `load.rs`: loading (plan, place, build the draft) and the dry-run planner;
//! - `sequence.rs`: [`Sequence`]: appending, plain and speculative steps, generation;
//! - `perplexity.rs`: scoring a text with the target or the draft;
//! - `measure.rs`: timing an iteration's forwards (for `subspec bench` and `passes`).
//!
//! An [`Engine`] is a cheap handle to shared state: clones share one model, and every
//! [`Sequence`] holds its engine, so a sequence can never be stepped on the wrong model.

mod load;
#[doc(hidden)]
pub mod measure;
mod options;
mod perplexity;
mod sequence;

use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use load::ModelInfo;
pub use options::{DraftOptions, EngineOptions, Progress, StepOptions, DEFAULT_MAX_TREE_TOKENS};
pub use sequence::Sequence;

use crate::backend::{Backend, Device};
use crate::checkpoint::ModelConfig;
use crate::error::{Error, ErrorKind, Result};
use crate::model::{Model, SubstituteStats};
use crate::plan::Placement;
use crate::spec::{draft, TreeParams};
use crate::tokenizer::Tokenizer;

/// Longest run of prompt tokens sent through the model in one forward.
const PREFILL_CHUNK: usize = 256;

/// What an engine's handles share.
struct Shared {
    model: Model<Device>,
    /// The tokenizer, or why the model has none.
    tokenizer: std::result::Result<Tokenizer, Error>,
    pool: rayon::ThreadPool,
    max_context: usize,
    path: PathBuf,
    draft: Option<(DraftOptions, SubstituteStats)>,
    max_tree_tokens: usize,
}

/// A loaded model ready to serve sequences. Cloning is cheap: clones share the model,
/// and it is freed when the last clone and the last of its sequences are dropped.
#[derive(Clone)]
pub struct Engine {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("model_path", &self.shared.path)
            .field("device", &self.shared.model.backend().name())
            .finish_non_exhaustive()
    }
}

impl Engine {
    /// The placement the engine runs with (`None`: everything resident).
    pub fn placement(&self) -> Option<&Placement> {
        self.shared.model.placement()
    }

    /// The tree shape that pays best for this engine: with offloaded layers a target pass
    /// costs a full stream of them, so a deeper and wider tree pays (docs/BENCHMARKS.md);
    /// with everything resident, [`TreeParams::default`] (a chain).
    pub fn default_tree(&self) -> TreeParams {
        let offloaded = self.placement().is_some_and(|p| !p.offloaded().is_empty());
        draft::default_tree(offloaded, self.shared.max_tree_tokens)
    }

    /// Largest tree a step may verify.
    pub fn max_tree_tokens(&self) -> usize {
        self.shared.max_tree_tokens
    }

    /// The draft's settings and sizes, if the engine has one.
    pub fn draft(&self) -> Option<&(DraftOptions, SubstituteStats)> {
        self.shared.draft.as_ref()
    }

    /// The model: a Hugging Face directory or a GGUF file.
    pub fn model_path(&self) -> &Path {
        &self.shared.path
    }

    /// The model's configuration.
    pub fn config(&self) -> &ModelConfig {
        self.shared.model.config()
    }

    /// The loaded model, for tests and the measuring commands (`subspec passes`): not part
    /// of the stable API.
    #[doc(hidden)]
    pub fn model(&self) -> &Model<Device> {
        &self.shared.model
    }

    /// The tokenizer, or an error saying why the model has none.
    pub fn tokenizer(&self) -> Result<&Tokenizer> {
        self.shared.tokenizer.as_ref().map_err(|e| {
            Error::new(
                ErrorKind::Tokenizer,
                format!("the model has no usable tokenizer: {}", e.message()),
            )
        })
    }

    /// Context length of each sequence.
    pub fn max_context(&self) -> usize {
        self.shared.max_context
    }

    /// Number of worker threads.
    pub fn threads(&self) -> usize {
        self.shared.pool.current_num_threads()
    }

    /// Whether `token` ends generation.
    pub fn is_eos(&self, token: u32) -> bool {
        self.config().eos_ids.contains(&token)
    }

    /// Checks that every id is inside the vocabulary.
    pub fn check_tokens(&self, tokens: &[u32]) -> Result<()> {
        self.shared.model.check_tokens(tokens)
    }

    /// A new, empty sequence on this engine. Its KV cache holds the context plus room for
    /// the largest tree a step may verify (tree slots are scratch, never part of the
    /// context).
    pub fn new_sequence(&self) -> Result<Sequence> {
        let cache = self
            .shared
            .model
            .new_cache(self.shared.max_context + self.shared.max_tree_tokens)?;
        Ok(Sequence::new(self.clone(), cache))
    }

    /// Runs `f` on the engine's thread pool (the model's kernels use it), for tests and
    /// the measuring commands.
    #[doc(hidden)]
    pub fn install<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        self.shared.pool.install(f)
    }
}
