// Bad input and misuse: each gives a clear error (a rejected promise or a thrown Error naming what is
// wrong and where), and the engine and the process stay usable afterwards.
import { copyFile, mkdtemp, open, rm } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { readGgufModel } from "../../src/gguf/read.js";
import { Engine } from "../../src/train/engine.js";
import { synthModel } from "../helpers/models.js";
import { packedRow, randomTokens, smallModel } from "./engine-fixtures.js";

const rowOf = (count: number, seed = 1) => packedRow([randomTokens(count, smallModel.nVocab, seed)]);

describe("bad input", () => {
  let engine: Engine;
  beforeAll(async () => {
    engine = await Engine.load(await synthModel({ ...smallModel, arch: "qwen2", type: "F32", seed: 71 }), { threads: 2, maxTokens: 32, lora: { rank: 2 } });
  });
  afterAll(() => engine?.dispose());

  it("a token id outside the vocabulary names the row and position", async () => {
    const bad = rowOf(8);
    bad.tokens[5] = smallModel.nVocab + 3;
    await expect(engine.step([rowOf(8), bad], 1e-3)).rejects.toThrow(`row 1 position 5: token id ${smallModel.nVocab + 3} is outside the vocabulary [0, ${smallModel.nVocab})`);
    const negative = rowOf(4);
    negative.tokens[0] = -2;
    await expect(engine.logits(negative.tokens)).rejects.toThrow("row 0 position 0: token id -2 is outside the vocabulary");
  });

  it("a target outside the vocabulary", async () => {
    const bad = rowOf(6);
    bad.targets[2] = smallModel.nVocab;
    await expect(engine.evaluate([bad])).rejects.toThrow(`row 0 position 2: target ${smallModel.nVocab} is outside the vocabulary`);
  });

  it("a row longer than maxTokens", async () => {
    await expect(engine.step([rowOf(33)], 1e-3)).rejects.toThrow("row 0 has 33 tokens, more than maxTokens 32");
  });

  it("a row longer than the model's context", async () => {
    const full = await Engine.load(await synthModel({ ...smallModel, arch: "qwen2", type: "F32", seed: 71 }), { threads: 1, maxTokens: smallModel.contextLength, lora: { rank: 2 } });
    await expect(full.evaluate([rowOf(smallModel.contextLength + 1)])).rejects.toThrow(
      `row 0 has ${smallModel.contextLength + 1} tokens, more than the model's context length ${smallModel.contextLength}`,
    );
    full.dispose();
    await expect(Engine.load(await synthModel({ ...smallModel, arch: "qwen2", type: "F32", seed: 71 }), { maxTokens: 1000 })).rejects.toThrow("exceeds the context length 256");
  });

  it("an empty batch, an empty row, no target tokens", async () => {
    await expect(engine.step([], 1e-3)).rejects.toThrow("the batch is empty");
    await expect(engine.evaluate([{ tokens: new Int32Array(0), targets: new Int32Array(0), seqStarts: Int32Array.of(0) }])).rejects.toThrow("row 0 has no tokens");
    const noTargets = rowOf(6);
    noTargets.targets.fill(-1);
    await expect(engine.step([noTargets], 1e-3)).rejects.toThrow("the batch has no target tokens");
  });

  it("tokens and targets of different lengths, bad seqStarts, wrong array types", async () => {
    const row = rowOf(6);
    await expect(engine.step([{ ...row, targets: row.targets.subarray(0, 5) }], 1e-3)).rejects.toThrow("row 0: targets has 5 entries but tokens has 6");
    await expect(engine.evaluate([{ ...row, seqStarts: Int32Array.of(1) }])).rejects.toThrow("row 0: seqStarts must start with 0");
    await expect(engine.evaluate([{ ...row, seqStarts: Int32Array.of(0, 4, 4) }])).rejects.toThrow("row 0: seqStarts[2] = 4; sequence starts must increase strictly");
    await expect(engine.evaluate([{ ...row, seqStarts: Int32Array.of(0, 6) }])).rejects.toThrow("seqStarts[1] = 6");
    await expect(engine.evaluate([{ ...row, tokens: Array.from(row.tokens) as unknown as Int32Array }])).rejects.toThrow("rows[0].tokens must be an Int32Array");
  });

  it("LoRA tensors of the wrong shape or name", async () => {
    const lora = await engine.getLora();
    await expect(engine.setLora(lora.slice(1))).rejects.toThrow(`setLora: tensor "${lora[0]!.name}" is missing`);
    await expect(engine.setLora([...lora.slice(1), { ...lora[0]!, shape: [3, smallModel.nEmbd], data: new Float32Array(3 * smallModel.nEmbd) }])).rejects.toThrow(
      `setLora: tensor "${lora[0]!.name}" must have shape [2, ${smallModel.nEmbd}]`,
    );
    await expect(engine.setLora([...lora, { name: "blk.9.attn_q.weight.lora_a", shape: [2, 2], data: new Float32Array(4) }])).rejects.toThrow("is not part of this engine's LoRA");
    const poisoned = lora.map((tensor, i) => (i === 0 ? { ...tensor, data: Float32Array.from(tensor.data, (x, j) => (j === 3 ? Number.NaN : x)) } : tensor));
    await expect(engine.setLora(poisoned)).rejects.toThrow("holds a NaN or infinite value at element 3");
  });

  it("invalid options", async () => {
    const file = await synthModel({ ...smallModel, arch: "qwen2", type: "F32", seed: 71 });
    await expect(Engine.load(file, { lora: { rank: 0 } })).rejects.toThrow("Invalid engine options: lora.rank");
    await expect(Engine.load(file, { lora: { targets: ["q", "x" as "q"] } })).rejects.toThrow("lora.targets.1");
    await expect(Engine.load(file, { checkpoints: "disk" as "host" })).rejects.toThrow("Invalid engine options: checkpoints");
    await expect(Engine.load(file, { device: "cuda" })).rejects.toThrow('options.device "cuda" is not available in the CPU engine');
  });

  it("the engine still works after all of that", async () => {
    const result = await engine.step([rowOf(8)], 1e-3);
    expect(result.tokens).toBe(7);
    expect(Number.isFinite(result.loss)).toBe(true);
  });

  it("a loss that overflows is reported, not trained on", async () => {
    const runaway = await Engine.load(await synthModel({ ...smallModel, arch: "qwen2", type: "F32", seed: 71 }), { threads: 1, maxTokens: 32, lora: { rank: 2 }, optimizer: { clipNorm: 0 } });
    const row = rowOf(8);
    await runaway.step([row], 1e30);
    await expect(runaway.step([row], 1e30)).rejects.toThrow(/loss became NaN or infinite|became NaN or infinite/);
    runaway.dispose();
  });
});

