//! Sequences from C: create, reset, truncate, free, step and statistics.
//!
//! Thread safety: an engine may be used from any number of threads at once; so may
//! *different* sequences. One sequence is used by one thread at a time: a call that finds
//! it busy on another thread fails with `INVALID_ARGUMENT` instead of racing (freeing a
//! sequence while another thread uses it is still the caller's bug).

use std::sync::{Arc, Mutex, MutexGuard, TryLockError};

use super::handle::{borrow, box_into_handle, clone_arc, free_box, Castable, OwnershipBox};
use super::versioned::{self, check_layout, field_end, Versioned};
use super::*;
use crate::engine::{Sequence, StepOptions};
use crate::sample::SamplingParams;
use crate::spec::TreeParams;
use crate::util::AbortHandle;

/// A sequence: one conversation with its own KV cache. It holds a reference to its
/// engine, so it stays valid after `subspec_free(engine)`.
#[allow(non_camel_case_types)]
pub struct subspec_sequence {
    engine: Arc<subspec_engine>,
    seq: Mutex<Sequence>,
    /// The sequence's abort flag, outside the lock: another thread sets it mid-call.
    abort: AbortHandle,
    /// The message of the last failed call on this sequence, or of its part of a batch
    /// ([`subspec_sequence_last_error`]).
    last_error: Mutex<String>,
}

impl Castable for subspec_sequence {
    type Ownership = OwnershipBox;
    const ARG: &'static str = "seq";
}

/// How [`subspec_step`] chooses tokens. Size-versioned: initialize it with
/// `SUBSPEC_STEP_PARAMS_INIT(&p)` ([`subspec_step_params_init`]) or, for the tree suited
/// to an engine, `SUBSPEC_ENGINE_STEP_PARAMS_INIT(engine, &p)`, then change fields.
/// Fields added after 0.2.0 are appended (or take `reserved` bytes) and default to zero.
#[repr(C)]
#[allow(non_camel_case_types)]
#[derive(Debug, Clone, Copy)]
pub struct subspec_step_params {
    /// `sizeof(subspec_step_params)` as the caller was compiled (the init functions set
    /// it). The library reads only this many bytes.
    pub struct_size: usize,
    /// RNG seed; a token's draw depends only on (seed, position). Default 0.
    pub seed: u64,
    /// Softmax temperature; `0` (default) is greedy.
    pub temperature: f32,
    /// Keep the `top_k` most likely tokens; `0` (default) keeps all.
    pub top_k: u32,
    /// Nucleus sampling threshold in (0, 1]; `1` (default) keeps all.
    pub top_p: f32,
    /// Tree frontier width (default 1).
    pub tree_width: u32,
    /// Tree depth in draft steps: the most with `adaptive_depth` (default 8).
    pub tree_depth: u32,
    /// Most tree nodes verified at once, root included (default 64; at most the engine's
    /// `max_tree_tokens`).
    pub tree_max_tokens: u32,
    /// Draft softmax temperature used to rank paths (default 0.2).
    pub draft_temperature: f32,
    /// Draft a tree and verify it (default true; needs an engine with a draft). Output is
    /// identical either way, only faster with speculation.
    pub speculate: bool,
    /// Stop growing the tree early when one more draft step is expected to cost more than
    /// it returns (the draft's mass on the frontier times the measured time per token,
    /// against the measured time of a draft step); `tree_depth` stays the maximum.
    /// Default false. Output is identical either way.
    pub adaptive_depth: bool,
    /// Choose each step's depth, 0 (a plain step) included, to maximise expected tokens
    /// per second from the engine's measured costs (measured once, at the first such
    /// step; then corrected by what its steps took, a plain step timed now and then) and
    /// the sequence's acceptance by depth so far (a new sequence starts from the one the
    /// engine's sequences recorded last); `tree_depth` stays the maximum. Steps only (a
    /// host-sampled iteration drafts `tree_depth` levels). Added after 0.2.0 in a
    /// reserved byte; default false. Output is identical either way.
    pub auto_depth: bool,
    /// Must be zero (the init functions zero it): keeps the struct free of trailing
    /// padding; a later version may give these bytes a meaning, with zero its default.
    pub reserved: [u8; 1],
}

impl subspec_step_params {
    /// The parameters for `tree`: greedy, speculative.
    fn with_tree(tree: TreeParams) -> Self {
        let s = SamplingParams::default();
        subspec_step_params {
            struct_size: std::mem::size_of::<Self>(),
            seed: s.seed,
            temperature: s.temperature,
            top_k: s.top_k as u32,
            top_p: s.top_p,
            tree_width: tree.width as u32,
            tree_depth: tree.depth as u32,
            tree_max_tokens: tree.max_tokens as u32,
            draft_temperature: tree.draft_temperature,
            speculate: true,
            adaptive_depth: tree.adaptive,
            auto_depth: tree.auto_depth,
            reserved: [0; 1],
        }
    }
}

// SAFETY: repr(C), `struct_size` first, no trailing padding (checked below); plain fields.
unsafe impl Versioned for subspec_step_params {
    const NAME: &'static str = "subspec_step_params";
    const MIN_SIZE: usize = field_end!(subspec_step_params, reserved);
    fn defaults() -> Self {
        subspec_step_params::with_tree(TreeParams::default())
    }
}
const _: () = check_layout::<subspec_step_params>(
    std::mem::offset_of!(subspec_step_params, struct_size),
    field_end!(subspec_step_params, reserved),
);

