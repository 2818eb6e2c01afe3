// Training behaviour: overfitting one batch, determinism from the seed, packing equivalence, and
// the optimizer state round trip.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { NativeRow } from "../../src/native/addon.js";
import { Engine } from "../../src/train/engine.js";
import { synthModel } from "../helpers/models.js";
import { maxAbsDifference, packedRow, randomTokens, randomizeLora, smallModel } from "./engine-fixtures.js";

const f32Model = () => synthModel({ ...smallModel, arch: "qwen2", type: "F32", seed: 21 });
const q8Model = () => synthModel({ ...smallModel, arch: "llama", type: "Q8_0", seed: 22 });

describe("training", () => {
  it("overfits one batch: the loss goes near zero", async () => {
    const engine = await Engine.load(await q8Model(), { threads: 2, maxTokens: 64, lora: { rank: 8, alpha: 16 }, optimizer: { clipNorm: 1 } });
    const rows = [packedRow([randomTokens(20, smallModel.nVocab, 31)]), packedRow([randomTokens(16, smallModel.nVocab, 32)])];
    const losses: number[] = [];
    for (let step = 0; step < 80; step++) losses.push((await engine.step(rows, 1e-2)).loss);
    engine.dispose();
    expect(losses[0]).toBeGreaterThan(4);
    expect(losses.at(-1)).toBeLessThan(0.05);
  });

  it("gives the same loss sequence for the same seed (dropout included), another for another seed", async () => {
    const file = await f32Model();
    const rows = [packedRow([randomTokens(24, smallModel.nVocab, 41)])];
    async function run(seed: number): Promise<number[]> {
      const engine = await Engine.load(file, { threads: 2, maxTokens: 32, lora: { rank: 4, alpha: 8, dropout: 0.1, seed } });
      const losses: number[] = [];
      for (let step = 0; step < 6; step++) losses.push((await engine.step(rows, 5e-3)).lossSum);
      engine.dispose();
      return losses;
    }
    const first = await run(7);
    expect(await run(7)).toEqual(first);
    expect(await run(8)).not.toEqual(first);
  });

  it("reports the pre-clip norm of the mean gradient", async () => {
    const engine = await Engine.load(await f32Model(), { threads: 2, maxTokens: 32, lora: { rank: 4, alpha: 8 }, optimizer: { clipNorm: 1e-3 } });
    await randomizeLora(engine, 3, 0.1);
    const rows = [packedRow([randomTokens(12, smallModel.nVocab, 42)]), packedRow([randomTokens(9, smallModel.nVocab, 43)])];
    const { tensors, tokens } = await engine.gradients(rows);
    let sumSquares = 0;
    for (const tensor of tensors) for (const value of tensor.data) sumSquares += value * value;
    const result = await engine.step(rows, 1e-3);
    engine.dispose();
    expect(result.tokens).toBe(tokens);
    expect(result.gradNorm).toBeCloseTo(Math.sqrt(sumSquares) / tokens, 5);
    expect(result.gradNorm).toBeGreaterThan(1e-3); // so clipping was active and did not change the report
  });
});

/**
 * Two engines of one model from the same random LoRA: three training steps on each (dropout on), then each one's
 * gradients at the point reached.
 */
async function trainSideBySide(first: Engine, second: Engine, loraSeed: number, rows: NativeRow[]) {
  await second.setLora(await randomizeLora(first, loraSeed, 0.05));
  const steps: [number, number][] = [];
  for (let step = 0; step < 3; step++) steps.push([(await first.step(rows, 1e-3)).lossSum, (await second.step(rows, 1e-3)).lossSum]);
  return { steps, gradients: [await first.gradients(rows), await second.gradients(rows)] as const };
}

describe("memory", () => {
  const options = { threads: 2, maxTokens: 64, lora: { rank: 4, alpha: 8, dropout: 0.1, targets: ["q", "k", "v", "o", "gate", "up", "down"] } };

  it("layers kept from the forward and recomputed layers give the same losses and gradients (dropout on)", async () => {
    const file = await q8Model();
    const kept = await Engine.load(file, options);
    const recomputed = await Engine.load(file, { ...options, maxKeptLayers: 0 });
    try {
      expect([kept.memoryPlan().keptLayers, kept.memoryPlan().recomputedLayers]).toEqual([smallModel.nLayer - 1, 0]);
      expect([recomputed.memoryPlan().keptLayers, recomputed.memoryPlan().recomputedLayers]).toEqual([0, smallModel.nLayer - 1]);
      expect(recomputed.memoryPlan().activations).toBeLessThan(kept.memoryPlan().activations!);
      const rows = [packedRow([randomTokens(30, smallModel.nVocab, 61), randomTokens(25, smallModel.nVocab, 62)], 2)];
      const { steps, gradients: [a, b] } = await trainSideBySide(kept, recomputed, 6, rows);
      for (const [keptLoss, recomputedLoss] of steps) expect(keptLoss).toBe(recomputedLoss);
      for (let i = 0; i < a.tensors.length; i++) expect(Array.from(b.tensors[i]!.data), a.tensors[i]!.name).toEqual(Array.from(a.tensors[i]!.data));
    } finally {
      kept.dispose();
      recomputed.dispose();
    }
  });

  it("the feed-forward block run over chunks of positions gives the same losses, gradients and logits as run whole", async () => {
    const file = await q8Model();
    // nothing kept from the forward: the recompute runs the chunks too
    const whole = await Engine.load(file, { ...options, maxKeptLayers: 0 });
    const chunked = await Engine.load(file, { ...options, maxKeptLayers: 0, feedForwardTokens: 7 });
    try {
      expect(chunked.memoryPlan().activations).toBeLessThan(whole.memoryPlan().activations!);
      // dropout on: each position keeps its mask whatever chunk it falls in
      const rows = [packedRow([randomTokens(30, smallModel.nVocab, 51), randomTokens(20, smallModel.nVocab, 52)], 3)];
      const { steps, gradients: [a, b] } = await trainSideBySide(whole, chunked, 5, rows);
      for (const [wholeLoss, chunkedLoss] of steps) expect(Math.abs(wholeLoss - chunkedLoss) / wholeLoss).toBeLessThanOrEqual(1e-6);
      for (let i = 0; i < a.tensors.length; i++) {
        const scale = Math.max(...a.tensors[i]!.data.map(Math.abs));
        expect(maxAbsDifference(a.tensors[i]!.data, b.tensors[i]!.data) / scale, a.tensors[i]!.name).toBeLessThanOrEqual(1e-5);
      }
      const tokens = randomTokens(40, smallModel.nVocab, 53);
      expect(maxAbsDifference(await whole.logits(tokens), await chunked.logits(tokens))).toBeLessThanOrEqual(1e-5);
    } finally {
      whole.dispose();
      chunked.dispose();
    }
  });
});

