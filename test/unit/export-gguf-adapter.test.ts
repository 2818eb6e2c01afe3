import { mkdtemp, readdir, rm, stat, truncate } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { readGgufModel } from "../../src/gguf/read.js";
import { GgufWriter, gguf } from "../../src/gguf/writer.js";
import { readGgufAdapter, writeGgufAdapter } from "../../src/export/gguf-adapter.js";
import type { NamedTensor } from "../../src/native/addon.js";

let dir: string;
let basePath: string;
// a header-only stand-in for a base model: the adapter writer reads only its metadata and tensor index
const nEmbd = 16;
const nKv = 8;

function filled(shape: number[], seed: number): NamedTensor["data"] {
  const data = new Float32Array(shape[0] * shape[1]);
  for (let i = 0; i < data.length; i++) data[i] = Math.sin(seed * 100 + i) * 0.5;
  return data;
}

function lora(base: string, rank: number, inFeatures: number, outFeatures: number, seed: number): NamedTensor[] {
  return [
    { name: `${base}.lora_a`, shape: [rank, inFeatures], data: filled([rank, inFeatures], seed) },
    { name: `${base}.lora_b`, shape: [outFeatures, rank], data: filled([outFeatures, rank], seed + 1) },
  ];
}

beforeAll(async () => {
  dir = await mkdtemp(path.join(tmpdir(), "thinktune-gguf-adapter-"));
  basePath = path.join(dir, "base.gguf");
  const writer = new GgufWriter();
  writer.set("general.architecture", gguf.string("qwen2"));
  writer.set("general.name", gguf.string("Tiny Base"));
  const zeros = (count: number) => () => new Uint8Array(count * 4);
  writer.addTensor("blk.0.attn_q.weight", "F32", [nEmbd, nEmbd], zeros(nEmbd * nEmbd));
  writer.addTensor("blk.0.attn_k.weight", "F32", [nEmbd, nKv], zeros(nEmbd * nKv));
  writer.addTensor("blk.0.attn_norm.weight", "F32", [nEmbd], zeros(nEmbd));
  await writer.write(basePath);
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe("GGUF LoRA adapter", () => {
  it("writes the keys and the ggml dims llama.cpp checks, and reads back the same tensors", async () => {
    const tensors = [...lora("blk.0.attn_q.weight", 4, nEmbd, nEmbd, 1), ...lora("blk.0.attn_k.weight", 4, nEmbd, nKv, 3)];
    const file = path.join(dir, "adapter.gguf");
    await writeGgufAdapter(file, { baseModelPath: basePath, alpha: 8, tensors });
    const info = await readGgufModel(file);
    expect(info.metadata["general.type"]).toBe("adapter");
    expect(info.metadata["general.architecture"]).toBe("qwen2");
    expect(info.metadata["adapter.type"]).toBe("lora");
    expect(info.metadata["adapter.lora.alpha"]).toBe(8);
    const dims = Object.fromEntries(info.tensors.map((t) => [t.name, t.dims]));
    // W.ne = [in, out]; a.ne = [in, rank]; b.ne = [rank, out]
    expect(dims["blk.0.attn_k.weight.lora_a"]).toEqual([nEmbd, 4]);
    expect(dims["blk.0.attn_k.weight.lora_b"]).toEqual([4, nKv]);
    const read = await readGgufAdapter(file);
    expect(read.alpha).toBe(8);
    expect(read.arch).toBe("qwen2");
    for (const tensor of tensors) {
      const back = read.tensors.find((t) => t.name === tensor.name)!;
      expect(back.shape).toEqual(tensor.shape);
      expect(Array.from(back.data)).toEqual(Array.from(tensor.data));
    }
    expect((await readdir(dir)).filter((name) => name.includes("tmp") || name.includes("partial"))).toEqual([]);
  });

  it("writes F16 on request at half the size", async () => {
    const tensors = lora("blk.0.attn_q.weight", 4, nEmbd, nEmbd, 5);
    const f32 = path.join(dir, "f32.gguf");
    const f16 = path.join(dir, "f16.gguf");
    await writeGgufAdapter(f32, { baseModelPath: basePath, alpha: 4, tensors });
    await writeGgufAdapter(f16, { baseModelPath: basePath, alpha: 4, tensors, type: "F16" });
    const info = await readGgufModel(f16);
    expect(info.tensors.every((t) => t.type === 1)).toBe(true);
    const read = await readGgufAdapter(f16);
    for (let i = 0; i < tensors[0].data.length; i++) expect(read.tensors[0].data[i]).toBeCloseTo(tensors[0].data[i], 3);
    expect((await stat(f16)).size).toBeLessThan((await stat(f32)).size);
  });

  it("refuses shapes or names that do not fit the base, naming the tensor and both shapes", async () => {
    const out = path.join(dir, "bad.gguf");
    await expect(writeGgufAdapter(out, { baseModelPath: basePath, alpha: 8, tensors: lora("blk.0.attn_k.weight", 4, nEmbd, nEmbd, 1) })).rejects.toThrow(
      /"blk\.0\.attn_k\.weight\.lora_b" has shape \[16, 4\] \(out, rank\) but the base tensor "blk\.0\.attn_k\.weight" in .* is \[8, 16\] \(out, in\)/,
    );
    await expect(writeGgufAdapter(out, { baseModelPath: basePath, alpha: 8, tensors: lora("blk.0.attn_q.weight", 4, 32, nEmbd, 1) })).rejects.toThrow(
      /"blk\.0\.attn_q\.weight\.lora_a" has shape \[4, 32\] \(rank, in\) .* in must be 16/,
    );
    await expect(writeGgufAdapter(out, { baseModelPath: basePath, alpha: 8, tensors: lora("blk.7.attn_q.weight", 4, nEmbd, nEmbd, 1) })).rejects.toThrow(
      /adapts "blk\.7\.attn_q\.weight", which the base model .* does not have/,
    );
    await expect(
      writeGgufAdapter(out, { baseModelPath: basePath, alpha: 8, tensors: lora("blk.0.attn_q.weight", 4, nEmbd, nEmbd, 1).slice(0, 1) }),
    ).rejects.toThrow(/"blk\.0\.attn_q\.weight\.lora_b" is missing/);
    await expect(writeGgufAdapter(out, { baseModelPath: basePath, alpha: 0, tensors: lora("blk.0.attn_q.weight", 4, nEmbd, nEmbd, 1) })).rejects.toThrow(
      /alpha must be a positive number/,
    );
    await expect(stat(out)).rejects.toThrow();
  });

  it("names a truncated adapter file", async () => {
    const file = path.join(dir, "truncated.gguf");
    await writeGgufAdapter(file, { baseModelPath: basePath, alpha: 8, tensors: lora("blk.0.attn_q.weight", 4, nEmbd, nEmbd, 1) });
    await truncate(file, (await stat(file)).size - 10);
    await expect(readGgufAdapter(file)).rejects.toThrow(/is truncated: tensor "blk\.0\.attn_q\.weight\.lora_b" needs bytes/);
  });
});
