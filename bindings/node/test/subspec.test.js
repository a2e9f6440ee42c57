'use strict';
// The Node binding against the Rust engine's fixtures (`cargo test --test ffi`) and the C
// suite's output (c-smollm2.out): run with `node --test test/`.
const test = require('node:test');
const assert = require('node:assert');
const fs = require('fs');
const path = require('path');
const subspec = require('..');

const dir = process.env.SUBSPEC_FIXTURES || path.join(__dirname, '..', '..', '..', 'target', 'tmp', 'bindings');

function fixture(model) {
  const m = {};
  for (const line of fs.readFileSync(path.join(dir, `${model}.expected`), 'utf8').trim().split('\n')) {
    const i = line.indexOf(': ');
    m[line.slice(0, i)] = line.slice(i + 2);
  }
  return m;
}
const ids = (s) => s.trim().split(/\s+/).filter(Boolean).map(Number);
const sampled = { temperature: 0.8, topK: 40, topP: 0.95, seed: 7 };

test('version', () => {
  assert.match(subspec.version, /^\d+\.\d+\.\d+$/);
});

test('status codes are the ones subspec.h lists, each with its own string', () => {
  const header = fs.readFileSync(path.join(__dirname, '..', '..', '..', 'include', 'subspec.h'), 'utf8');
  const listed = {};
  for (const m of header.matchAll(/^\s*SUBSPEC_STATUS_([A-Z_]+) = (\d+),$/gm)) listed[m[1]] = Number(m[2]);
  assert.deepStrictEqual({ ...subspec.Status }, listed);
  const strings = new Set(Object.values(listed).map((n) => subspec.statusString(n)));
  assert.strictEqual(strings.size, Object.keys(listed).length);
  assert.ok(!strings.has('unknown status'));
  assert.strictEqual(subspec.statusString(9999), 'unknown status');
});

test('draft options: own lm_head, layer choice, adaptive depth, still lossless', () => {
  const want = fixture('tiny');
  const tiny = path.join(dir, 'tiny');
  const a = subspec.load(tiny, { contextLength: 256, quantizeLmHead: true });
  const info = a.info();
  assert.ok(info.draftLmHeadBytes > 0 && info.draftBytes > info.draftLmHeadBytes && info.nSubstituteLayers === 2);
  const opts = a.stepOptions();
  assert.ok(opts.speculate && !opts.adaptiveDepth);
  const s = a.newSequence();
  assert.deepStrictEqual(s.generate(ids(want.prompt), { ...opts, adaptiveDepth: true }, 32), ids(want.greedy));
  s.close();
  a.close();
  const b = subspec.load(tiny, { substituteLayers: [1] });
  assert.strictEqual(b.info().nSubstituteLayers, 1);
  assert.deepStrictEqual(b.newSequence().generate(ids(want.prompt), { adaptiveDepth: true }, 32), ids(want.greedy));
  b.close();
  assert.throws(() => subspec.load(tiny, { substituteLayers: [0, 0] }),
    (e) => e.status === subspec.Status.INVALID_ARGUMENT && e.detail.includes('twice'));
  const c = subspec.load(tiny, { substituteAllLayers: false, draft: true });
  assert.strictEqual(c.info().nSubstituteLayers, 2); // nothing offloaded: every layer anyway
  const vocab = c.info().vocabSize;
  c.close();
  // a draft over the first half of the vocabulary: lossless, no memory; past it: refused
  const d = subspec.load(tiny, { draftVocab: vocab / 2 });
  assert.strictEqual(d.info().draftLmHeadBytes, 0);
  assert.deepStrictEqual(d.newSequence().generate(ids(want.prompt), {}, 32), ids(want.greedy));
  d.close();
  assert.throws(() => subspec.load(tiny, { draftVocab: vocab + 1 }),
    (e) => e.status === subspec.Status.INVALID_ARGUMENT && e.detail.includes('draft_vocab'));
  // a ranking head of 32 tokens: its own bytes, lossless; 0: none; past the vocabulary:
  // refused
  const r = subspec.load(tiny, { draftShortlist: 32, draftHeadBits: 2 });
  assert.ok(r.info().draftLmHeadBytes > 0);
  assert.deepStrictEqual(r.newSequence().generate(ids(want.prompt), {}, 32), ids(want.greedy));
  r.close();
  const n = subspec.load(tiny, { draftShortlist: 0, quantizeLmHead: true });
  assert.ok(n.info().draftLmHeadBytes > 0);
  n.close();
  assert.throws(() => subspec.load(tiny, { draftShortlist: vocab + 1 }),
    (e) => e.status === subspec.Status.INVALID_ARGUMENT && e.detail.includes('shortlist'));
  // the KV cache's type: with each, speculative decoding equals plain decoding; an
  // unknown name is refused
  for (const kvDtype of ['f32', 'bf16']) {
    const e = subspec.load(tiny, { kvDtype });
    const spec = e.newSequence().generate(ids(want.prompt), {}, 32);
    assert.ok(spec.length > 0);
    assert.deepStrictEqual(e.newSequence().generate(ids(want.prompt), { speculate: false }, 32), spec);
    e.close();
  }
  assert.throws(() => subspec.load(tiny, { kvDtype: 'f8' }), /kvDtype must be one of default, f32, f16, bf16, got f8/);
});

