//! Loading an engine: plan the placement under the budget, open the device, load the
//! target onto it, build the draft's substitutes; and the same plan as a dry run
//! ([`Engine::plan`], [`Engine::minimum_budget`]) from the checkpoint's headers only.

use std::path::PathBuf;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex};

use super::{Engine, EngineOptions, Progress, Shared};
use crate::backend::{Device, DeviceKind, KvDtype};
use crate::checkpoint::{ModelConfig, Weights};
use crate::error::{Error, Result};
use crate::model::{model_sizes, Model};
use crate::plan::{minimum_budget, plan, ModelSizes, Placement, PlanRequest};
use crate::tokenizer::Tokenizer;
use crate::util::release_free_memory;

/// What a checkpoint holds, from its headers: [`Engine::inspect`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ModelInfo {
    /// The model: a directory or a GGUF file.
    pub path: PathBuf,
    /// `safetensors` or `gguf`.
    pub format: &'static str,
    /// Shape and hyper-parameters.
    pub config: ModelConfig,
    /// Per tensor type (`F16`, `Q4_K`, ...): how many tensors and bytes, largest first.
    pub tensor_types: Vec<(String, usize, u64)>,
    /// Bytes of all tensors.
    pub weight_bytes: u64,
    /// Whether a tokenizer is present.
    pub tokenizer: bool,
    /// Whether the model has its own chat template (else ChatML is used).
    pub chat_template: bool,
    /// The smallest budget the options passed to [`Engine::inspect`] load with.
    pub minimum_budget: u64,
}

impl Engine {
    /// What the model `opts` names holds, from config and tensor headers (nothing is
    /// loaded onto a device; the tokenizer is read to tell whether it and a chat template
    /// are there).
    pub fn inspect(opts: &EngineOptions) -> Result<ModelInfo> {
        let path = opts.model_path.as_path();
        let config = ModelConfig::load(path)?;
        let weights = Weights::open(path)?;
        let tok = Tokenizer::load(path).ok();
        Ok(ModelInfo {
            path: path.to_path_buf(),
            format: if path.is_dir() { "safetensors" } else { "gguf" },
            tensor_types: weights
                .dtype_summary()
                .into_iter()
                .map(|(d, n, b)| (d.name().to_string(), n, b))
                .collect(),
            weight_bytes: weights.total_bytes() as u64,
            tokenizer: tok.is_some(),
            chat_template: tok.is_some_and(|t| t.chat_template().is_models_own()),
            minimum_budget: Self::minimum_budget(opts)?,
            config,
        })
    }

