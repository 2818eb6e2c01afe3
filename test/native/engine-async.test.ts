// The engine off the JS thread: the event loop keeps running during a step, abort stops a step between
// layers and leaves the engine usable, concurrent calls are refused, dispose is final.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Engine } from "../../src/train/engine.js";
import { synthModel } from "../helpers/models.js";
import { packedRow, randomTokens } from "./engine-fixtures.js";

// big enough that one step takes a noticeable time on 2 cores
const shape = { arch: "qwen2", type: "Q8_0", nLayer: 8, nEmbd: 256, nHead: 4, nHeadKv: 2, nFf: 1024, nVocab: 320, contextLength: 512, seed: 81 } as const;

describe("asynchronous calls", () => {
  let engine: Engine;
  const rows = [packedRow([randomTokens(256, shape.nVocab, 1)]), packedRow([randomTokens(256, shape.nVocab, 2)])];
  beforeAll(async () => {
    engine = await Engine.load(await synthModel(shape), { threads: 2, maxTokens: 256 });
  });
  afterAll(() => engine?.dispose());

  it("keeps the event loop running during a step", async () => {
    let ticks = 0;
    const timer = setInterval(() => ticks++, 1);
    const started = performance.now();
    await engine.step(rows, 1e-3);
    const elapsed = performance.now() - started;
    clearInterval(timer);
    expect(elapsed).toBeGreaterThan(20);
    expect(ticks).toBeGreaterThanOrEqual(Math.min(5, Math.floor(elapsed / 10)));
  });

  it("abort rejects the running step with 'aborted' and the engine stays usable", async () => {
    const before = await engine.getLora();
    const step = engine.step(rows, 1e-3);
    setTimeout(() => engine.abort(), 5);
    await expect(step).rejects.toThrow("aborted");
    // nothing was applied
    expect(await engine.getLora()).toEqual(before);
    const result = await engine.step(rows, 1e-3);
    expect(result.tokens).toBe(510);
    // an abort with nothing running does not leak into the next call
    engine.abort();
    await expect(engine.evaluate(rows)).resolves.toMatchObject({ tokens: 510 });
  });

  it("an AbortSignal aborts the call", async () => {
    const controller = new AbortController();
    const step = engine.step(rows, 1e-3, { signal: controller.signal });
    setTimeout(() => controller.abort(), 5);
    await expect(step).rejects.toThrow("aborted");
    await expect(engine.step(rows, 1e-3, { signal: controller.signal })).rejects.toThrow("aborted");
  });

  it("a call's AbortSignal stops that call only, not the one it was refused by", async () => {
    const step = engine.step(rows, 1e-3);
    await new Promise((resolve) => setTimeout(resolve, 20)); // the step is running
    const controller = new AbortController();
    const logits = engine.logits(rows[0]!, { signal: controller.signal });
    controller.abort();
    await expect(logits).rejects.toThrow("engine busy: step is still running");
    await expect(step).resolves.toMatchObject({ tokens: 510 });
  });

  it("an aborted call rejects with error.code \"aborted\"", async () => {
    const controller = new AbortController();
    const step = engine.step(rows, 1e-3, { signal: controller.signal });
    setTimeout(() => controller.abort(), 5);
    await expect(step).rejects.toMatchObject({ message: "aborted", code: "aborted" });
  });

  it("refuses a second call while one runs", async () => {
    const first = engine.evaluate(rows);
    await expect(engine.evaluate(rows)).rejects.toThrow("engine busy: evaluate is still running");
    await expect(engine.getLora()).rejects.toThrow("engine busy");
    await expect(first).resolves.toMatchObject({ tokens: 510 });
  });

  it("dispose is final, also when a call is running", async () => {
    const other = await Engine.load(await synthModel(shape), { threads: 2, maxTokens: 256 });
    const running = other.step(rows, 1e-3);
    other.dispose();
    await expect(running).rejects.toThrow("aborted");
    await expect(other.step(rows, 1e-3)).rejects.toThrow("engine was disposed");
    await expect(other.getLora()).rejects.toThrow("engine was disposed");
    expect(() => other.memoryPlan()).toThrow("engine was disposed");
    other.dispose();
  });

  it("plans its memory up front", () => {
    const plan = engine.memoryPlan();
    expect(Object.keys(plan)).toEqual(["weights", "convertedWeights", "lora", "activations", "scratch", "keptLayers", "recomputedLayers"]);
    // 8 layers: the last is never recomputed, the 7 others fit a quarter of any test machine's memory
    expect([plan.keptLayers, plan.recomputedLayers]).toEqual([7, 0]);
    // LoRA: params, grads and two AdamW moments of rank 8 on all seven projections of 8 layers
    const perLayer = 8 * (256 + 256 + 256 + 256 + 256 + 256 + 1024) + 8 * (256 + 128 + 128 + 256 + 1024 + 1024 + 256);
    expect(plan.lora).toBeGreaterThanOrEqual(4 * 4 * 8 * perLayer);
    expect(plan.activations).toBeGreaterThan(9 * 256 * 256 * 4); // the 9 residual checkpoints at least
  });
});
