//! Engines from C: load parameters and their defaults, loading (with progress and abort
//! callbacks), freeing, model metadata and the tokenizer helpers.

use std::ffi::{c_char, c_void, CStr};
use std::sync::{Arc, Mutex};

use super::handle::{arc_into_handle, borrow, free_arc, Castable, OwnershipArc};
use super::versioned::{self, check_layout, field_end, Versioned};
use super::*;
use crate::backend::KvDtype;
use crate::engine::{DraftOptions, Engine, EngineOptions, Progress};
use crate::quant::{QuantConfig, QuantMethod};

/// `subspec_load_params.device`: the CPU backend.
pub const SUBSPEC_DEVICE_CPU: i32 = -1;
/// `subspec_load_params.draft_method`: HQQ (round-to-nearest refined by half-quadratic
/// optimisation), the SubSpec authors' substitute.
pub const SUBSPEC_QUANT_HQQ: u32 = 0;
/// `subspec_load_params.draft_method`: plain round-to-nearest.
pub const SUBSPEC_QUANT_RTN: u32 = 1;
/// `subspec_load_params.kv_dtype`: the device's default (f16 on the CPU, f32 on CUDA).
pub const SUBSPEC_KV_DEFAULT: u32 = 0;
/// `subspec_load_params.kv_dtype`: an f32 KV cache.
pub const SUBSPEC_KV_F32: u32 = 1;
/// `subspec_load_params.kv_dtype`: an f16 KV cache (CPU only).
pub const SUBSPEC_KV_F16: u32 = 2;
/// `subspec_load_params.kv_dtype`: a bf16 KV cache (CPU only).
pub const SUBSPEC_KV_BF16: u32 = 3;
/// `subspec_load_params.draft_shortlist`: no ranking head (the draft shares the target's
/// lm_head, or has its own quantized one with `quantize_lm_head`).
pub const SUBSPEC_SHORTLIST_NONE: u32 = u32::MAX;

/// Progress during loading: `progress` goes from 0.0 to 1.0; return `true` to continue,
/// `false` to abort the load (`SUBSPEC_STATUS_ABORTED`).
#[allow(non_camel_case_types)]
pub type subspec_progress_callback =
    Option<unsafe extern "C" fn(progress: f32, user_data: *mut c_void) -> bool>;

/// Polled during loading: return `true` to abort (`SUBSPEC_STATUS_ABORTED`).
#[allow(non_camel_case_types)]
pub type subspec_abort_callback = Option<unsafe extern "C" fn(user_data: *mut c_void) -> bool>;