describe("divergence", () => {
  const options = { threads: 1, maxTokens: 32, lora: { rank: 2 }, optimizer: { clipNorm: 0 } };
  const model = () => synthModel({ ...smallModel, arch: "qwen2", type: "F32", seed: 71 });

  it("a step whose loss overflows is not applied, undoes the update that led there, and the engine stays usable", async () => {
    const engine = await Engine.load(await model(), options);
    const row = rowOf(8);
    const start = { lora: await engine.getLora(), optimizer: await engine.getOptimizerState() };
    await engine.step([row], 1e30); // finite weights of about 1e30 ...
    const error = await engine.step([row], 1e30).catch((caught: unknown) => caught); // ... whose loss overflows
    expect(error).toMatchObject({ code: "diverged", message: expect.stringMatching(/^loss became NaN or infinite; .*the update of step 1, which led here, was undone/) });
    expect(await engine.getLora()).toEqual(start.lora);
    expect(await engine.getOptimizerState()).toEqual(start.optimizer);
    const logits = await engine.logits(row.tokens);
    expect(logits.every(Number.isFinite)).toBe(true);
    const next = await engine.step([row], 1e-3);
    expect(Number.isFinite(next.loss)).toBe(true);
    expect((await engine.getOptimizerState()).step).toBe(1);
    engine.dispose();
  });

  it("an update that overflows is not applied", async () => {
    const engine = await Engine.load(await model(), options);
    const row = rowOf(8);
    const start = { lora: await engine.getLora(), optimizer: await engine.getOptimizerState() };
    // lr / (1 - beta1) overflows float: the update is infinite
    const error = await engine.step([row], 3e38).catch((caught: unknown) => caught);
    expect(error).toMatchObject({ code: "diverged", message: expect.stringContaining("became NaN or infinite and was not applied") });
    expect(await engine.getLora()).toEqual(start.lora);
    expect(await engine.getOptimizerState()).toEqual(start.optimizer);
    expect((await engine.logits(row.tokens)).every(Number.isFinite)).toBe(true);
    engine.dispose();
  });

  it("other failures carry their kind as error.code", async () => {
    const engine = await Engine.load(await model(), options);
    await expect(engine.step([rowOf(40)], 1e-3)).rejects.toMatchObject({ code: "bad-input" });
    const controller = new AbortController();
    controller.abort();
    await expect(engine.step([rowOf(8)], 1e-3, { signal: controller.signal })).rejects.toMatchObject({ code: "aborted" });
    engine.dispose();
  });
});

describe("damaged weights", () => {
  let dir: string;
  beforeAll(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), "thinktune-engine-"));
  });
  afterAll(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  async function poisoned(source: string, tensorName: string, byteOffset: number, bytes: number[]): Promise<string> {
    const file = path.join(dir, `${tensorName}-${path.basename(source)}`);
    await copyFile(source, file);
    const tensor = (await readGgufModel(file)).tensors.find((entry) => entry.name === tensorName)!;
    const handle = await open(file, "r+");
    await handle.write(Uint8Array.from(bytes), 0, bytes.length, tensor.offset + byteOffset);
    await handle.close();
    return file;
  }

  it("a NaN in an f32 tensor fails the load, naming the tensor", async () => {
    const source = await synthModel({ ...smallModel, arch: "qwen2", type: "F32", seed: 72 });
    const file = await poisoned(source, "blk.1.ffn_up.weight", 4 * 5, [0x00, 0x00, 0xc0, 0x7f]);
    await expect(Engine.load(file, { threads: 1, maxTokens: 16 })).rejects.toThrow("tensor blk.1.ffn_up.weight holds a NaN or infinite value (element 5)");
  });

  it("a NaN block scale in a quantized tensor fails the first call that reads it", async () => {
    const source = await synthModel({ ...smallModel, arch: "llama", type: "Q8_0", seed: 73 });
    const file = await poisoned(source, "blk.0.attn_k.weight", 0, [0x00, 0x7e]); // Q8_0 block: f16 scale first
    const engine = await Engine.load(file, { threads: 1, maxTokens: 16 });
    await expect(engine.logits(randomTokens(4, smallModel.nVocab, 3))).rejects.toThrow("tensor blk.0.attn_k.weight holds a NaN or infinite value (element 0)");
    engine.dispose();
  });
});
