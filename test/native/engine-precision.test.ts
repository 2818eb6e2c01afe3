// precision "bf16": base-weight matmuls with bfloat16 operands (AVX512-BF16). Logits stay within the
// rounding of bf16 (2^-9 relative per operand, ~0.3% of the logits' RMS after a few layers) of the fp32
// reference, and training still converges. On CPUs without AVX512-BF16 the option is refused clearly.
import { readFileSync } from "node:fs";
import { describe, expect, it } from "vitest";
import { Engine } from "../../src/train/engine.js";
import { synthModel } from "../helpers/models.js";
import { packedRow, randomTokens } from "./engine-fixtures.js";

const hasBf16 = (() => {
  try {
    return /\bavx512_bf16\b/.test(readFileSync("/proc/cpuinfo", "utf8"));
  } catch {
    return false;
  }
})();
const shape = { arch: "qwen2", type: "Q4_K", nLayer: 2, nEmbd: 256, nHead: 4, nHeadKv: 2, nFf: 512, nVocab: 320, contextLength: 256, seed: 91 } as const;

describe("precision bf16", () => {
  it.skipIf(!hasBf16)("gives logits within 1% (RMS) of fp32", async () => {
    const file = await synthModel(shape);
    const tokens = randomTokens(48, shape.nVocab, 5);
    const reference = await Engine.load(file, { threads: 2, maxTokens: 64 });
    const fast = await Engine.load(file, { threads: 2, maxTokens: 64, precision: "bf16" });
    const expected = await reference.logits(tokens);
    const actual = await fast.logits(tokens);
    reference.dispose();
    fast.dispose();
    let sumSquares = 0, diffSquares = 0;
    for (let i = 0; i < expected.length; i++) {
      sumSquares += expected[i]! ** 2;
      diffSquares += (expected[i]! - actual[i]!) ** 2;
    }
    const relative = Math.sqrt(diffSquares / sumSquares);
    expect(relative).toBeGreaterThan(0); // bf16 rounding did happen
    expect(relative).toBeLessThan(0.01);
  });

  it.skipIf(!hasBf16)("trains: the loss of one batch falls", async () => {
    const engine = await Engine.load(await synthModel(shape), { threads: 2, maxTokens: 64, precision: "bf16", lora: { rank: 8, alpha: 16 } });
    const rows = [packedRow([randomTokens(24, shape.nVocab, 6)])];
    const first = (await engine.step(rows, 1e-2)).loss;
    let last = first;
    for (let step = 0; step < 30; step++) last = (await engine.step(rows, 1e-2)).loss;
    engine.dispose();
    expect(last).toBeLessThan(first * 0.3);
  });

  it.skipIf(hasBf16)("is refused with a clear message on CPUs without AVX512-BF16", async () => {
    await expect(Engine.load(await synthModel(shape), { precision: "bf16" })).rejects.toThrow('precision "bf16" needs a CPU with AVX512-BF16');
  });
});