/// Initializes `*params` (the caller's `size` bytes: pass `sizeof *params`, as
/// `SUBSPEC_STEP_PARAMS_INIT(params)` does) with the defaults: greedy, speculative with
/// the default tree (width 1, depth 8, 64 tokens, draft temperature 0.2, fixed depth).
/// Bytes beyond the fields this library knows are zeroed; `struct_size` is set to `size`.
///
/// Statuses: `OK`; `NULL_POINTER`; `INVALID_ARGUMENT` (`size` 0, smaller than the 0.2.0
/// layout `SUBSPEC_STEP_PARAMS_SIZE_0_2`, or over 4096); `PANIC`.
///
/// # Safety
/// `params` must be NULL or valid for writes of `size` bytes.
#[no_mangle]
pub unsafe extern "C" fn subspec_step_params_init(
    params: *mut subspec_step_params,
    size: usize,
) -> subspec_status {
    // SAFETY: the caller's guarantee.
    boundary(None, || unsafe {
        versioned::init(params, size, subspec_step_params::defaults())
    })
}

/// Initializes `*params` like [`subspec_step_params_init`], but with the tree shape that
/// pays best for `engine`'s placement (deeper and wider when layers are offloaded):
/// greedy, speculative. `SUBSPEC_ENGINE_STEP_PARAMS_INIT(engine, params)` passes the size.
/// Statuses: `OK`, `NULL_POINTER`, `INVALID_ARGUMENT` (as for the init), `PANIC`.
///
/// # Safety
/// `engine` must be NULL or a live engine handle; `params` NULL or valid for writes of
/// `size` bytes.
#[no_mangle]
pub unsafe extern "C" fn subspec_engine_step_params_init(
    engine: *const subspec_engine,
    params: *mut subspec_step_params,
    size: usize,
) -> subspec_status {
    // SAFETY: the caller's guarantee.
    unsafe {
        with_engine(engine, |e| {
            let p = subspec_step_params::with_tree(e.engine.default_tree());
            versioned::init(params, size, p)
        })
    }
}

impl subspec_step_params {
    fn options(&self, max_tokens: usize) -> FfiResult<StepOptions> {
        if self.reserved != [0; 1] {
            return Err(Failure::invalid(
                "subspec_step_params: `reserved` is not zero: a field unknown to this \
                 library version is set (initialize with SUBSPEC_STEP_PARAMS_INIT)",
            ));
        }
        Ok(StepOptions {
            sampling: SamplingParams {
                temperature: self.temperature,
                top_k: self.top_k as usize,
                top_p: self.top_p,
                seed: self.seed,
            },
            speculate: self.speculate,
            tree: TreeParams {
                width: self.tree_width as usize,
                depth: self.tree_depth as usize,
                max_tokens: self.tree_max_tokens as usize,
                draft_temperature: self.draft_temperature,
                adaptive: self.adaptive_depth,
                auto_depth: self.auto_depth,
            },
            max_tokens,
        })
    }
}

impl subspec_sequence {
    /// The sequence, or a failure if another thread is using it.
    fn lock(&self) -> FfiResult<MutexGuard<'_, Sequence>> {
        match self.seq.try_lock() {
            Ok(g) => Ok(g),
            Err(TryLockError::WouldBlock) => Err(Failure::invalid(
                "the sequence is in use by another thread: use one sequence per thread",
            )),
            Err(TryLockError::Poisoned(_)) => Err(Failure::new(
                subspec_status::Internal,
                "the sequence is unusable after an internal panic: free it",
            )),
        }
    }
}

/// `INVALID_STATE` if a host-sampled iteration is open on `q` (`what` names the call).
fn refuse_open(q: &Sequence, what: &str) -> FfiResult<()> {
    if q.is_iterating() {
        return Err(Failure::new(
            subspec_status::InvalidState,
            format!(
                "cannot {what} while a host-sampled iteration is open: \
                 subspec_iter_end or subspec_iter_cancel it first"
            ),
        ));
    }
    Ok(())
}

/// Runs `f` on a live sequence inside the boundary, recording failures on it and its
/// engine.
///
/// # Safety
/// `seq` must be NULL or a live sequence handle.
unsafe fn with_sequence(
    seq: *const subspec_sequence,
    f: impl FnOnce(&subspec_sequence) -> FfiResult<()>,
) -> subspec_status {
    // SAFETY: the caller's guarantee.
    match unsafe { borrow(seq) } {
        Ok(s) => boundary_in(&[&s.engine.last_error, &s.last_error], || f(s)),
        Err(failure) => boundary(None, || Err(failure)),
    }
}

