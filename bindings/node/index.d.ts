// Type definitions for the subspec Node binding (index.js).

/** Status codes of the C ABI (SUBSPEC_STATUS_*). */
export declare const Status: Readonly<{
  OK: 0; IO: 1; INVALID_MODEL: 2; UNSUPPORTED: 3; INVALID_ARGUMENT: 4; INVALID_TOKEN: 5;
  CONTEXT_FULL: 6; OUT_OF_MEMORY: 7; DEVICE_UNAVAILABLE: 8; TOKENIZER: 9; ABORTED: 10;
  INTERNAL: 11; NULL_POINTER: 12; BUFFER_TOO_SMALL: 13; PANIC: 14; INVALID_STATE: 15;
}>;
export type StatusCode = (typeof Status)[keyof typeof Status];

/** A failed call: its status code and the library's message (`detail`). */
export declare class SubspecError extends Error {
  readonly status: StatusCode;
  readonly detail: string;
}

/** The library version, e.g. "0.2.0". */
export declare const version: string;

/** The library's short description of a status code ("ok", "I/O error", ...; "unknown
 * status" for a number it does not know). */
export declare function statusString(status: number): string;

export interface LoadOptions {
  /** 'cpu' (default) or a CUDA device ordinal. */
  device?: 'cpu' | number;
  /** Device memory budget in bytes; 0 (default) keeps everything resident. */
  memoryBudget?: number | bigint;
  /** Context length per sequence; 0 (default): the model's maximum. */
  contextLength?: number;
  /** Largest tree a step may verify; 0 (default): 128. */
  maxTreeTokens?: number;
  /** Worker threads; 0 (default): one per core. */
  threads?: number;
  /** Build the 4-bit substitute draft (default true); without it only plain steps work. */
  draft?: boolean;
  draftBits?: 2 | 3 | 4 | 8;
  draftGroup?: number;
  draftMethod?: 'hqq' | 'rtn';
  /** Give the draft its own quantized lm_head whose logits are the draft's (default false; on the CPU the draft has a 2-bit ranking head either way: see quantize_lm_head in include/subspec.h). */
  quantizeLmHead?: boolean;
  /** Substitutes for the resident layers too (default true); false: offloaded ones only. */
  substituteAllLayers?: boolean;
  /** Exactly these decoder layers get substitutes (default: the choice above). */
  substituteLayers?: ArrayLike<number>;
  /** Fail when tokenizer.json is missing (default false). */
  requireTokenizer?: boolean;
  /** Sequences alive at once: each gets a planned KV cache and one more is refused
   * (OUT_OF_MEMORY) until one is closed; 0 (default): planned for one, not limited. */
  maxSequences?: number;
  /** The draft proposes only token ids below this (its head is the first rows of the
   * target's: cheaper draft steps, no memory, lower acceptance); 0 (default): all. */
  draftVocab?: number;
  /** A ranking head: the draft's own quantized lm_head only ranks the vocabulary and this
   * many tokens it ranks first per draft row get the target head's logits; 0: none.
   * Default: the engine's (128 on the CPU for 2,048+ tokens unless quantizeLmHead). */
  draftShortlist?: number;
  /** Bits of the draft's own lm_head: 2, 3, 4 or 8 (default: 2 for a ranking head,
   * otherwise draftBits). */
  draftHeadBits?: number;
  /** The KV cache's element type: 'default' (f16 on the CPU, f32 on CUDA), 'f32',
   * 'f16' or 'bf16' (the two-byte types on the CPU only); the planner counts it. */
  kvDtype?: 'default' | 'f32' | 'f16' | 'bf16';
  /** Called with the fraction loaded; return false to abort (SubspecError ABORTED). */
  onProgress?: (fraction: number) => boolean | void;
}

export interface StepOptions {
  /** 0 (default): greedy. */
  temperature?: number;
  topK?: number;
  topP?: number;
  seed?: number | bigint;
  /** Draft a tree and verify it (default true). The output is the same either way. */
  speculate?: boolean;
  treeWidth?: number;
  treeDepth?: number;
  treeMaxTokens?: number;
  draftTemperature?: number;
  /** Stop growing the tree early when another draft step does not pay (default false;
   * treeDepth stays the most). The output is the same either way. */
  adaptiveDepth?: boolean;
  /** Choose each step's depth, 0 (a plain step) included, by the engine's measured costs
   * and the acceptance so far (default false; treeDepth stays the most). Same output. */
  autoDepth?: boolean;
}

export interface ModelInfo {
  architecture: string;
  vocabSize: number;
  nLayers: number;
  hiddenSize: number;
  maxPosition: number;
  contextLength: number;
  maxTreeTokens: number;
  /** Decoder layers streamed each target pass (0: all resident). */
  nOffloadedLayers: number;
  /** Decoder layers the draft replaces with substitutes (0 without a draft). */
  nSubstituteLayers: number;
  /** Bytes of the draft's substitutes and own lm_head. */
  draftBytes: number;
  /** Of draftBytes, the draft's own quantized lm_head (0: it shares the target's). */
  draftLmHeadBytes: number;
  /** -1: none. */
  bosId: number;
  nEos: number;
  hasDraft: boolean;
  hasTokenizer: boolean;
  tokenizerVocabSize: number;
  threads: number;
}

export interface SequenceStats {
  length: number;
  iterations: number;
  generated: number;
  accepted: number;
  draftSteps: number;
  /** Mean tokens per target pass. */
  tau: number;
  draftSeconds: number;
  verifySeconds: number;
  /** Of draftSteps, those run while a target pass waited for a streamed layer. */
  overlappedSteps: number;
  /** Steps whose tree started from the part drafted during the pass before. */
  reusedTrees: number;
}

