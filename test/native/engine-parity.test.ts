// Logits parity with llama.cpp (node-llama-cpp, CPU) on the same synth GGUF, for every supported weight
// type and both architectures. Also the end-to-end proof that dequantization feeds the model right.
//
// Tolerances, relative to the RMS of the logits (about 2 here), from how llama.cpp's CPU backend
// multiplies (ggml-cpu: each weight type has a "vec_dot_type" the activations are converted to):
// - F32: both sides compute in fp32; only summation order differs → 1e-4 absolute (measured 8e-6).
// - F16: llama.cpp rounds activations to f16 (2^-11 relative) → RMS diff 0.2%, max 1% (measured 0.06%, 0.3%).
// - BF16: activations rounded to bf16 (2^-8 relative) → RMS diff 1.5%, max 5% (measured 0.5%, 2.3%).
// - Q8_0, Q4_0, Q4_K, Q5_K, Q6_K: activations quantized to Q8_0 / Q8_K blocks (a step of amax/127 over
//   32 or 256 values, ~0.7% noise per matmul input) → RMS diff 4%, max 25% (measured ≤ 2.4%, ≤ 13%).
//   A dequantization error would show as differences of the order of the logits themselves (100%).
// The KV cache is F32 and flash attention off on the llama.cpp side so attention is computed in fp32.
import { getLlama, type Llama } from "node-llama-cpp";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Engine } from "../../src/train/engine.js";
import { synthModel } from "../helpers/models.js";
import { randomTokens } from "./engine-fixtures.js";

const nVocab = 320;
const shape = { nLayer: 2, nEmbd: 256, nHead: 4, nHeadKv: 2, nFf: 512, nVocab, contextLength: 256, seed: 3 } as const;
const tolerance: Record<string, { rms: number; max: number }> = {
  F32: { rms: 2e-5, max: 5e-5 },
  F16: { rms: 0.002, max: 0.01 },
  BF16: { rms: 0.015, max: 0.05 },
  Q8_0: { rms: 0.04, max: 0.25 },
  Q4_0: { rms: 0.04, max: 0.25 },
  Q4_K: { rms: 0.04, max: 0.25 },
  Q5_K: { rms: 0.04, max: 0.25 },
  Q6_K: { rms: 0.04, max: 0.25 },
};
const types = Object.keys(tolerance) as (keyof typeof tolerance & string)[];

let llama: Llama;
beforeAll(async () => {
  llama = await getLlama({ gpu: false, build: "never", logLevel: "error" });
});
afterAll(async () => {
  await llama?.dispose();
});

async function llamaCppLogits(file: string, tokens: Int32Array): Promise<Float32Array> {
  const model = await llama.loadModel({ modelPath: file, gpuLayers: 0 });
  try {
    const context = await model.createContext({
      contextSize: 256,
      batchSize: 128,
      threads: 2,
      flashAttention: false,
      experimentalKvCacheKeyType: "F32",
      experimentalKvCacheValueType: "F32",
    });
    const results = await context.getSequence().controlledEvaluate(Array.from(tokens, (token) => [token, { generateNext: { logits: true } }] as const));
    const logits = new Float32Array(tokens.length * nVocab).fill(Number.NaN);
    results.forEach((result, position) => {
      for (const [token, logit] of result!.next.logits!) logits[position * nVocab + token] = logit;
    });
    await context.dispose();
    return logits;
  } finally {
    await model.dispose();
  }
}

describe.each(["qwen2", "llama"] as const)("logits match llama.cpp: %s", (arch) => {
  it.each(types)("%s weights", async (type) => {
    // llama with rope_freqs (llama3 frequency scaling), as R1-Distill-Llama-8B carries
    const file = await synthModel({ ...shape, arch, type: type as "F32", ropeFreqs: arch === "llama" });
    const tokens = randomTokens(100, nVocab, 7); // two 64-position attention blocks
    const expected = await llamaCppLogits(file, tokens);
    const engine = await Engine.load(file, { threads: 2, maxTokens: 128 });
    const actual = await engine.logits(tokens);
    engine.dispose();

    let sumSquares = 0, diffSquares = 0, maxDiff = 0;
    for (let i = 0; i < expected.length; i++) {
      expect(Number.isFinite(expected[i]!), `llama.cpp gave every logit (index ${i})`).toBe(true);
      const diff = Math.abs(expected[i]! - actual[i]!);
      sumSquares += expected[i]! ** 2;
      diffSquares += diff * diff;
      maxDiff = Math.max(maxDiff, diff);
    }
    const rms = Math.sqrt(sumSquares / expected.length);
    const rmsDiff = Math.sqrt(diffSquares / expected.length);
    expect(rms).toBeGreaterThan(0.5); // the logits carry signal, so the relative bounds mean something
    expect(rmsDiff / rms, `RMS difference ${rmsDiff} vs logits RMS ${rms}`).toBeLessThanOrEqual(tolerance[type]!.rms);
    expect(maxDiff / rms, `largest difference ${maxDiff} vs logits RMS ${rms}`).toBeLessThanOrEqual(tolerance[type]!.max);
  });
});