/// Copies the message of the last failed call on `seq` into `buf` (NUL-terminated,
/// UTF-8), as [`subspec_last_error`] does: a call on the sequence itself, or its part of
/// a [`subspec_step_batch`] (without the `seqs[i]: ` prefix that the engine's and the
/// thread's last error carry; each failed sequence of a batch keeps its own message). A
/// batch refused as a whole records its message on the engine and the thread only.
/// Successful calls do not clear it; with no failure yet the message is empty.
///
/// Returns `OK`, `NULL_POINTER` (`seq`), or `BUFFER_TOO_SMALL` (nothing written to `buf`;
/// `*needed` says the size). This call does not itself change any last error.
///
/// # Safety
/// `seq` NULL or a live sequence handle; `buf` NULL or valid for `cap` bytes; `needed`
/// NULL or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn subspec_sequence_last_error(
    seq: *const subspec_sequence,
    buf: *mut c_char,
    cap: usize,
    needed: *mut usize,
) -> subspec_status {
    // SAFETY: the caller's guarantee.
    match unsafe { borrow(seq) } {
        // SAFETY: buffer validity is the caller's guarantee.
        Ok(s) => unsafe { copy_last_error(Some(&s.last_error), buf, cap, needed) },
        Err(failure) => boundary(None, || Err(failure)),
    }
}

/// Creates an empty sequence on `engine` and writes it to `*out` (free it with
/// [`subspec_sequence_free`]). Its KV cache holds the engine's context length.
/// Statuses: `OK`, `NULL_POINTER`, `OUT_OF_MEMORY` (the engine was loaded with
/// `max_sequences` and that many are alive: free one), `PANIC`; on failure `*out` is
/// untouched.
///
/// # Safety
/// `engine` NULL or a live engine handle; `out` NULL or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn subspec_sequence_create(
    engine: *const subspec_engine,
    out: *mut *mut subspec_sequence,
) -> subspec_status {
    // SAFETY: the caller's guarantee.
    unsafe {
        with_engine(engine, |_| {
            check_out(out, "out")?;
            // The sequence's own count on the engine.
            let engine = clone_arc(engine)?;
            let seq = engine.engine.new_sequence()?;
            let handle = box_into_handle(subspec_sequence {
                engine,
                abort: seq.abort_handle(),
                seq: Mutex::new(seq),
                last_error: Mutex::new(String::new()),
            });
            out.write(handle);
            Ok(())
        })
    }
}

/// Asks the call running on `seq` (on another thread) to stop: `subspec_step`,
/// `subspec_iter_begin` or `subspec_sequence_eval` polls the request before every decoder
/// layer (a streamed target pass stops within one layer's transfer, a draft between its
/// steps) and then fails with `ABORTED`, the sequence exactly as before that call. The
/// one thread-safe call on a sequence in use: any thread, any time, cheap (a flag). A
/// request is taken by the call it stops; one made while no call runs stops the next call
/// on `seq` at its first layer, unless withdrawn with [`subspec_sequence_clear_abort`]
/// (a binding that aborts on a cancelled context clears after each call, so that a
/// cancellation arriving just after the call returned does not stop the next one).
/// Statuses: `OK`; `NULL_POINTER`.
///
/// # Safety
/// `seq` NULL or a live sequence handle (not freed concurrently).
#[no_mangle]
pub unsafe extern "C" fn subspec_sequence_abort(seq: *const subspec_sequence) -> subspec_status {
    // SAFETY: the caller's guarantee.
    unsafe {
        with_sequence(seq, |s| {
            s.abort.abort();
            Ok(())
        })
    }
}

/// Withdraws an abort request ([`subspec_sequence_abort`]) that no call has taken.
/// Thread-safe like it. Statuses: `OK`; `NULL_POINTER`.
///
/// # Safety
/// `seq` NULL or a live sequence handle (not freed concurrently).
#[no_mangle]
pub unsafe extern "C" fn subspec_sequence_clear_abort(
    seq: *const subspec_sequence,
) -> subspec_status {
    // SAFETY: the caller's guarantee.
    unsafe {
        with_sequence(seq, |s| {
            s.abort.clear();
            Ok(())
        })
    }
}

/// Frees a sequence (and its reference to the engine); NULL is a no-op.
///
/// # Safety
/// `seq` must be NULL or a live sequence handle that no other thread is using.
#[no_mangle]
pub unsafe extern "C" fn subspec_sequence_free(seq: *mut subspec_sequence) {
    let _ = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: the caller's guarantee: a live handle, freed once.
        unsafe { free_box(seq) }
    }));
}

/// Empties the sequence and zeroes its statistics (the KV cache is kept for reuse).
/// Statuses: `OK`, `NULL_POINTER`, `INVALID_ARGUMENT` (in use on another thread),
/// `INVALID_STATE` (a host-sampled iteration is open: nothing changes), `PANIC`.
///
/// # Safety
/// `seq` must be NULL or a live sequence handle.
#[no_mangle]
pub unsafe extern "C" fn subspec_sequence_reset(seq: *mut subspec_sequence) -> subspec_status {
    // SAFETY: the caller's guarantee.
    unsafe {
        with_sequence(seq, |s| {
            let mut q = s.lock()?;
            refuse_open(&q, "reset")?;
            q.truncate(0);
            Ok(())
        })
    }
}

/// Keeps the first `len` tokens and forgets the rest (prompt reuse: the cached prefix is
/// not recomputed); `0` is a reset. `INVALID_ARGUMENT` if `len` is beyond the sequence's
/// length, `INVALID_STATE` while a host-sampled iteration is open (nothing changes).
///
/// # Safety
/// `seq` must be NULL or a live sequence handle.
#[no_mangle]
pub unsafe extern "C" fn subspec_sequence_truncate(
    seq: *mut subspec_sequence,
    len: usize,
) -> subspec_status {
    // SAFETY: the caller's guarantee.
    unsafe {
        with_sequence(seq, |s| {
            let mut q = s.lock()?;
            refuse_open(&q, "truncate")?;
            if len > q.len() {
                return Err(Failure::invalid(format!(
                    "cannot truncate to {len}: the sequence has {} tokens",
                    q.len()
                )));
            }
            q.truncate(len);
            Ok(())
        })
    }
}

