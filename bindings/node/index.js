'use strict';
// Node binding of subspec over its C ABI (include/subspec.h), through koffi: no compiler
// needed. The library is found at $SUBSPEC_LIB, else in this checkout's target/release,
// else as libsubspec.so on the system library path.
//
// An Engine may be shared; a Sequence keeps its engine's model alive, so close() order
// does not matter. Calls are synchronous (a step blocks the event loop for one iteration),
// except stepAsync, generateAsync, stream and Engine.stepBatchAsync, whose steps run on a
// worker thread.

const fs = require('fs');
const path = require('path');
const koffi = require('koffi');

function libraryPath() {
  if (process.env.SUBSPEC_LIB) return process.env.SUBSPEC_LIB;
  const local = path.join(__dirname, '..', '..', 'target', 'release', 'libsubspec.so');
  return fs.existsSync(local) ? local : 'libsubspec.so';
}

const lib = koffi.load(libraryPath());

koffi.alias('subspec_status', 'uint32_t');
koffi.opaque('subspec_engine');
koffi.opaque('subspec_sequence');
const ProgressCallback = koffi.proto('bool subspec_progress_callback(float progress, void *user_data)');
koffi.proto('bool subspec_abort_callback(void *user_data)');
// The size-versioned structs of subspec.h (struct_size first; see "Structs that can grow"
// there). Parameters always start from the library's init functions, so fields this
// binding does not set keep the library's defaults.
koffi.struct('subspec_load_params', {
  struct_size: 'size_t',
  model_path: 'const char *',
  memory_budget: 'uint64_t',
  substitute_layers: 'const uint32_t *',
  n_substitute_layers: 'size_t',
  progress_callback: 'subspec_progress_callback *',
  progress_user_data: 'void *',
  abort_callback: 'subspec_abort_callback *',
  abort_user_data: 'void *',
  device: 'int32_t',
  context_length: 'uint32_t',
  max_tree_tokens: 'uint32_t',
  threads: 'uint32_t',
  draft_bits: 'uint32_t',
  draft_group: 'uint32_t',
  draft_method: 'uint32_t',
  build_draft: 'bool',
  require_tokenizer: 'bool',
  quantize_lm_head: 'bool',
  substitute_all_layers: 'bool',
  reserved: koffi.array('uint8_t', 4, 'Array'),
  max_sequences: 'uint32_t',
  draft_vocab: 'uint32_t',
  kv_dtype: 'uint32_t',
  draft_shortlist: 'uint32_t',
  draft_head_bits: 'uint32_t',
});
koffi.struct('subspec_model_info', {
  struct_size: 'size_t',
  architecture: 'const char *',
  draft_bytes: 'uint64_t',
  draft_lm_head_bytes: 'uint64_t',
  vocab_size: 'uint32_t',
  n_layers: 'uint32_t',
  hidden_size: 'uint32_t',
  max_position: 'uint32_t',
  context_length: 'uint32_t',
  max_tree_tokens: 'uint32_t',
  n_offloaded_layers: 'uint32_t',
  n_substitute_layers: 'uint32_t',
  bos_id: 'int32_t',
  n_eos: 'uint32_t',
  tokenizer_vocab_size: 'uint32_t',
  threads: 'uint32_t',
  has_draft: 'bool',
  has_tokenizer: 'bool',
  reserved: koffi.array('uint8_t', 6, 'Array'),
});
koffi.struct('subspec_step_params', {
  struct_size: 'size_t',
  seed: 'uint64_t',
  temperature: 'float',
  top_k: 'uint32_t',
  top_p: 'float',
  tree_width: 'uint32_t',
  tree_depth: 'uint32_t',
  tree_max_tokens: 'uint32_t',
  draft_temperature: 'float',
  speculate: 'bool',
  adaptive_depth: 'bool',
  auto_depth: 'bool',
  reserved: koffi.array('uint8_t', 1, 'Array'),
});
koffi.struct('subspec_sequence_stats', {
  struct_size: 'size_t',
  length: 'uint64_t',
  iterations: 'uint64_t',
  generated: 'uint64_t',
  accepted: 'uint64_t',
  draft_steps: 'uint64_t',
  tau: 'double',
  draft_seconds: 'double',
  verify_seconds: 'double',
  overlapped_steps: 'uint64_t',
  reused_trees: 'uint64_t',
});