/// How to load an engine. Size-versioned: initialize it with
/// `SUBSPEC_LOAD_PARAMS_INIT(&p)` ([`subspec_load_params_init`]), then change fields.
/// Pointers, then 64-bit and 32-bit fields, then the bools; fields added after 0.2.0 are
/// appended and default to zero.
#[repr(C)]
#[allow(non_camel_case_types)]
#[derive(Debug, Clone, Copy)]
pub struct subspec_load_params {
    /// `sizeof(subspec_load_params)` as the caller was compiled (the init function sets
    /// it). The library reads only this many bytes.
    pub struct_size: usize,
    /// The model, NUL-terminated: a Hugging Face directory (config.json, *.safetensors,
    /// tokenizer.json) or a GGUF file (any shard of a split `-00001-of-0000N.gguf` set).
    /// Borrowed for the duration of the call only. Default NULL (must be set).
    pub model_path: *const c_char,
    /// Device memory budget in bytes; `0` (default) keeps everything resident.
    pub memory_budget: u64,
    /// The decoder layers that get substitutes, i.e. that the draft replaces
    /// (`n_substitute_layers` ids, each below the model's layer count, no repeats);
    /// borrowed for the duration of the call only. Default NULL with 0: every layer, or
    /// only the offloaded ones when `substitute_all_layers` is false.
    pub substitute_layers: *const u32,
    /// Number of ids at `substitute_layers` (default 0).
    pub n_substitute_layers: usize,
    /// Called with the fraction loaded; may be NULL (default).
    pub progress_callback: subspec_progress_callback,
    /// Passed to `progress_callback`. Default NULL.
    pub progress_user_data: *mut c_void,
    /// Polled at each progress point during loading; may be NULL (default).
    pub abort_callback: subspec_abort_callback,
    /// Passed to `abort_callback`. Default NULL.
    pub abort_user_data: *mut c_void,
    /// `SUBSPEC_DEVICE_CPU` (-1, default) or a CUDA device ordinal (>= 0).
    pub device: i32,
    /// Context length per sequence; `0` (default) uses the model's maximum.
    pub context_length: u32,
    /// Largest tree (root included) a step may verify; sizes the KV scratch and the
    /// activations the memory planner reserves. `0` (default): 128.
    pub max_tree_tokens: u32,
    /// Worker threads; `0` (default) uses one per core.
    pub threads: u32,
    /// Bits per substitute weight: 2, 3, 4 (default) or 8.
    pub draft_bits: u32,
    /// Quantization group size: a positive multiple of 32 (default 64).
    pub draft_group: u32,
    /// `SUBSPEC_QUANT_HQQ` (0, default) or `SUBSPEC_QUANT_RTN` (1).
    pub draft_method: u32,
    /// Build the substitute draft (default true); without it only plain steps work.
    pub build_draft: bool,
    /// Whether a missing tokenizer.json fails the load (default false: hosts that
    /// tokenize themselves need none; the tokenizer helpers then fail).
    pub require_tokenizer: bool,
    /// Give the draft its own lm_head, quantized like the substitutes, whose logits are
    /// the draft's. False (default): on the CPU, for a vocabulary of 2,048 tokens or more,
    /// the draft gets a 2-bit *ranking* head, which only ranks the vocabulary: the 128
    /// tokens it ranks first per draft row get the target head's logits, so the draft
    /// proposes what the full-precision head would while a step reads a seventh of its
    /// bytes (`draft_shortlist`, `draft_head_bits`); otherwise it shares the target's
    /// head. Either own head costs its memory (counted by the planner and
    /// `subspec_minimum_budget`; reported as `draft_lm_head_bytes`).
    pub quantize_lm_head: bool,
    /// Give every decoder layer a substitute, resident ones too, so a draft step reads
    /// only quantized weights (default true; the planner counts the extra substitutes).
    /// False: only the offloaded layers get one (the paper's draft). Ignored when
    /// `substitute_layers` is given.
    pub substitute_all_layers: bool,
    /// Must be zero (the init function zeroes it): keeps `max_sequences` aligned; a later
    /// version may give these bytes a meaning, with zero its default.
    pub reserved: [u8; 4],
    /// Sequences alive at once (added after 0.2.0): the planner reserves a KV cache and
    /// activations for each (a budget too small says how many it holds), and
    /// `subspec_sequence_create` refuses one more with `OUT_OF_MEMORY` until one is freed.
    /// `0` (default): planned for one, their number not limited.
    pub max_sequences: u32,
    /// The draft proposes only token ids below this (added after 0.2.0): its output head
    /// is the first `draft_vocab` rows of the target's, a view that costs no memory (with
    /// `quantize_lm_head`, a quantized copy of those rows). Cheaper draft steps, lower
    /// acceptance (docs/BENCHMARKS.md); lossless either way. `0` (default): the whole
    /// vocabulary; more than the model's vocabulary fails the load (`INVALID_ARGUMENT`).
    pub draft_vocab: u32,
    /// Element type of the KV caches (added after 0.2.0; these bytes were reserved and
    /// zero before): `SUBSPEC_KV_DEFAULT` (0, default: f16 on the CPU, f32 on CUDA),
    /// `SUBSPEC_KV_F32`, `SUBSPEC_KV_F16` or `SUBSPEC_KV_BF16` (the two-byte types on the
    /// CPU only). The planner and `subspec_minimum_budget` count its bytes.
    pub kv_dtype: u32,
    /// The draft's ranking head (added after 0.2.0): its own lm_head, quantized at
    /// `draft_head_bits`, only ranks the vocabulary, and this many tokens each draft row
    /// ranks first get the target head's logits (see `quantize_lm_head`). `0` (default):
    /// the engine's choice (128 on the CPU for a vocabulary of 2,048 tokens or more unless
    /// `quantize_lm_head`, none on CUDA); `SUBSPEC_SHORTLIST_NONE`: none; more than the
    /// draft's vocabulary fails the load (`INVALID_ARGUMENT`).
    pub draft_shortlist: u32,
    /// Bits of the draft's own lm_head (added after 0.2.0): 2, 3, 4 or 8; `0` (default): 2
    /// for a ranking head, otherwise `draft_bits`.
    pub draft_head_bits: u32,
}