test('errors carry status and message', () => {
  assert.throws(() => subspec.load('/nonexistent/model'),
    (e) => e instanceof subspec.SubspecError && e.status === subspec.Status.IO && e.detail.includes('/nonexistent/model'));
  assert.throws(() => subspec.load(path.join(dir, 'tiny'), { device: 0 }),
    (e) => e.status === subspec.Status.DEVICE_UNAVAILABLE);
  let calls = 0;
  assert.throws(() => subspec.load(path.join(dir, 'tiny'), { onProgress: () => ++calls < 2 }),
    (e) => e.status === subspec.Status.ABORTED);
  assert.strictEqual(calls, 2);
  assert.throws(() => subspec.load(path.join(dir, 'tiny'), { memoryBudget: 1 }),
    (err) => err.status === subspec.Status.OUT_OF_MEMORY && err.detail.includes('at least'));
  const two = subspec.load(path.join(dir, 'tiny'), { maxSequences: 2, contextLength: 256 });
  const [a, b] = [two.newSequence(), two.newSequence()];
  assert.throws(() => two.newSequence(),
    (err) => err.status === subspec.Status.OUT_OF_MEMORY && err.detail.includes('planned for 2 sequences'));
  a.close();
  two.newSequence().close();
  b.close();
  two.close();
  const e = subspec.load(path.join(dir, 'tiny'), { threads: 2 });
  assert.strictEqual(e.info().nOffloadedLayers, 0);
  assert.strictEqual(e.info().maxTreeTokens, 128);
  const s = e.newSequence();
  assert.throws(() => s.step([500]), (err) => err.status === subspec.Status.INVALID_TOKEN);
  assert.throws(() => s.step([]), (err) => err.status === subspec.Status.INVALID_ARGUMENT);
  assert.throws(() => e.tokenize('hi'), (err) => err.status === subspec.Status.TOKENIZER);
  assert.deepStrictEqual(s.tokens(), []);
  s.close();
  s.close();
  e.close();
  assert.throws(() => e.info(), subspec.SubspecError);
});

function checkModel(name, modelPath) {
  const want = fixture(name);
  const e = subspec.load(modelPath || want.model, { contextLength: 256 });
  const prompt = ids(want.prompt);
  const s = e.newSequence();
  assert.deepStrictEqual(s.generate(prompt, {}, 32), ids(want.greedy));
  const st = s.stats();
  assert.ok(st.tau >= 1 && st.generated === ids(want.greedy).length);
  s.reset();
  assert.deepStrictEqual(s.generate(prompt, { ...sampled, speculate: false }, 32), ids(want.sampled));
  s.truncate(prompt.length);
  assert.deepStrictEqual(s.generate([], sampled, 32), ids(want.sampled));
  const kept = e.newSequence();
  e.close(); // the sequence keeps the model alive
  assert.ok(kept.step(prompt, {}, 4).length >= 1);
  kept.close();
  s.close();
  return st;
}

