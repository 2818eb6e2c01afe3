// The oracle checked against llama.cpp: the transformers model that test/reference/gguf_to_hf.py builds
// from a synth GGUF must give llama.cpp's own logits (node-llama-cpp, CPU). This proves the oracle's
// loader (tensor mapping, llama's Q/K un-permutation, NEOX vs normal RoPE, llama3 rope_freqs, tied
// output, Q/K/V biases) before it is used to judge the engine.
import { beforeAll, describe, expect, test } from "vitest";
import { synthModel } from "../helpers/models.js";
import { llamaCppLogits, maxDifference, referenceUnavailableReason, runReference, testTokens } from "./oracle.js";

const unavailable = await referenceUnavailableReason();
if (unavailable) console.warn(`reference tier skipped: ${unavailable}`);

// Small but complete: 2 layers, grouped-query attention (4 heads over 2 KV heads), K-quant-sized rows.
const shape = { nLayer: 2, nEmbd: 256, nHead: 4, nHeadKv: 2, nFf: 512, nVocab: 1280, contextLength: 256 } as const;

const models = [
  // F32 weights: llama.cpp multiplies in fp32, so only accumulation order separates the two.
  { name: "qwen2 F32 (Q/K/V bias, NEOX RoPE, tied output)", options: { ...shape, arch: "qwen2", type: "F32", qkvBias: true, tiedOutput: true }, tolerance: 1e-4 },
  { name: "llama F32 (permuted Q/K, llama3 rope_freqs)", options: { ...shape, arch: "llama", type: "F32", ropeFreqs: true }, tolerance: 1e-4 },
  // Quantized weights: gguf-py dequantizes exactly, but llama.cpp's CPU matmul also rounds the
  // activations to 8-bit blocks (Q8_0 / Q8_K) before its integer dot products, which moves logits by
  // up to about 1-2% of their scale; the bound is 5%, while a wrong dequantization or layout shows up
  // as differences of the size of the logits themselves.
  { name: "qwen2 Q8_0", options: { ...shape, arch: "qwen2", type: "Q8_0" }, tolerance: 1e-1 },
  { name: "llama Q4_K", options: { ...shape, arch: "llama", type: "Q4_K" }, tolerance: 1e-1 },
] as const;

describe.skipIf(unavailable !== undefined)("transformers model built from a GGUF reproduces llama.cpp's logits", () => {
  const paths = new Map<string, string>();
  beforeAll(async () => {
    for (const model of models) paths.set(model.name, await synthModel(model.options));
  });

  test.each(models)("$name", async ({ name, tolerance }) => {
    const gguf = paths.get(name)!;
    const tokens = testTokens(40, shape.nVocab, 7);
    const targets = new Int32Array(tokens.length).fill(-1);
    const [reference, llamaCpp] = await Promise.all([
      runReference({ gguf, logits: true, rows: [{ tokens, targets, seqStarts: Int32Array.of(0) }] }),
      llamaCppLogits(gguf, tokens),
    ]);
    const hf = reference.rows[0].logits!;
    expect(hf.shape).toEqual([tokens.length, llamaCpp.nVocab]);
    const { maxDiff, maxRef } = maxDifference(llamaCpp.logits, hf.data);
    // judged against the largest logit, so the bound means the same at any logit scale
    expect(maxRef).toBeGreaterThan(1);
    expect(maxDiff).toBeLessThanOrEqual(tolerance * maxRef);
  });
});
