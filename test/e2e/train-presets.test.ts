// `train --model models/tiny-r1.gguf` is the demo run (its preset: lr 3e-3, max length 512, the
// preview), as `train` with no arguments is; and --adapter best writes the best checkpoint's weights
// into adapter/, saying so, where the default is the last step's.
import { mkdtemp, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { readGgufAdapter } from "../../src/export/gguf-adapter.js";
import { readSafetensors } from "../../src/export/safetensors.js";
import { spawnCli, type StreamedRun } from "../helpers/cli.js";

let dir: string;

function train(args: string[]): Promise<StreamedRun> {
  return spawnCli(["train", ...args]);
}

beforeAll(async () => {
  dir = await mkdtemp(path.join(tmpdir(), "thinktune-presets-"));
});
afterAll(async () => {
  if (dir) await rm(dir, { recursive: true, force: true });
});

describe("thinktune train presets and the adapter it writes", () => {
  it("--model naming the embedded model (relative, as the README writes it) keeps the demo preset", async () => {
    const run = path.join(dir, "named");
    const result = await train(["--model", "models/tiny-r1.gguf", "--max-steps", "1", "--preview-tokens", "0", "--out", run]);
    expect(result.code, result.stderr).toBe(0);
    const config = JSON.parse(await readFile(path.join(run, "config.json"), "utf8"));
    expect(config).toMatchObject({ learningRate: 3e-3, maxLength: 512, lora: { rank: 16, alpha: 32 } });
  }, 300_000);

  it("--adapter best writes the checkpoint with the lowest validation loss, and the Done line says which step", async () => {
    const run = path.join(dir, "best");
    // a learning rate high enough that validation loss rises again within a few steps
    const result = await train(["--max-steps", "6", "--eval-every", "1", "--checkpoint-every", "1", "--keep-checkpoints", "1", "--lr", "1e-2", "--preview-tokens", "0", "--adapter", "best", "--out", run]);
    expect(result.code, result.stderr).toBe(0);
    const losses = [...result.stdout.matchAll(/step (\d+): validation loss ([\d.]+)/g)].map((match) => ({ step: Number(match[1]), loss: Number(match[2]) }));
    const best = losses.reduce((a, b) => (b.loss < a.loss ? b : a));
    expect(result.stdout).toContain(`(step ${best.step}, the best by validation loss; --adapter best|last chooses)`);
    expect(JSON.parse(await readFile(path.join(run, "adapter", "thinktune.json"), "utf8")).step).toBe(best.step);
    const adapter = await readGgufAdapter(path.join(run, "adapter", "adapter.gguf"));
    const checkpoint = await readSafetensors(path.join(run, "checkpoints", `step-${best.step}`, "lora.safetensors"));
    const first = checkpoint.tensors[0];
    const written = adapter.tensors.find((tensor) => tensor.name === first.name)!;
    expect(Array.from(written.data.slice(0, 64))).toEqual(Array.from(first.data.slice(0, 64)));
  }, 300_000);
});