const C = {
  version: lib.func('const char *subspec_version(void)'),
  statusString: lib.func('const char *subspec_status_string(uint32_t status)'),
  lastError: lib.func('subspec_status subspec_last_error(const subspec_engine *engine, void *buf, size_t cap, _Out_ size_t *needed)'),
  seqLastError: lib.func('subspec_status subspec_sequence_last_error(const subspec_sequence *seq, void *buf, size_t cap, _Out_ size_t *needed)'),
  loadInit: lib.func('subspec_status subspec_load_params_init(_Out_ subspec_load_params *params, size_t size)'),
  load: lib.func('subspec_status subspec_load(const subspec_load_params *params, _Out_ subspec_engine **out)'),
  free: lib.func('void subspec_free(subspec_engine *engine)'),
  info: lib.func('subspec_status subspec_get_model_info(const subspec_engine *engine, _Inout_ subspec_model_info *out)'),
  eosIds: lib.func('subspec_status subspec_eos_ids(const subspec_engine *engine, _Out_ int32_t *out, size_t cap, _Out_ size_t *n_out)'),
  isEos: lib.func('bool subspec_is_eos(const subspec_engine *engine, int32_t token)'),
  tokenize: lib.func('subspec_status subspec_tokenize(const subspec_engine *engine, const char *text, bool add_special, _Out_ int32_t *out, size_t cap, _Out_ size_t *n_out)'),
  detokenize: lib.func('subspec_status subspec_detokenize(const subspec_engine *engine, const int32_t *tokens, size_t n, void *buf, size_t cap, _Out_ size_t *needed)'),
  stepInit: lib.func('subspec_status subspec_step_params_init(_Out_ subspec_step_params *params, size_t size)'),
  engineStepInit: lib.func('subspec_status subspec_engine_step_params_init(const subspec_engine *engine, _Out_ subspec_step_params *params, size_t size)'),
  seqCreate: lib.func('subspec_status subspec_sequence_create(const subspec_engine *engine, _Out_ subspec_sequence **out)'),
  seqFree: lib.func('void subspec_sequence_free(subspec_sequence *seq)'),
  seqReset: lib.func('subspec_status subspec_sequence_reset(subspec_sequence *seq)'),
  seqTruncate: lib.func('subspec_status subspec_sequence_truncate(subspec_sequence *seq, size_t len)'),
  seqTokens: lib.func('subspec_status subspec_sequence_tokens(const subspec_sequence *seq, _Out_ int32_t *out, size_t cap, _Out_ size_t *n_out)'),
  seqStats: lib.func('subspec_status subspec_sequence_get_stats(const subspec_sequence *seq, _Inout_ subspec_sequence_stats *out)'),
  iterBegin: lib.func('subspec_status subspec_iter_begin(subspec_sequence *seq, const subspec_step_params *params, const int32_t *input, size_t n_input)'),
  iterLogits: lib.func('subspec_status subspec_iter_logits(subspec_sequence *seq, _Out_ void **logits, _Out_ size_t *n_vocab)'),
  iterPush: lib.func('subspec_status subspec_iter_push(subspec_sequence *seq, int32_t token, _Out_ bool *has_next)'),
  iterTop: lib.func('subspec_status subspec_iter_top_logprobs(subspec_sequence *seq, size_t n, _Out_ int32_t *ids, _Out_ float *logprobs, _Out_ size_t *n_out)'),
  iterEnd: lib.func('subspec_status subspec_iter_end(subspec_sequence *seq, _Out_ size_t *n_pushed)'),
  iterCancel: lib.func('subspec_status subspec_iter_cancel(subspec_sequence *seq)'),
  seqEval: lib.func('subspec_status subspec_sequence_eval(subspec_sequence *seq, const int32_t *input, size_t n_input, _Out_ float *logits, size_t cap, _Out_ size_t *n_vocab)'),
  step: lib.func('subspec_status subspec_step(subspec_sequence *seq, const subspec_step_params *params, const int32_t *input, size_t n_input, _Out_ int32_t *out, size_t out_capacity, _Out_ size_t *n_out)'),
  stepBatch: lib.func('subspec_status subspec_step_batch(const subspec_engine *engine, subspec_sequence **seqs, size_t n_seqs, const subspec_step_params **params, const int32_t **inputs, const size_t *n_inputs, _Out_ int32_t *out, size_t out_capacity, _Out_ size_t *n_out, _Out_ subspec_status *statuses)'),
  seqAbort: lib.func('subspec_status subspec_sequence_abort(const subspec_sequence *seq)'),
  seqClearAbort: lib.func('subspec_status subspec_sequence_clear_abort(const subspec_sequence *seq)'),
};

