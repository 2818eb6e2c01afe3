// What chat and serve do when the user sets nothing: threads from the cores that are free (fast on a
// quiet machine and when another process, such as a training run, keeps cores busy), a reply limit, and
// a thought budget so R1's reasoning cannot run to the end of the context.
import { spawn, type ChildProcess } from "node:child_process";
import os from "node:os";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { defaultReplyTokens, defaultThoughtBudget } from "../../src/infer/generate.js";
import { ModelHost } from "../../src/infer/models.js";
import { startServer, type RunningServer } from "../../src/infer/server.js";
import { freeCoresBetween, type CpuSample } from "../../src/infer/threads.js";
import { runCli } from "../helpers/cli.js";

const projectRoot = path.resolve(import.meta.dirname, "..", "..");
const tinyModel = path.join(projectRoot, "models", "tiny-r1.gguf");
const question = [{ role: "user" as const, content: "What is 12 * 7?" }];

describe("free cores", () => {
  const sample = (busyMs: number, idleMs: number, ownMs: number): CpuSample => ({ at: 0, busyMs, idleMs, ownMs });
  const logical = os.cpus().length;

  it("counts the cores other processes kept busy, not this process's own work", () => {
    // over 1 s on every logical CPU: all idle, then all busy with this process, then all busy with others
    const start = sample(0, 0, 0);
    expect(freeCoresBetween(start, sample(0, 1000 * logical, 0), 8)).toBe(8);
    expect(freeCoresBetween(start, sample(1000 * logical, 0, 1000 * logical), 8)).toBe(8);
    expect(freeCoresBetween(start, sample(1000 * logical, 0, 0), 8)).toBe(1);
    expect(freeCoresBetween(start, sample(250 * logical, 750 * logical, 0), 8)).toBe(6);
  });
});

describe("generation defaults", () => {
  let busy: ChildProcess[] = [];
  afterAll(() => {
    for (const child of busy) child.kill();
  });

  it("keeps generating fast while other processes keep every core busy", async () => {
    const host = await ModelHost.load({ modelPath: tinyModel, gpu: false, contextSize: 512 });
    try {
      // One busy process per core, as a training run on every core would be.
      busy = Array.from({ length: os.availableParallelism() }, () => spawn(process.execPath, ["-e", "for (;;) {}"], { stdio: "ignore" }));
      await new Promise((resolve) => setTimeout(resolve, 500));
      const started = performance.now();
      const result = await host.generate(host.baseId, question, { maxTokens: 40, temperature: 0 });
      const seconds = (performance.now() - started) / 1000;
      expect(result.completionTokens).toBe(40);
      expect(host.threads).toBe(1);
      // 0.1 s with one thread on a loaded 2-core machine; node-llama-cpp's default of 4 threads took 30-50 s.
      expect(seconds).toBeLessThan(10);
    } finally {
      for (const child of busy) child.kill();
      busy = [];
      await host.dispose();
    }
  });

  it("states the reply limit and the thought budget in --help", async () => {
    for (const command of ["chat", "serve"]) {
      const help = await runCli([command, "--help"]);
      expect(help.code).toBe(0);
      expect(help.stdout).toMatch(new RegExp(`--max-tokens <n>[\\s\\S]*default: ${defaultReplyTokens}\\)`));
      expect(help.stdout).toMatch(/--thought-budget <n>[\s\S]*3\/4 of --max-tokens/);
    }
  });
});

describe("a request that sets no limits", () => {
  let running: RunningServer;
  beforeAll(async () => {
    running = await startServer({ modelPath: tinyModel, gpu: false, threads: 1, contextSize: 8192, port: 0 });
  });
  afterAll(async () => {
    await running?.close();
  });

  it("stops at the default reply limit, with the thought closed at 3/4 of it and an answer after it", async () => {
    const response = await fetch(`${running.url}/v1/chat/completions`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      // greedy, the random tiny model thinks about this to the context's end (8177 tokens) when nothing stops it
      body: JSON.stringify({ model: running.host.baseId, messages: [{ role: "user", content: "Explain gravity." }], temperature: 0 }),
    });
    const body = (await response.json()) as { choices: { message: { content: string } }[]; usage: { completion_tokens: number; completion_tokens_details: { reasoning_tokens: number } } };
    expect(response.status).toBe(200);
    expect(body.usage.completion_tokens).toBeLessThanOrEqual(defaultReplyTokens);
    expect(body.usage.completion_tokens_details.reasoning_tokens).toBe(defaultThoughtBudget(defaultReplyTokens));
    expect(body.choices[0].message.content.length).toBeGreaterThan(0);
  });
});