// SAFETY: repr(C), `struct_size` first, no trailing padding (checked below); fields are
// integers, bools, raw pointers and optional function pointers.
unsafe impl Versioned for subspec_load_params {
    const NAME: &'static str = "subspec_load_params";
    const MIN_SIZE: usize = field_end!(subspec_load_params, substitute_all_layers);
    /// CPU, everything resident, the model's context, all cores, a 4-bit HQQ draft with
    /// groups of 64 substituting every layer (with a 2-bit ranking head on the CPU for
    /// large vocabularies, see `quantize_lm_head`), no callbacks, `model_path` NULL.
    fn defaults() -> Self {
        let q = QuantConfig::default();
        let d = DraftOptions::default();
        subspec_load_params {
            struct_size: std::mem::size_of::<Self>(),
            model_path: std::ptr::null(),
            memory_budget: 0,
            substitute_layers: std::ptr::null(),
            n_substitute_layers: 0,
            progress_callback: None,
            progress_user_data: std::ptr::null_mut(),
            abort_callback: None,
            abort_user_data: std::ptr::null_mut(),
            device: SUBSPEC_DEVICE_CPU,
            context_length: 0,
            max_tree_tokens: 0,
            threads: 0,
            draft_bits: q.bits as u32,
            draft_group: q.group as u32,
            draft_method: SUBSPEC_QUANT_HQQ,
            build_draft: true,
            require_tokenizer: false,
            quantize_lm_head: d.quantize_lm_head,
            substitute_all_layers: d.substitute_all_layers,
            reserved: [0; 4],
            max_sequences: 0,
            draft_vocab: 0,
            kv_dtype: SUBSPEC_KV_DEFAULT,
            draft_shortlist: 0,
            draft_head_bits: 0,
        }
    }
}
const _: () = check_layout::<subspec_load_params>(
    std::mem::offset_of!(subspec_load_params, struct_size),
    field_end!(subspec_load_params, draft_head_bits),
);

/// Initializes `*params` (the caller's `size` bytes: pass `sizeof *params`, as
/// `SUBSPEC_LOAD_PARAMS_INIT(params)` does) with the defaults: CPU, everything resident,
/// the model's context, all cores, a 4-bit HQQ draft with groups of 64 substituting every
/// layer (with a 2-bit ranking head on the CPU for large vocabularies, see
/// `quantize_lm_head`), no callbacks, `model_path` NULL. Bytes beyond
/// the fields this library knows are zeroed; `struct_size` is set to `size`.
///
/// Statuses: `OK`; `NULL_POINTER`; `INVALID_ARGUMENT` (`size` 0, smaller than the 0.2.0
/// layout `SUBSPEC_LOAD_PARAMS_SIZE_0_2`, or over 4096); `PANIC`.
///
/// # Safety
/// `params` must be NULL or valid for writes of `size` bytes.
#[no_mangle]
pub unsafe extern "C" fn subspec_load_params_init(
    params: *mut subspec_load_params,
    size: usize,
) -> subspec_status {
    // SAFETY: the caller's guarantee.
    boundary(None, || unsafe {
        versioned::init(params, size, subspec_load_params::defaults())
    })
}

/// An engine: a loaded model, shared (by reference count) with its sequences.
#[allow(non_camel_case_types)]
pub struct subspec_engine {
    pub(crate) engine: Engine,
    /// The message of the last failed call on this engine or its sequences.
    pub(crate) last_error: Mutex<String>,
}

impl Castable for subspec_engine {
    type Ownership = OwnershipArc;
    const ARG: &'static str = "engine";
}

/// The callbacks of a load, callable from the engine's worker threads.
struct Callbacks {
    progress: subspec_progress_callback,
    progress_data: *mut c_void,
    abort: subspec_abort_callback,
    abort_data: *mut c_void,
}

// SAFETY: the caller of `subspec_load` promises (see its `# Safety`) that the callbacks may
// be called from any thread with their user data during the load; the engine calls them
// one at a time and never after `subspec_load` returns.
unsafe impl Send for Callbacks {}
// SAFETY: as above; the calls never overlap.
unsafe impl Sync for Callbacks {}

impl Callbacks {
    fn report(&self, fraction: f32) -> bool {
        // SAFETY: see the `Send`/`Sync` impls: valid callbacks with their own user data.
        unsafe {
            if let Some(abort) = self.abort {
                if abort(self.abort_data) {
                    return false;
                }
            }
            match self.progress {
                Some(progress) => progress(fraction, self.progress_data),
                None => true,
            }
        }
    }
}

/// The draft's layer list from C: `None` for the default choice; repeats refused.
fn substitute_layers(ids: &[u32]) -> FfiResult<Option<Vec<usize>>> {
    if ids.is_empty() {
        return Ok(None);
    }
    let mut seen = std::collections::BTreeSet::new();
    for &l in ids {
        if !seen.insert(l) {
            return Err(Failure::invalid(format!(
                "params->substitute_layers lists layer {l} twice"
            )));
        }
    }
    Ok(Some(ids.iter().map(|&l| l as usize).collect()))
}