/** Status codes of the C ABI (SUBSPEC_STATUS_*; test/subspec.test.js checks them against
 * subspec.h, which is generated from the one list in src/ffi/status.rs). */
const Status = Object.freeze({
  OK: 0, IO: 1, INVALID_MODEL: 2, UNSUPPORTED: 3, INVALID_ARGUMENT: 4, INVALID_TOKEN: 5,
  CONTEXT_FULL: 6, OUT_OF_MEMORY: 7, DEVICE_UNAVAILABLE: 8, TOKENIZER: 9, ABORTED: 10,
  INTERNAL: 11, NULL_POINTER: 12, BUFFER_TOO_SMALL: 13, PANIC: 14, INVALID_STATE: 15,
});

/** A failed call: `status` (a Status value) and the library's message. */
class SubspecError extends Error {
  constructor(status, message) {
    super(`subspec: ${C.statusString(status)}: ${message}`);
    this.name = 'SubspecError';
    this.status = status;
    this.detail = message;
  }
}

/** A message copied out by `read(handle, buf, cap, needed)` (subspec_last_error or
 * subspec_sequence_last_error): a size query, then the copy. */
function message(read, handle) {
  const needed = [0];
  read(handle, null, 0, needed);
  const buf = Buffer.alloc(Number(needed[0]));
  read(handle, buf, buf.length, needed);
  return buf.toString('utf8', 0, Math.max(0, buf.length - 1));
}

/** The last failure on this thread. */
function lastError() {
  return message(C.lastError, null);
}

/** The message of the last failed call on a sequence handle, or of its part of a batch. */
function sequenceError(h) {
  return message(C.seqLastError, h);
}

function check(status) {
  if (status !== Status.OK) throw new SubspecError(status, lastError());
}

const engines = new FinalizationRegistry((h) => C.free(h));
const sequences = new FinalizationRegistry((h) => C.seqFree(h));

class Sequence {
  /** @internal */
  constructor(handle, eos, engine) {
    this._h = handle;
    this._eos = eos;
    this._engine = engine; // for its last error after an asynchronous call
    this._pending = 0; // asynchronous calls in flight: close() waits for them
    this._closing = false;
    sequences.register(this, handle, this);
  }

  _handle() {
    if (!this._h) throw new SubspecError(Status.NULL_POINTER, 'the sequence is closed');
    return this._h;
  }

  step(input = [], options = {}, maxTokens = 1024) {
    const params = stepParams(options);
    const inp = Int32Array.from(input);
    const out = new Int32Array(Math.max(1, maxTokens));
    const n = [0];
    check(C.step(this._handle(), params, inp.length ? inp : null, inp.length, out, out.length, n));
    return Array.from(out.subarray(0, Number(n[0])));
  }

  generate(prompt, options = {}, maxNew = 256) {
    const out = [];
    let input = prompt;
    while (out.length < maxNew) {
      const got = this.step(input, options, maxNew - out.length);
      input = [];
      out.push(...got);
      if (got.some((t) => this._eos.includes(t))) break;
    }
    return out;
  }

