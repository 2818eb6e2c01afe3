import { synthModel } from "./test/helpers/models.ts";
import { llamaCppLogits, runReference, testTokens, maxDifference } from "./test/reference/oracle.ts";
const shape = { nLayer: 2, nEmbd: 256, nHead: 4, nHeadKv: 2, nFf: 512, nVocab: 1280, contextLength: 256 } as const;
for (const o of [{ arch: "llama", type: "F32", ropeFreqs: true }, { arch: "qwen2", type: "F32", qkvBias: true, tiedOutput: true }, {arch:"qwen2", type:"Q8_0"}, {arch:"llama", type:"Q4_K"}, {arch:"qwen2", type:"F16"}, {arch:"qwen2", type:"Q6_K"}] as const) {
  const gguf = await synthModel({ ...shape, ...o });
  const tokens = testTokens(40, 1280, 7);
  const t0 = Date.now();
  const ref = await runReference({ gguf, logits: true, rows: [{ tokens, targets: new Int32Array(40).fill(-1), seqStarts: Int32Array.of(0) }] });
  const t1 = Date.now();
  const ll = await llamaCppLogits(gguf, tokens);
  const d = maxDifference(ll.logits, ref.rows[0].logits!.data);
  console.log(JSON.stringify(o), d.maxDiff / d.maxRef, d.maxRef, "python ms", t1 - t0, "llama ms", Date.now() - t1);
}
