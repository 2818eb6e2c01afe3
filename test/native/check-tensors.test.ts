// addon.checkTensors: the native side maps a GGUF file and checks every tensor of the table against
// it before anything reads tensor bytes. The files here are plain bytes built by hand: the check only
// needs a file and the table (offsets are absolute).
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { readGgufModel } from "../../src/gguf/read.js";
import { GgmlType, type NativeTensorEntry, loadNativeAddon } from "../../src/native/addon.js";
import { synthModel } from "../helpers/models.js";

const addon = loadNativeAddon();
const ALIGNMENT = 32;
const FILE_SIZE = 512;

let dir = "";
let file = "";

// F32 [4, 2] = 32 bytes at 32..64; Q8_0 [64, 2] = 4 blocks · 34 = 136 bytes at 64..200;
// Q4_K [256] = 144 bytes at 224..368; F16 [8, 3, 2, 1] = 96 bytes at 384..480.
const goodTable: NativeTensorEntry[] = [
  { name: "token_embd.weight", type: GgmlType.F32, dims: [4, 2], offset: 32 },
  { name: "blk.0.attn_q.weight", type: GgmlType.Q8_0, dims: [64, 2], offset: 64 },
  { name: "blk.0.ffn_up.weight", type: GgmlType.Q4_K, dims: [256], offset: 224 },
  { name: "blk.0.attn_norm.weight", type: GgmlType.F16, dims: [8, 3, 2, 1], offset: 384 },
];

function withTensor(index: number, change: Partial<NativeTensorEntry>): NativeTensorEntry[] {
  return goodTable.map((tensor, i) => (i === index ? { ...tensor, ...change } : tensor));
}

beforeAll(() => {
  dir = mkdtempSync(path.join(tmpdir(), "thinktune-check-tensors-"));
  file = path.join(dir, "model.gguf");
  writeFileSync(file, new Uint8Array(FILE_SIZE).map((_, i) => i & 0xff));
});

afterAll(() => {
  if (dir) rmSync(dir, { recursive: true, force: true });
});