  /** `step` on a worker thread: resolves with the new tokens while the event loop keeps
   * running. `signal` (an AbortSignal) stops the step before its next decoder layer: it
   * rejects with a SubspecError of status ABORTED (`cause`: the signal's reason) and the
   * sequence is unchanged. One call at a time per sequence. */
  stepAsync(input = [], options = {}, maxTokens = 1024, { signal } = {}) {
    const h = this._handle();
    if (signal && signal.aborted) {
      return Promise.reject(aborted(signal, 'aborted before the step began'));
    }
    const params = stepParams(options);
    const inp = Int32Array.from(input);
    const out = new Int32Array(Math.max(1, maxTokens));
    const n = [0];
    const onAbort = () => C.seqAbort(h);
    if (signal) signal.addEventListener('abort', onAbort, { once: true });
    this._pending++;
    return new Promise((resolve, reject) => {
      C.step.async(h, params, inp.length ? inp : null, inp.length, out, out.length, n, (err, status) => {
        if (signal) signal.removeEventListener('abort', onAbort);
        // A signal that fired just after the step returned must not stop the next one.
        C.seqClearAbort(h);
        const message = status !== Status.OK && !err ? this._engine._lastError() : '';
        this._pending--;
        if (this._closing && this._pending === 0) this.close();
        if (err) reject(err);
        else if (status === Status.ABORTED && signal && signal.aborted) reject(aborted(signal, message));
        else if (status !== Status.OK) reject(new SubspecError(status, message));
        else resolve(Array.from(out.subarray(0, Number(n[0]))));
        void inp; // the input buffer lives until the call is over
      });
    });
  }

  /** `generate` with asynchronous steps (see stepAsync); rejects on abort, the tokens of
   * the steps before it kept by the sequence. */
  async generateAsync(prompt, options = {}, maxNew = 256, { signal } = {}) {
    const out = [];
    for await (const t of this.stream(prompt, options, maxNew, { signal })) out.push(t);
    return out;
  }

  /** The new tokens as an async iterator, step by step (asynchronous steps): until an EOS
   * token, `maxNew` tokens, or `signal` aborts (the iterator then throws). */
  async *stream(prompt, options = {}, maxNew = 256, { signal } = {}) {
    let input = prompt;
    let n = 0;
    while (n < maxNew) {
      const got = await this.stepAsync(input, options, maxNew - n, { signal });
      input = [];
      n += got.length;
      yield* got;
      if (got.some((t) => this._eos.includes(t))) break;
    }
  }

  // ---- host-owned sampling: iterBegin, (iterLogits, your sampler, iterPush)* while
  // iterPush returns true, iterEnd. Lossless for any sampler: each position's logits are
  // the target's own.

  /** Opens a host-sampled iteration: appends `input`, drafts and verifies a tree (the
   * sampling options are ignored). On error throws and nothing changed. */
  iterBegin(input = [], options = {}) {
    const inp = Int32Array.from(input);
    check(C.iterBegin(this._handle(), stepParams(options), inp.length ? inp : null, inp.length));
  }

  /** The target's logits at the current position (a copy, Float32Array of n_vocab). */
  iterLogits() {
    const p = [null];
    const n = [0];
    check(C.iterLogits(this._handle(), p, n));
    return Float32Array.from(koffi.decode(p[0], koffi.array('float', Number(n[0]), 'Array')));
  }

  /** Pushes the host's token; true: the next position's logits are known (sample again). */
  iterPush(token) {
    const next = [false];
    check(C.iterPush(this._handle(), token, next));
    return next[0];
  }

  /** The `n` most likely tokens at the current position: [{id, logprob}], descending. */
  iterTopLogprobs(n) {
    const ids = new Int32Array(Math.max(1, n));
    const lps = new Float32Array(Math.max(1, n));
    const got = [0];
    check(C.iterTop(this._handle(), n, ids, lps, got));
    return Array.from({ length: Number(got[0]) }, (_, i) => ({ id: ids[i], logprob: lps[i] }));
  }