/// `EngineOptions` from the C parameters.
///
/// # Safety
/// `p.model_path` must be NULL or a NUL-terminated string; `p.substitute_layers` NULL or
/// valid for `p.n_substitute_layers` reads.
unsafe fn engine_options(p: &subspec_load_params) -> FfiResult<EngineOptions> {
    // SAFETY: the caller's guarantee.
    let path = unsafe { c_str(p.model_path, "params->model_path") }?;
    let path = {
        use std::os::unix::ffi::OsStrExt;
        std::path::PathBuf::from(std::ffi::OsStr::from_bytes(path.to_bytes()))
    };
    if p.device < SUBSPEC_DEVICE_CPU {
        return Err(Failure::invalid(format!(
            "device {} is neither SUBSPEC_DEVICE_CPU (-1) nor a CUDA ordinal (>= 0)",
            p.device
        )));
    }
    // SAFETY: the caller's guarantee.
    let layers = unsafe {
        slice(
            p.substitute_layers,
            p.n_substitute_layers,
            "params->substitute_layers",
        )
    }?;
    let draft = if p.build_draft {
        let bits = u8::try_from(p.draft_bits).map_err(|_| {
            Failure::invalid(format!("draft_bits {} is out of range", p.draft_bits))
        })?;
        let method = match p.draft_method {
            SUBSPEC_QUANT_HQQ => QuantMethod::Hqq,
            SUBSPEC_QUANT_RTN => QuantMethod::Rtn,
            m => {
                return Err(Failure::invalid(format!(
                    "draft_method {m} is neither SUBSPEC_QUANT_HQQ (0) nor SUBSPEC_QUANT_RTN (1)"
                )))
            }
        };
        let quant = QuantConfig {
            bits,
            group: p.draft_group as usize,
            method,
        };
        quant.validate()?;
        let shortlist = match p.draft_shortlist {
            0 => None,
            SUBSPEC_SHORTLIST_NONE => Some(0),
            k => Some(k as usize),
        };
        let head_quant = match p.draft_head_bits {
            0 => None,
            b => {
                let bits = u8::try_from(b).map_err(|_| {
                    Failure::invalid(format!("draft_head_bits {b} is out of range"))
                })?;
                let q = QuantConfig { bits, ..quant };
                q.validate()
                    .map_err(|e| Failure::invalid(format!("draft_head_bits: {}", e.message())))?;
                Some(q)
            }
        };
        Some(
            DraftOptions::default()
                .with_shortlist(shortlist)
                .with_head_quant(head_quant)
                .with_quant(quant)
                .with_substitute_layers(substitute_layers(layers)?)
                .with_quantize_lm_head(p.quantize_lm_head)
                .with_substitute_all_layers(p.substitute_all_layers)
                .with_vocab(p.draft_vocab as usize),
        )
    } else {
        None
    };
    let callbacks = Callbacks {
        progress: p.progress_callback,
        progress_data: p.progress_user_data,
        abort: p.abort_callback,
        abort_data: p.abort_user_data,
    };
    let progress = (callbacks.progress.is_some() || callbacks.abort.is_some())
        .then(|| Progress(Arc::new(move |f| callbacks.report(f))));
    let mut o = EngineOptions::new(path);
    o.threads = p.threads as usize;
    o.max_context = p.context_length as usize;
    o.require_tokenizer = p.require_tokenizer;
    o.draft = draft;
    o.progress = progress;
    o.budget = (p.memory_budget != 0).then_some(p.memory_budget);
    o.device = if p.device >= 0 {
        crate::backend::DeviceKind::Cuda(p.device as usize)
    } else {
        crate::backend::DeviceKind::Cpu
    };
    if p.max_tree_tokens != 0 {
        o.max_tree_tokens = p.max_tree_tokens as usize;
    }
    if p.reserved != [0; 4] {
        return Err(Failure::invalid(
            "subspec_load_params: `reserved` is not zero: a field unknown to this library \
             version is set (initialize with SUBSPEC_LOAD_PARAMS_INIT)",
        ));
    }
    o.kv_dtype = match p.kv_dtype {
        SUBSPEC_KV_DEFAULT => None,
        SUBSPEC_KV_F32 => Some(KvDtype::F32),
        SUBSPEC_KV_F16 => Some(KvDtype::F16),
        SUBSPEC_KV_BF16 => Some(KvDtype::Bf16),
        d => {
            return Err(Failure::invalid(format!(
                "kv_dtype {d} is none of SUBSPEC_KV_DEFAULT (0), SUBSPEC_KV_F32 (1), \
                 SUBSPEC_KV_F16 (2), SUBSPEC_KV_BF16 (3)"
            )))
        }
    };
    o.max_sequences = p.max_sequences as usize;
    Ok(o)
}