    /// Loads the model directory named in `opts`.
    pub fn load(opts: &EngineOptions) -> Result<Engine> {
        let path = opts.model_path.as_path();
        Progress::report(&opts.progress, 0.0)?;
        if opts.max_tree_tokens < 2 {
            return Err(Error::invalid_argument(
                "max_tree_tokens must be at least 2",
            ));
        }
        if matches!(opts.device, DeviceKind::Cuda(_)) && opts.kv_dtype() != KvDtype::F32 {
            return Err(Error::unsupported(format!(
                "kv_dtype {}: the CUDA backend's attention reads an f32 KV cache",
                opts.kv_dtype()
            )));
        }
        let placement = match opts.budget {
            None => None,
            Some(b) => Some(Self::plan(opts, b)?),
        };
        let device = Device::open(opts.device, opts.budget)?;
        let mut model = Model::load_placed(path, device, placement)?;
        model.set_kv_dtype(opts.kv_dtype());
        Progress::report(&opts.progress, 0.1)?;
        let tokenizer = match Tokenizer::load(path) {
            Err(e) if opts.require_tokenizer => return Err(e),
            r => r,
        };
        // Building the tokenizer freed up to 140 MiB (a 262k vocabulary's) in pieces
        // glibc would keep resident.
        release_free_memory();
        let max_context = match opts.max_context {
            0 => model.config().max_position,
            n if n > model.config().max_position => {
                return Err(Error::invalid_argument(format!(
                    "max_context {n} exceeds the model's max_position_embeddings {}",
                    model.config().max_position
                )))
            }
            n => n,
        };
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(opts.threads)
            .build()
            .map_err(|e| Error::internal(format!("thread pool: {e}")))?;
        let draft = match &opts.draft {
            None => None,
            Some(d) => {
                // The draft substitutes the offloaded layers and shares the resident ones;
                // with nothing offloaded (no budget, or a budget that fits everything),
                // every layer gets a substitute so speculation still has a cheaper draft.
                let offloaded = model.placement().map(|p| p.offloaded()).unwrap_or_default();
                let layers: Vec<usize> = match &d.substitute_layers {
                    Some(l) => l.clone(),
                    None if !offloaded.is_empty() && !d.substitute_all_layers => offloaded,
                    None => (0..model.config().n_layers).collect(),
                };
                let n = layers.len().max(1) as f32;
                let mut report =
                    |done: usize| Progress::report(&opts.progress, 0.1 + 0.9 * done as f32 / n);
                let mut stats =
                    pool.install(|| model.build_substitutes(&layers, &d.quant, &mut report))?;
                let vocab = model.config().vocab;
                let head = d.lm_head_quant_on(opts.device, vocab);
                let k = d.shortlist_on(opts.device, vocab);
                stats.lm_head_bytes =
                    pool.install(|| model.build_draft_lm_head(head.as_ref(), d.vocab, k))?;
                Some((d.clone(), stats))
            }
        };
        release_free_memory(); // the quantization's scratch
        Progress::report(&opts.progress, 1.0)?;
        Ok(Engine {
            shared: Arc::new(Shared {
                model,
                tokenizer,
                pool,
                max_context,
                path: path.to_path_buf(),
                draft,
                max_tree_tokens: opts.max_tree_tokens,
                max_sequences: opts.max_sequences,
                live: AtomicUsize::new(0),
                tree_costs: Mutex::new(None),
                observed: Mutex::default(),
                acceptance: Mutex::default(),
            }),
        })
    }

    /// The placement `opts` would load with under `budget`, from config.json and the
    /// safetensors headers only (no weights are read).
    pub fn plan(opts: &EngineOptions, budget: u64) -> Result<Placement> {
        let (config, sizes, req) = Self::plan_inputs(opts, budget)?;
        plan(&config, &sizes, &req)
    }

    /// The smallest budget `opts` can load with (headers only, like [`Engine::plan`]).
    pub fn minimum_budget(opts: &EngineOptions) -> Result<u64> {
        let (config, sizes, req) = Self::plan_inputs(opts, 0)?;
        Ok(minimum_budget(&config, &sizes, &req))
    }

    fn plan_inputs(
        opts: &EngineOptions,
        budget: u64,
    ) -> Result<(ModelConfig, ModelSizes, PlanRequest)> {
        let path = opts.model_path.as_path();
        let config = ModelConfig::load(path)?;
        let weights = Weights::open(path)?;
        let quant = opts.draft.as_ref().map(|d| d.quant).unwrap_or_default();
        let draft_vocab = opts.draft.as_ref().map_or(0, |d| d.vocab);
        let head_quant = opts
            .draft
            .as_ref()
            .and_then(|d| d.lm_head_quant_on(opts.device, config.vocab));
        let sizes = model_sizes(
            &config,
            &weights,
            &quant,
            &head_quant.unwrap_or_default(),
            draft_vocab,
        )?;
        let context = match opts.max_context {
            0 => config.max_position,
            n => n,
        };
        let req = PlanRequest {
            budget,
            context,
            tree_tokens: opts.max_tree_tokens,
            sequences: opts.max_sequences.max(1),
            draft: opts.draft.is_some(),
            quant,
            draft_lm_head: head_quant.is_some(),
            substitute_resident: opts
                .draft
                .as_ref()
                .is_some_and(|d| d.substitute_all_layers || d.substitute_layers.is_some()),
            kv_dtype: opts.kv_dtype(),
        };
        Ok((config, sizes, req))
    }
}