  /** Commits the iteration; returns the number of tokens pushed. */
  iterEnd() {
    const n = [0];
    check(C.iterEnd(this._handle(), n));
    return Number(n[0]);
  }

  /** Abandons the iteration: the sequence as before iterBegin. */
  iterCancel() { check(C.iterCancel(this._handle())); }

  /** One whole host-sampled iteration: `sample(logits)` picks each token; at most
   * `maxTokens`. Returns the tokens pushed. */
  iterSample(input, options, sample, maxTokens = 1024) {
    this.iterBegin(input, options);
    const out = [];
    try {
      let more = true;
      while (more && out.length < maxTokens) {
        const t = sample(this.iterLogits());
        more = this.iterPush(t);
        out.push(t);
      }
    } catch (e) {
      this.iterCancel();
      throw e;
    }
    this.iterEnd();
    return out;
  }

  /** Plain exact logits: appends `input`, runs the target alone, returns the next
   * position's logits (Float32Array of `nVocab`); nothing is sampled. */
  eval(input, nVocab) {
    const inp = Int32Array.from(input);
    const out = new Float32Array(nVocab);
    const n = [0];
    check(C.seqEval(this._handle(), inp.length ? inp : null, inp.length, out, out.length, n));
    return out.subarray(0, Number(n[0]));
  }

  reset() { check(C.seqReset(this._handle())); }

  truncate(len) { check(C.seqTruncate(this._handle(), len)); }

  tokens() {
    const n = [0];
    const st = C.seqTokens(this._handle(), null, 0, n);
    if (st !== Status.BUFFER_TOO_SMALL) check(st);
    const out = new Int32Array(Number(n[0]));
    check(C.seqTokens(this._handle(), out, out.length, n));
    return Array.from(out);
  }

  stats() {
    const s = output('subspec_sequence_stats');
    check(C.seqStats(this._handle(), s));
    return {
      length: Number(s.length), iterations: Number(s.iterations), generated: Number(s.generated),
      accepted: Number(s.accepted), draftSteps: Number(s.draft_steps), tau: s.tau,
      draftSeconds: s.draft_seconds, verifySeconds: s.verify_seconds,
      overlappedSteps: Number(s.overlapped_steps), reusedTrees: Number(s.reused_trees),
    };
  }

  /** Frees the sequence (idempotent); with asynchronous calls in flight, once they end. */
  close() {
    if (this._pending > 0) {
      this._closing = true;
      return;
    }
    if (this._h) {
      sequences.unregister(this);
      C.seqFree(this._h);
      this._h = null;
    }
  }
}

/** The rejection of an aborted asynchronous step. */
function aborted(signal, message) {
  const e = new SubspecError(Status.ABORTED, message);
  e.cause = signal.reason;
  return e;
}

/** An output struct: zeroed, with struct_size set (the library fills the rest). */
function output(type) {
  const o = koffi.decode(Buffer.alloc(koffi.sizeof(type)), type);
  o.struct_size = koffi.sizeof(type);
  return o;
}

/** C step parameters: `base` (the library's defaults, or an engine's) with `o` applied. */
function stepParams(o, base) {
  const p = { ...(base || defaultStepParams()) };
  if (o.temperature !== undefined) p.temperature = o.temperature;
  if (o.topK !== undefined) p.top_k = o.topK;
  if (o.topP !== undefined) p.top_p = o.topP;
  if (o.seed !== undefined) p.seed = o.seed;
  if (o.speculate !== undefined) p.speculate = o.speculate;
  if (o.treeWidth !== undefined) p.tree_width = o.treeWidth;
  if (o.treeDepth !== undefined) p.tree_depth = o.treeDepth;
  if (o.treeMaxTokens !== undefined) p.tree_max_tokens = o.treeMaxTokens;
  if (o.draftTemperature !== undefined) p.draft_temperature = o.draftTemperature;
  if (o.adaptiveDepth !== undefined) p.adaptive_depth = o.adaptiveDepth;
  if (o.autoDepth !== undefined) p.auto_depth = o.autoDepth;
  return p;
}