describe("packing", () => {
  let engine: Engine;
  // the second sequence starts inside the second 64-position attention block
  const first = randomTokens(75, smallModel.nVocab, 51);
  const second = randomTokens(30, smallModel.nVocab, 52);
  beforeAll(async () => {
    engine = await Engine.load(await f32Model(), { threads: 2, maxTokens: 128, lora: { rank: 4, alpha: 8 } });
    await randomizeLora(engine, 4, 0.1);
  });
  afterAll(() => engine?.dispose());

  it("a packed row gives each sequence's loss and the summed gradients of the sequences alone", async () => {
    const packed = packedRow([first, second], 2);
    const alone = [packedRow([first], 2), packedRow([second], 2)];
    const packedLoss = await engine.evaluate([packed]);
    const aloneLosses: number[] = [];
    for (const row of alone) aloneLosses.push((await engine.evaluate([row])).lossSum);
    expect(packedLoss.lossSum).toBeCloseTo(aloneLosses[0]! + aloneLosses[1]!, 4);

    // per-sequence: mask the second sequence's targets in the packed row → the first's loss alone
    const firstOnly: NativeRow = { ...packed, targets: packed.targets.map((target, i) => (i >= first.length ? -1 : target)) };
    expect((await engine.evaluate([firstOnly])).lossSum).toBeCloseTo(aloneLosses[0]!, 4);

    const packedGradients = await engine.gradients([packed]);
    const summed = await engine.gradients(alone);
    expect(packedGradients.tokens).toBe(summed.tokens);
    for (let i = 0; i < summed.tensors.length; i++) {
      const expected = summed.tensors[i]!;
      const actual = packedGradients.tensors[i]!;
      expect(actual.name).toBe(expected.name);
      const scale = Math.max(...Array.from(expected.data, Math.abs));
      expect(maxAbsDifference(actual.data, expected.data), expected.name).toBeLessThanOrEqual(1e-4 * scale + 1e-6);
    }
  });

  it("a packed row's logits equal each sequence's own logits", async () => {
    const packed = await engine.logits({ tokens: Int32Array.from([...first, ...second]), seqStarts: Int32Array.of(0, first.length) });
    const alone = [await engine.logits(first), await engine.logits(second)];
    expect(maxAbsDifference(packed.subarray(0, alone[0]!.length), alone[0]!)).toBeLessThan(1e-4);
    expect(maxAbsDifference(packed.subarray(alone[0]!.length), alone[1]!)).toBeLessThan(1e-4);
  });
});

describe("state exchange", () => {
  it("LoRA and optimizer state round-trip: a restored engine continues with identical losses", async () => {
    const file = await f32Model();
    const options = { threads: 2, maxTokens: 32, lora: { rank: 4, alpha: 8, targets: ["q", "v", "down"] as ("q" | "v" | "down")[] } };
    const rows = [packedRow([randomTokens(16, smallModel.nVocab, 61)])];
    const original = await Engine.load(file, options);
    for (let step = 0; step < 3; step++) await original.step(rows, 1e-2);
    const lora = await original.getLora();
    const optimizer = await original.getOptimizerState();
    expect(optimizer.step).toBe(3);
    expect(lora.map((tensor) => tensor.name)).toContain("blk.1.ffn_down.weight.lora_b");
    expect(lora.find((tensor) => tensor.name === "blk.0.attn_q.weight.lora_a")!.shape).toEqual([4, smallModel.nEmbd]);
    expect(optimizer.tensors.map((tensor) => tensor.name)).toContain("blk.0.attn_v.weight.lora_a.m");

    const restored = await Engine.load(file, { ...options, lora: { ...options.lora, seed: 99 } });
    await restored.setLora(lora);
    await restored.setOptimizerState(optimizer);
    const next = await original.step(rows, 1e-2);
    const resumed = await restored.step(rows, 1e-2);
    expect(resumed.lossSum).toBe(next.lossSum);
    expect(maxAbsDifference((await restored.getLora())[0]!.data, (await original.getLora())[0]!.data)).toBe(0);
    original.dispose();
    restored.dispose();
  });
});