/// Loads an engine. On success writes a new handle to `*out` (free it with
/// [`subspec_free`]); on failure `*out` is left untouched and nothing stays allocated.
///
/// Statuses: `OK`; `NULL_POINTER` (`params`, `params->model_path`, `out`, or
/// `params->substitute_layers` with a count); `IO` (no such directory or file);
/// `INVALID_MODEL` (corrupt config or weights); `UNSUPPORTED`; `INVALID_ARGUMENT` (a
/// parameter out of range; a `struct_size` that is 0, below the 0.2.0 layout, or larger
/// with a field this library does not know set); `TOKENIZER` (`require_tokenizer` and no
/// usable tokenizer.json); `DEVICE_UNAVAILABLE` (a CUDA device requested: "no CUDA driver
/// found", no such device, or cuBLAS missing); `OUT_OF_MEMORY` (the budget is too small:
/// the message states the minimum, see [`subspec_minimum_budget`]); `ABORTED` (a callback
/// asked to stop); `PANIC`.
///
/// # Safety
/// `params` must be NULL or point to an initialized `subspec_load_params` valid for its
/// `struct_size` bytes, whose `model_path` is NULL or NUL-terminated and whose
/// `substitute_layers` is NULL or valid for `n_substitute_layers` reads; `out` NULL or
/// valid for a write. The callbacks, if set, must be safe to call with their user data
/// from any thread until `subspec_load` returns (they are called one at a time, never
/// after it returns) and must not unwind or longjmp.
#[no_mangle]
pub unsafe extern "C" fn subspec_load(
    params: *const subspec_load_params,
    out: *mut *mut subspec_engine,
) -> subspec_status {
    boundary(None, || {
        // SAFETY: the caller's guarantee on `params`.
        let p = unsafe { versioned::read(params, "params") }?;
        check_out(out, "out")?;
        // SAFETY: the caller's guarantee on the pointers in `params`.
        let opts = unsafe { engine_options(&p) }?;
        let engine = Engine::load(&opts)?;
        let handle = arc_into_handle(subspec_engine {
            engine,
            last_error: Mutex::new(String::new()),
        });
        // SAFETY: `out` checked non-NULL and valid by the caller's guarantee.
        unsafe { out.write(handle) };
        Ok(())
    })
}

/// Writes to `*out` the smallest `memory_budget` (bytes) with which `params` can load,
/// reading only config.json and the safetensors headers (no weights). Every other field of
/// `params` counts (context length, tree size, draft quantization, `quantize_lm_head`,
/// `substitute_all_layers`); `memory_budget` is ignored. Statuses as for [`subspec_load`]
/// (but no callbacks are called).
///
/// # Safety
/// As for [`subspec_load`]; `out` NULL or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn subspec_minimum_budget(
    params: *const subspec_load_params,
    out: *mut u64,
) -> subspec_status {
    boundary(None, || {
        // SAFETY: the caller's guarantee on `params`.
        let p = unsafe { versioned::read(params, "params") }?;
        check_out(out, "out")?;
        // SAFETY: the caller's guarantee on the pointers in `params`.
        let mut opts = unsafe { engine_options(&p) }?;
        opts.progress = None;
        let min = Engine::minimum_budget(&opts)?;
        // SAFETY: checked non-NULL, valid by the caller's guarantee.
        unsafe { out.write(min) };
        Ok(())
    })
}

/// Releases the caller's reference to `engine`; NULL is a no-op. Sequences created from it
/// keep the model alive until they are freed too, so any order of freeing is safe.
///
/// # Safety
/// `engine` must be NULL or a handle from [`subspec_load`] not yet freed, and no other
/// thread may be using this handle (its sequences may still be in use).
#[no_mangle]
pub unsafe extern "C" fn subspec_free(engine: *mut subspec_engine) {
    let _ = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: the caller's guarantee: a live handle, released once.
        unsafe { free_arc(engine) }
    }));
}

/// Runs `f` on a live engine inside the boundary, recording failures on the engine.
///
/// # Safety
/// `engine` must be NULL or a live handle.
pub(crate) unsafe fn with_engine(
    engine: *const subspec_engine,
    f: impl FnOnce(&subspec_engine) -> FfiResult<()>,
) -> subspec_status {
    // SAFETY: the caller's guarantee.
    match unsafe { borrow(engine) } {
        Ok(e) => boundary(Some(&e.last_error), || f(e)),
        Err(failure) => boundary(None, || Err(failure)),
    }
}