let stepDefaults = null;
function defaultStepParams() {
  if (!stepDefaults) {
    const p = {};
    check(C.stepInit(p, koffi.sizeof('subspec_step_params')));
    stepDefaults = Object.freeze(p);
  }
  return stepDefaults;
}

/** StepOptions from C step parameters. */
function stepOptions(p) {
  return {
    temperature: p.temperature, topK: p.top_k, topP: p.top_p, seed: Number(p.seed),
    speculate: p.speculate, treeWidth: p.tree_width, treeDepth: p.tree_depth,
    treeMaxTokens: p.tree_max_tokens, draftTemperature: p.draft_temperature,
    adaptiveDepth: p.adaptive_depth, autoDepth: p.auto_depth,
  };
}

class Engine {
  /** @internal */
  constructor(handle) {
    this._h = handle;
    this._pending = 0; // asynchronous batches in flight: close() waits for them
    this._closing = false;
    engines.register(this, handle, this);
  }

  _handle() {
    if (!this._h || this._closing) throw new SubspecError(Status.NULL_POINTER, 'the engine is closed');
    return this._h;
  }

  info() {
    const i = output('subspec_model_info');
    check(C.info(this._handle(), i));
    return {
      architecture: i.architecture, vocabSize: i.vocab_size, nLayers: i.n_layers,
      hiddenSize: i.hidden_size, maxPosition: i.max_position, contextLength: i.context_length,
      maxTreeTokens: i.max_tree_tokens, nOffloadedLayers: i.n_offloaded_layers,
      nSubstituteLayers: i.n_substitute_layers, draftBytes: Number(i.draft_bytes),
      draftLmHeadBytes: Number(i.draft_lm_head_bytes), bosId: i.bos_id, nEos: i.n_eos, hasDraft: i.has_draft, hasTokenizer: i.has_tokenizer,
      tokenizerVocabSize: i.tokenizer_vocab_size, threads: i.threads,
    };
  }

  eosIds() {
    const out = new Int32Array(16);
    const n = [0];
    check(C.eosIds(this._handle(), out, out.length, n));
    return Array.from(out.subarray(0, Number(n[0])));
  }

  isEos(token) { return C.isEos(this._handle(), token); }

  /** The step options that pay best for this engine (its tree shape): greedy, speculative. */
  stepOptions() {
    const p = {};
    check(C.engineStepInit(this._handle(), p, koffi.sizeof('subspec_step_params')));
    return stepOptions(p);
  }

  tokenize(text, addSpecial = false) {
    const n = [0];
    const st = C.tokenize(this._handle(), text, addSpecial, null, 0, n);
    if (st !== Status.BUFFER_TOO_SMALL) check(st);
    const out = new Int32Array(Number(n[0]));
    check(C.tokenize(this._handle(), text, addSpecial, out, out.length, n));
    return Array.from(out);
  }

  detokenize(ids) {
    const toks = Int32Array.from(ids);
    const needed = [0];
    const st = C.detokenize(this._handle(), toks.length ? toks : null, toks.length, null, 0, needed);
    if (st !== Status.BUFFER_TOO_SMALL) check(st);
    const buf = Buffer.alloc(Number(needed[0]));
    check(C.detokenize(this._handle(), toks.length ? toks : null, toks.length, buf, buf.length, needed));
    return buf.toString('utf8', 0, buf.length - 1);
  }

  newSequence() {
    const eos = this.eosIds();
    const out = [null];
    check(C.seqCreate(this._handle(), out));
    return new Sequence(out[0], eos, this);
  }