test('tiny model matches the Rust engine', () => {
  checkModel('tiny', path.join(dir, 'tiny'));
});

test('SmolLM2 matches the Rust engine and the C suite', (t) => {
  const want = fixture('smollm2');
  if (!fs.existsSync(want.model)) return t.skip('SmolLM2 not fetched');
  const st = checkModel('smollm2');
  t.diagnostic(`tau ${st.tau.toFixed(2)}`);
  const c = fs.readFileSync(path.join(dir, 'c-smollm2.out'), 'utf8');
  assert.deepStrictEqual(ids(c), ids(want.greedy));
  const e = subspec.load(want.model, { draft: false });
  const p = e.tokenize('The three primary colours are');
  assert.deepStrictEqual(p, ids(want.prompt));
  assert.strictEqual(e.detokenize(p), 'The three primary colours are');
  assert.strictEqual(e.info().vocabSize, 49152);
  e.close();
});

test('host-owned sampling: a stateful host sampler walks trees exactly as it decodes plainly', () => {
  const tiny = path.join(dir, 'tiny');
  const prompt = ids(fixture('tiny').prompt);
  const e = subspec.load(tiny, { contextLength: 256 });
  const vocab = e.info().vocabSize;
  // Greedy after a repetition penalty on every token it has picked (its state).
  const sampler = () => {
    const seen = [];
    return (l) => {
      let best = 0;
      let vb = -Infinity;
      for (let i = 0; i < l.length; i++) {
        let x = l[i];
        if (seen.includes(i)) x = x > 0 ? x / 1.5 : x * 1.5;
        if (x > vb) { best = i; vb = x; }
      }
      seen.push(best);
      return best;
    };
  };
  const a = e.newSequence();
  const pickPlain = sampler();
  const plain = [];
  let input = prompt;
  while (plain.length < 32) {
    plain.push(pickPlain(a.eval(input, vocab)));
    input = [plain[plain.length - 1]];
  }
  const b = e.newSequence();
  const pickSpec = sampler();
  const spec = [];
  input = prompt;
  while (spec.length < 32) {
    spec.push(...b.iterSample(input, e.stepOptions(), pickSpec, 32 - spec.length));
    input = [];
  }
  assert.deepStrictEqual(spec, plain);
  assert.strictEqual(b.stats().generated, 32);
  // State errors leave the sequence unchanged.
  const len = b.tokens().length;
  assert.throws(() => b.iterEnd(), (err) => err.status === subspec.Status.INVALID_STATE);
  b.iterBegin([], e.stepOptions());
  assert.throws(() => b.step([]), (err) => err.status === subspec.Status.INVALID_STATE);
  const top = b.iterTopLogprobs(3);
  assert.strictEqual(top.length, 3);
  assert.ok(top[0].logprob >= top[1].logprob && top[1].logprob >= top[2].logprob);
  b.iterCancel();
  assert.strictEqual(b.tokens().length, len);
  a.close();
  b.close();
  e.close();
});

test('asynchronous steps: two generations at once while the event loop keeps running', async () => {
  const want = fixture('smollm2');
  if (!fs.existsSync(want.model)) return;
  const e = subspec.load(want.model, { contextLength: 1024 });
  const prompt = ids(want.prompt);
  const a = e.newSequence();
  const b = e.newSequence();
  const sync = e.newSequence();
  const greedy = sync.generate(prompt, {}, 32);
  const sampledSync = e.newSequence().generate(prompt, sampled, 32);
  let ticks = 0;
  const timer = setInterval(() => { ticks++; }, 5);
  const t0 = Date.now();
  const [ga, gb] = await Promise.all([a.generateAsync(prompt, {}, 32), b.generateAsync(prompt, sampled, 32)]);
  const ms = Date.now() - t0;
  clearInterval(timer);
  assert.deepStrictEqual(ga, greedy);
  assert.deepStrictEqual(gb, sampledSync);
  // The loop ran all along: at least a third of the 5 ms ticks the elapsed time allows.
  assert.ok(ticks >= Math.floor(ms / 15), `${ticks} timer ticks in ${ms} ms`);
  console.log(`# async: two generations in ${ms} ms, ${ticks} timer ticks meanwhile`);
  // The async iterator gives the same tokens, step by step.
  const c = e.newSequence();
  const streamed = [];
  for await (const t of c.stream(prompt, {}, 32)) streamed.push(t);
  assert.deepStrictEqual(streamed, greedy);
  for (const s of [a, b, c, sync]) s.close();
  e.close();
});

