// The training loop's bookkeeping (data order across epochs, schedule, checkpoints, resume, NaN, abort)
// against a small deterministic stand-in for the native engine, so these cases run in milliseconds. The
// e2e tests (test/e2e/train-*.test.ts) repeat the ones that matter with the real engine.
import { mkdtemp, readFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { describe, expect, it, vi } from "vitest";
import type { NamedTensor, NativeRow } from "../../src/native/addon.js";

/** Loss depends on the weights and on which rows come in which order; any state not restored changes it. */
class FakeEngine {
  weight = new Float32Array([0.1]);
  moment = new Float32Array([0]);
  optimizerStep = 0;
  static async load(): Promise<FakeEngine> {
    return new FakeEngine();
  }
  private rowsKey(rows: NativeRow[]): number {
    let key = 0;
    for (const row of rows) for (let i = 0; i < row.tokens.length; i += 7) key = (key * 31 + row.tokens[i]) % 1000003;
    return key / 1000003;
  }
  async step(rows: NativeRow[], lr: number) {
    const key = this.rowsKey(rows);
    const tokens = rows.reduce((sum, row) => sum + row.targets.filter((t) => t >= 0).length, 0);
    const lossSum = tokens * Math.exp(this.weight[0]) * (1 + key);
    this.moment[0] = 0.9 * this.moment[0] + key;
    this.weight[0] += lr * (this.moment[0] - 0.5 * key);
    this.optimizerStep++;
    await new Promise((resolve) => setTimeout(resolve, 1));
    return { lossSum, tokens, gradNorm: Math.abs(this.moment[0]) };
  }
  async evaluate(rows: NativeRow[]) {
    const tokens = rows.reduce((sum, row) => sum + row.targets.filter((t) => t >= 0).length, 0);
    return { lossSum: tokens * Math.exp(this.weight[0]), tokens };
  }
  getLora(): NamedTensor[] {
    return [{ name: "blk.0.attn_q.weight.lora_a", shape: [1, 1], data: Float32Array.from(this.weight) }];
  }
  setLora(tensors: NamedTensor[]) {
    this.weight = Float32Array.from(tensors[0].data);
  }
  getOptimizerState() {
    return { step: this.optimizerStep, tensors: [{ name: "blk.0.attn_q.weight.lora_a.m", shape: [1, 1], data: Float32Array.from(this.moment) }] };
  }
  setOptimizerState(state: { step: number; tensors: NamedTensor[] }) {
    this.optimizerStep = state.step;
    this.moment = Float32Array.from(state.tensors[0].data);
  }
  /** what memoryPlan() reports: the CPU engine's keys by default, a test sets the CUDA engine's */
  static plan: Record<string, number> = { total: 1 };
  memoryPlan() {
    return FakeEngine.plan;
  }
  dispose() {}
  abort() {}
}

vi.mock("../../src/train/engine.js", async (importOriginal) => ({ ...(await importOriginal<object>()), Engine: FakeEngine }));
// the stand-in engine runs anywhere: "cuda" is taken as asked, without looking for a GPU
vi.mock("../../src/train/config.js", async (importOriginal) => ({ ...(await importOriginal<object>()), resolveDevice: (device: string) => (device === "cuda" ? "cuda" : "cpu") }));
// the final adapter is written by the export module, which checks shapes against the real model: not this fake's
vi.mock("../../src/export/gguf-adapter.js", () => ({ writeGgufAdapter: async () => undefined }));

const { Trainer, TrainingDivergedError } = await import("../../src/train/trainer.js");
type TrainerEvent = import("../../src/train/trainer.js").TrainerEvent;

const base = { device: "cpu" as const, maxLength: 256, epochs: 3, learningRate: 0.05, evalEvery: 4, checkpointEvery: 3, keepCheckpoints: 2, seed: 11 };

async function collect(events: AsyncIterable<TrainerEvent>, onEvent?: (event: TrainerEvent) => void): Promise<TrainerEvent[]> {
  const all: TrainerEvent[] = [];
  for await (const event of events) {
    all.push(event);
    onEvent?.(event);
  }
  return all;
}

const losses = (events: TrainerEvent[]) => events.flatMap((event) => (event.type === "step" ? [[event.step, event.loss, event.lr] as const] : []));

describe("training loop (stand-in engine)", () => {
  it("resumes with the same losses, learning rates and evaluations as an uninterrupted run, across epochs", async () => {
    const root = await mkdtemp(path.join(tmpdir(), "thinktune-loop-"));
    const straight = await collect(new Trainer({ ...base, out: path.join(root, "straight") }).run());
    const total = straight.find((event) => event.type === "start")!;
    expect(total.type === "start" && total.totalSteps).toBeGreaterThan(10);

    for (const stopAfter of [5, 7]) {
      const out = path.join(root, `stopped-${stopAfter}`);
      const controller = new AbortController();
      const first = await collect(new Trainer({ ...base, out }).run({ signal: controller.signal }), (event) => {
        if (event.type === "step" && event.step === stopAfter) controller.abort();
      });
      const done = first.at(-1)!;
      expect(done).toMatchObject({ type: "done", reason: "stopped", step: stopAfter });
      const second = await collect((await Trainer.resume(out)).run());
      expect(second[0]).toMatchObject({ type: "start", startStep: stopAfter });
      expect([...losses(first), ...losses(second)]).toEqual(losses(straight));
      // metrics.jsonl of the resumed run matches the straight run's record for record (time fields aside)
      const strip = (text: string) => text.trim().split("\n").map((line) => {
        const { elapsedMs, tokensPerSecond, peakMemory, ...rest } = JSON.parse(line);
        return rest;
      });
      expect(strip(await readFile(path.join(out, "metrics.jsonl"), "utf8"))).toEqual(strip(await readFile(path.join(root, "straight", "metrics.jsonl"), "utf8")));
    }
  });

  it("stops on a non-finite loss, naming the step and keeping the last good checkpoint", async () => {
    const root = await mkdtemp(path.join(tmpdir(), "thinktune-loop-"));
    const trainer = new Trainer({ ...base, out: path.join(root, "nan"), learningRate: 1e30, warmupSteps: 0, checkpointEvery: 1 });
    const seen: TrainerEvent[] = [];
    const error = await collect(trainer.run(), (event) => seen.push(event)).catch((caught: unknown) => caught);
    expect(error).toBeInstanceOf(TrainingDivergedError);
    const diverged = error as InstanceType<typeof TrainingDivergedError>;
    expect(diverged.step).toBe(2);
    expect(diverged.message).toMatch(/training diverged at step 2: the loss is Infinity/);
    expect(diverged.message).toMatch(/checkpoints\/step-1\. Lower the learning rate/);
    expect(seen.filter((event) => event.type === "checkpoint").map((event) => event.step)).toEqual([1]);
  });

  it("a run killed before its first checkpoint is resumed, or trained afresh, in the same folder", async () => {
    const root = await mkdtemp(path.join(tmpdir(), "thinktune-loop-"));
    const straight = await collect(new Trainer({ ...base, checkpointEvery: 1000, out: path.join(root, "straight") }).run());
    // leaving the loop after step 2 without a checkpoint is what kill -9 leaves behind: config.json and metrics
    const killBeforeCheckpoint = async (out: string) => {
      for await (const event of new Trainer({ ...base, checkpointEvery: 1000, out }).run()) {
        expect(event.type).not.toBe("checkpoint");
        if (event.type === "step" && event.step === 2) break;
      }
    };
    const out = path.join(root, "killed");
    await killBeforeCheckpoint(out);
    const resumed = await collect((await Trainer.resume(out)).run());
    expect(resumed[0]).toMatchObject({ type: "start", startStep: 0, resumedFrom: undefined });
    expect(losses(resumed)).toEqual(losses(straight));
    expect(resumed.at(-1)).toMatchObject({ type: "done", reason: "completed" });

    const again = path.join(root, "killed-again");
    await killBeforeCheckpoint(again);
    const fresh = await collect(new Trainer({ ...base, checkpointEvery: 1000, out: again }).run());
    expect(losses(fresh)).toEqual(losses(straight));
    const steps = (await readFile(path.join(again, "metrics.jsonl"), "utf8")).trim().split("\n").map((line) => JSON.parse(line)).filter((record) => record.type === "step");
    expect(steps.map((record) => record.step)).toEqual(losses(straight).map(([step]) => step));
  });

  it("checkpoints by time as well as by steps", async () => {
    const root = await mkdtemp(path.join(tmpdir(), "thinktune-loop-"));
    const checkpointSteps = async (settings: object) =>
      (await collect(new Trainer({ ...base, maxSteps: 6, evalEvery: 100, out: path.join(root, JSON.stringify(settings)), ...settings }).run()))
        .filter((event) => event.type === "checkpoint")
        .map((event) => event.step);
    // a cadence far shorter than a step: a checkpoint after every step
    expect(await checkpointSteps({ checkpointEvery: 1000, checkpointEveryMinutes: 1e-9 })).toEqual([1, 2, 3, 4, 5, 6]);
    // an hour: only the step cadence and the final checkpoint
    expect(await checkpointSteps({ checkpointEvery: 4, checkpointEveryMinutes: 60 })).toEqual([4, 6]);
  });

  it("refuses to resume with settings that change the losses, and to reuse a run folder", async () => {
    const root = await mkdtemp(path.join(tmpdir(), "thinktune-loop-"));
    const out = path.join(root, "run");
    const controller = new AbortController();
    await collect(new Trainer({ ...base, out }).run({ signal: controller.signal }), (event) => {
      if (event.type === "step") controller.abort();
    });
    await expect(Trainer.resume(out, { learningRate: 1 })).rejects.toThrow(/cannot resume .* with a different learningRate/);
    await expect(collect(new Trainer({ ...base, out }).run())).rejects.toThrow(/already holds a run .* --resume/);
    const resumed = await collect((await Trainer.resume(out, { evalEvery: 1, threads: 1 })).run());
    expect(resumed.at(-1)).toMatchObject({ type: "done", reason: "completed" });
  });

  it("records on CUDA the measured device peak and the checkpoints' host memory, on the CPU the resident peak", async () => {
    const root = await mkdtemp(path.join(tmpdir(), "thinktune-loop-"));
    const memory = async (device: "cpu" | "cuda", plan: Record<string, number>) => {
      FakeEngine.plan = plan;
      try {
        const out = path.join(root, `${device}-${Object.keys(plan).join("-")}`);
        await collect(new Trainer({ ...base, device, maxSteps: 1, out }).run());
        const [record] = (await readFile(path.join(out, "metrics.jsonl"), "utf8")).trim().split("\n").map((line) => JSON.parse(line));
        return { peakMemory: record.peakMemory, hostMemory: record.hostMemory };
      } finally {
        FakeEngine.plan = { total: 1 };
      }
    };
    expect(await memory("cuda", { total: 100, deviceUsedPeak: 150, hostCheckpoints: 40 })).toEqual({ peakMemory: 150, hostMemory: 40 });
    // no measurement yet (0) or an engine without the keys: the plan's total, and no host memory
    expect(await memory("cuda", { total: 100, deviceUsedPeak: 0 })).toEqual({ peakMemory: 100, hostMemory: undefined });
    const cpu = await memory("cpu", { total: 100, deviceUsedPeak: 150, hostCheckpoints: 40 });
    expect(cpu.hostMemory).toBeUndefined();
    expect(cpu.peakMemory).toBeGreaterThan(1024 ** 2);
  });

  it("refuses a max length past the model's context length before tokenizing, saying what to pass", async () => {
    const root = await mkdtemp(path.join(tmpdir(), "thinktune-loop-"));
    const trainer = new Trainer({ ...base, maxLength: 8192, out: path.join(root, "run") });
    await expect(trainer.prepareData()).rejects.toThrow(/--max-length\) 8192 is more than the model's context length 4096 \(qwen2\.context_length in .*tiny-r1\.gguf\); use --max-length 4096 or less/);
  });
});
