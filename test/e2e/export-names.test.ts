// Type and format names are taken in any case by every command (as llama.cpp's tools take them), and
// `export --format merged` writes every type synth can write, Q4_K_M and Q5_K_M mixed per tensor as
// llama-quantize does, in files llama.cpp loads. The PEFT export names its base by the GGUF's source
// repository, or by --base-model-id.
import { mkdtemp, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { getLlama, type Llama } from "node-llama-cpp";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { writeGgufAdapter } from "../../src/export/gguf-adapter.js";
import { exportAdapter, mergedTypeNames } from "../../src/export/export.js";
import { ggmlTypeLabel } from "../../src/gguf/ggml-types.js";
import { readGgufModel } from "../../src/gguf/read.js";
import { resolveSynthOptions, synthTypeNames, writeSynthModel } from "../../src/gguf/synth.js";
import { gguf, GgufWriter } from "../../src/gguf/writer.js";
import { readTypedGgufMetadata } from "../../src/export/gguf-metadata.js";
import { readTensorBytes } from "../../src/export/base-tensors.js";
import type { GgmlTypeName } from "../../src/native/addon.js";
import { runCli } from "../helpers/cli.js";

const projectRoot = path.resolve(import.meta.dirname, "..", "..");
const tinyModel = path.join(projectRoot, "models", "tiny-r1.gguf");
let dir: string;
let adapter: string;
let llama: Llama;

async function tensorTypes(file: string): Promise<Record<string, string>> {
  const model = await readGgufModel(file);
  return Object.fromEntries(model.tensors.map((tensor) => [tensor.name, ggmlTypeLabel(tensor.type)]));
}

beforeAll(async () => {
  dir = await mkdtemp(path.join(tmpdir(), "thinktune-names-"));
  llama = await getLlama({ gpu: false, build: "never", logLevel: "error" });
  adapter = path.join(dir, "adapter.gguf");
  const base = await readGgufModel(tinyModel);
  const rank = 2;
  const tensors = base.tensors
    .filter((tensor) => /^blk\.\d+\.(attn_q|ffn_down)\.weight$/.test(tensor.name))
    .flatMap((tensor) => {
      const [input, output] = tensor.dims;
      return [
        { name: `${tensor.name}.lora_a`, shape: [rank, input], data: Float32Array.from({ length: rank * input }, (_, i) => Math.sin(i) * 0.05) },
        { name: `${tensor.name}.lora_b`, shape: [output, rank], data: Float32Array.from({ length: output * rank }, (_, i) => Math.cos(i) * 0.05) },
      ];
    });
  await writeGgufAdapter(adapter, { baseModelPath: tinyModel, alpha: 4, tensors });
}, 120_000);
afterAll(async () => {
  await llama?.dispose();
  if (dir) await rm(dir, { recursive: true, force: true });
});

describe("type and format names", () => {
  it("synth --type takes q4_k_m as Q4_K_M, the same bytes", async () => {
    const shape = ["--layers", "2", "--embd", "256", "--heads", "4", "--kv-heads", "2", "--ffn", "256", "--vocab", "600", "--seed", "1"];
    const lower = path.join(dir, "lower.gguf");
    const upper = path.join(dir, "upper.gguf");
    const [a, b] = await Promise.all([runCli(["synth", ...shape, "--type", "q4_k_m", "--out", lower]), runCli(["synth", ...shape, "--type", "Q4_K_M", "--out", upper])]);
    expect(a.code, a.stderr).toBe(0);
    expect(b.code, b.stderr).toBe(0);
    expect(Buffer.compare(await readFile(lower), await readFile(upper))).toBe(0);
    const wrong = await runCli(["synth", ...shape, "--type", "q3_k", "--out", path.join(dir, "wrong.gguf")]);
    expect(wrong.code).not.toBe(0);
    expect(wrong.stderr).toContain("use one of F32, F16, BF16");
  });

  it("export takes --format and --type in any case", async () => {
    const out = path.join(dir, "adapter-f16.gguf");
    const merged = path.join(dir, "merged-cli.gguf");
    const [result, mergedResult] = await Promise.all([
      runCli(["export", adapter, "--base", tinyModel, "--format", "GGUF", "--type", "f16", "--out", out]),
      runCli(["export", adapter, "--base", tinyModel, "--format", "Merged", "--type", "q4_k_m", "--out", merged]),
    ]);
    expect(result.code, result.stderr).toBe(0);
    expect(new Set(Object.values(await tensorTypes(out)))).toEqual(new Set(["F16"]));
    expect(mergedResult.code, mergedResult.stderr).toBe(0);
    expect((await tensorTypes(merged))["output.weight"]).toBe("Q6_K");
    const wrong = await runCli(["export", adapter, "--base", tinyModel, "--format", "gguf", "--type", "Q4_K_M", "--out", path.join(dir, "x.gguf")]);
    expect(wrong.code).toBe(1);
    expect(wrong.stderr).toContain("type Q4_K_M does not apply to gguf; use one of F32, F16");
  });
});

describe("export --format merged --type", () => {
  it("takes every type synth writes, besides base", () => {
    expect(mergedTypeNames).toEqual([...synthTypeNames, "base"]);
  });

  for (const type of synthTypeNames) {
    it(`writes ${type} with the tensor types synth gives that type, and llama.cpp loads and runs it`, async () => {
      const out = path.join(dir, `merged-${type}.gguf`);
      await exportAdapter(adapter, { format: "merged", type, baseModelPath: tinyModel, out });
      // the same shape written by synth in that type: the per-tensor types of a llama-quantize mix
      const reference = path.join(dir, `synth-${type}.gguf`);
      await writeSynthModel(reference, resolveSynthOptions({ preset: "tiny", type, seed: 0 }));
      expect(await tensorTypes(out)).toEqual(await tensorTypes(reference));
      expect((await readGgufModel(out)).metadata["general.file_type"]).toBe((await readGgufModel(reference)).metadata["general.file_type"]);

      const model = await llama.loadModel({ modelPath: out });
      try {
        const context = await model.createContext({ contextSize: 128, threads: 1 });
        const sequence = context.getSequence();
        const tokens = model.tokenize("<｜User｜>Hi<｜Assistant｜>", true);
        const iterator = sequence.evaluate(tokens, { temperature: 0 });
        const first = await iterator.next();
        await iterator.return();
        expect(first.done).toBe(false);
        await context.dispose();
      } finally {
        await model.dispose();
      }
    });
  }
});

describe("PEFT base_model_name_or_path", () => {
  it("is the source repository the GGUF names, or --base-model-id", async () => {
    // the tiny model with general.source.url set, as convert_hf_to_gguf writes it for a hub model
    const base = path.join(dir, "with-source.gguf");
    const original = await readGgufModel(tinyModel);
    const writer = new GgufWriter({ alignment: original.alignment });
    for (const [key, value] of await readTypedGgufMetadata(tinyModel)) if (key !== "general.alignment") writer.set(key, value);
    writer.set("general.source.url", gguf.string("https://huggingface.co/deepseek-ai/DeepSeek-R1-Distill-Qwen-7B"));
    for (const tensor of original.tensors) {
      writer.addTensor(tensor.name, ggmlTypeLabel(tensor.type) as GgmlTypeName, tensor.dims, () => readTensorBytes(original, tensor));
    }
    await writer.write(base);

    const fromSource = await runCli(["export", adapter, "--base", base, "--format", "peft", "--out", path.join(dir, "peft-source")]);
    expect(fromSource.code, fromSource.stderr).toBe(0);
    const config = JSON.parse(await readFile(path.join(dir, "peft-source", "adapter_config.json"), "utf8"));
    expect(config.base_model_name_or_path).toBe("deepseek-ai/DeepSeek-R1-Distill-Qwen-7B");

    const named = await runCli(["export", adapter, "--base", tinyModel, "--format", "peft", "--base-model-id", "me/my-base", "--out", path.join(dir, "peft-named")]);
    expect(named.code, named.stderr).toBe(0);
    expect(JSON.parse(await readFile(path.join(dir, "peft-named", "adapter_config.json"), "utf8")).base_model_name_or_path).toBe("me/my-base");
  });
});
