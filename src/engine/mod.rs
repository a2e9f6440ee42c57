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
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

pub use load::ModelInfo;
pub use options::{
    DraftOptions, EngineOptions, Progress, StepOptions, DEFAULT_MAX_TREE_TOKENS, DEFAULT_SHORTLIST,
};
pub use sequence::Sequence;

use crate::backend::{Backend, Device};
use crate::checkpoint::ModelConfig;
use crate::error::{Error, ErrorKind, Result};
use crate::model::{Model, SubstituteStats};
use crate::plan::Placement;
use crate::spec::tune::{Acceptance, Observed, TreeCosts};
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
    /// [`EngineOptions::max_sequences`]: `0` plans for one and does not limit.
    max_sequences: usize,
    /// Sequences alive now.
    live: AtomicUsize,
    /// [`Engine::tree_costs`], once measured.
    tree_costs: Mutex<Option<TreeCosts>>,
    /// What steps whose depth was chosen by cost took against [`Shared::tree_costs`]'
    /// predictions.
    observed: Mutex<Observed>,
    /// The acceptance by depth a sequence recorded last: where a new one starts.
    acceptance: Mutex<Acceptance>,
}

/// `m` locked, its value used as it is when a panic elsewhere poisoned the lock (the
/// engine's locked values are measurements and estimates, never left half-written).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
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
        draft::default_tree(self.streams(), self.shared.max_tree_tokens)
    }

    /// Whether layers are offloaded: a target pass streams them.
    pub(crate) fn streams(&self) -> bool {
        self.placement().is_some_and(|p| !p.offloaded().is_empty())
    }

    /// Largest tree a step may verify.
    pub fn max_tree_tokens(&self) -> usize {
        self.shared.max_tree_tokens
    }

    /// Slots of a sequence's KV cache ([`crate::plan::kv_slots`]): the scratch of a
    /// speculative step is the draft's region `0..max_tree_tokens` (its tree, kept while
    /// the target verifies it), then the verified tree's.
    pub(crate) fn kv_slots(&self) -> usize {
        let s = &self.shared;
        crate::plan::kv_slots(s.max_context, s.max_tree_tokens, s.model.has_draft())
    }

    /// Whether a sequence's step drafts on while its target pass waits for streamed
    /// layers: with a draft and offloaded layers (the backend says when a layer is not
    /// there yet: on the CPU while the reader reads it, on CUDA while its copy is in
    /// flight and the compute stream has drained).
    pub(crate) fn drafts_during_passes(&self) -> bool {
        self.shared.model.has_draft() && self.streams()
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
        let (max, live) = (self.shared.max_sequences, &self.shared.live);
        let was = live.fetch_add(1, Ordering::SeqCst);
        if max > 0 && was >= max {
            live.fetch_sub(1, Ordering::SeqCst);
            return Err(Error::new(
                ErrorKind::OutOfMemory,
                format!(
                    "the engine was planned for {max} sequence{} at once (max_sequences) and                      all are alive: free one first, or load with more",
                    if max == 1 { "" } else { "s" }
                ),
            ));
        }
        // The sequence counts itself out when dropped, this failure included.
        let cache = self.shared.model.new_cache(self.kv_slots());
        match cache {
            Ok(cache) => Ok(Sequence::new(self.clone(), cache)),
            Err(e) => {
                live.fetch_sub(1, Ordering::SeqCst);
                Err(e)
            }
        }
    }

    /// What the forwards of an iteration cost on this engine's placement (a draft step by
    /// frontier width, a target pass by tokens, a logits row), for trees sized by measured
    /// cost ([`TreeParams::auto_depth`]). Measured at the first call (well under a second
    /// with everything resident; a dozen streamed passes when layers are offloaded), then
    /// kept. `InvalidArgument` without a draft.
    pub fn tree_costs(&self) -> Result<TreeCosts> {
        let mut kept = lock(&self.shared.tree_costs);
        if let Some(c) = kept.as_ref() {
            return Ok(c.clone());
        }
        let c = measure::tree_costs(self)?;
        *kept = Some(c.clone());
        Ok(c)
    }

    /// What steps of this engine's sequences took against what [`Engine::tree_costs`]
    /// predicted (their depths chosen by cost).
    pub(crate) fn observed(&self) -> Observed {
        *lock(&self.shared.observed)
    }

    /// Records a step of depth `depth` (`0`: plain) predicted to take `predicted_s` that
    /// took `observed_s` ([`Observed::record`]).
    pub(crate) fn observe(&self, depth: usize, predicted_s: f64, observed_s: f64) {
        lock(&self.shared.observed).record(depth, predicted_s, observed_s);
    }

    /// The acceptance by depth a sequence of this engine recorded last (its draft on its
    /// text so far, with its exploring state), where a new or reset sequence starts: a
    /// better guess than a prior for every model and machine, and a draft that does not
    /// pay is not tried again at each request's start.
    pub(crate) fn acceptance(&self) -> Acceptance {
        lock(&self.shared.acceptance).clone()
    }

    /// Keeps `acc` as where the next new sequence starts ([`Engine::acceptance`]).
    pub(crate) fn keep_acceptance(&self, acc: &Acceptance) {
        lock(&self.shared.acceptance).clone_from(acc);
    }

    /// Sequences of this engine alive now (made by [`Engine::new_sequence`], not yet
    /// dropped).
    pub fn live_sequences(&self) -> usize {
        self.shared.live.load(Ordering::SeqCst)
    }

    /// The most sequences alive at once that the engine was planned for and allows
    /// ([`EngineOptions::max_sequences`]; `0`: planned for one, not limited).
    pub fn max_sequences(&self) -> usize {
        self.shared.max_sequences
    }

    /// Runs `f` on the engine's thread pool (the model's kernels use it), for tests and
    /// the measuring commands.
    #[doc(hidden)]
    pub fn install<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        self.shared.pool.install(f)
    }
}