test('an AbortSignal stops an asynchronous step mid-way; the sequence goes on unchanged', async () => {
  const want = fixture('smollm2');
  if (!fs.existsSync(want.model)) return;
  const e = subspec.load(want.model, { contextLength: 1024 });
  const prompt = ids(want.prompt);
  const full = e.newSequence().generate(prompt, {}, 24);
  const s = e.newSequence();
  // A 600-token prefill, aborted 20 ms in.
  let long = [];
  while (long.length < 600) long = long.concat(prompt);
  const controller = new AbortController();
  setTimeout(() => controller.abort(new Error('client went away')), 20);
  await assert.rejects(s.stepAsync(long, {}, 8, { signal: controller.signal }),
    (err) => err.status === subspec.Status.ABORTED && err.cause.message === 'client went away' &&
      err.detail.includes('before decoder layer'));
  assert.strictEqual(s.stats().length, 0);
  await assert.rejects(s.stepAsync(prompt, {}, 8, { signal: controller.signal }),
    (err) => err.status === subspec.Status.ABORTED);
  // Aborted after the first streamed tokens: what came before stays, the rest follows exactly.
  const c2 = new AbortController();
  const got = [];
  await assert.rejects((async () => {
    for await (const t of s.stream(prompt, {}, 24, { signal: c2.signal })) {
      got.push(t);
      c2.abort();
    }
  })(), (err) => err.status === subspec.Status.ABORTED);
  assert.ok(got.length >= 1 && got.length < full.length);
  assert.deepStrictEqual(got, full.slice(0, got.length));
  const rest = await s.generateAsync([], {}, full.length - got.length);
  assert.deepStrictEqual(got.concat(rest), full);
  // Closing while a step is in flight frees the sequence once it ends.
  const p = s.stepAsync([], {}, 4);
  s.close();
  await p;
  assert.throws(() => s.step([1]), (err) => err.status === subspec.Status.NULL_POINTER);
  e.close();
});

// ---- batched steps (Engine.stepBatch / stepBatchAsync over subspec_step_batch) ----

/** Steps `batch` ({ sequence, prompt, options }[]) with `stepBatch` (a batch call, its
 * result awaited) until each sequence has `n` new tokens, a sequence leaving the batch
 * once it has them (continuous batching); a call's maxTokens is the most any of its
 * sequences still needs. Returns each sequence's steps (token arrays): not those of
 * step() (a batch's prompt step is a plain one), but their tokens are. */
async function steppedInBatches(batch, n, stepBatch) {
  const steps = batch.map(() => []);
  const got = batch.map(() => 0);
  for (;;) {
    const live = batch.map((_, i) => i).filter((i) => got[i] < n);
    if (!live.length) return steps;
    const max = Math.max(...live.map((i) => n - got[i]));
    const items = live.map((i) => ({
      sequence: batch[i].sequence, input: got[i] ? [] : batch[i].prompt, options: batch[i].options,
    }));
    const results = await stepBatch(items, max);
    assert.strictEqual(results.length, live.length);
    results.forEach((r, k) => {
      const i = live[k];
      assert.ok(Array.isArray(r.tokens) && !('error' in r), `item ${i}: ${r.error && r.error.message}`);
      assert.ok(r.tokens.length >= 1 && r.tokens.length <= max);
      steps[i].push(r.tokens);
      got[i] += r.tokens.length;
    });
  }
}