/// Copies the sequence's tokens (prompt and generated) into `out` (capacity `cap`) and
/// their number to `*n_out`; `BUFFER_TOO_SMALL` writes only `*n_out` (the number needed).
/// `out` may be NULL when `cap` is 0.
///
/// # Safety
/// `seq` NULL or live; `out` NULL or valid for `cap` writes; `n_out` NULL or valid.
#[no_mangle]
pub unsafe extern "C" fn subspec_sequence_tokens(
    seq: *const subspec_sequence,
    out: *mut i32,
    cap: usize,
    n_out: *mut usize,
) -> subspec_status {
    // SAFETY: the caller's guarantee.
    unsafe {
        with_sequence(seq, |s| {
            let ids: Vec<i32> = s.lock()?.tokens().iter().map(|&t| t as i32).collect();
            write_items(&ids, out, cap, n_out, "sequence tokens")
        })
    }
}

/// Statistics of a sequence since its creation or last reset. Size-versioned output: set
/// `struct_size = sizeof(subspec_sequence_stats)` before the call; the library writes
/// `min(struct_size, its size)` bytes and stores that number in `struct_size`. Fields
/// added after 0.2.0 are appended.
#[repr(C)]
#[allow(non_camel_case_types)]
#[derive(Debug, Clone, Copy, Default)]
pub struct subspec_sequence_stats {
    /// Set by the caller to `sizeof(subspec_sequence_stats)`; on return, the bytes written.
    pub struct_size: usize,
    /// Tokens in the sequence (prompt and generated).
    pub length: u64,
    /// Steps run (one target pass each, prompt prefill excluded).
    pub iterations: u64,
    /// Tokens emitted by those steps.
    pub generated: u64,
    /// Draft tokens accepted (`generated` minus one bonus token per step).
    pub accepted: u64,
    /// Draft forwards run.
    pub draft_steps: u64,
    /// Mean tokens per target pass (`generated / iterations`; 0 before the first step).
    pub tau: f64,
    /// Seconds spent drafting.
    pub draft_seconds: f64,
    /// Seconds spent in target passes (prefill and verification).
    pub verify_seconds: f64,
    /// Of `draft_steps`, those run while a target pass waited for a streamed layer (added
    /// after 0.2.0; 0 with nothing offloaded).
    pub overlapped_steps: u64,
    /// Steps whose tree started from the part the draft grew during the pass before
    /// (added after 0.2.0).
    pub reused_trees: u64,
}

// SAFETY: repr(C), `struct_size` first, no trailing padding (checked below); plain fields.
unsafe impl Versioned for subspec_sequence_stats {
    const NAME: &'static str = "subspec_sequence_stats";
    const MIN_SIZE: usize = field_end!(subspec_sequence_stats, verify_seconds);
    fn defaults() -> Self {
        subspec_sequence_stats {
            struct_size: std::mem::size_of::<Self>(),
            ..Default::default()
        }
    }
}
const _: () = check_layout::<subspec_sequence_stats>(
    std::mem::offset_of!(subspec_sequence_stats, struct_size),
    field_end!(subspec_sequence_stats, reused_trees),
);

/// Writes the sequence's statistics to `*out` (its `struct_size` set by the caller).
/// Statuses: `OK`, `NULL_POINTER`, `INVALID_ARGUMENT` (in use on another thread;
/// `out->struct_size` 0 or below the 0.2.0 layout), `PANIC`.
///
/// # Safety
/// `seq` NULL or live; `out` NULL or valid for reads and writes of its `struct_size` bytes.
#[no_mangle]
pub unsafe extern "C" fn subspec_sequence_get_stats(
    seq: *const subspec_sequence,
    out: *mut subspec_sequence_stats,
) -> subspec_status {
    // SAFETY: the caller's guarantee.
    unsafe {
        with_sequence(seq, |s| {
            check_out(out, "out")?;
            let q = s.lock()?;
            let st = q.stats();
            let stats = subspec_sequence_stats {
                length: q.len() as u64,
                iterations: st.iterations as u64,
                generated: st.generated as u64,
                accepted: st.accepted as u64,
                draft_steps: st.draft_steps as u64,
                tau: st.tau(),
                draft_seconds: st.draft_s,
                verify_seconds: st.verify_s,
                overlapped_steps: st.overlapped_steps as u64,
                reused_trees: st.reused_trees as u64,
                ..subspec_sequence_stats::defaults()
            };
            versioned::write(out, "out", stats)
        })
    }
}

