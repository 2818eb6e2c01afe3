// What --lora accepts: an adapter .gguf, a run folder (adapter/adapter.gguf) and a checkpoint folder
// (checkpoints/step-N with only lora.safetensors, converted on the fly); each checked against the base.
import { existsSync } from "node:fs";
import { mkdir, mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { readGgufAdapter, writeGgufAdapter } from "../../src/export/gguf-adapter.js";
import { writeSafetensors } from "../../src/export/safetensors.js";
import { readGgufModel } from "../../src/gguf/read.js";
import { resolveAdapter } from "../../src/infer/adapter.js";
import type { NamedTensor } from "../../src/native/addon.js";

const projectRoot = path.resolve(import.meta.dirname, "..", "..");
const baseModel = path.join(projectRoot, "models", "tiny-r1.gguf");

async function loraTensors(rank = 2): Promise<NamedTensor[]> {
  const base = await readGgufModel(baseModel);
  const tensors: NamedTensor[] = [];
  for (const tensor of base.tensors.filter((entry) => /^blk\.\d+\.attn_q\.weight$/.test(entry.name))) {
    const [input, output] = tensor.dims;
    tensors.push({ name: `${tensor.name}.lora_a`, shape: [rank, input], data: new Float32Array(rank * input).map((_, i) => Math.sin(i) * 0.1) });
    tensors.push({ name: `${tensor.name}.lora_b`, shape: [output, rank], data: new Float32Array(output * rank).map((_, i) => Math.cos(i) * 0.1) });
  }
  return tensors;
}

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(path.join(tmpdir(), "thinktune-lora-"));
});
afterAll(async () => {
  if (dir) await rm(dir, { recursive: true, force: true });
});

describe("--lora resolution", () => {
  it("takes an adapter file by its name, or NAME=PATH", async () => {
    const file = path.join(dir, "my-style.gguf");
    await writeGgufAdapter(file, { baseModelPath: baseModel, alpha: 4, tensors: await loraTensors() });
    const adapter = await resolveAdapter(file, baseModel);
    expect(adapter).toMatchObject({ name: "my-style", ggufPath: file });
    expect((await resolveAdapter(`styled=${file}`, baseModel)).name).toBe("styled");
  });

  it("takes a run folder (its adapter/adapter.gguf), named after the run", async () => {
    const run = path.join(dir, "run-a");
    await mkdir(path.join(run, "adapter"), { recursive: true });
    await writeGgufAdapter(path.join(run, "adapter", "adapter.gguf"), { baseModelPath: baseModel, alpha: 4, tensors: await loraTensors() });
    const adapter = await resolveAdapter(run, baseModel);
    expect(adapter).toMatchObject({ name: "run-a", ggufPath: path.join(run, "adapter", "adapter.gguf") });
  });

  it("converts a checkpoint folder holding only lora.safetensors, and removes the conversion on dispose", async () => {
    const run = path.join(dir, "run-b");
    const checkpoint = path.join(run, "checkpoints", "step-3");
    await mkdir(checkpoint, { recursive: true });
    await writeFile(path.join(run, "config.json"), JSON.stringify({ model: baseModel, lora: { rank: 2, alpha: 4 } }));
    await writeFile(path.join(checkpoint, "state.json"), JSON.stringify({ step: 3 }));
    const tensors = await loraTensors();
    await writeSafetensors(path.join(checkpoint, "lora.safetensors"), tensors);
    const adapter = await resolveAdapter(checkpoint, baseModel);
    expect(adapter.name).toBe("run-b-step-3");
    const converted = await readGgufAdapter(adapter.ggufPath);
    expect(converted.alpha).toBe(4);
    expect(converted.tensors.map((tensor) => tensor.name).sort()).toEqual(tensors.map((tensor) => tensor.name).sort());
    expect(Array.from(converted.tensors.find((tensor) => tensor.name === tensors[0].name)!.data)).toEqual(Array.from(tensors[0].data));
    await adapter.dispose();
    expect(existsSync(adapter.ggufPath)).toBe(false);
  });

  it("names a path that does not exist, and what it accepts", async () => {
    await expect(resolveAdapter(path.join(dir, "nothing"), baseModel)).rejects.toThrow(/nothing does not exist; give an adapter \.gguf, a run folder or a checkpoint folder/);
  });
});
