// The CUDA engine against the CPU engine (the reference), on synth models of every supported type.
// Tolerances: the GPU multiplies bf16-rounded weights and activations (relative rounding 2^-9 per
// operand, fp32 accumulation), attention probabilities included, so logits, losses and LoRA gradients
// agree to about 1e-2 relative; the CPU engine is fp32 throughout. Skips with the reason where there is no CUDA engine or no GPU.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { readGgufModel } from "../../src/gguf/read.js";
import { modelConfigFromGguf } from "../../src/gguf/model-config.js";
import { loadNativeAddon, type NativeEngineOptions } from "../../src/native/addon.js";
import { Engine } from "../../src/train/engine.js";
import { synthModel } from "../helpers/models.js";
import { packedRow, randomTokens, randomizeLora } from "../native/engine-fixtures.js";
import { cudaSkipReason, enginePair, planReserveBytes, relativeError } from "./cuda-support.js";

// K-quants need rows that are multiples of 256
const model = { nLayer: 2, nEmbd: 256, nHead: 4, nHeadKv: 2, nFf: 512, nVocab: 512, contextLength: 256 } as const;
const types = ["F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_K", "Q5_K", "Q6_K"] as const;
const lossTolerance = 1e-2;      // relative, summed loss
const gradientTolerance = 5e-2;  // relative L2 error of each LoRA gradient tensor
const logitTolerance = 2e-2;     // largest difference relative to the largest logit

// two packed sequences with a prompt part without loss: masking, boundaries and position restarts
const row = packedRow([randomTokens(40, model.nVocab, 1), randomTokens(23, model.nVocab, 2)], 5);

/** The loss and every LoRA gradient of the rows, CPU against GPU, within the tolerances above. */
async function expectSameGradients(pair: { cpu: Engine; gpu: Engine }, rows: Parameters<Engine["gradients"]>[0]): Promise<void> {
  const [expected, actual] = await Promise.all([pair.cpu.gradients(rows), pair.gpu.gradients(rows)]);
  expect(Math.abs(actual.lossSum - expected.lossSum) / expected.lossSum).toBeLessThanOrEqual(lossTolerance);
  for (let i = 0; i < expected.tensors.length; i++) {
    expect(relativeError(actual.tensors[i]!.data, expected.tensors[i]!.data), expected.tensors[i]!.name).toBeLessThanOrEqual(gradientTolerance);
  }
}