/// Model and engine metadata, for a host to check that its tokenizer and settings match.
/// Size-versioned output: set `struct_size = sizeof(subspec_model_info)` before the call
/// (e.g. `subspec_model_info info = {.struct_size = sizeof info};`); the library writes
/// `min(struct_size, its size)` bytes and stores that number in `struct_size`. Fields
/// added after 0.2.0 are appended.
#[repr(C)]
#[allow(non_camel_case_types)]
#[derive(Debug, Clone, Copy)]
pub struct subspec_model_info {
    /// Set by the caller to `sizeof(subspec_model_info)`; on return, the bytes written.
    pub struct_size: usize,
    /// `"LlamaForCausalLM"` or `"Qwen2ForCausalLM"`: static, never free it.
    pub architecture: *const c_char,
    /// Bytes the draft adds to the target: its substitutes (codes, scales, zeros) and its
    /// own lm_head (0 without a draft).
    pub draft_bytes: u64,
    /// Of `draft_bytes`, the draft's own quantized lm_head, a ranking head or not (0: it
    /// shares the target's).
    pub draft_lm_head_bytes: u64,
    /// Vocabulary size: valid token ids are `0..vocab_size`.
    pub vocab_size: u32,
    /// Decoder layers.
    pub n_layers: u32,
    /// Model width.
    pub hidden_size: u32,
    /// The model's longest context (`max_position_embeddings`).
    pub max_position: u32,
    /// This engine's context length per sequence.
    pub context_length: u32,
    /// Largest tree (root included) a step may verify.
    pub max_tree_tokens: u32,
    /// Decoder layers streamed from the slow tier each target pass (0: all resident).
    pub n_offloaded_layers: u32,
    /// Decoder layers the draft replaces with substitutes (0 without a draft).
    pub n_substitute_layers: u32,
    /// Beginning-of-sequence id, or -1 if the model has none.
    pub bos_id: i32,
    /// Number of end-of-sequence ids ([`subspec_eos_ids`]).
    pub n_eos: u32,
    /// The tokenizer's vocabulary size including added tokens (0 without a tokenizer).
    pub tokenizer_vocab_size: u32,
    /// Worker threads.
    pub threads: u32,
    /// Whether the engine was loaded with a draft (speculative steps need one).
    pub has_draft: bool,
    /// Whether a tokenizer.json was loaded.
    pub has_tokenizer: bool,
    /// Written as zero: keeps the struct free of trailing padding (room for later fields).
    pub reserved: [u8; 6],
}

// SAFETY: repr(C), `struct_size` first, no trailing padding (checked below); plain fields.
unsafe impl Versioned for subspec_model_info {
    const NAME: &'static str = "subspec_model_info";
    const MIN_SIZE: usize = field_end!(subspec_model_info, reserved);
    fn defaults() -> Self {
        subspec_model_info {
            struct_size: std::mem::size_of::<Self>(),
            architecture: std::ptr::null(),
            draft_bytes: 0,
            draft_lm_head_bytes: 0,
            vocab_size: 0,
            n_layers: 0,
            hidden_size: 0,
            max_position: 0,
            context_length: 0,
            max_tree_tokens: 0,
            n_offloaded_layers: 0,
            n_substitute_layers: 0,
            bos_id: -1,
            n_eos: 0,
            tokenizer_vocab_size: 0,
            threads: 0,
            has_draft: false,
            has_tokenizer: false,
            reserved: [0; 6],
        }
    }
}
const _: () = check_layout::<subspec_model_info>(
    std::mem::offset_of!(subspec_model_info, struct_size),
    field_end!(subspec_model_info, reserved),
);

/// Writes the model's metadata to `*out` (its `struct_size` set by the caller).
/// Statuses: `OK`, `NULL_POINTER`, `INVALID_ARGUMENT` (`out->struct_size` 0 or below the
/// 0.2.0 layout), `PANIC`.
///
/// # Safety
/// `engine` must be NULL or a live handle; `out` NULL or valid for reads and writes of
/// its `struct_size` bytes.
#[no_mangle]
pub unsafe extern "C" fn subspec_get_model_info(
    engine: *const subspec_engine,
    out: *mut subspec_model_info,
) -> subspec_status {
    // SAFETY: the caller's guarantee.
    unsafe {
        with_engine(engine, |e| {
            let eng = &e.engine;
            let c = eng.config();
            let arch: &'static CStr = c.arch.hf_name_c();
            let tok = eng.tokenizer().ok();
            let u = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
            let draft = eng.draft().map(|(_, s)| s);
            let info = subspec_model_info {
                architecture: arch.as_ptr(),
                draft_bytes: draft.map_or(0, |s| (s.bytes + s.lm_head_bytes) as u64),
                draft_lm_head_bytes: draft.map_or(0, |s| s.lm_head_bytes as u64),
                vocab_size: u(c.vocab),
                n_layers: u(c.n_layers),
                hidden_size: u(c.hidden),
                max_position: u(c.max_position),
                context_length: u(eng.max_context()),
                max_tree_tokens: u(eng.max_tree_tokens()),
                n_offloaded_layers: u(eng.placement().map_or(0, |p| p.offloaded().len())),
                n_substitute_layers: draft.map_or(0, |s| u(s.layers)),
                bos_id: c.bos_id.map_or(-1, |b| b as i32),
                n_eos: u(c.eos_ids.len()),
                tokenizer_vocab_size: tok.map_or(0, |t| u(t.vocab_size())),
                threads: u(eng.threads()),
                has_draft: draft.is_some(),
                has_tokenizer: tok.is_some(),
                ..subspec_model_info::defaults()
            };
            versioned::write(out, "out", info)
        })
    }
}