describe("checkTensors", () => {
  it("accepts a table that fits the file, down to the last byte", async () => {
    await expect(addon.checkTensors(file, goodTable, ALIGNMENT)).resolves.toBeUndefined();
    // a tensor that ends exactly at the end of the file
    const last = withTensor(3, { offset: FILE_SIZE - 96 });
    await expect(addon.checkTensors(file, last, ALIGNMENT)).resolves.toBeUndefined();
    await expect(addon.checkTensors(file, [], ALIGNMENT)).resolves.toBeUndefined();
  });

  it("rejects a tensor past the end of the file, naming it and the numbers", async () => {
    const table = withTensor(1, { dims: [64, 100] }); // 200 blocks · 34 = 6800 bytes at 64
    await expect(addon.checkTensors(file, table, ALIGNMENT)).rejects.toThrow(
      /tensor blk\.0\.attn_q\.weight in .*model\.gguf \(Q8_0, dims \[64, 100\], 6800 bytes at offset 64\) ends at byte 6864 but the file has 512 bytes: the file is truncated or corrupt; re-download or re-export it/,
    );
    const oneByteOver = withTensor(3, { offset: FILE_SIZE - 96 + ALIGNMENT });
    await expect(addon.checkTensors(file, oneByteOver, ALIGNMENT)).rejects.toThrow(/ends at byte 544 but the file has 512 bytes/);
    const offsetPastEnd = withTensor(0, { offset: 2 ** 40 });
    await expect(addon.checkTensors(file, offsetPastEnd, ALIGNMENT)).rejects.toThrow(/token_embd\.weight .* at offset 1099511627776/);
  });

  it("rejects a truncated file", async () => {
    const truncated = path.join(dir, "truncated.gguf");
    writeFileSync(truncated, new Uint8Array(300));
    await expect(addon.checkTensors(truncated, goodTable, ALIGNMENT)).rejects.toThrow(
      /tensor blk\.0\.ffn_up\.weight in .*truncated\.gguf .* ends at byte 368 but the file has 300 bytes: the file is truncated or corrupt/,
    );
  });

  it("rejects a misaligned offset", async () => {
    await expect(addon.checkTensors(file, withTensor(2, { offset: 232 }), ALIGNMENT)).rejects.toThrow(
      /tensor blk\.0\.ffn_up\.weight in .* starts at byte 232, not a multiple of the file's alignment 32/,
    );
  });

  it("rejects an unknown or unsupported type, naming the tensor and the type", async () => {
    await expect(addon.checkTensors(file, withTensor(1, { type: 16 }), ALIGNMENT)).rejects.toThrow(
      /tensor blk\.0\.attn_q\.weight in .*model\.gguf has type IQ2_XXS \(16\), which thinktune cannot read; supported: F32, F16, BF16, Q8_0, Q4_0, Q4_K, Q5_K, Q6_K/,
    );
    await expect(addon.checkTensors(file, withTensor(1, { type: 1000 }), ALIGNMENT)).rejects.toThrow(
      /blk\.0\.attn_q\.weight .* has type unknown type \(1000\)/,
    );
  });

  it("rejects dimensions whose product overflows, or whose byte size does", async () => {
    const huge = 2 ** 31;
    await expect(addon.checkTensors(file, withTensor(0, { dims: [huge, huge, huge, 4] }), ALIGNMENT)).rejects.toThrow(
      /tensor token_embd\.weight in .* has dimensions \[2147483648, 2147483648, 2147483648, 4\] whose product overflows a 64-bit element count/,
    );
    // 2^62 F32 values fit in int64 but their 2^64 bytes do not fit in 64 bits
    await expect(addon.checkTensors(file, withTensor(0, { dims: [huge, huge] }), ALIGNMENT)).rejects.toThrow(
      /token_embd\.weight .* needs more bytes than fit in 64 bits/,
    );
  });

  it("rejects zero or negative dimensions, too many dimensions and rows that split a block", async () => {
    await expect(addon.checkTensors(file, withTensor(0, { dims: [4, 0] }), ALIGNMENT)).rejects.toThrow(
      /token_embd\.weight .* has dimension 1 = 0 in \[4, 0\]; every dimension must be positive/,
    );
    await expect(addon.checkTensors(file, withTensor(0, { dims: [-4, 2] }), ALIGNMENT)).rejects.toThrow(/dimension 0 = -4/);
    await expect(addon.checkTensors(file, withTensor(0, { dims: [] }), ALIGNMENT)).rejects.toThrow(/has 0 dimensions \(expected 1 to 4\)/);
    await expect(addon.checkTensors(file, withTensor(0, { dims: [1, 1, 1, 1, 1] }), ALIGNMENT)).rejects.toThrow(/has 5 dimensions/);
    await expect(addon.checkTensors(file, withTensor(2, { dims: [128, 2] }), ALIGNMENT)).rejects.toThrow(
      /blk\.0\.ffn_up\.weight .* has rows of 128 values, not a multiple of the Q4_K block size 256/,
    );
  });

  it("rejects a tensor listed twice", async () => {
    await expect(addon.checkTensors(file, [...goodTable, goodTable[0]], ALIGNMENT)).rejects.toThrow(/lists tensor token_embd\.weight twice/);
  });

  it("rejects a missing file, a directory and an empty file", async () => {
    await expect(addon.checkTensors(path.join(dir, "absent.gguf"), goodTable, ALIGNMENT)).rejects.toThrow(
      /cannot open .*absent\.gguf: No such file or directory/,
    );
    const folder = path.join(dir, "folder.gguf");
    mkdirSync(folder, { recursive: true });
    await expect(addon.checkTensors(folder, goodTable, ALIGNMENT)).rejects.toThrow(/folder\.gguf is a directory, not a GGUF file/);
    const empty = path.join(dir, "empty.gguf");
    writeFileSync(empty, new Uint8Array(0));
    await expect(addon.checkTensors(empty, [], ALIGNMENT)).rejects.toThrow(/empty\.gguf is empty/);
  });

  it("rejects bad arguments without touching the file", async () => {
    await expect(addon.checkTensors(file, goodTable, 0)).rejects.toThrow(/alignment is 0, not an integer in \[1, 2\^53\)/);
    await expect(addon.checkTensors(file, goodTable, 24)).rejects.toThrow(/alignment 24, which is not a power of two/);
    await expect(addon.checkTensors(42 as unknown as string, goodTable, ALIGNMENT)).rejects.toThrow(/path must be a string/);
    const noName = [{ type: 0, dims: [1], offset: 0 }] as unknown as NativeTensorEntry[];
    await expect(addon.checkTensors(file, noName, ALIGNMENT)).rejects.toThrow(/tensors\[0\]\.name must be a string/);
    await expect(addon.checkTensors(file, withTensor(0, { offset: 1.5 }), ALIGNMENT)).rejects.toThrow(
      /tensor token_embd\.weight offset is 1\.5, not an integer/,
    );
    await expect(addon.checkTensors(file, withTensor(0, { dims: [4, "2" as unknown as number] }), ALIGNMENT)).rejects.toThrow(
      /tensor token_embd\.weight dims\[1\] must be a number/,
    );
  });

  it("accepts real GGUF files as node-llama-cpp's reader lists them, and catches their truncation", async () => {
    for (const type of ["Q4_K", "Q6_K", "BF16"] as const) {
      const model = await readGgufModel(await synthModel({ preset: "tiny", type }));
      await expect(addon.checkTensors(model.path, model.tensors, model.alignment), type).resolves.toBeUndefined();
    }
    const model = await readGgufModel(await synthModel({ preset: "tiny", type: "Q4_K" }));
    const last = model.tensors.reduce((a, b) => (b.offset > a.offset ? b : a));
    const truncated = path.join(dir, "truncated-synth.gguf");
    writeFileSync(truncated, readFileSync(model.path).subarray(0, last.offset + 1));
    await expect(addon.checkTensors(truncated, model.tensors, model.alignment)).rejects.toThrow(
      `tensor ${last.name} in ${truncated}`,
    );
  });
});
