import { existsSync } from "node:fs";
import { mkdtemp, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { getLlama, LlamaLogLevel, type Llama } from "node-llama-cpp";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { readGgufModel } from "../../src/gguf/read.js";
import { modelConfigFromGguf } from "../../src/gguf/model-config.js";
import { fillSynthValues, planSynthTensors, resolveSynthOptions, synthParameterCount, synthTypeNames, writeSynthModel, type SynthInput } from "../../src/gguf/synth.js";
import { GgmlType } from "../../src/native/addon.js";
import { runCli } from "../helpers/cli.js";
import { synthModel } from "../helpers/models.js";

const projectRoot = path.resolve(import.meta.dirname, "..", "..");
const cli = (...args: string[]) => runCli(args);

// Small shapes: K-quants need rows of 256, so the embedding and FFN are 256 wide.
const small: SynthInput = { nLayer: 2, nEmbd: 256, nHead: 4, nHeadKv: 2, nFf: 256, nVocab: 1280, contextLength: 512 };

let llama: Llama;
let dir: string;
beforeAll(async () => {
  llama = await getLlama({ gpu: false, build: "never", logLevel: LlamaLogLevel.error });
  dir = await mkdtemp(path.join(tmpdir(), "thinktune-synth-"));
});
afterAll(async () => {
  await llama?.dispose();
  await rm(dir, { recursive: true, force: true });
});

/** Loads the file in llama.cpp (CPU) and greedily generates `count` tokens after a chat prompt. */
async function generate(file: string, count: number): Promise<number[]> {
  const model = await llama.loadModel({ modelPath: file, gpuLayers: 0 });
  try {
    const context = await model.createContext({ contextSize: 128, threads: 2 });
    try {
      const sequence = context.getSequence();
      const prompt = model.tokenize("<｜begin▁of▁sentence｜><｜User｜>What is 2+2?<｜Assistant｜><think>\n", true);
      const generated: number[] = [];
      for await (const token of sequence.evaluate(prompt, { temperature: 0 })) {
        generated.push(token);
        if (generated.length === count) break;
      }
      return generated;
    } finally {
      await context.dispose();
    }
  } finally {
    await model.dispose();
  }
}

describe("synth", () => {
  it.each(synthTypeNames)("writes a %s qwen2 model that llama.cpp loads and generates from", async (type) => {
    const file = await synthModel({ ...small, type, seed: 1 });
    const gguf = await readGgufModel(file);
    const config = modelConfigFromGguf(gguf);
    expect(config).toMatchObject({ arch: "qwen2", nLayer: 2, nEmbd: 256, nHead: 4, nHeadKv: 2, nFf: 256, nVocab: 1280, hasQkvBias: true, tiedOutput: false });
    const plannedTypes = new Map(planSynthTensors(resolveSynthOptions({ ...small, type })).map((tensor) => [tensor.name, GgmlType[tensor.type]]));
    for (const tensor of gguf.tensors) {
      const expected = tensor.dims.length === 1 ? GgmlType.F32 : type in GgmlType ? GgmlType[type as keyof typeof GgmlType] : plannedTypes.get(tensor.name);
      expect(tensor.type, tensor.name).toBe(expected);
    }
    const tokens = await generate(file, 4);
    expect(tokens).toHaveLength(4);
    for (const token of tokens) expect(token).toBeLessThan(1280);
  });

  it("writes llama models (tied output, rope_freqs, no biases) that llama.cpp loads and generates from", async () => {
    const file = await synthModel({ ...small, arch: "llama", tiedOutput: true, ropeFreqs: true, type: "Q8_0", seed: 2 });
    const gguf = await readGgufModel(file);
    expect(modelConfigFromGguf(gguf)).toMatchObject({ arch: "llama", tiedOutput: true, hasQkvBias: false, hasRopeFreqs: true, headDim: 64 });
    expect(gguf.metadata["tokenizer.ggml.pre"]).toBe("llama-bpe");
    expect(await generate(file, 4)).toHaveLength(4);
  });

  it("mixes types as llama-quantize's Q4_K_M does", () => {
    const typesOf = (options: SynthInput) => {
      const tensors = planSynthTensors(resolveSynthOptions({ ...small, nLayer: 8, ...options }));
      return (kind: string) => tensors.filter((tensor) => tensor.name === kind || tensor.name.endsWith(`.${kind}`)).map((tensor) => tensor.type);
    };
    const q4km = typesOf({ type: "Q4_K_M" });
    // use_more_bits(i, 8): the first and last eighth (layers 0 and 7) and every third from layer 1 + 2
    const moreBits = ["Q6_K", "Q4_K", "Q4_K", "Q6_K", "Q4_K", "Q4_K", "Q6_K", "Q6_K"];
    expect(q4km("attn_v.weight")).toEqual(moreBits);
    expect(q4km("ffn_down.weight")).toEqual(moreBits);
    expect(q4km("attn_q.weight")).toEqual(new Array(8).fill("Q4_K"));
    expect(q4km("output.weight")).toEqual(["Q6_K"]);
    expect(q4km("token_embd.weight")).toEqual(["Q4_K"]);
    expect(q4km("attn_norm.weight")).toEqual(new Array(8).fill("F32"));
    expect(typesOf({ type: "Q5_K_M", tiedOutput: true })("token_embd.weight")).toEqual(["Q6_K"]);
    expect(typesOf({ type: "Q5_K_M" })("ffn_up.weight")).toEqual(new Array(8).fill("Q5_K"));
  });

  it("has a byte-level BPE tokenizer with the R1 tokens as llama.cpp types them", async () => {
    const file = await synthModel({ ...small, seed: 1, type: "F16" });
    const model = await llama.loadModel({ modelPath: file });
    try {
      const gguf = await readGgufModel(file);
      const tokens = gguf.metadata["tokenizer.ggml.tokens"] as string[];
      const idOf = (text: string) => tokens.indexOf(text);
      expect(gguf.metadata["tokenizer.ggml.bos_token_id"]).toBe(idOf("<｜begin▁of▁sentence｜>"));
      expect(gguf.metadata["tokenizer.ggml.eos_token_id"]).toBe(idOf("<｜end▁of▁sentence｜>"));
      // CONTROL tokens are matched only in special mode; <think> (USER_DEFINED) always, as in real R1 files
      expect([...model.tokenize("<｜User｜>", true)]).toEqual([idOf("<｜User｜>")]);
      expect(model.tokenize("<｜User｜>", false).length).toBeGreaterThan(1);
      expect([...model.tokenize("<think>", false)]).toEqual([idOf("<think>")]);
      expect([...model.tokenize("</think>", false)]).toEqual([idOf("</think>")]);
      // learned merges make common words single tokens; any text round-trips through the byte tokens
      expect(model.tokenize(" the", false)).toHaveLength(1);
      for (const text of ["The answer is 10 apples.", "答えは十個です。", "好的，我们来一步一步地思考", "emoji 🤖 and\ttabs\n\n"]) {
        const ids = model.tokenize(text, false);
        expect(ids.length).toBeLessThan(Buffer.byteLength(text));
        expect(model.detokenize(ids)).toBe(text);
      }
      expect(model.fileInfo.metadata.tokenizer.chat_template).toContain("<｜Assistant｜><think>\\n");
    } finally {
      await model.dispose();
    }
  });

  it("is deterministic from the seed, whatever the chunking", async () => {
    const options = resolveSynthOptions({ ...small, nLayer: 1, type: "Q4_K", seed: 7 });
    const [a, b, c] = ["a.gguf", "b.gguf", "c.gguf"].map((name) => path.join(dir, name));
    await writeSynthModel(a, options);
    await writeSynthModel(b, options);
    await writeSynthModel(c, { ...options, seed: 8 });
    const [bytesA, bytesB, bytesC] = await Promise.all([a, b, c].map((file) => readFile(file)));
    expect(Buffer.compare(bytesA, bytesB)).toBe(0);
    expect(bytesA.length).toBe(bytesC.length);
    expect(Buffer.compare(bytesA, bytesC)).not.toBe(0);

    const whole = new Float32Array(10_000);
    fillSynthValues(whole, 123, 0, { mean: 1, std: 0.5 });
    const pieces = new Float32Array(10_000);
    for (let start = 0; start < pieces.length; start += 3_001) {
      const piece = new Float32Array(Math.min(3_001, pieces.length - start));
      fillSynthValues(piece, 123, start, { mean: 1, std: 0.5 });
      pieces.set(piece, start);
    }
    expect(pieces).toEqual(whole);
    const mean = whole.reduce((sum, value) => sum + value, 0) / whole.length;
    const std = Math.sqrt(whole.reduce((sum, value) => sum + (value - mean) ** 2, 0) / whole.length);
    expect(mean).toBeCloseTo(1, 1);
    expect(std).toBeGreaterThan(0.48);
    expect(std).toBeLessThan(0.52);
  });

  it("the r1-distill-qwen-7b preset has the real model's exact shape", () => {
    const options = resolveSynthOptions({ preset: "r1-distill-qwen-7b" });
    expect(options).toMatchObject({ arch: "qwen2", nLayer: 28, nEmbd: 3584, nHead: 28, nHeadKv: 4, nFf: 18944, nVocab: 152064, ropeBase: 10000, rmsEps: 1e-6, tiedOutput: false, qkvBias: true, type: "Q4_K" });
    // DeepSeek-R1-Distill-Qwen-7B: 7,615,616,512 parameters in 339 tensors
    expect(synthParameterCount(options)).toBe(7_615_616_512);
    expect(planSynthTensors(options)).toHaveLength(339);
  });

  it("the committed tiny model is the tiny preset at seed 0, under 4 MB", async () => {
    const committed = path.join(projectRoot, "models", "tiny-r1.gguf");
    expect(existsSync(committed), `${committed} is missing: run \`thinktune synth --preset tiny --seed 0 --out models/tiny-r1.gguf\``).toBe(true);
    const fresh = await synthModel({ preset: "tiny", seed: 0 });
    const [committedBytes, freshBytes] = await Promise.all([readFile(committed), readFile(fresh)]);
    expect(committedBytes.length).toBeLessThanOrEqual(4 << 20);
    expect(Buffer.compare(committedBytes, freshBytes), "models/tiny-r1.gguf is stale: regenerate it with thinktune synth --preset tiny --seed 0").toBe(0);
  });

  it("the CLI writes a model and reports its size", async () => {
    const out = path.join(dir, "cli.gguf");
    const result = await cli("synth", "--arch", "llama", "--layers", "1", "--embd", "64", "--heads", "2", "--ffn", "128", "--vocab", "512", "--type", "F16", "--seed", "3", "--out", out);
    expect(result.stderr).not.toMatch(/error/i);
    expect(result.code).toBe(0);
    expect(result.stdout).toMatch(/^wrote .*cli\.gguf: llama 1 layers × 64, F16, .* \(\d+ bytes\) in /);
    const config = modelConfigFromGguf(await readGgufModel(out));
    expect(config).toMatchObject({ arch: "llama", nLayer: 1, nEmbd: 64, nHead: 2, nHeadKv: 2, nFf: 128, nVocab: 512, hasQkvBias: false });
  });

  it("rejects impossible shapes with one message naming the options (flags in the CLI)", async () => {
    expect(() => resolveSynthOptions({ nHead: 3 })).toThrow("invalid synth options: nEmbd 256 must be a multiple of nHead 3; nHead 3 must be a multiple of nHeadKv 2");
    expect(() => resolveSynthOptions({ ropeFreqs: true })).toThrow("ropeFreqs (llama3 RoPE scaling) exists only for arch llama, not qwen2");
    expect(() => resolveSynthOptions({ nVocab: 100 })).toThrow(/nVocab: .*272/);
    expect(() => resolveSynthOptions({ type: "Q5_K", nFf: 640 })).toThrow("nFf 640 must be a multiple of 256 for Q5_K weights");
    expect(() => resolveSynthOptions({ preset: "huge" as never })).toThrow('unknown synth preset "huge"');
    expect(resolveSynthOptions({ arch: "llama" })).toMatchObject({ arch: "llama", qkvBias: false });

    const out = path.join(dir, "bad.gguf");
    const [kQuant, notANumber] = await Promise.all([
      cli("synth", "--type", "Q4_K", "--embd", "384", "--heads", "6", "--kv-heads", "2", "--out", out),
      cli("synth", "--layers", "two", "--out", out),
    ]);
    expect(kQuant.code).toBe(1);
    expect(kQuant.stderr.trim()).toBe(
      "thinktune: invalid synth options: --embd 384 must be a multiple of 256 for Q4_K weights (rows are whole 256-element blocks)",
    );
    expect(notANumber.code).toBe(1);
    expect(notANumber.stderr).toContain('expected a whole number, got "two"');
    for (const result of [kQuant, notANumber]) expect(result.stderr).not.toMatch(/\n\s+at /);
    expect(existsSync(out)).toBe(false);
  });
});