/// Appends `n_input` tokens to the sequence (a prompt, a user turn, or nothing), runs
/// them, and chooses the next token(s): one with `speculate` false, or every token of one
/// draft-and-verify iteration (accepted draft tokens plus the target's bonus token), at
/// most `out_capacity`. Writes them to `out` and their number (at least 1) to `*n_out`;
/// they are part of the sequence already (do not pass them back as input). Every token is
/// exactly the one plain decoding would choose, greedy or seeded. A step ends at an EOS
/// token, so only the last token returned can be one ([`subspec_is_eos`]): stop there, or
/// when the context is full.
///
/// Statuses: `OK`; `NULL_POINTER` (`seq`, `params`, `out`, `n_out`, or `input` with
/// `n_input > 0`); `BUFFER_TOO_SMALL` (`out_capacity` is 0); `INVALID_TOKEN` (an input id
/// is negative or outside the vocabulary); `INVALID_ARGUMENT` (a parameter out of range;
/// `speculate` without a draft; the sequence is empty and `n_input` is 0, e.g. after a
/// reset; in use on another thread; `params->struct_size` 0, below the 0.2.0 layout, or
/// larger with a field this library does not know set); `CONTEXT_FULL`; `INVALID_STATE`
/// (a host-sampled iteration is open: [`subspec_iter_end`] or cancel it first); `ABORTED`
/// ([`subspec_sequence_abort`]); an I/O or device error; `PANIC`.
/// After any failure the sequence is exactly as before the call (input not appended,
/// statistics unchanged) and `*n_out` and `out` are untouched.
///
/// # Safety
/// `seq` NULL or a live sequence handle; `params` NULL or an initialized struct valid for
/// its `struct_size` bytes; `input` NULL or valid for
/// `n_input` reads; `out` NULL or valid for `out_capacity` writes; `n_out` NULL or valid.
#[no_mangle]
pub unsafe extern "C" fn subspec_step(
    seq: *mut subspec_sequence,
    params: *const subspec_step_params,
    input: *const i32,
    n_input: usize,
    out: *mut i32,
    out_capacity: usize,
    n_out: *mut usize,
) -> subspec_status {
    // SAFETY: the caller's guarantee.
    unsafe {
        with_sequence(seq, |s| {
            let p = versioned::read(params, "params")?;
            let input = token_ids(slice(input, n_input, "input")?)?;
            check_out(out, "out")?;
            check_out(n_out, "n_out")?;
            if out_capacity == 0 {
                return Err(Failure::new(
                    subspec_status::BufferTooSmall,
                    "out_capacity is 0: a step returns at least one token",
                ));
            }
            let opts = p.options(out_capacity)?;
            let mut q = s.lock()?;
            refuse_open(&q, "step")?;
            let before = q.len();
            q.append(&input)?;
            let tokens = match q.step(&opts) {
                Ok(t) if t.len() <= out_capacity => t,
                r => {
                    // The step left the sequence as it was; undo the append too.
                    q.truncate(before);
                    return Err(match r {
                        Err(e) => e.into(),
                        Ok(t) => Failure::new(
                            subspec_status::Internal,
                            format!("step returned {} tokens, over {out_capacity}", t.len()),
                        ),
                    });
                }
            };
            let ids: Vec<i32> = tokens.iter().map(|&t| t as i32).collect();
            std::ptr::copy_nonoverlapping(ids.as_ptr(), out, ids.len());
            n_out.write(ids.len());
            Ok(())
        })
    }
}

