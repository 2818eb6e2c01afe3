import { describe, expect, it } from "vitest";
import { countSteps, planEpoch } from "../../src/train/batches.js";
import { Rng } from "../../src/train/rng.js";
import { defaultWarmupSteps, learningRateAt } from "../../src/train/schedule.js";

describe("learning rate schedule", () => {
  const schedule = { peak: 1e-3, warmupSteps: 4, totalSteps: 20, decay: "cosine" as const, minimum: 0 };
  it("warms up linearly to the peak, then decays by cosine towards the minimum", () => {
    expect(learningRateAt(schedule, 1)).toBeCloseTo(2.5e-4, 12);
    expect(learningRateAt(schedule, 4)).toBeCloseTo(1e-3, 12);
    expect(learningRateAt(schedule, 5)).toBeCloseTo(1e-3, 12);
    const rates = Array.from({ length: 16 }, (_, i) => learningRateAt(schedule, 5 + i));
    for (let i = 1; i < rates.length; i++) expect(rates[i]).toBeLessThan(rates[i - 1]);
    expect(rates.at(-1)!).toBeGreaterThan(0);
    expect(learningRateAt({ ...schedule, decay: "constant" }, 17)).toBe(1e-3);
  });
  it("defaults warmup to 5% of the run", () => {
    expect(defaultWarmupSteps(200)).toBe(10);
    expect(defaultWarmupSteps(10)).toBe(1);
    expect(defaultWarmupSteps(1)).toBe(0);
  });
});

describe("seeded generator", () => {
  it("repeats from a seed and from a saved state", () => {
    const a = Rng.fromSeed(7);
    const b = Rng.fromSeed(7);
    expect(a.permutation(50)).toEqual(b.permutation(50));
    const saved = a.state();
    const next = a.permutation(50);
    expect(Rng.fromState(saved).permutation(50)).toEqual(next);
    expect(Rng.fromSeed(8).permutation(50)).not.toEqual(Rng.fromSeed(7).permutation(50));
  });
  it("shuffles uniformly enough", () => {
    const rng = Rng.fromSeed(1);
    const firstCounts = new Array(4).fill(0);
    for (let i = 0; i < 4000; i++) firstCounts[rng.permutation(4)[0]]++;
    for (const count of firstCounts) expect(Math.abs(count - 1000)).toBeLessThan(120);
  });
  it("rejects an invalid state", () => {
    expect(() => Rng.fromState([0, 0, 0, 0])).toThrow(/not all zero/);
  });
});

describe("epoch planning", () => {
  const lengths = [100, 50, 400, 300, 250, 10, 90];
  it("covers every row once per epoch, within the token budget per micro-batch", () => {
    const plan = planEpoch(lengths, Rng.fromSeed(3), { batchTokens: 400, gradAccum: 1 });
    expect(plan.steps.flatMap((step) => step.rows).sort()).toEqual([0, 1, 2, 3, 4, 5, 6]);
    for (const step of plan.steps) {
      const tokens = step.rows.reduce((sum, row) => sum + lengths[row], 0);
      expect(step.rows.length === 1 || tokens <= 400).toBe(true);
      expect(plan.order.slice(step.start, step.start + step.rows.length)).toEqual(step.rows);
    }
  });
  it("accumulates micro-batches into steps", () => {
    const single = planEpoch(lengths, Rng.fromSeed(3), { batchTokens: 1, gradAccum: 1 });
    const accumulated = planEpoch(lengths, Rng.fromSeed(3), { batchTokens: 1, gradAccum: 3 });
    expect(single.steps).toHaveLength(7);
    expect(accumulated.steps.map((step) => step.rows.length)).toEqual([3, 3, 1]);
  });
  it("counts the steps of several epochs as training will plan them", () => {
    const rng = Rng.fromSeed(5);
    const options = { batchTokens: 400, gradAccum: 1 };
    const expected = [0, 1, 2].reduce((sum) => sum + planEpoch(lengths, rng, options).steps.length, 0);
    expect(countSteps(lengths, 5, 3, options)).toBe(expected);
  });
});
