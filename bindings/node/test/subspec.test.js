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
  c.close();
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
