// The Trainer as a library with the real native engine on the CPU: resume equality, NaN stop, and a
// Node service that keeps answering while training runs in the same process.
import { createServer } from "node:http";
import type { AddressInfo } from "node:net";
import { existsSync } from "node:fs";
import { mkdtemp, readFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { describe, expect, it } from "vitest";
import { Trainer, TrainingDivergedError, type TrainerEvent } from "../../src/index.js";
import { loadCheckpoint } from "../../src/train/checkpoint.js";

// the embedded tiny model and sample data (config defaults), short rows so each step takes ~0.1-0.3 s
const base = { device: "cpu" as const, maxLength: 256, learningRate: 2e-3, seed: 3, evalEvery: 4, checkpointEvery: 100, lora: { rank: 8 } };

async function collect(events: AsyncIterable<TrainerEvent>, onEvent?: (event: TrainerEvent) => void): Promise<TrainerEvent[]> {
  const all: TrainerEvent[] = [];
  for await (const event of events) {
    all.push(event);
    onEvent?.(event);
  }
  return all;
}

const stepLosses = (events: TrainerEvent[]) => events.flatMap((event) => (event.type === "step" ? [{ step: event.step, loss: event.loss, lr: event.lr, gradNorm: event.gradNorm }] : []));
const evalLosses = (events: TrainerEvent[]) => events.flatMap((event) => (event.type === "eval" ? [{ step: event.step, valLoss: event.valLoss }] : []));

describe("Trainer (real engine, CPU)", () => {
  it("resumed training gives bit-identical losses and LoRA weights to an uninterrupted run", async () => {
    const root = await mkdtemp(path.join(tmpdir(), "thinktune-resume-"));
    // with dropout: its masks must come back the same after a resume too
    const config = { ...base, lora: { rank: 8, dropout: 0.1 }, maxSteps: 9, out: path.join(root, "straight") };
    const straight = await collect(new Trainer(config).run());
    expect(straight.at(-1)).toMatchObject({ type: "done", reason: "completed", step: 9 });
    const losses = stepLosses(straight);
    expect(losses).toHaveLength(9);
    expect(losses.at(-1)!.loss).toBeLessThan(losses[0].loss);

    const out = path.join(root, "interrupted");
    const controller = new AbortController();
    const first = await collect(new Trainer({ ...config, out }).run({ signal: controller.signal }), (event) => {
      if (event.type === "step" && event.step === 5) controller.abort();
    });
    expect(first.at(-1)).toMatchObject({ type: "done", reason: "stopped", step: 5 });
    expect(existsSync(path.join(out, "checkpoints", "step-5", "state.json"))).toBe(true);
    expect(existsSync(path.join(out, "adapter"))).toBe(false);

    const second = await collect((await Trainer.resume(out)).run());
    expect(second[0]).toMatchObject({ type: "start", startStep: 5, resumedFrom: path.join(out, "checkpoints", "step-5") });
    // exact equality: same data order, generator, optimizer moments and schedule position
    expect([...stepLosses(first), ...stepLosses(second)]).toEqual(losses);
    expect([...evalLosses(first), ...evalLosses(second)]).toEqual(evalLosses(straight));
    const a = await loadCheckpoint(path.join(root, "straight", "checkpoints", "step-9"));
    const b = await loadCheckpoint(path.join(out, "checkpoints", "step-9"));
    expect(b.lora.map((tensor) => tensor.name)).toEqual(a.lora.map((tensor) => tensor.name));
    b.lora.forEach((tensor, index) => expect(Buffer.from(tensor.data.buffer).equals(Buffer.from(a.lora[index].data.buffer))).toBe(true));
    expect(b.optimizer.step).toBe(9);
    const adapter = JSON.parse(await readFile(path.join(out, "adapter", "thinktune.json"), "utf8"));
    expect(adapter).toMatchObject({ arch: "qwen2", rank: 8, alpha: 32, step: 9, targets: ["q", "k", "v", "o", "gate", "up", "down"] });
    const report = await readFile(path.join(out, "report.html"), "utf8");
    expect(report.match(/<svg /g)).toHaveLength(3);
  });

  it("stops when the loss becomes non-finite, naming the step and suggesting a lower learning rate", async () => {
    const root = await mkdtemp(path.join(tmpdir(), "thinktune-nan-"));
    const seen: TrainerEvent[] = [];
    const trainer = new Trainer({ ...base, maxSteps: 6, learningRate: 1e30, warmupSteps: 0, checkpointEvery: 1, out: path.join(root, "run") });
    const error = await collect(trainer.run(), (event) => seen.push(event)).catch((caught: unknown) => caught);
    expect(error).toBeInstanceOf(TrainingDivergedError);
    const { step, message } = error as TrainingDivergedError;
    const good = seen.filter((event) => event.type === "checkpoint").map((event) => event.step);
    expect(good).toEqual(Array.from({ length: step - 1 }, (_, index) => index + 1));
    expect(message).toContain(`training diverged at step ${step}`);
    expect(message).toContain(`The last good checkpoint is ${path.join(root, "run", "checkpoints", `step-${step - 1}`)}`);
    expect(message).toMatch(/Lower the learning rate \(e\.g\. --lr 0\.001\)/);
    expect(await readFile(path.join(root, "run", "report.html"), "utf8")).toContain(`diverged at step ${step}`);
    const { state } = await loadCheckpoint(path.join(root, "run", "checkpoints", `step-${step - 1}`));
    expect(Number.isFinite(state.trainLoss)).toBe(true);
  });

  it("keeps the event loop responsive: an HTTP server in the same process answers while steps run", async () => {
    const server = createServer((_request, response) => response.end("ok"));
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
    const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/`;
    const root = await mkdtemp(path.join(tmpdir(), "thinktune-http-"));
    const answeredAt: number[] = [];
    const latencies: number[] = [];
    let training = true;
    const client = (async () => {
      while (training) {
        const sent = performance.now();
        expect(await (await fetch(url)).text()).toBe("ok");
        answeredAt.push(performance.now());
        latencies.push(performance.now() - sent);
        await new Promise((resolve) => setTimeout(resolve, 5));
      }
    })();
    const stepWindows: [number, number][] = [];
    let lastEventAt = performance.now();
    try {
      const trainer = await Trainer.create({ ...base, maxLength: 512, maxSteps: 6, evalEvery: 100, out: path.join(root, "run") });
      expect(trainer.totalSteps).toBe(6);
      expect(trainer.dataReport?.examples.total).toBe(38);
      await collect(trainer.run(), (event) => {
        const now = performance.now();
        // between two step events the loop awaited exactly one native step
        if (event.type === "step" && event.step > 1) stepWindows.push([lastEventAt, now]);
        lastEventAt = now;
      });
    } finally {
      training = false;
      await client;
      server.close();
    }
    const answeredDuringSteps = answeredAt.filter((time) => stepWindows.some(([start, end]) => time > start && time < end)).length;
    const stepMs = stepWindows.map(([start, end]) => end - start).sort((x, y) => x - y);
    const sortedLatencies = [...latencies].sort((x, y) => x - y);
    const median = sortedLatencies[Math.floor(sortedLatencies.length / 2)];
    console.log(`steps ${stepMs.map((ms) => ms.toFixed(0)).join(", ")} ms; ${answeredDuringSteps} requests answered during them; latency median ${median.toFixed(1)} ms, max ${sortedLatencies.at(-1)!.toFixed(1)} ms`);
    expect(answeredDuringSteps).toBeGreaterThanOrEqual(stepWindows.length * 2);
    expect(median).toBeLessThan(stepMs[0] / 2);
  });
});