  /** Steps several sequences of this engine together (subspec_step_batch): one target
   * pass for all of them, each getting exactly the tokens its own `step` would give.
   * `items[i]` is `{ sequence, input?, options? }` (as `sequence.step(input, options)`);
   * at most `maxTokens` tokens each. Returns, in order, `{ tokens }` for each sequence that
   * stepped and `{ error }` (a SubspecError, status as `step`'s) for each that failed: it
   * is exactly as before the call, input not appended. Throws SubspecError when the call
   * fails as a whole (no sequence changed): INVALID_ARGUMENT (`items` not an array, an
   * item without a Sequence, `maxTokens` not a number, a sequence of another engine or
   * one twice), NULL_POINTER (this engine or a sequence closed), PANIC. */
  stepBatch(items, maxTokens = 1024) {
    const b = this._batch(items, maxTokens);
    if (!b.seqs.length) return [];
    const status = C.stepBatch(...b.args);
    if (status !== Status.OK) throw new SubspecError(status, lastError());
    return b.results();
  }

  /** `stepBatch` on a worker thread (as `Sequence.stepAsync`): resolves with the same
   * array; rejects (never throws) where stepBatch throws. Every sequence of the batch is
   * in use until it settles: close() on it (or on this engine) takes effect then. */
  stepBatchAsync(items, maxTokens = 1024) {
    let b;
    try {
      b = this._batch(items, maxTokens);
    } catch (e) {
      return Promise.reject(e);
    }
    if (!b.seqs.length) return Promise.resolve([]);
    for (const s of b.seqs) s._pending++;
    this._pending++;
    return new Promise((resolve, reject) => {
      C.stepBatch.async(...b.args, (err, status) => {
        // Read back (messages included) before releasing: close() may be waiting.
        let result = null;
        let failure = err;
        if (!err && status !== Status.OK) failure = new SubspecError(status, this._lastError());
        else if (!err) result = b.results();
        for (const s of b.seqs) {
          s._pending--;
          if (s._closing && s._pending === 0) s.close();
        }
        this._pending--;
        if (this._closing && this._pending === 0) this.close();
        if (failure) reject(failure);
        else resolve(result);
      });
    });
  }

  /** @internal Checks a batch's items and lays out its C arguments (buffers that live as
   * long as the returned object) and a reader of its results. */
  _batch(items, maxTokens) {
    const engine = this._handle();
    const bad = (what) => new SubspecError(Status.INVALID_ARGUMENT, `stepBatch: ${what}`);
    if (!Array.isArray(items)) throw bad('items must be an array of { sequence, input?, options? }');
    if (typeof maxTokens !== 'number' || !Number.isFinite(maxTokens)) throw bad('maxTokens must be a finite number');
    const cap = Math.max(1, Math.floor(maxTokens));
    const seqs = [];
    const params = [];
    const inputs = [];
    const n = items.length;
    const nInputs = new BigUint64Array(n);
    items.forEach((item, i) => {
      if (item === null || typeof item !== 'object') throw bad(`items[${i}] is not an object`);
      const s = item.sequence;
      if (!(s instanceof Sequence)) throw bad(`items[${i}].sequence is not a Sequence`);
      if (!s._h || s._closing) throw new SubspecError(Status.NULL_POINTER, `stepBatch: items[${i}].sequence is closed`);
      const inp = Int32Array.from(item.input == null ? [] : item.input);
      seqs.push(s);
      params.push(stepParams(item.options || {}));
      inputs.push(inp.length ? inp : null);
      nInputs[i] = BigInt(inp.length);
    });
    const out = new Int32Array(Math.max(1, n * cap));
    const nOut = new BigUint64Array(Math.max(1, n));
    const statuses = new Uint32Array(Math.max(1, n));
    const args = [engine, seqs.map((s) => s._h), n, params, inputs, nInputs, out, cap, nOut, statuses];
    // Each failed sequence keeps its own message.
    const results = () => seqs.map((s, i) => {
      const st = statuses[i];
      if (st === Status.OK) {
        return { tokens: Array.from(out.subarray(i * cap, i * cap + Number(nOut[i]))) };
      }
      return { error: new SubspecError(st, `seqs[${i}]: ${sequenceError(s._h)}`) };
    });
    return { seqs, args, results };
  }