test('stepBatch: three sequences (greedy speculative, seeded sampling, plain) get exactly their own step() tokens', async () => {
  const want = fixture('smollm2');
  const tiny = !fs.existsSync(want.model); // SmolLM2's generations differ; the tiny model's less so
  const e = subspec.load(tiny ? path.join(dir, 'tiny') : want.model, { contextLength: 256 });
  const prompts = tiny ? [[0, 5, 17, 42, 99, 3], [7, 8, 9, 10], [100, 1, 64, 2, 33]]
    : ['The three primary colours are', 'def fibonacci(n):', 'Once upon a time, a small robot']
      .map((t) => e.tokenize(t));
  const options = [e.stepOptions(), { ...sampled, seed: 11 }, { speculate: false }];
  assert.ok(options[0].speculate && options[0].temperature === 0);
  const n = 16;
  // Each alone: its own step() calls on a fresh sequence.
  const alone = prompts.map((p, i) => {
    const s = e.newSequence();
    const out = [];
    while (out.length < n) out.push(...s.step(out.length ? [] : p, options[i], n - out.length));
    s.close();
    return out;
  });
  if (!tiny) assert.strictEqual(new Set(alone.map((a) => a.join(' '))).size, 3);
  for (const [name, stepBatch] of [
    ['stepBatch', (items, max) => e.stepBatch(items, max)],
    ['stepBatchAsync', (items, max) => e.stepBatchAsync(items, max)],
  ]) {
    const batch = prompts.map((prompt, i) => ({ sequence: e.newSequence(), prompt, options: options[i] }));
    const steps = await steppedInBatches(batch, n, stepBatch);
    batch.forEach((b, i) => {
      const got = steps[i].flat();
      // (A call's maxTokens is the most any of its sequences needs: one may get more.)
      assert.ok(got.length >= n);
      assert.deepStrictEqual(got.slice(0, n), alone[i], `${name}: sequence ${i}`);
      assert.deepStrictEqual(b.sequence.tokens(), prompts[i].concat(got), `${name}: sequence ${i}'s tokens`);
      assert.strictEqual(b.sequence.stats().generated, got.length);
      b.sequence.close();
    });
    console.log(`# ${name}: ${steps.map((s) => s.length).join('/')} steps for ${n} tokens each`);
  }
  e.close();
});

test('stepBatch: a sequence with an invalid token fails alone and unchanged; the others step', async () => {
  const e = subspec.load(path.join(dir, 'tiny'), { contextLength: 256 });
  const vocab = e.info().vocabSize;
  const prompt = ids(fixture('tiny').prompt);
  const [a, b, c] = [e.newSequence(), e.newSequence(), e.newSequence()];
  b.step([4, 5, 6], { speculate: false }, 1); // b has tokens: a failure must keep them
  const before = b.tokens();
  for (const [bad, run] of [
    [-1, (items) => e.stepBatch(items, 8)],
    [vocab, (items) => e.stepBatchAsync(items, 8)],
  ]) {
    const lens = [a, c].map((s) => s.tokens().length);
    const results = await run([
      { sequence: a, input: lens[0] ? [] : prompt },
      { sequence: b, input: [7, bad, 8] },
      { sequence: c, input: lens[1] ? [] : [3, 2, 1], options: { ...sampled, speculate: false } },
    ]);
    assert.strictEqual(results.length, 3);
    const err = results[1].error;
    assert.ok(err instanceof subspec.SubspecError && !('tokens' in results[1]));
    assert.strictEqual(err.status, subspec.Status.INVALID_TOKEN);
    assert.ok(err.detail.startsWith('seqs[1]: ') && err.detail.includes(String(bad)), err.detail);
    assert.deepStrictEqual(b.tokens(), before, 'the failed sequence appended nothing');
    assert.strictEqual(b.stats().generated, 1);
    [a, c].forEach((s, k) => {
      const r = results[k * 2];
      assert.ok(r.tokens.length >= 1 && !('error' in r));
      assert.deepStrictEqual(s.tokens().slice(-r.tokens.length), r.tokens);
    });
  }
  // Two failures: each sequence's own message.
  const results = e.stepBatch([{ sequence: a, input: [vocab + 5] }, { sequence: c, input: [-7] }, { sequence: b }]);
  assert.strictEqual(results[0].error.status, subspec.Status.INVALID_TOKEN);
  assert.strictEqual(results[1].error.status, subspec.Status.INVALID_TOKEN);
  assert.ok(results[1].error.detail.startsWith('seqs[1]: ') && results[1].error.detail.includes('-7'));
  assert.ok(results[0].error.detail.startsWith('seqs[0]: ') && results[0].error.detail.includes(String(vocab + 5)),
    results[0].error.detail);
  assert.ok(results[2].tokens.length >= 1);
  // A per-sequence status of another kind: a step from an empty sequence with no input.
  const empty = e.newSequence();
  const [r] = e.stepBatch([{ sequence: empty }]);
  assert.strictEqual(r.error.status, subspec.Status.INVALID_ARGUMENT);
  assert.deepStrictEqual(empty.tokens(), []);
  for (const s of [a, b, c, empty]) s.close();
  e.close();
});

