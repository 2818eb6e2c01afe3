// The engine judged by an oracle we did not write: the same GGUF, dequantized by llama.cpp's gguf-py,
// run by transformers' Qwen2ForCausalLM / LlamaForCausalLM (float64, eager attention) with a PEFT LoRA
// holding the engine's A and B (B non-zero). Logits, the summed loss over masked targets and the
// gradient of every LoRA tensor must agree.
//
// Tolerances. Both sides use exactly the same weights (every block format dequantizes to the same
// floats on both sides), so what separates them is only the engine's fp32 arithmetic against the
// oracle's float64: accumulation order and rounding in dot products of length ≤ 512, RMSNorm, softmax,
// exp/log — relative errors of order 1e-7 that compound over the layers and the backward pass.
// Measured (2 layers, rank 4, 44 target tokens, 2 threads): logits within 1.4e-6 of the largest logit,
// summed loss within 8e-8, gradients within 2.3e-6 (norm of the difference) and 2.7e-6 (largest element)
// of each tensor's reference. The bounds sit 12–37x above that, for other CPUs and thread counts.
// Mistakes are far larger: alpha off by just 1% moves logits by 3e-3, the loss by 1e-4 and gradients
// by 1.2e-2 in these units; a wrong RoPE pairing or a missing bias moves them by O(1).
import { afterAll, beforeAll, describe, expect, test } from "vitest";
import type { NamedTensor } from "../../src/native/addon.js";
import { Engine, loraTargets } from "../../src/train/engine.js";
import { synthModel } from "../helpers/models.js";
import { maxDifference, referenceUnavailableReason, runReference, testTokens, type ReferenceResult, type ReferenceRow } from "./oracle.js";

const unavailable = await referenceUnavailableReason();
if (unavailable) console.warn(`reference tier skipped: ${unavailable}`);

const shape = { nLayer: 2, nEmbd: 256, nHead: 4, nHeadKv: 2, nFf: 512, nVocab: 1280, contextLength: 256 } as const;
const lora = { rank: 4, alpha: 8, targets: [...loraTargets], dropout: 0, seed: 3 };

const cases = [
  { name: "qwen2, Q8_0, Q/K/V bias", options: { ...shape, arch: "qwen2", type: "Q8_0", qkvBias: true } },
  { name: "llama, Q4_K, permuted Q/K, llama3 rope_freqs", options: { ...shape, arch: "llama", type: "Q4_K", ropeFreqs: true } },
  { name: "qwen2, F32, tied output", options: { ...shape, arch: "qwen2", type: "F32", tiedOutput: true } },
] as const;

const logitTolerance = 3e-5; // of the largest |logit|
const lossTolerance = 1e-6; // relative, on the summed loss
const gradientNormTolerance = 5e-5; // ‖g − g_ref‖ / ‖g_ref‖ per tensor
const gradientMaxTolerance = 1e-4; // max |g − g_ref| / max |g_ref| per tensor

/** Row with packed sequences; targets follow the data contract: next token from lossFrom on, -1 at each sequence's end. */
function packedRow(lengths: number[], lossFrom: number[], seed: number): ReferenceRow {
  const total = lengths.reduce((sum, length) => sum + length, 0);
  const tokens = testTokens(total, shape.nVocab, seed);
  const targets = new Int32Array(total).fill(-1);
  const seqStarts = new Int32Array(lengths.length);
  let start = 0;
  lengths.forEach((length, index) => {
    seqStarts[index] = start;
    for (let i = start; i < start + length - 1; i++) if (i + 1 - start >= lossFrom[index]) targets[i] = tokens[i + 1];
    start += length;
  });
  return { tokens, targets, seqStarts };
}

/** Deterministic non-zero LoRA values of the engine's own names and shapes (B ≠ 0, so every gradient is live). */
function nonZeroLora(like: NamedTensor[]): NamedTensor[] {
  return like.map((tensor, index) => {
    const values = testTokens(tensor.data.length, 2001, 100 + index);
    const fanIn = tensor.shape[1];
    const scale = tensor.name.endsWith(".lora_a") ? 1 / Math.sqrt(fanIn) : 0.05;
    const data = Float32Array.from(values, (value) => ((value - 1000) / 1000) * scale);
    return { name: tensor.name, shape: [...tensor.shape], data };
  });
}

function l2(values: ArrayLike<number>): number {
  let sum = 0;
  for (let i = 0; i < values.length; i++) sum += values[i] * values[i];
  return Math.sqrt(sum);
}

describe.skipIf(unavailable !== undefined).each(cases)("engine vs transformers + PEFT: $name", ({ options }) => {
  const rows = [packedRow([20, 16], [6, 4], 11), packedRow([28], [10], 12)];
  let engine: Engine;
  let loraTensors: NamedTensor[];
  let reference: ReferenceResult;

  beforeAll(async () => {
    const gguf = await synthModel(options);
    engine = await Engine.load(gguf, { device: "cpu", maxTokens: 64, lora });
    loraTensors = nonZeroLora(await engine.getLora());
    await engine.setLora(loraTensors);
    reference = await runReference({ gguf, rows, logits: true, lora: { rank: lora.rank, alpha: lora.alpha, targets: lora.targets, tensors: loraTensors } });
  });
  afterAll(() => engine?.dispose());

  test("logits of every row (packed sequences included) agree", async () => {
    for (const [index, row] of rows.entries()) {
      const logits = await engine.logits({ tokens: row.tokens, seqStarts: row.seqStarts });
      const expected = reference.rows[index].logits!;
      expect(logits.length).toBe(expected.data.length);
      const { maxDiff, maxRef } = maxDifference(logits, expected.data);
      expect(maxRef).toBeGreaterThan(1);
      expect(maxDiff, `row ${index}: max |logit difference| ${maxDiff} at scale ${maxRef}`).toBeLessThanOrEqual(logitTolerance * maxRef);
    }
  });

  test("the summed loss over masked targets and every LoRA gradient agree", async () => {
    const result = await engine.gradients(rows);
    const targetCount = rows.reduce((sum, row) => sum + row.targets.filter((target) => target >= 0).length, 0);
    expect(reference.tokens).toBe(targetCount);
    expect(result.tokens).toBe(targetCount);
    expect(Math.abs(result.lossSum - reference.lossSum)).toBeLessThanOrEqual(lossTolerance * reference.lossSum);

    const names = result.tensors.map((tensor) => tensor.name).sort();
    expect(names).toEqual([...reference.gradients.keys()].sort());
    expect(names).toHaveLength(shape.nLayer * lora.targets.length * 2);
    for (const tensor of result.tensors) {
      const expected = reference.gradients.get(tensor.name)!;
      expect(tensor.shape, tensor.name).toEqual(expected.shape);
      const referenceNorm = l2(expected.data);
      // a zero reference gradient would make the comparison vacuous: B ≠ 0 keeps every A on the loss path
      expect(referenceNorm, `${tensor.name}: reference gradient is zero`).toBeGreaterThan(0);
      const difference = Float64Array.from(tensor.data, (value, i) => value - expected.data[i]);
      const relativeNorm = l2(difference) / referenceNorm;
      expect(relativeNorm, `${tensor.name}: ‖g − g_ref‖ / ‖g_ref‖`).toBeLessThanOrEqual(gradientNormTolerance);
      const { maxDiff, maxRef } = maxDifference(tensor.data, expected.data);
      expect(maxDiff, `${tensor.name}: max |g − g_ref| ${maxDiff} at scale ${maxRef}`).toBeLessThanOrEqual(gradientMaxTolerance * maxRef);
    }
  });
});