/// Steps `n_seqs` sequences of `engine` together, as many [`subspec_step`] calls would
/// but with one target pass for all of them: an offloaded model streams once per batch,
/// not once per sequence. Sequence `i` first appends its `n_inputs[i]` tokens
/// `inputs[i]` (`inputs` and `n_inputs` may be NULL: no input for any), then steps with
/// `*params[i]`; its tokens (at most `out_capacity`) go to `out[i * out_capacity ..]`,
/// their number to `n_out[i]`, and its status to `statuses[i]`. Every sequence gets
/// exactly the tokens its own `subspec_step` calls would give, in the same order; only
/// their split into calls may differ: in a batch of two or more, a step with input (a
/// prompt, a turn) is a plain one (one token, its input in the shared pass) and the next
/// step speculates. One that fails (each status as
/// [`subspec_step`]'s) is exactly as before the call, input not appended, with
/// `n_out[i]` 0, and its message for [`subspec_sequence_last_error`] (the engine's and
/// the thread's last error hold the last failed one's, as `seqs[i]: message`); the
/// others step. Sequences may join or leave between calls (continuous
/// batching); speculative and plain steps, samplings and tree shapes may be mixed; the
/// sequences whose trees have `auto_depth` choose one depth together, for the whole
/// batch's cost.
///
/// Returns `OK` when the batch ran (read `statuses`; a NULL `params[i]`, or `inputs[i]`
/// with tokens, is that sequence's `NULL_POINTER`), or for the call as a whole:
/// `NULL_POINTER` (`engine`, `seqs`, `params`, `out`, `n_out`, `statuses` or a sequence
/// handle); `BUFFER_TOO_SMALL` (`out_capacity` 0); `INVALID_ARGUMENT` (a sequence of
/// another engine, or the same sequence twice); `PANIC`. Then no sequence changed and
/// the output arrays are untouched.
///
/// # Safety
/// `engine` NULL or a live engine handle; `seqs` and `params` NULL or valid for `n_seqs`
/// reads, each entry NULL or a live sequence handle / an initialized struct valid for its
/// `struct_size` bytes; `inputs` and `n_inputs` NULL or valid for `n_seqs` reads, each
/// `inputs[i]` NULL or valid for `n_inputs[i]` reads; `out` NULL or valid for `n_seqs *
/// out_capacity` writes; `n_out` and `statuses` NULL or valid for `n_seqs` writes.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn subspec_step_batch(
    engine: *const subspec_engine,
    seqs: *const *mut subspec_sequence,
    n_seqs: usize,
    params: *const *const subspec_step_params,
    inputs: *const *const i32,
    n_inputs: *const usize,
    out: *mut i32,
    out_capacity: usize,
    n_out: *mut usize,
    statuses: *mut subspec_status,
) -> subspec_status {
    // SAFETY: the caller's guarantee.
    let e = match unsafe { borrow(engine) } {
        Ok(e) => e,
        Err(failure) => return boundary(None, || Err(failure)),
    };
    // SAFETY: the caller's guarantee, for every pointer below.
    boundary(Some(&e.last_error), || unsafe {
        let handles = slice(seqs, n_seqs, "seqs")?;
        let params = slice(params, n_seqs, "params")?;
        let n_inputs = match n_inputs.is_null() {
            true => None,
            false => Some(slice(n_inputs, n_seqs, "n_inputs")?),
        };
        let inputs = match inputs.is_null() {
            true => None,
            false => Some(slice(inputs, n_seqs, "inputs")?),
        };
        check_out(out, "out")?;
        check_out(n_out, "n_out")?;
        check_out(statuses, "statuses")?;
        if n_seqs > 0 && out_capacity == 0 {
            return Err(Failure::new(
                subspec_status::BufferTooSmall,
                "out_capacity is 0: a step returns at least one token",
            ));
        }
        let mut seen = std::collections::HashSet::new();
        let mut seqs: Vec<&subspec_sequence> = Vec::with_capacity(n_seqs);
        for (i, &h) in handles.iter().enumerate() {
            let s = borrow(h as *const subspec_sequence)?;
            if !std::ptr::eq(Arc::as_ptr(&s.engine), e) {
                return Err(Failure::invalid(format!(
                    "seqs[{i}] belongs to another engine"
                )));
            }
            if !seen.insert(h as usize) {
                return Err(Failure::invalid(format!(
                    "seqs[{i}] appears twice in the batch"
                )));
            }
            seqs.push(s);
        }
        // Each sequence's own checks; a failure is that sequence's status.
        let mut status = vec![subspec_status::Ok; n_seqs];
        let mut message = None;
        let mut fail = |i: usize, f: Failure, status: &mut Vec<subspec_status>| {
            status[i] = f.status;
            keep(&seqs[i].last_error, &f.message);
            message = Some(format!("seqs[{i}]: {}", f.message));
        };
        let mut held: Vec<(usize, MutexGuard<'_, Sequence>, StepOptions, usize)> = Vec::new();
        for (i, s) in seqs.iter().enumerate() {
            let prepared = (|| -> FfiResult<_> {
                let p = versioned::read(params[i], &format!("params[{i}]"))?;
                let n = n_inputs.map_or(0, |n| n[i]);
                let ptr = inputs.map_or(std::ptr::null(), |v| v[i]);
                let input = token_ids(slice(ptr, n, &format!("inputs[{i}]"))?)?;
                let opts = p.options(out_capacity)?;
                let mut q = s.lock()?;
                refuse_open(&q, "step")?;
                let before = q.len();
                q.append(&input)?;
                Ok((q, opts, before))
            })();
            match prepared {
                Ok((q, opts, before)) => held.push((i, q, opts, before)),
                Err(f) => fail(i, f, &mut status),
            }
        }
        let opts: Vec<StepOptions> = held.iter().map(|h| h.2).collect();
        let results = {
            let mut refs: Vec<&mut Sequence> = held.iter_mut().map(|h| &mut *h.1).collect();
            e.engine.step_batch(&mut refs, &opts)
        };
        let results = match results {
            Ok(r) => r,
            Err(err) => {
                for h in held.iter_mut() {
                    h.1.truncate(h.3);
                }
                return Err(err.into());
            }
        };
        let mut counts = vec![0usize; n_seqs];
        for ((i, q, _, before), r) in held.iter_mut().zip(results) {
            match r {
                Ok(t) if t.len() <= out_capacity => {
                    let ids: Vec<i32> = t.iter().map(|&t| t as i32).collect();
                    std::ptr::copy_nonoverlapping(
                        ids.as_ptr(),
                        out.add(*i * out_capacity),
                        ids.len(),
                    );
                    counts[*i] = ids.len();
                }
                r => {
                    // The step left the sequence as it was; undo the append too.
                    q.truncate(*before);
                    let f = match r {
                        Err(e) => e.into(),
                        Ok(t) => Failure::new(
                            subspec_status::Internal,
                            format!("step returned {} tokens, over {out_capacity}", t.len()),
                        ),
                    };
                    fail(*i, f, &mut status);
                }
            }
        }
        drop(held);
        std::ptr::copy_nonoverlapping(counts.as_ptr(), n_out, n_seqs);
        std::ptr::copy_nonoverlapping(status.as_ptr(), statuses, n_seqs);
        if let Some(m) = message {
            // The last failed sequence's message, for subspec_last_error.
            record(Some(&e.last_error), &m);
        }
        Ok(())
    })
}

/// Opens a host-sampled iteration on `seq`: appends `n_input` tokens (0 is valid only if
/// the sequence is non-empty), then drafts a tree shaped by `params` (its tree fields and
/// `speculate` are used; the sampling fields are ignored: the host samples) and verifies
/// it in one target pass (with `speculate` false: one plain target pass). The iteration is
/// then open at the position after the last token: [`subspec_iter_logits`], the host's
/// sampler, [`subspec_iter_push`] while it says `has_next`, then [`subspec_iter_end`].
/// Every logits row is the target's own at its position, so any host sampler (stateful
/// too) emits exactly what it would in plain decoding ([`subspec_sequence_eval`] one
/// token at a time), only faster.
///
/// While the iteration is open, `subspec_step`, `subspec_sequence_eval`, `_truncate`,
/// `_reset` and another `subspec_iter_begin` fail with `INVALID_STATE`; read-only calls
/// (tokens, statistics) work and see the pushed tokens.
///
/// Statuses: `OK`; `NULL_POINTER` (`seq`, `params`, or `input` with `n_input > 0`);
/// `INVALID_TOKEN`; `INVALID_ARGUMENT` (tree parameter out of range; `speculate` without
/// a draft; empty sequence and `n_input` 0; in use on another thread; bad
/// `params->struct_size`); `CONTEXT_FULL`; `INVALID_STATE` (an iteration is open
/// already); `ABORTED` ([`subspec_sequence_abort`]); an I/O or device error; `PANIC`.
/// After any failure the sequence is exactly as before the call (input not appended)
/// and no new iteration is open.
///
/// # Safety
/// `seq` NULL or a live sequence handle; `params` NULL or an initialized struct valid for
/// its `struct_size` bytes; `input` NULL or valid for `n_input` reads.
#[no_mangle]
pub unsafe extern "C" fn subspec_iter_begin(
    seq: *mut subspec_sequence,
    params: *const subspec_step_params,
    input: *const i32,
    n_input: usize,
) -> subspec_status {
    // SAFETY: the caller's guarantee.
    unsafe {
        with_sequence(seq, |s| {
            let p = versioned::read(params, "params")?;
            let input = token_ids(slice(input, n_input, "input")?)?;
            let opts = p.options(0)?;
            s.lock()?.begin(&input, &opts)?;
            Ok(())
        })
    }
}

/// Writes to `*logits` the target's exact logits (`*n_vocab` floats) at the current
/// position of the open iteration, computed on demand. The array is owned by `seq`: it
/// stays valid until the next `subspec_iter_*` call on `seq` or its free; do not free it.
///
/// Statuses: `OK`; `NULL_POINTER`; `INVALID_ARGUMENT` (in use on another thread);
/// `INVALID_STATE` (no iteration open, or it has ended: the last push returned
/// `has_next = false`); a device error; `PANIC`. On failure `*logits` and `*n_vocab` are
/// untouched and the iteration is unchanged.
///
/// # Safety
/// `seq` NULL or live; `logits` and `n_vocab` NULL or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn subspec_iter_logits(
    seq: *mut subspec_sequence,
    logits: *mut *const f32,
    n_vocab: *mut usize,
) -> subspec_status {
    // SAFETY: the caller's guarantee.
    unsafe {
        with_sequence(seq, |s| {
            check_out(logits, "logits")?;
            check_out(n_vocab, "n_vocab")?;
            let mut q = s.lock()?;
            let row = q.logits()?;
            logits.write(row.as_ptr());
            n_vocab.write(row.len());
            Ok(())
        })
    }
}

