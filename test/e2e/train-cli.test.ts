// `thinktune train` as a user runs it: a child process, its output and exit code, its run folder.
import { spawn, type ChildProcess } from "node:child_process";
import { existsSync } from "node:fs";
import { cp, mkdtemp, readdir, readFile, writeFile } from "node:fs/promises";
import os, { tmpdir } from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { describe, expect, it } from "vitest";
import { collectOutput, spawnCli, type StreamedRun } from "../helpers/cli.js";

const projectRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..", "..");


/**
 * Runs `thinktune train` from source (the same code `npm run train` runs once built); `onStdout` sees the
 * output as it arrives and may signal the child.
 */
function runCli(args: string[], onStdout?: (text: string, child: ChildProcess) => void, cwd = projectRoot): Promise<StreamedRun> {
  return spawnCli(["train", ...args], { cwd, onStdout });
}

/** Runs a command line as the user would paste it into a shell. */
function runShell(commandLine: string): Promise<StreamedRun> {
  return collectOutput(spawn("sh", ["-c", commandLine], { cwd: projectRoot, stdio: ["ignore", "pipe", "pipe"] }));
}

async function tempDir(): Promise<string> {
  return mkdtemp(path.join(tmpdir(), "thinktune-train-cli-"));
}

describe("thinktune train: configuration errors", () => {
  it("names an unknown key in the config file", async () => {
    const dir = await tempDir();
    const config = path.join(dir, "bad.json");
    await writeFile(config, JSON.stringify({ learningrate: 1e-4, lora: { rank: 8 } }));
    const result = await runCli(["--config", config, "--out", path.join(dir, "run")]);
    expect(result.code).toBe(1);
    expect(result.stderr).toContain(`${config}: Unknown key "learningrate"; did you mean "learningRate"?`);
    expect(existsSync(path.join(dir, "run"))).toBe(false);
  });

  it("names the flag, the expected type and the value of a wrong type", async () => {
    const dir = await tempDir();
    const result = await runCli(["--lr", "fast", "--out", path.join(dir, "run")]);
    expect(result.code).toBe(1);
    expect(result.stderr).toContain('Expected number for learningRate (--lr), got string "fast"');
    const config = path.join(dir, "typed.json");
    await writeFile(config, JSON.stringify({ lora: { rank: "eight" } }));
    const fromFile = await runCli(["--config", config]);
    expect(fromFile.code).toBe(1);
    expect(fromFile.stderr).toContain(`${config}: Expected number for lora.rank, got string "eight"`);
  });

  it("refuses a data file that does not exist before loading anything", async () => {
    const dir = await tempDir();
    const missing = path.join(dir, "no-such-data.jsonl");
    const result = await runCli(["--data", missing, "--out", path.join(dir, "run")]);
    expect(result.code).toBe(1);
    expect(result.stderr).toContain(`data: ${missing} does not exist`);
    expect(result.stdout).not.toMatch(/step 1\//);
  });
});

async function stepRecords(run: string): Promise<{ type: string; step: number; loss?: number; valLoss?: number }[]> {
  return (await readFile(path.join(run, "metrics.jsonl"), "utf8")).trim().split("\n").map((line) => JSON.parse(line));
}

describe("thinktune train: runs", () => {
  it("Ctrl-C finishes the step, writes a checkpoint, exits 130 and prints the resume command; the resume completes", async () => {
    const run = path.join(await tempDir(), "run");
    let interrupted = false;
    const stopped = await runCli(["--out", run, "--max-steps", "16", "--log-every", "1", "--preview-tokens", "0"], (text, child) => {
      if (!interrupted && /step 3\/16/.test(text)) {
        interrupted = true;
        child.kill("SIGINT");
      }
    });
    expect(stopped.code).toBe(130);
    expect(stopped.stdout).toContain("SIGINT: finishing the current step and writing a checkpoint");
    // the resume command as printed: here thinktune is not on the PATH, so it names node and the script
    const printed = /^Resume with: (.+)$/m.exec(stopped.stdout)![1];
    expect(printed.endsWith(` train --resume ${run}`)).toBe(true);
    const stoppedAt = Number(/Stopped at step (\d+) of 16/.exec(stopped.stdout)![1]);
    expect(stoppedAt).toBeGreaterThanOrEqual(3);
    expect(existsSync(path.join(run, "checkpoints", `step-${stoppedAt}`, "state.json"))).toBe(true);
    expect(existsSync(path.join(run, "adapter"))).toBe(false);

    const resumed = await runShell(printed);
    expect(resumed.code, resumed.stderr).toBe(0);
    expect(resumed.stdout).toContain(`Resuming from ${path.join(run, "checkpoints", `step-${stoppedAt}`)} at step ${stoppedAt}`);
    expect(existsSync(path.join(run, "adapter", "adapter.gguf"))).toBe(true);
    const steps = (await stepRecords(run)).filter((record) => record.type === "step").map((record) => record.step);
    expect(steps).toEqual(Array.from({ length: 16 }, (_, index) => index + 1));
  });

  it("kill -9 before the first checkpoint: --resume starts the run again, and so does a fresh train --out", async () => {
    const root = await tempDir();
    const run = path.join(root, "run");
    const args = ["--max-steps", "4", "--checkpoint-every", "100", "--log-every", "1", "--preview-tokens", "0"];
    let killed = false;
    const first = await runCli(["--out", run, ...args], (text, child) => {
      if (!killed && /step 1\/4/.test(text)) {
        killed = true;
        child.kill("SIGKILL");
      }
    });
    expect(first.code).toBe(128 + os.constants.signals.SIGKILL);
    expect(existsSync(path.join(run, "config.json"))).toBe(true);
    expect(existsSync(path.join(run, "checkpoints"))).toBe(false);
    // the same killed folder twice: one resumed, one trained afresh
    const copy = path.join(root, "copy");
    await cp(run, copy, { recursive: true });
    const steps = async (folder: string) => (await stepRecords(folder)).filter((record) => record.type === "step").map((record) => record.step);

    const resumed = await runCli(["--resume", run]);
    expect(resumed.stderr).not.toContain("error");
    expect(resumed.code).toBe(0);
    expect(resumed.stdout).toContain("Starting again from step 0: the run had no checkpoint yet");
    expect(await steps(run)).toEqual([1, 2, 3, 4]);

    const fresh = await runCli(["--out", copy, ...args]);
    expect(fresh.stderr).not.toContain("error");
    expect(fresh.code).toBe(0);
    expect(existsSync(path.join(copy, "adapter", "adapter.gguf"))).toBe(true);
    expect(await steps(copy)).toEqual([1, 2, 3, 4]);
  }, 240_000);

  it("a second Ctrl-C exits at once", async () => {
    const run = path.join(await tempDir(), "run");
    let interrupted = false;
    const result = await runCli(["--out", run, "--max-steps", "200", "--log-every", "1", "--preview-tokens", "0"], (text, child) => {
      if (!interrupted && /step 1\/200/.test(text)) {
        interrupted = true;
        child.kill("SIGINT");
        setTimeout(() => child.kill("SIGINT"), 20);
      }
    });
    expect(result.code).toBe(130);
    expect(result.stdout).toContain("SIGINT again: exiting now without a checkpoint.");
    expect(result.stdout).not.toContain("Resume with");
  });

  it("stops on a NaN/Inf loss with exit code 1, naming the step and suggesting a lower learning rate", async () => {
    const run = path.join(await tempDir(), "run");
    const result = await runCli(["--out", run, "--lr", "1e30", "--warmup-steps", "0", "--max-steps", "6", "--checkpoint-every", "1", "--preview-tokens", "0"]);
    expect(result.code).toBe(1);
    const step = Number(/training diverged at step (\d+)/.exec(result.stderr)![1]);
    expect(step).toBeGreaterThanOrEqual(2);
    expect(result.stderr).toContain(`The last good checkpoint is ${path.join(run, "checkpoints", `step-${step - 1}`)}`);
    expect(result.stderr).toContain("Lower the learning rate (e.g. --lr 0.001)");
    expect(existsSync(path.join(run, "checkpoints", `step-${step}`))).toBe(false);
  });

  it("the embedded default, shortened: trains, writes the run folder and adapter, prints the answer before and after", async () => {
    const run = path.join(await tempDir(), "run");
    const result = await runCli(["--out", run, "--max-steps", "12"]);
    expect(result.code).toBe(0);
    expect(result.stdout).toContain("Resolved configuration:");
    expect(result.stdout).toMatch(/Data: 38 records → 38 examples/);
    expect(result.stdout).toContain("--- before training ---");
    expect(result.stdout).toContain("--- after training (base model + adapter) ---");
    for (const file of ["config.json", "metrics.jsonl", "report.html", "adapter/adapter.gguf", "adapter/thinktune.json", "checkpoints/step-12/state.json"]) {
      expect(existsSync(path.join(run, file)), file).toBe(true);
    }
    const config = JSON.parse(await readFile(path.join(run, "config.json"), "utf8"));
    expect(config).toMatchObject({ maxSteps: 12, learningRate: 3e-3, maxLength: 512 });
    const records = await stepRecords(run);
    const losses = records.filter((record) => record.type === "step").map((record) => record.loss!);
    expect(losses).toHaveLength(12);
    expect(losses.slice(-3).reduce((a, b) => a + b) / 3).toBeLessThan(losses.slice(0, 3).reduce((a, b) => a + b) / 3);
    expect(records.some((record) => record.type === "eval" && record.step === 12)).toBe(true);
  });

  it("runs each recipe in examples/configs as it is", async () => {
    for (const recipe of ["cloud-console-lora.json", "peft-guide-lora.json"]) {
      const run = path.join(await tempDir(), "run");
      const result = await runCli(["--config", path.join(projectRoot, "examples", "configs", recipe), "--out", run]);
      expect(result.code, `${recipe}: ${result.stderr}`).toBe(0);
      expect(existsSync(path.join(run, "adapter", "adapter.gguf"))).toBe(true);
      const config = JSON.parse(await readFile(path.join(run, "config.json"), "utf8"));
      if (recipe.startsWith("cloud")) expect(config).toMatchObject({ learningRate: 5e-6, epochs: 6, maxLength: 1024, batchTokens: 2048, lora: { rank: 8, dropout: 0 } });
      else expect(config).toMatchObject({ learningRate: 1e-4, epochs: 3, maxLength: 4096, gradAccum: 8, lora: { rank: 32, alpha: 32, targets: ["q", "k", "v", "o"] } });
    }
  });

  it("says before training when the data's reasoning is longer than the recipe's max length", async () => {
    const run = path.join(await tempDir(), "run");
    const recipe = path.join(projectRoot, "examples", "configs", "cloud-console-lora.json");
    const result = await runCli(["--config", recipe, "--max-length", "200", "--max-steps", "1", "--out", run], undefined);
    expect(result.code).toBe(0);
    const warning = /Warning: (\d+) examples are longer than the max length 200 \(the longest has (\d+) tokens\) and were DROPPED/.exec(result.stdout);
    expect(warning).not.toBeNull();
    expect(result.stdout).toContain(`--max-length ${warning![2]} keeps them all`);
    expect(result.stdout.indexOf("DROPPED")).toBeLessThan(result.stdout.indexOf("step 1/1"));
  });

  it("the embedded default with no arguments at all learns visibly in about a minute", async () => {
    const cwd = await tempDir();
    const started = performance.now();
    const result = await runCli([], undefined, cwd);
    const seconds = (performance.now() - started) / 1000;
    expect(result.code, result.stderr).toBe(0);
    const runs = await readdir(path.join(cwd, "runs"));
    expect(runs).toHaveLength(1);
    const losses = (await stepRecords(path.join(cwd, "runs", runs[0]))).filter((record) => record.type === "step").map((record) => record.loss!);
    const mean = (values: number[]) => values.reduce((a, b) => a + b) / values.length;
    console.log(`embedded default: ${losses.length} steps in ${seconds.toFixed(1)} s, loss ${mean(losses.slice(0, 10)).toFixed(3)} → ${mean(losses.slice(-10)).toFixed(3)}`);
    expect(mean(losses.slice(-10))).toBeLessThan(mean(losses.slice(0, 10)) / 3);
    expect(result.stdout).toContain("--- after training (base model + adapter) ---");
    // the adapter's greedy answer starts with the trained answer's first sentence, word for word
    const verbatim = /the adapter repeats the trained answer's first (\d+) of (\d+) words verbatim \(before training: (\d+)\)/.exec(result.stdout);
    expect(verbatim, result.stdout).not.toBeNull();
    expect(Number(verbatim![1])).toBeGreaterThanOrEqual(11); // "The baker makes 24 muffins per batch and bakes 5 batches."
    expect(Number(verbatim![3])).toBe(0);
    expect(result.stdout).toMatch(/Adapter: .*adapter\.gguf \(step 200, the last step; --adapter best\|last chooses\)/);
    expect(seconds).toBeLessThan(180);
  }, 240_000);
});