/// Copies the end-of-sequence ids into `out` (capacity `cap`) and their number to
/// `*n_out`. `BUFFER_TOO_SMALL`: only `*n_out` (the number needed) is written.
///
/// # Safety
/// `engine` NULL or live; `out` NULL or valid for `cap` writes; `n_out` NULL or valid.
#[no_mangle]
pub unsafe extern "C" fn subspec_eos_ids(
    engine: *const subspec_engine,
    out: *mut i32,
    cap: usize,
    n_out: *mut usize,
) -> subspec_status {
    // SAFETY: the caller's guarantee.
    unsafe {
        with_engine(engine, |e| {
            let ids: Vec<i32> = e
                .engine
                .config()
                .eos_ids
                .iter()
                .map(|&t| t as i32)
                .collect();
            write_items(&ids, out, cap, n_out, "eos ids")
        })
    }
}

/// Whether `token` ends generation; false for a NULL engine or an id that is not EOS.
///
/// # Safety
/// `engine` must be NULL or a live handle.
#[no_mangle]
pub unsafe extern "C" fn subspec_is_eos(engine: *const subspec_engine, token: i32) -> bool {
    catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: the caller's guarantee.
        unsafe { engine.as_ref() }
            .is_some_and(|e| u32::try_from(token).is_ok_and(|t| e.engine.is_eos(t)))
    }))
    .unwrap_or(false)
}

/// Writes the id of the token string `token` (e.g. `"<|im_end|>"`) to `*out`, or -1 if
/// the tokenizer has no such token. `TOKENIZER` when the engine has no tokenizer.
///
/// # Safety
/// `engine` NULL or live; `token` NULL or NUL-terminated; `out` NULL or valid.
#[no_mangle]
pub unsafe extern "C" fn subspec_token_to_id(
    engine: *const subspec_engine,
    token: *const c_char,
    out: *mut i32,
) -> subspec_status {
    // SAFETY: the caller's guarantee.
    unsafe {
        with_engine(engine, |e| {
            let token = c_utf8(token, "token")?;
            check_out(out, "out")?;
            let id = e.engine.tokenizer()?.token_to_id(token);
            out.write(id.map_or(-1, |t| t as i32));
            Ok(())
        })
    }
}

/// Writes the vocabulary's own string for `token` (e.g. `"Ġthe"` in a byte-level BPE
/// vocabulary, `"▁the"` or `"<0x0A>"` in a SentencePiece one, `"<|im_end|>"`), not its
/// decoded text, NUL-terminated into `buf` (capacity `cap` bytes). The same string as
/// llama.cpp's `llama_vocab_get_text` and the `tokenizer.ggml.tokens` entry of a GGUF
/// file: hosts compare vocabularies with it. `*needed` (when not NULL) receives the size
/// including the NUL, also on `BUFFER_TOO_SMALL` (then nothing is written to `buf`).
/// `INVALID_TOKEN` for an id outside the tokenizer's vocabulary
/// (`subspec_model_info.tokenizer_vocab_size`); `TOKENIZER` when the engine has none.
///
/// # Safety
/// `engine` NULL or live; `buf` NULL or valid for `cap` writes; `needed` NULL or valid.
#[no_mangle]
pub unsafe extern "C" fn subspec_token_text(
    engine: *const subspec_engine,
    token: i32,
    buf: *mut c_char,
    cap: usize,
    needed: *mut usize,
) -> subspec_status {
    // SAFETY: the caller's guarantee.
    unsafe {
        with_engine(engine, |e| {
            let tok = e.engine.tokenizer()?;
            let id = token_ids(&[token])?[0];
            let text = tok.token_text(id).ok_or_else(|| {
                Failure::new(
                    subspec_status::InvalidToken,
                    format!(
                        "token id {token} is outside the tokenizer's vocabulary of {} tokens",
                        tok.vocab_size()
                    ),
                )
            })?;
            write_string(&text, buf, cap, needed)
        })
    }
}