/// The host chose `token` at the current position: it joins the sequence at once.
/// `*has_next = true`: the token is a child in the verified tree and the next position's
/// logits are known: sample again. `false`: the token ends the iteration (its KV is
/// computed by the next pass); only [`subspec_iter_end`] or cancel may follow.
///
/// Statuses: `OK`; `NULL_POINTER` (`seq`, `has_next`); `INVALID_TOKEN` (negative or
/// outside the vocabulary); `CONTEXT_FULL` (the sequence is at its context length);
/// `INVALID_STATE` (no iteration open, or it has ended); `INVALID_ARGUMENT` (in use on
/// another thread); `PANIC`. On failure the iteration and `*has_next` are unchanged.
///
/// # Safety
/// `seq` NULL or live; `has_next` NULL or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn subspec_iter_push(
    seq: *mut subspec_sequence,
    token: i32,
    has_next: *mut bool,
) -> subspec_status {
    // SAFETY: the caller's guarantee.
    unsafe {
        with_sequence(seq, |s| {
            check_out(has_next, "has_next")?;
            let token = token_ids(&[token])?[0];
            let next = s.lock()?.push(token)?;
            has_next.write(next);
            Ok(())
        })
    }
}

/// The log-softmax of the current position's logits ([`subspec_iter_logits`]): the `n`
/// most likely token ids into `ids` and their log-probabilities into `logprobs`, most
/// likely first (ties: lower id first), for OpenAI-style `logprobs`. `*n_out` =
/// `min(n, n_vocab)` entries written. `ids` and `logprobs` may be NULL when `n` is 0.
///
/// Statuses: `OK`; `NULL_POINTER`; `INVALID_STATE` (no iteration open, or it has ended,
/// as for [`subspec_iter_logits`]); `INVALID_ARGUMENT` (in use on another thread); a device
/// error; `PANIC`. On failure
/// the outputs are untouched and the iteration is unchanged.
///
/// # Safety
/// `seq` NULL or live; `ids` and `logprobs` NULL or valid for `n` writes; `n_out` NULL or
/// valid for a write.
#[no_mangle]
pub unsafe extern "C" fn subspec_iter_top_logprobs(
    seq: *mut subspec_sequence,
    n: usize,
    ids: *mut i32,
    logprobs: *mut f32,
    n_out: *mut usize,
) -> subspec_status {
    // SAFETY: the caller's guarantee.
    unsafe {
        with_sequence(seq, |s| {
            check_out(n_out, "n_out")?;
            if n > 0 {
                check_out(ids, "ids")?;
                check_out(logprobs, "logprobs")?;
            }
            let top = s.lock()?.top_logprobs(n)?;
            for (i, &(id, lp)) in top.iter().enumerate() {
                ids.add(i).write(id as i32);
                logprobs.add(i).write(lp);
            }
            n_out.write(top.len());
            Ok(())
        })
    }
}

