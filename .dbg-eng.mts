import { Engine, loraTargets } from "./src/train/engine.ts";
import { synthModel } from "./test/helpers/models.ts";
import { maxDifference, runReference, testTokens } from "./test/reference/oracle.ts";
const shape = { nLayer: 2, nEmbd: 256, nHead: 4, nHeadKv: 2, nFf: 512, nVocab: 1280, contextLength: 256 } as const;
const lora = { rank: 4, alpha: 8, targets: [...loraTargets], dropout: 0, seed: 3 };
function packedRow(lengths: number[], lossFrom: number[], seed: number) {
  const total = lengths.reduce((s, l) => s + l, 0);
  const tokens = testTokens(total, shape.nVocab, seed);
  const targets = new Int32Array(total).fill(-1);
  const seqStarts = new Int32Array(lengths.length);
  let start = 0;
  lengths.forEach((length, index) => { seqStarts[index] = start; for (let i = start; i < start + length - 1; i++) if (i + 1 - start >= lossFrom[index]) targets[i] = tokens[i + 1]; start += length; });
  return { tokens, targets, seqStarts };
}
const l2 = (v: ArrayLike<number>) => { let s = 0; for (let i = 0; i < v.length; i++) s += v[i] * v[i]; return Math.sqrt(s); };
for (const o of [{ arch: "qwen2", type: "Q8_0", qkvBias: true }, { arch: "llama", type: "Q4_K", ropeFreqs: true }, { arch: "qwen2", type: "F32", tiedOutput: true }] as const) {
  const gguf = await synthModel({ ...shape, ...o });
  const engine = await Engine.load(gguf, { device: "cpu", maxTokens: 64, lora });
  const lt = engine.getLora().map((t, index) => { const v = testTokens(t.data.length, 2001, 100 + index); const sc = t.name.endsWith(".lora_a") ? 1 / Math.sqrt(t.shape[1]) : 0.05; return { name: t.name, shape: [...t.shape], data: Float32Array.from(v, (x) => ((x - 1000) / 1000) * sc) }; });
  engine.setLora(lt);
  const rows = [packedRow([20, 16], [6, 4], 11), packedRow([28], [10], 12)];
  const ref = await runReference({ gguf, rows, logits: true, lora: { rank: 4, alpha: 8, targets: lora.targets, tensors: lt } });
  let lmax = 0;
  for (const [i, row] of rows.entries()) { const lg = await engine.logits({ tokens: row.tokens, seqStarts: row.seqStarts }); const d = maxDifference(lg, ref.rows[i].logits!.data); lmax = Math.max(lmax, d.maxDiff / d.maxRef); }
  const g = await engine.gradients(rows);
  let gn = 0, gm = 0, minNorm = Infinity;
  for (const t of g.tensors) { const e = ref.gradients.get(t.name)!; const n = l2(e.data); minNorm = Math.min(minNorm, n); gn = Math.max(gn, l2(Float64Array.from(t.data, (x, i) => x - e.data[i])) / n); const d = maxDifference(t.data, e.data); gm = Math.max(gm, d.maxDiff / d.maxRef); }
  console.log(JSON.stringify(o), "logits", lmax.toExponential(2), "loss rel", (Math.abs(g.lossSum - ref.lossSum) / ref.lossSum).toExponential(2), "grad norm rel", gn.toExponential(2), "grad max rel", gm.toExponential(2), "min ref grad norm", minNorm.toExponential(2), "tokens", g.tokens, ref.tokens, "loss", g.lossSum);
  engine.dispose();
}