  /** @internal The last failure on this engine (an asynchronous call's, read back on the
   * event loop's thread), or a fixed message once the engine is closed. */
  _lastError() {
    if (!this._h) return 'the call failed (its engine is closed: no message)';
    return message(C.lastError, this._h);
  }

  /** Releases the engine (idempotent); with asynchronous batches in flight, once they end
   * (it counts as closed at once). */
  close() {
    if (this._pending > 0) {
      this._closing = true;
      return;
    }
    if (this._h) {
      engines.unregister(this);
      C.free(this._h);
      this._h = null;
    }
  }
}

/** `kvDtype` names and their `subspec_load_params.kv_dtype` codes. */
const KV_DTYPES = { default: 0, f32: 1, f16: 2, bf16: 3 };

/** Loads the model directory at `modelPath`. */
function load(modelPath, options = {}) {
  const p = {};
  check(C.loadInit(p, koffi.sizeof('subspec_load_params')));
  p.model_path = modelPath;
  if (options.device !== undefined) p.device = options.device === 'cpu' ? -1 : options.device;
  if (options.memoryBudget !== undefined) p.memory_budget = options.memoryBudget;
  if (options.contextLength !== undefined) p.context_length = options.contextLength;
  if (options.maxTreeTokens !== undefined) p.max_tree_tokens = options.maxTreeTokens;
  if (options.threads !== undefined) p.threads = options.threads;
  if (options.draft !== undefined) p.build_draft = options.draft;
  if (options.draftBits !== undefined) p.draft_bits = options.draftBits;
  if (options.draftGroup !== undefined) p.draft_group = options.draftGroup;
  if (options.draftMethod !== undefined) p.draft_method = options.draftMethod === 'rtn' ? 1 : 0;
  if (options.quantizeLmHead !== undefined) p.quantize_lm_head = options.quantizeLmHead;
  if (options.substituteAllLayers !== undefined) p.substitute_all_layers = options.substituteAllLayers;
  if (options.requireTokenizer !== undefined) p.require_tokenizer = options.requireTokenizer;
  if (options.maxSequences !== undefined) p.max_sequences = options.maxSequences;
  if (options.draftVocab !== undefined) p.draft_vocab = options.draftVocab;
  // 0 asks for no ranking head: SUBSPEC_SHORTLIST_NONE in C, whose 0 is the default.
  if (options.draftShortlist !== undefined) {
    p.draft_shortlist = options.draftShortlist === 0 ? 0xffffffff : options.draftShortlist;
  }
  if (options.draftHeadBits !== undefined) p.draft_head_bits = options.draftHeadBits;
  if (options.kvDtype !== undefined) {
    const code = KV_DTYPES[options.kvDtype];
    if (code === undefined) {
      throw new TypeError(`kvDtype must be one of ${Object.keys(KV_DTYPES).join(', ')}, got ${options.kvDtype}`);
    }
    p.kv_dtype = code;
  }
  let layers = null;
  if (options.substituteLayers && options.substituteLayers.length) {
    const ids = Array.from(options.substituteLayers);
    layers = koffi.alloc('uint32_t', ids.length);
    koffi.encode(layers, 'uint32_t', ids, ids.length);
    p.substitute_layers = layers;
    p.n_substitute_layers = ids.length;
  }
  let cb = null;
  if (options.onProgress) {
    cb = koffi.register((f) => {
      try { return options.onProgress(f) !== false; } catch { return false; }
    }, koffi.pointer(ProgressCallback));
    p.progress_callback = cb;
  }
  const out = [null];
  try {
    check(C.load(p, out));
  } finally {
    if (cb) koffi.unregister(cb);
    if (layers) koffi.free(layers);
  }
  return new Engine(out[0]);
}

/** The library's short description of a status code ("ok", "I/O error", ...). */
function statusString(status) { return C.statusString(status); }

module.exports = { load, Engine, Sequence, SubspecError, Status, statusString, version: C.version() };