/** One conversation with its own KV cache. Use from one call at a time. */
export declare class Sequence {
  /** Appends `input` and returns the next tokens (at least one, at most `maxTokens`). On
   * error throws SubspecError and the sequence is unchanged. */
  step(input?: ArrayLike<number>, options?: StepOptions, maxTokens?: number): number[];
  /** Steps from `prompt` until an EOS token or `maxNew` tokens. */
  generate(prompt: ArrayLike<number>, options?: StepOptions, maxNew?: number): number[];
  /** `step` on a worker thread (the event loop keeps running); `signal` stops it before
   * its next decoder layer: rejects with a SubspecError of status ABORTED (`cause`: the
   * signal's reason), the sequence unchanged. One call at a time per sequence. */
  stepAsync(input?: ArrayLike<number>, options?: StepOptions, maxTokens?: number,
    opts?: { signal?: AbortSignal }): Promise<number[]>;
  /** `generate` with asynchronous steps; rejects on abort (earlier steps' tokens kept). */
  generateAsync(prompt: ArrayLike<number>, options?: StepOptions, maxNew?: number,
    opts?: { signal?: AbortSignal }): Promise<number[]>;
  /** The new tokens as an async iterator, one asynchronous step at a time. */
  stream(prompt: ArrayLike<number>, options?: StepOptions, maxNew?: number,
    opts?: { signal?: AbortSignal }): AsyncGenerator<number, void, undefined>;
  /** Opens a host-sampled iteration: appends `input`, drafts and verifies a tree. */
  iterBegin(input?: ArrayLike<number>, options?: StepOptions): void;
  /** The target's exact logits at the current position. */
  iterLogits(): Float32Array;
  /** Pushes the host's token; true: the next position's logits are known. */
  iterPush(token: number): boolean;
  /** The `n` most likely tokens at the current position, descending. */
  iterTopLogprobs(n: number): { id: number; logprob: number }[];
  /** Commits the iteration; returns the number of tokens pushed. */
  iterEnd(): number;
  /** Abandons the iteration: the sequence as before iterBegin. */
  iterCancel(): void;
  /** One host-sampled iteration with `sample`; returns the tokens pushed. */
  iterSample(input: ArrayLike<number>, options: StepOptions, sample: (logits: Float32Array) => number, maxTokens?: number): number[];
  /** Plain exact logits of the next position (nothing sampled). */
  eval(input: ArrayLike<number>, nVocab: number): Float32Array;
  reset(): void;
  truncate(length: number): void;
  tokens(): number[];
  stats(): SequenceStats;
  /** Frees the sequence (idempotent). */
  close(): void;
}

/** One sequence's part of a batched step (Engine.stepBatch): as
 * `sequence.step(input, options)`. */
export interface BatchItem {
  /** A sequence of the engine that steps the batch, each at most once per batch. */
  sequence: Sequence;
  /** Tokens appended before the step (default none). */
  input?: ArrayLike<number>;
  options?: StepOptions;
}

/** One sequence's outcome of a batched step, in the order of the items: its new tokens,
 * or its failure (the sequence then unchanged, input not appended). */
export type BatchResult = { tokens: number[]; error?: undefined } | { error: SubspecError; tokens?: undefined };

/** A loaded model. Sequences keep it alive after close(). */
export declare class Engine {
  info(): ModelInfo;
  eosIds(): number[];
  isEos(token: number): boolean;
  /** The step options that pay best for this engine (its tree shape): greedy, speculative. */
  stepOptions(): Required<StepOptions>;
  tokenize(text: string, addSpecial?: boolean): number[];
  detokenize(ids: ArrayLike<number>): string;
  newSequence(): Sequence;
  /** Steps several of this engine's sequences together, with one target pass for all of
   * them (an offloaded model streams once per batch): each gets exactly the tokens its own
   * `step` calls would give (the steps may split differently: a batch's prompt step is a
   * plain one), at most `maxTokens` per sequence. Speculative and plain steps and
   * samplings may be mixed; sequences may join or leave between calls. Returns one
   * result per item, in order: `{ tokens }`, or `{ error }` (a SubspecError with
   * `step`'s status, e.g. INVALID_TOKEN; that sequence unchanged) while the others step.
   * Throws SubspecError, no sequence changed, when the call fails as a whole:
   * INVALID_ARGUMENT (`items` not an array, an item without a Sequence, `maxTokens` not
   * a number, a sequence of another engine, the same sequence twice), NULL_POINTER
   * (this engine or a sequence closed), PANIC. An empty batch returns []. */
  stepBatch(items: readonly BatchItem[], maxTokens?: number): BatchResult[];
  /** `stepBatch` on a worker thread (the event loop keeps running): resolves with the
   * same results; rejects (never throws) where stepBatch throws. Every sequence of the
   * batch is in use until it settles: close() on one of them, or on this engine, takes
   * effect then. One call at a time per sequence. */
  stepBatchAsync(items: readonly BatchItem[], maxTokens?: number): Promise<BatchResult[]>;
  /** Releases the engine (idempotent); with asynchronous batches in flight, once they
   * end (it counts as closed at once). */
  close(): void;
}

/** Loads the model directory at `modelPath`; throws SubspecError on failure. */
export declare function load(modelPath: string, options?: LoadOptions): Engine;