describe.skipIf(cudaSkipReason !== undefined)(`CUDA engine vs CPU engine ${cudaSkipReason ?? ""}`, () => {
  describe.each(types.map((type, i) => ({ type, arch: (i % 3 === 2 ? "llama" : "qwen2") as "llama" | "qwen2" })))("$type $arch", ({ type, arch }) => {
    let cpu: Engine;
    let gpu: Engine;

    beforeAll(async () => {
      const file = await synthModel({ ...model, arch, type, ropeFreqs: arch === "llama", seed: 300 + types.indexOf(type) });
      ({ cpu, gpu } = await enginePair(file, { maxTokens: 64, lora: { rank: 8, alpha: 16 } }));
      const lora = await randomizeLora(cpu, 7, 0.05);
      await gpu.setLora(lora);
    });
    afterAll(() => {
      cpu?.dispose();
      gpu?.dispose();
    });

    it("starts from the same LoRA", async () => {
      const a = await cpu.getLora();
      const b = await gpu.getLora();
      expect(b.map((t) => t.name)).toEqual(a.map((t) => t.name));
      for (let i = 0; i < a.length; i++) expect(Array.from(b[i]!.data)).toEqual(Array.from(a[i]!.data));
    });

    it("logits", async () => {
      const tokens = { tokens: row.tokens, seqStarts: row.seqStarts };
      const [expected, actual] = await Promise.all([cpu.logits(tokens), gpu.logits(tokens)]);
      let largest = 0;
      let difference = 0;
      for (let i = 0; i < expected.length; i++) {
        largest = Math.max(largest, Math.abs(expected[i]!));
        difference = Math.max(difference, Math.abs(actual[i]! - expected[i]!));
      }
      expect(difference / largest).toBeLessThanOrEqual(logitTolerance);
    });

    it("loss and every LoRA gradient", async () => {
      const [expected, actual] = await Promise.all([cpu.gradients([row]), gpu.gradients([row])]);
      expect(actual.tokens).toBe(expected.tokens);
      expect(Math.abs(actual.lossSum - expected.lossSum) / expected.lossSum).toBeLessThanOrEqual(lossTolerance);
      expect(actual.tensors.map((t) => t.name)).toEqual(expected.tensors.map((t) => t.name));
      for (let i = 0; i < expected.tensors.length; i++) {
        const name = expected.tensors[i]!.name;
        expect(relativeError(actual.tensors[i]!.data, expected.tensors[i]!.data), name).toBeLessThanOrEqual(gradientTolerance);
      }
    });
  });

  it("a long packed row spans several attention query tiles (1024 positions each)", async () => {
    const file = await synthModel({ ...model, contextLength: 2048, arch: "llama", type: "Q8_0", seed: 405 });
    const pair = await enginePair(file, { maxTokens: 1536, lora: { rank: 4, alpha: 8 } });
    try {
      await pair.gpu.setLora(await randomizeLora(pair.cpu, 17, 0.05));
      // the second tile starts inside the second sequence: its keys begin at that sequence's start
      const long = packedRow([randomTokens(700, model.nVocab, 21), randomTokens(500, model.nVocab, 22), randomTokens(300, model.nVocab, 23)], 3);
      await expectSameGradients(pair, [long]);
    } finally {
      pair.cpu.dispose();
      pair.gpu.dispose();
    }
  });

  it("a vocabulary over several loss-head chunks: the gradient summed chunk by chunk, rows rescaled as their max moves", async () => {
    const nVocab = 4096;
    const file = await synthModel({ ...model, nVocab, contextLength: 16384, arch: "qwen2", type: "Q8_0", seed: 413 });
    // the CUDA loss head takes 16 Mi logits a chunk: 1024 of the vocabulary at 16384 positions, four chunks
    const pair = await enginePair(file, { maxTokens: 16384, lora: { rank: 8, alpha: 16 } });
    try {
      expect(pair.gpu.memoryPlan().vocabChunk).toBe(1024);
      await pair.gpu.setLora(await randomizeLora(pair.cpu, 23, 0.05));
      const wide = packedRow([randomTokens(40, nVocab, 61), randomTokens(23, nVocab, 62)], 5);
      await expectSameGradients(pair, [wide]);
    } finally {
      pair.cpu.dispose();
      pair.gpu.dispose();
    }
  });

  it("adapters on some projections only: q and v without k, up without gate (groups that share an input run their adapters one by one)", async () => {
    const file = await synthModel({ ...model, arch: "qwen2", type: "Q4_K", seed: 412 });
    const pair = await enginePair(file, { maxTokens: 64, lora: { rank: 8, alpha: 16, targets: ["q", "v", "up", "down"] } });
    try {
      await pair.gpu.setLora(await randomizeLora(pair.cpu, 19, 0.05));
      await expectSameGradients(pair, [row]);
    } finally {
      pair.cpu.dispose();
      pair.gpu.dispose();
    }
  });

  it("layers kept from the forward (whole or without their feed-forward products) and recomputed layers give the same loss and gradients", async () => {
    const file = await synthModel({ ...model, nLayer: 3, arch: "qwen2", type: "Q4_K", seed: 406 });
    const options = { maxTokens: 128, lora: { rank: 8, alpha: 16, dropout: 0.1 }, checkpoints: "gpu" as const };
    const kept = await Engine.load(file, { ...options, device: "cuda" });
    const recomputed = await Engine.load(file, { ...options, device: "cuda", maxKeptLayers: 0 });
    // a budget with room for three layers without their gate and up products, not for one whole layer more
    const lean = recomputed.memoryPlan();
    const gpuMemoryBytes = lean.total! + planReserveBytes + 3 * lean.keptAttentionBytes!;
    const attentionKept = await Engine.load(file, { ...options, device: "cuda", gpuMemoryBytes });
    try {
      expect(kept.memoryPlan().keptLayers).toBe(3);
      expect(kept.memoryPlan().keptWholeLayers).toBe(3);
      expect(recomputed.memoryPlan().keptLayers).toBe(0);
      expect(recomputed.memoryPlan().recomputedLayers).toBe(3);
      expect(recomputed.memoryPlan().activations).toBeLessThan(kept.memoryPlan().activations!);
      expect(attentionKept.memoryPlan().keptLayers).toBe(3);
      expect(attentionKept.memoryPlan().keptWholeLayers).toBe(0);
      expect(lean.keptAttentionBytes).toBeLessThan(lean.keptLayerBytes!);
      const lora = await randomizeLora(kept, 9, 0.05);
      for (const engine of [kept, recomputed, attentionKept]) await engine.setLora(lora);
      const rows = [packedRow([randomTokens(70, model.nVocab, 31), randomTokens(45, model.nVocab, 32)], 6)];
      // training steps (dropout on) then gradients: the kept paths must see the same masks and values
      for (let step = 0; step < 3; step++) {
        const [a, b, c] = await Promise.all([kept.step(rows, 1e-3), recomputed.step(rows, 1e-3), attentionKept.step(rows, 1e-3)]);
        expect(Math.abs(a.lossSum - b.lossSum) / b.lossSum).toBeLessThanOrEqual(1e-5);
        expect(Math.abs(c.lossSum - b.lossSum) / b.lossSum).toBeLessThanOrEqual(1e-5);
      }
      const [a, b, c] = await Promise.all([kept.gradients(rows), recomputed.gradients(rows), attentionKept.gradients(rows)]);
      for (let i = 0; i < b.tensors.length; i++) {
        expect(relativeError(a.tensors[i]!.data, b.tensors[i]!.data), b.tensors[i]!.name).toBeLessThanOrEqual(1e-4);
        expect(relativeError(c.tensors[i]!.data, b.tensors[i]!.data), b.tensors[i]!.name).toBeLessThanOrEqual(1e-4);
      }
      expect(kept.memoryPlan().deviceUsedPeak).toBeGreaterThan(kept.memoryPlan().total!);
    } finally {
      kept.dispose();
      recomputed.dispose();
      attentionKept.dispose();
    }
  });

  it("a 32k-position packed row of six sequences, checkpoints in host memory and the feed-forward in chunks", async () => {
    const file = await synthModel({ ...model, contextLength: 32768, arch: "qwen2", type: "Q8_0", seed: 408 });
    const options = { maxTokens: 32768, lora: { rank: 4, alpha: 8 } };
    const cpu = await Engine.load(file, { ...options, device: "cpu", threads: 0 });
    const gpu = await Engine.load(file, { ...options, device: "cuda", checkpoints: "host", feedForwardTokens: 3000 });
    try {
      expect(gpu.memoryPlan().hostCheckpoints).toBe(model.nLayer * 32768 * model.nEmbd * 4);
      expect(gpu.memoryPlan().feedForwardTokens).toBe(3000);
      await gpu.setLora(await randomizeLora(cpu, 23, 0.05));
      const lengths = [7000, 6000, 6000, 5000, 4768, 4000];
      const long = packedRow(lengths.map((length, i) => randomTokens(length, model.nVocab, 41 + i)), 7);
      await expectSameGradients({ cpu, gpu }, [long]);
      expect(gpu.memoryPlan().copyWaitSeconds).toBeGreaterThanOrEqual(0);
    } finally {
      cpu.dispose();
      gpu.dispose();
    }
  }, 600_000);

  describe("long rows: the same numbers whatever the plan holds where", () => {
    // eps = 1 makes AdamW's update −lr·g/(|g| + 1) ≈ −lr·g: a rounding-sized difference in a gradient stays
    // rounding-sized in the next step's loss instead of flipping the sign of a whole update
    const options = { maxTokens: 192, lora: { rank: 8, alpha: 16, dropout: 0.1 }, optimizer: { eps: 1, weightDecay: 0, clipNorm: 0 } };
    const rows = [packedRow([randomTokens(110, model.nVocab, 51), randomTokens(75, model.nVocab, 52)], 6)];

    /**
     * The gradients at the first LoRA within 1e-4; then three training steps (dropout on), each from the
     * same LoRA and optimizer state in both engines (b takes a's before every step): the step's loss (the
     * forward, dropout masks included) within 1e-5 and the LoRA it leaves within `tolerance` (the
     * backward's gradients, masks included, through one update); then the gradients there within 1e-4.
     * Each step starts from the same state because the two engines' gradients differ by summation-order
     * roundings (~3e-7): left to drift apart for steps, their LoRAs come to bf16 rounding boundaries on
     * different sides (measured: LoRAs 1.4e-8 apart after three steps gave losses 5e-6 and gradients 6.6e-3
     * apart in the forward-only and gradient passes alike).
     */
    async function expectSameTraining(a: Engine, b: Engine, tolerance: number): Promise<void> {
      await a.setLora(await randomizeLora(a, 13, 0.05));
      const sync = async (): Promise<void> => {
        await b.setLora(await a.getLora());
        await b.setOptimizerState(await a.getOptimizerState());
      };
      const expectSameGradients = async (when: string): Promise<void> => {
        await sync();
        const [x, y] = await Promise.all([a.gradients(rows), b.gradients(rows)]);
        for (let i = 0; i < y.tensors.length; i++) {
          expect(relativeError(x.tensors[i]!.data, y.tensors[i]!.data), `${y.tensors[i]!.name} ${when}`).toBeLessThanOrEqual(1e-4);
        }
      };
      await expectSameGradients("before training");
      for (let step = 0; step < 3; step++) {
        await sync();
        const [x, y] = await Promise.all([a.step(rows, 1e-2), b.step(rows, 1e-2)]);
        expect(Math.abs(x.lossSum - y.lossSum) / y.lossSum, `loss at step ${step}`).toBeLessThanOrEqual(1e-5);
        const [p, q] = await Promise.all([a.getLora(), b.getLora()]);
        for (let i = 0; i < q.length; i++) {
          expect(relativeError(p[i]!.data, q[i]!.data), `${q[i]!.name} after step ${step}`).toBeLessThanOrEqual(tolerance);
        }
      }
      await expectSameGradients("after three steps");
    }

    it("residual checkpoints in pinned host memory (copied on a second stream) give the losses and gradients of checkpoints on the GPU", async () => {
      const file = await synthModel({ ...model, nLayer: 4, contextLength: 256, arch: "qwen2", type: "Q4_K", seed: 409 });
      // one kept layer: the host copies serve kept and recomputed layers alike
      const onHost = await Engine.load(file, { ...options, device: "cuda", maxKeptLayers: 1, checkpoints: "host" });
      const onGpu = await Engine.load(file, { ...options, device: "cuda", maxKeptLayers: 1, checkpoints: "gpu" });
      try {
        const host = onHost.memoryPlan();
        const gpu = onGpu.memoryPlan();
        expect(host.hostCheckpoints).toBe(4 * 192 * model.nEmbd * 4);
        expect(gpu.hostCheckpoints).toBe(0);
        expect(host.keptLayers).toBe(1);
        // five (positions, C) slots on the GPU against two
        expect(gpu.activations! - host.activations!).toBe(3 * 192 * model.nEmbd * 4);
        // the same products on the same values: only the copies differ
        await expectSameTraining(onHost, onGpu, 1e-7);
        const waited = onHost.memoryPlan().copyWaitSeconds!;
        expect(waited).toBeGreaterThanOrEqual(0);
        expect(waited).toBeLessThan(60);
        expect(onGpu.memoryPlan().copyWaitSeconds).toBe(0);
      } finally {
        onHost.dispose();
        onGpu.dispose();
      }
    });

    it("the feed-forward block over chunks of positions gives the losses and gradients of the whole block", async () => {
      const file = await synthModel({ ...model, nLayer: 3, contextLength: 256, arch: "llama", type: "Q8_0", seed: 410 });
      // two chunks, 96 and 89 positions: the second one's rows and dropout masks start past 0. cuBLAS runs
      // these shapes with the whole block's kernels (measured: gradients within 3e-7); chunks of 48 take
      // other kernels and differ by bf16 roundings (5e-3, against 2e-2 between either and the CPU engine)
      const chunked = await Engine.load(file, { ...options, device: "cuda", maxKeptLayers: 1, feedForwardTokens: 96 });
      const whole = await Engine.load(file, { ...options, device: "cuda", maxKeptLayers: 1 });
      try {
        expect(chunked.memoryPlan().feedForwardTokens).toBe(96);
        expect(whole.memoryPlan().feedForwardTokens).toBe(192);
        expect(chunked.memoryPlan().activations).toBeLessThan(whole.memoryPlan().activations!);
        await expectSameTraining(chunked, whole, 1e-6);
      } finally {
        chunked.dispose();
        whole.dispose();
      }
    });

    it("the plan moves the checkpoints to host memory when that keeps more layers", async () => {
      const file = await synthModel({ ...model, nLayer: 4, contextLength: 4096, arch: "qwen2", type: "Q8_0", seed: 411 });
      // sized on this plan: room for every whole layer with the checkpoints in host memory, not with them on the GPU
      const probe = await Engine.load(file, { maxTokens: 4096, lora: { rank: 4, alpha: 8 }, device: "cuda", checkpoints: "host" });
      const host = probe.memoryPlan();
      probe.dispose();
      const gpuMemoryBytes = host.total! + planReserveBytes + 2 * 2 ** 20;
      const auto = await Engine.load(file, { maxTokens: 4096, lora: { rank: 4, alpha: 8 }, device: "cuda", gpuMemoryBytes });
      const onGpu = await Engine.load(file, { maxTokens: 4096, lora: { rank: 4, alpha: 8 }, device: "cuda", gpuMemoryBytes, checkpoints: "gpu" });
      try {
        expect(auto.memoryPlan().hostCheckpoints).toBe(host.hostCheckpoints);
        expect(auto.memoryPlan().keptWholeLayers).toBe(4);
        expect(onGpu.memoryPlan().keptWholeLayers).toBeLessThan(4);
      } finally {
        auto.dispose();
        onGpu.dispose();
      }
    });
  });

  it("head dimensions the fused attention does not take (32) use the tiled attention", async () => {
    const file = await synthModel({ ...model, nHead: 8, nHeadKv: 2, arch: "qwen2", type: "Q8_0", seed: 407 });
    const pair = await enginePair(file, { maxTokens: 96, lora: { rank: 4, alpha: 8 } });
    try {
      await pair.gpu.setLora(await randomizeLora(pair.cpu, 19, 0.05));
      expect(pair.gpu.memoryPlan().keptLayers).toBe(0);
      await expectSameGradients(pair, [row]);
    } finally {
      pair.cpu.dispose();
      pair.gpu.dispose();
    }
  });

  describe("training", () => {
    let cpu: Engine;
    let gpu: Engine;
    const rows = [
      packedRow([randomTokens(30, model.nVocab, 11), randomTokens(20, model.nVocab, 12)], 4),
      packedRow([randomTokens(60, model.nVocab, 13)], 10),
    ];

    afterAll(() => {
      cpu?.dispose();
      gpu?.dispose();
    });

    it("50-step loss curves agree (Q4_K, AdamW with clipping and weight decay)", async () => {
      const file = await synthModel({ ...model, arch: "qwen2", type: "Q4_K", seed: 401 });
      ({ cpu, gpu } = await enginePair(file, {
        maxTokens: 64,
        lora: { rank: 8, alpha: 16, seed: 3 },
        optimizer: { weightDecay: 0.01, clipNorm: 1 },
      }));
      const cpuLosses: number[] = [];
      const gpuLosses: number[] = [];
      for (let step = 0; step < 50; step++) {
        // 3e-4 takes the CPU engine from 8.27 to 0.52 in 50 steps: a long descent, not a collapse to ~0
        const [a, b] = await Promise.all([cpu.step(rows, 3e-4), gpu.step(rows, 3e-4)]);
        cpuLosses.push(a.loss);
        gpuLosses.push(b.loss);
        expect(b.tokens).toBe(a.tokens);
        expect(Math.abs(b.gradNorm - a.gradNorm), `gradNorm at step ${step}`).toBeLessThanOrEqual(5e-2 * a.gradNorm + 1e-2);
      }
      for (let step = 0; step < 50; step++) {
        // bf16 rounding differences compound over the steps: 2% of the loss plus 0.02 nats
        expect(Math.abs(gpuLosses[step]! - cpuLosses[step]!), `loss at step ${step}`).toBeLessThanOrEqual(2e-2 * cpuLosses[step]! + 2e-2);
      }
      expect(gpuLosses[49]!).toBeLessThan(gpuLosses[0]! * 0.5);
      const state = await gpu.getOptimizerState();
      expect(state.step).toBe(50);
      expect(relativeError(state.tensors[0]!.data, (await cpu.getOptimizerState()).tensors[0]!.data)).toBeLessThanOrEqual(0.1);
    });

    it("resumes from the CPU engine's LoRA and optimizer state", async () => {
      const file = await synthModel({ ...model, arch: "llama", type: "Q6_K", seed: 406 });
      const pair = await enginePair(file, { maxTokens: 64, lora: { rank: 4, alpha: 8, seed: 8 } });
      try {
        for (let step = 0; step < 3; step++) await pair.cpu.step(rows, 1e-3);
        await pair.gpu.setLora(await pair.cpu.getLora());
        await pair.gpu.setOptimizerState(await pair.cpu.getOptimizerState());
        expect((await pair.gpu.getOptimizerState()).step).toBe(3);
        const [a, b] = await Promise.all([pair.cpu.step(rows, 1e-3), pair.gpu.step(rows, 1e-3)]);
        expect(Math.abs(b.loss - a.loss) / a.loss).toBeLessThanOrEqual(lossTolerance);
        const expected = await pair.cpu.getLora();
        const actual = await pair.gpu.getLora();
        for (let i = 0; i < expected.length; i++) {
          expect(relativeError(actual[i]!.data, expected[i]!.data), expected[i]!.name).toBeLessThanOrEqual(2e-2);
        }
      } finally {
        pair.cpu.dispose();
        pair.gpu.dispose();
      }
    });

    it("LoRA dropout uses the CPU engine's mask", async () => {
      const file = await synthModel({ ...model, arch: "qwen2", type: "F16", seed: 402 });
      // eps = 1 makes AdamW's first update −lr·g/(|g| + 1) ≈ −lr·g: the update is the (dropout) gradient
      const pair = await enginePair(file, {
        maxTokens: 64,
        lora: { rank: 4, alpha: 8, dropout: 0.3, seed: 5 },
        optimizer: { eps: 1, weightDecay: 0, clipNorm: 0 },
      });
      try {
        const before = await randomizeLora(pair.cpu, 9, 0.2);
        await pair.gpu.setLora(before);
        await Promise.all([pair.cpu.step([rows[0]!], 1e-2), pair.gpu.step([rows[0]!], 1e-2)]);
        const after = { cpu: await pair.cpu.getLora(), gpu: await pair.gpu.getLora() };
        for (let i = 0; i < before.length; i++) {
          const start = before[i]!.data;
          const expected = after.cpu[i]!.data.map((x, j) => x - start[j]!);
          const actual = after.gpu[i]!.data.map((x, j) => x - start[j]!);
          expect(expected.some((x) => x !== 0), before[i]!.name).toBe(true);
          // another mask would change which inputs reach A's gradient: errors of order 1, not 1e-2
          expect(relativeError(actual, expected), before[i]!.name).toBeLessThanOrEqual(5e-2);
        }
      } finally {
        pair.cpu.dispose();
        pair.gpu.dispose();
      }
    });
  });

  describe("memory plan", () => {
    async function nativeOptions(gpuMemoryBytes: number, maxTokens: number): Promise<NativeEngineOptions> {
      const file = await readGgufModel(await synthModel({ ...model, arch: "qwen2", type: "Q8_0", seed: 403 }));
      return {
        path: file.path,
        alignment: file.alignment,
        config: modelConfigFromGguf(file),
        tensors: file.tensors.map(({ name, type, dims, offset }) => ({ name, type, dims, offset })),
        device: "cuda",
        threads: 1,
        lora: { rank: 16, alpha: 32, targets: ["q", "k", "v", "o", "gate", "up", "down"], dropout: 0, seed: 0 },
        optimizer: { beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: 0, clipNorm: 1 },
        maxTokens,
        gpuMemoryBytes,
      };
    }

    it("is known before the first step and adds up", async () => {
      const engine = await loadNativeAddon().Engine.create(await nativeOptions(2 * 2 ** 30, 256));
      try {
        const plan = engine.memoryPlan();
        expect(plan.total).toBeGreaterThan(0);
        expect(plan.weights! + plan.lora! + plan.activations! + plan.scratch!).toBe(plan.total);
      } finally {
        engine.dispose();
      }
    });

    it("a plan larger than gpuMemoryBytes is refused with the estimate and what to lower", async () => {
      const promise = loadNativeAddon().Engine.create(await nativeOptions(768 * 2 ** 20 + 2 ** 20, 256));
      await expect(promise).rejects.toThrow(/the CUDA memory plan needs [\d.]+ GiB .* lower maxTokens \(now 256\) or the LoRA rank \(now 16\)/);
    });
  });

  describe("bad input is an error, not a crash", () => {
    let gpu: Engine;
    beforeAll(async () => {
      const file = await synthModel({ ...model, arch: "qwen2", type: "Q4_K", seed: 404 });
      ({ gpu } = await enginePair(file, { maxTokens: 32 }));
    });
    afterAll(() => gpu?.dispose());

    it("token outside the vocabulary, too long a row, an empty batch, no targets", async () => {
      const bad = packedRow([randomTokens(8, model.nVocab, 5)]);
      bad.tokens[3] = model.nVocab;
      await expect(gpu.step([bad], 1e-3)).rejects.toThrow(`row 0 position 3: token id ${model.nVocab} is outside the vocabulary`);
      await expect(gpu.step([packedRow([randomTokens(40, model.nVocab, 6)])], 1e-3)).rejects.toThrow("more than maxTokens 32");
      await expect(gpu.step([], 1e-3)).rejects.toThrow("the batch is empty");
      const noTargets = packedRow([randomTokens(8, model.nVocab, 7)]);
      noTargets.targets.fill(-1);
      await expect(gpu.step([noTargets], 1e-3)).rejects.toThrow("the batch has no target tokens");
      const result = await gpu.step([packedRow([randomTokens(8, model.nVocab, 8)])], 1e-3);
      expect(result.tokens).toBe(7);
    });
  });
});