/// Commits the open iteration: the sequence keeps its input and every pushed token (the
/// last one pending, as after `subspec_step`); the KV of the accepted path is kept, the
/// rest of the tree dropped; statistics updated. `*n_pushed` = tokens pushed. Ending with
/// no push is valid (the input is committed; the logits at its end are lost).
///
/// Statuses: `OK`; `NULL_POINTER` (`seq`, `n_pushed`); `INVALID_STATE` (no iteration
/// open: nothing changes, e.g. a second end); `INVALID_ARGUMENT` (in use on another
/// thread); a device error while keeping the KV, after which the iteration is cancelled
/// (the sequence as before [`subspec_iter_begin`]); `PANIC`. `*n_pushed` is written only
/// on success.
///
/// # Safety
/// `seq` NULL or live; `n_pushed` NULL or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn subspec_iter_end(
    seq: *mut subspec_sequence,
    n_pushed: *mut usize,
) -> subspec_status {
    // SAFETY: the caller's guarantee.
    unsafe {
        with_sequence(seq, |s| {
            check_out(n_pushed, "n_pushed")?;
            let n = s.lock()?.end()?;
            n_pushed.write(n);
            Ok(())
        })
    }
}

/// Abandons the open iteration: the sequence is exactly as before
/// [`subspec_iter_begin`] (its input and the pushed tokens dropped, statistics unchanged).
/// Statuses: `OK`; `NULL_POINTER`; `INVALID_STATE` (none open: nothing changes);
/// `INVALID_ARGUMENT` (in use on another thread); `PANIC`.
///
/// # Safety
/// `seq` NULL or a live sequence handle.
#[no_mangle]
pub unsafe extern "C" fn subspec_iter_cancel(seq: *mut subspec_sequence) -> subspec_status {
    // SAFETY: the caller's guarantee.
    unsafe {
        with_sequence(seq, |s| {
            s.lock()?.cancel()?;
            Ok(())
        })
    }
}

/// Plain exact logits: appends `n_input` tokens (0 is valid only if the sequence is
/// non-empty), runs the target alone (no draft) and writes the next position's logits
/// into `logits` (capacity `cap` floats) and their number to `*n_vocab`. Nothing is
/// sampled: pass the chosen token as the next call's input. The host's sampler over this
/// loop gives exactly the tokens it gives through `subspec_iter_*`.
///
/// Statuses: `OK`; `NULL_POINTER` (`seq`, `n_vocab`, `logits` with `cap > 0`, `input`
/// with `n_input > 0`); `BUFFER_TOO_SMALL` (`cap` below the vocabulary size: only
/// `*n_vocab` is written, with the size needed); `INVALID_TOKEN`; `INVALID_ARGUMENT`
/// (empty sequence and `n_input` 0; in use on another thread); `CONTEXT_FULL`;
/// `INVALID_STATE` (a host-sampled iteration is open); `ABORTED`
/// ([`subspec_sequence_abort`]); `PANIC`. After any failure the
/// sequence is exactly as before the call and `logits` is untouched.
///
/// # Safety
/// `seq` NULL or live; `input` NULL or valid for `n_input` reads; `logits` NULL or valid
/// for `cap` writes; `n_vocab` NULL or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn subspec_sequence_eval(
    seq: *mut subspec_sequence,
    input: *const i32,
    n_input: usize,
    logits: *mut f32,
    cap: usize,
    n_vocab: *mut usize,
) -> subspec_status {
    // SAFETY: the caller's guarantee.
    unsafe {
        with_sequence(seq, |s| {
            check_out(n_vocab, "n_vocab")?;
            let input = token_ids(slice(input, n_input, "input")?)?;
            let mut q = s.lock()?;
            refuse_open(&q, "eval")?;
            let vocab = q.engine().config().vocab;
            if cap < vocab {
                n_vocab.write(vocab);
                return Err(Failure::new(
                    subspec_status::BufferTooSmall,
                    format!("logits: the buffer holds {cap} floats but {vocab} are needed"),
                ));
            }
            check_out(logits, "logits")?;
            let row = q.eval(&input)?;
            std::ptr::copy_nonoverlapping(row.as_ptr(), logits, row.len());
            n_vocab.write(row.len());
            Ok(())
        })
    }
}