test('stepBatch: bad arguments throw (stepBatchAsync rejects) and change nothing', async () => {
  const e = subspec.load(path.join(dir, 'tiny'), { contextLength: 256 });
  const [a, b] = [e.newSequence(), e.newSequence()];
  a.step([1, 2, 3], {}, 2);
  const before = a.tokens();
  const other = subspec.load(path.join(dir, 'tiny'), { contextLength: 256 });
  const foreign = other.newSequence();
  const closed = e.newSequence();
  closed.close();
  const { INVALID_ARGUMENT, NULL_POINTER } = subspec.Status;
  const cases = [
    [() => [{ sequence: a }], 'x', INVALID_ARGUMENT, 'maxTokens'],
    [() => ({ sequence: a }), undefined, INVALID_ARGUMENT, 'array'],
    [() => [{ sequence: a }, null], undefined, INVALID_ARGUMENT, 'items[1]'],
    [() => [{ sequence: a }, { input: [1] }], undefined, INVALID_ARGUMENT, 'items[1].sequence'],
    [() => [{ sequence: a }, { sequence: {} }], undefined, INVALID_ARGUMENT, 'not a Sequence'],
    [() => [{ sequence: a }, { sequence: closed, input: [1] }], undefined, NULL_POINTER, 'closed'],
    [() => [{ sequence: a }, { sequence: a }], undefined, INVALID_ARGUMENT, 'twice'],
    [() => [{ sequence: b, input: [1] }, { sequence: foreign, input: [1] }], undefined, INVALID_ARGUMENT, 'another engine'],
  ];
  for (const [items, max, status, text] of cases) {
    const is = (err) => err instanceof subspec.SubspecError && err.status === status && err.detail.includes(text);
    assert.throws(() => e.stepBatch(items(), max), is, text);
    await assert.rejects(e.stepBatchAsync(items(), max), is, text);
  }
  assert.deepStrictEqual(a.tokens(), before);
  assert.deepStrictEqual(b.tokens(), []);
  assert.deepStrictEqual(foreign.tokens(), []);
  assert.deepStrictEqual(e.stepBatch([]), []);
  assert.deepStrictEqual(await e.stepBatchAsync([]), []);
  // Closing a sequence and the engine while a batch is in flight takes effect when it ends.
  const p = e.stepBatchAsync([{ sequence: a }, { sequence: b, input: [5, 6] }], 4);
  a.close();
  e.close();
  assert.throws(() => e.stepBatch([{ sequence: b }]), (err) => err.status === NULL_POINTER);
  const results = await p;
  assert.ok(results.every((r) => r.tokens && r.tokens.length >= 1));
  assert.throws(() => a.step([1]), (err) => err.status === NULL_POINTER);
  assert.ok(b.step([], {}, 2).length >= 1); // b keeps the model alive
  foreign.close();
  other.close();
  b.close();
  await assert.rejects(e.stepBatchAsync([{ sequence: b }]), (err) => err.status === NULL_POINTER);
});