/// Tokenizes the NUL-terminated UTF-8 `text` (with the model's special tokens such as BOS
/// when `add_special`) into `out` (capacity `cap`), writing the count to `*n_out`.
/// `BUFFER_TOO_SMALL`: only `*n_out` (the count needed) is written. `out` may be NULL when
/// `cap` is 0. `TOKENIZER` when the engine has no tokenizer.
///
/// # Safety
/// `engine` NULL or live; `text` NULL or NUL-terminated; `out` NULL or valid for `cap`
/// writes; `n_out` NULL or valid.
#[no_mangle]
pub unsafe extern "C" fn subspec_tokenize(
    engine: *const subspec_engine,
    text: *const c_char,
    add_special: bool,
    out: *mut i32,
    cap: usize,
    n_out: *mut usize,
) -> subspec_status {
    // SAFETY: the caller's guarantee.
    unsafe {
        with_engine(engine, |e| {
            let text = c_utf8(text, "text")?;
            check_out(n_out, "n_out")?;
            let ids = e.engine.tokenizer()?.encode(text, add_special)?;
            let ids: Vec<i32> = ids.iter().map(|&t| t as i32).collect();
            write_items(&ids, out, cap, n_out, "tokens")
        })
    }
}

/// Renders a conversation with the model's own chat template (`chat_template` of a
/// directory's tokenizer_config.json, `tokenizer.chat_template` of a GGUF file; ChatML
/// when the model has none) into `buf` (capacity `cap` bytes) as NUL-terminated UTF-8:
/// message `i` is `roles[i]` (`"system"`, `"user"`, `"assistant"`, ...) saying
/// `contents[i]`; with `add_generation_prompt` the text ends where the assistant's answer
/// begins. Tokenize the result with `add_special = false`. `*needed` (when not NULL)
/// receives the size including the NUL, also on `BUFFER_TOO_SMALL` (then nothing is
/// written to `buf`). `TOKENIZER` when the engine has no tokenizer or the template fails
/// (e.g. it refuses a role: its message says why).
///
/// # Safety
/// `engine` NULL or live; `roles` and `contents` NULL or valid for `n` reads of
/// NUL-terminated strings; `buf` NULL or valid for `cap` writes; `needed` NULL or valid.
#[no_mangle]
pub unsafe extern "C" fn subspec_apply_chat_template(
    engine: *const subspec_engine,
    roles: *const *const c_char,
    contents: *const *const c_char,
    n: usize,
    add_generation_prompt: bool,
    buf: *mut c_char,
    cap: usize,
    needed: *mut usize,
) -> subspec_status {
    // SAFETY: the caller's guarantee.
    unsafe {
        with_engine(engine, |e| {
            let roles = slice(roles, n, "roles")?;
            let contents = slice(contents, n, "contents")?;
            let mut messages = Vec::with_capacity(n);
            for (i, (&r, &c)) in roles.iter().zip(contents).enumerate() {
                let role = c_utf8(r, &format!("roles[{i}]"))?;
                let content = c_utf8(c, &format!("contents[{i}]"))?;
                messages.push(crate::tokenizer::ChatMessage::new(role, content));
            }
            let text = e
                .engine
                .tokenizer()?
                .apply_chat_template(&messages, add_generation_prompt)?;
            write_string(&text, buf, cap, needed)
        })
    }
}

/// Decodes `n` token ids into `buf` (capacity `cap` bytes) as NUL-terminated UTF-8;
/// `*needed` (when not NULL) receives the size including the NUL, also on
/// `BUFFER_TOO_SMALL` (then nothing is written to `buf`). `INVALID_TOKEN` for an id outside
/// the vocabulary; `TOKENIZER` when the engine has no tokenizer.
///
/// # Safety
/// `engine` NULL or live; `tokens` NULL or valid for `n` reads; `buf` NULL or valid for
/// `cap` writes; `needed` NULL or valid.
#[no_mangle]
pub unsafe extern "C" fn subspec_detokenize(
    engine: *const subspec_engine,
    tokens: *const i32,
    n: usize,
    buf: *mut c_char,
    cap: usize,
    needed: *mut usize,
) -> subspec_status {
    // SAFETY: the caller's guarantee.
    unsafe {
        with_engine(engine, |e| {
            let ids = token_ids(slice(tokens, n, "tokens")?)?;
            e.engine.model().check_tokens(&ids)?;
            let text = e.engine.tokenizer()?.decode(&ids)?;
            write_string(&text, buf, cap, needed)
        })
    }
}
