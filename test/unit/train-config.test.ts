import { mkdtemp, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { describe, expect, it } from "vitest";
import {
  checkInputPaths,
  configHash,
  embeddedDataPath,
  embeddedModelPath,
  readConfigFile,
  resolveConfig,
  TrainingConfigError,
  trajectoryDifferences,
} from "../../src/train/config.js";
import { parseByteSize } from "../../src/train/byte-size.js";

describe("training config", () => {
  it("fills the documented defaults", () => {
    const config = resolveConfig([]);
    expect(config.model).toBe(embeddedModelPath);
    expect(config.data).toBe(embeddedDataPath);
    expect(config.lora).toEqual({ rank: 16, alpha: 32, targets: ["q", "k", "v", "o", "gate", "up", "down"], dropout: 0 });
    expect(config.learningRate).toBe(1e-4);
    expect(config.lrSchedule).toBe("cosine");
    expect(config.optimizer).toEqual({ beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: 0, clipNorm: 1 });
    expect(config.maxLength).toBe(4096);
    expect(config.gradAccum).toBe(1);
    expect(config.device).toBe("auto");
  });

  it("layers file over defaults and flags over file, merging nested objects", () => {
    const config = resolveConfig([
      { value: { lora: { rank: 8, dropout: 0.05 }, learningRate: 5e-6, epochs: 6 }, source: "recipe.json" },
      { value: { lora: { rank: 4 }, epochs: 2 }, source: "command line" },
    ]);
    expect(config.lora.rank).toBe(4);
    expect(config.lora.dropout).toBe(0.05);
    expect(config.lora.alpha).toBe(32);
    expect(config.learningRate).toBe(5e-6);
    expect(config.epochs).toBe(2);
  });

  it("makes paths absolute against the working directory", () => {
    const config = resolveConfig([{ value: { model: "m.gguf", data: "d", out: "runs/x" }, source: "flags" }], "/work/here");
    expect(config.model).toBe("/work/here/m.gguf");
    expect(config.out).toBe("/work/here/runs/x");
  });

  it("names an unknown key and where it was", () => {
    expect(() => resolveConfig([{ value: { learningrate: 1e-4 }, source: "my.json" }])).toThrow(/my\.json: Unknown key "learningrate"; did you mean "learningRate"\?/);
    expect(() => resolveConfig([{ value: { lora: { rnak: 8 } }, source: "my.json" }])).toThrow(/Unknown key "lora\.rnak"/);
  });

  it("says what type was expected for which key and what it got", () => {
    expect(() => resolveConfig([{ value: { learningRate: "fast" }, source: "my.json" }])).toThrow(
      'my.json: Expected number for learningRate, got string "fast"',
    );
    expect(() => resolveConfig([{ value: { lora: { rank: 2.5 } }, source: "my.json" }])).toThrow("Expected integer for lora.rank, got number 2.5");
    expect(() => resolveConfig([{ value: { device: "tpu" }, source: "x" }])).toThrow('Expected one of "auto", "cpu", "cuda" for device, got string "tpu"');
    expect(() => resolveConfig([{ value: { lora: { targets: ["q", "z"] } }, source: "x" }])).toThrow(/for lora\.targets\[1\], got string "z"/);
    expect(() => resolveConfig([{ value: { maxLength: 0 }, source: "x" }])).toThrow("Expected a number ≥ 1 for maxLength, got integer 0");
    expect(() => resolveConfig([{ value: { lora: { targets: ["q", "q"] } }, source: "x" }])).toThrow(/lists a target twice/);
  });

  it("reports a config file that is missing or not JSON", async () => {
    const dir = await mkdtemp(path.join(tmpdir(), "thinktune-config-"));
    await expect(readConfigFile(path.join(dir, "nope.json"))).rejects.toThrow(/nope\.json: it does not exist/);
    await writeFile(path.join(dir, "bad.json"), "{ rank: 8 }");
    await expect(readConfigFile(path.join(dir, "bad.json"))).rejects.toThrow(/bad\.json is not valid JSON/);
  });

  it("refuses a data file that does not exist before anything loads", () => {
    const config = resolveConfig([{ value: { model: fileURLToPath(import.meta.url), data: "/nonexistent/train.jsonl" }, source: "x" }]);
    expect(() => checkInputPaths(config)).toThrow(TrainingConfigError);
    expect(() => checkInputPaths(config)).toThrow("data: /nonexistent/train.jsonl does not exist");
  });

  it("hashes only what decides the losses", () => {
    const base = resolveConfig([]);
    const cadence = resolveConfig([{ value: { evalEvery: 7, checkpointEvery: 3, device: "cpu", threads: 1 }, source: "x" }]);
    const other = resolveConfig([{ value: { learningRate: 2e-4 }, source: "x" }]);
    expect(configHash(cadence)).toBe(configHash(base));
    expect(configHash(other)).not.toBe(configHash(base));
    expect(trajectoryDifferences(base, other)).toEqual(["learningRate"]);
  });
});

describe("gpu memory budget", () => {
  it("parses sizes in binary and decimal units", () => {
    expect(parseByteSize("24GiB")).toBe(24 * 2 ** 30);
    expect(parseByteSize("512 MiB")).toBe(512 * 2 ** 20);
    expect(parseByteSize("10GB")).toBe(10e9);
    expect(parseByteSize("1.5gib")).toBe(1.5 * 2 ** 30);
    expect(parseByteSize("4096")).toBe(4096);
    for (const bad of ["", "24 GiBs", "-1GiB", "0", "GiB", "24XB"]) expect(parseByteSize(bad)).toBeUndefined();
  });

  it("accepts --gpu-memory as a size and refuses anything else, outside the trajectory hash", () => {
    const config = resolveConfig([{ value: { gpuMemory: "24GiB" }, source: "command line" }]);
    expect(config.gpuMemory).toBe("24GiB");
    expect(configHash(config)).toBe(configHash(resolveConfig([])));
    expect(() => resolveConfig([{ value: { gpuMemory: "lots" }, source: "command line" }])).toThrow(/gpuMemory/);
  });
});
