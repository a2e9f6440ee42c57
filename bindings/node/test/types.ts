// Compile-time check of index.d.ts (tsc --noEmit, run by scripts/test-bindings.sh): the
// README's usage must type-check under --strict.
import { load, Status, SubspecError, Engine, Sequence, SequenceStats, StepOptions, BatchItem, BatchResult, statusString, version } from '..';

const engine: Engine = load('models/smollm2-135m-instruct', {
  contextLength: 1024, threads: 0, draftMethod: 'hqq', quantizeLmHead: true, substituteAllLayers: false,
  substituteLayers: [0, 1],
});
const tree: StepOptions = { ...engine.stepOptions(), adaptiveDepth: true };
const lmHead: number = engine.info().draftLmHeadBytes;
console.log(tree.treeDepth, lmHead, statusString(Status.OK));
const seq: Sequence = engine.newSequence();
const out: number[] = seq.generate(engine.tokenize('The three primary colours are'), { temperature: 0 }, 64);
const stats: SequenceStats = seq.stats();
const text: string = engine.detokenize(out);
try {
  seq.step([1], { speculate: false, seed: 7n }, 1);
} catch (e) {
  if (e instanceof SubspecError && e.status === Status.INVALID_TOKEN) console.log(e.detail);
}
console.log(version, stats.tau, text, engine.info().architecture);
const controller = new AbortController();
async function streamed(): Promise<number[]> {
  const got: number[] = await seq.stepAsync([1, 2], {}, 8, { signal: controller.signal });
  for await (const t of seq.stream([], { temperature: 0 }, 16)) got.push(t);
  return got.concat(await seq.generateAsync([], {}, 4, { signal: controller.signal }));
}
const other: Sequence = engine.newSequence();
const items: BatchItem[] = [
  { sequence: seq, input: [1, 2], options: { temperature: 0.8, seed: 7 } },
  { sequence: other, input: new Int32Array([3]) },
];
const results: BatchResult[] = engine.stepBatch(items, 8);
for (const r of results) {
  if (r.error) console.log(r.error.status === Status.INVALID_TOKEN, r.error.detail);
  else console.log(r.tokens.length);
}
async function batched(): Promise<number> {
  const got = await engine.stepBatchAsync([{ sequence: other }], 4);
  return got[0].tokens ? got[0].tokens.length : 0;
}
batched().then((n: number) => console.log(n));
streamed().then((t) => console.log(t.length)).finally(() => {
  seq.close();
  engine.close();
});
