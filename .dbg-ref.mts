import { llamaCppLogits, runReference, testTokens, maxDifference } from "./test/reference/oracle.ts";
const gguf = process.argv[2];
const tokens = testTokens(40, 1280, 7);
const ref = await runReference({ gguf, logits: true, rows: [{ tokens, targets: new Int32Array(40).fill(-1), seqStarts: Int32Array.of(0) }] });
const ll = await llamaCppLogits(gguf, tokens);
const hf = ref.rows[0].logits!.data;
for (let p = 0; p < 40; p += 1) {
  const a = ll.logits.subarray(p*1280, (p+1)*1280), b = hf.subarray(p*1280, (p+1)*1280);
  const d = maxDifference(a, b); if (d.maxDiff > 1e-3) console.log(p, d.maxDiff, d.at, a[d.at], b[d.at]);
}
