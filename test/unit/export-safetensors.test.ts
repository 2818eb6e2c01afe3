import { mkdtemp, readdir, readFile, rm, truncate, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { float16BitsToFloat32, float32ToFloat16Bits } from "../../src/export/float16.js";
import { readSafetensors, SafetensorsError, writeSafetensors } from "../../src/export/safetensors.js";

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(path.join(tmpdir(), "thinktune-safetensors-"));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

const tensors = [
  { name: "a.lora_A.weight", shape: [2, 3], data: Float32Array.from([1, -2, 3.5, 0, 1e-3, -7]) },
  { name: "a.lora_B.weight", shape: [3, 2], data: Float32Array.from([0.25, 0.5, -0.125, 8, 9, 10]) },
  { name: "scalar", shape: [], data: Float32Array.from([42]) },
];

describe("safetensors", () => {
  it("round-trips F32 tensors and metadata, with an 8-byte aligned data section", async () => {
    const file = path.join(dir, "f32.safetensors");
    await writeSafetensors(file, tensors, { format: "pt", step: "12" });
    const bytes = await readFile(file);
    const headerLength = Number(bytes.readBigUInt64LE(0));
    expect((8 + headerLength) % 8).toBe(0);
    const header = JSON.parse(bytes.subarray(8, 8 + headerLength).toString());
    expect(header["a.lora_A.weight"]).toEqual({ dtype: "F32", shape: [2, 3], data_offsets: [0, 24] });
    const read = await readSafetensors(file);
    expect(read.metadata).toEqual({ format: "pt", step: "12" });
    expect(read.tensors.map((t) => t.name)).toEqual(tensors.map((t) => t.name));
    for (const [i, tensor] of read.tensors.entries()) {
      expect(tensor.shape).toEqual(tensors[i].shape);
      expect(Array.from(tensor.data)).toEqual(Array.from(tensors[i].data));
    }
    expect((await readdir(dir)).filter((name) => name.includes("partial"))).toEqual([]);
  });

  it("writes F16 on request and reads it back within half precision", async () => {
    const file = path.join(dir, "f16.safetensors");
    await writeSafetensors(file, tensors, undefined, "F16");
    const read = await readSafetensors(file);
    for (const [i, tensor] of read.tensors.entries()) {
      for (let j = 0; j < tensor.data.length; j++) {
        expect(tensor.data[j]).toBeCloseTo(tensors[i].data[j], 3);
      }
    }
  });

  it("converts halves exactly at the edges (rounding to even, subnormals, overflow)", () => {
    expect(float32ToFloat16Bits(1)).toBe(0x3c00);
    expect(float32ToFloat16Bits(-2)).toBe(0xc000);
    expect(float32ToFloat16Bits(65504)).toBe(0x7bff);
    expect(float32ToFloat16Bits(65520)).toBe(0x7c00); // rounds up to inf
    expect(float32ToFloat16Bits(2 ** -24)).toBe(0x0001); // smallest subnormal
    expect(float32ToFloat16Bits(2 ** -26)).toBe(0x0000);
    expect(float32ToFloat16Bits(1 + 2 ** -11)).toBe(0x3c00); // tie → even
    expect(float32ToFloat16Bits(1 + 3 * 2 ** -11)).toBe(0x3c02); // tie → even (up)
    expect(float16BitsToFloat32(0x0001)).toBe(2 ** -24);
    expect(float16BitsToFloat32(0x7bff)).toBe(65504);
    for (const value of [0.1, -3.14159, 1234.5, 6e-5, -1e-7]) {
      // half precision keeps 11 significant bits: relative error at most 2^-11 in the normal range
      expect(Math.abs(float16BitsToFloat32(float32ToFloat16Bits(value)) - value)).toBeLessThanOrEqual(Math.max(Math.abs(value) * 2 ** -11, 2 ** -25));
    }
  });

  it("names the problem in a truncated file", async () => {
    const file = path.join(dir, "truncated.safetensors");
    await writeSafetensors(file, tensors);
    const size = (await readFile(file)).length;
    await truncate(file, size - 5);
    await expect(readSafetensors(file)).rejects.toThrow(/truncated: tensor "a.lora_B.weight" ends at data byte 48 but the file holds only 47 bytes/);
    await truncate(file, 20);
    await expect(readSafetensors(file)).rejects.toThrow(/truncated or not a safetensors file: its header claims/);
    await truncate(file, 3);
    await expect(readSafetensors(file)).rejects.toThrow(SafetensorsError);
  });

  it("rejects a corrupt header and mismatched shapes", async () => {
    const file = path.join(dir, "corrupt.safetensors");
    const header = Buffer.from("{not json}");
    const prefix = Buffer.alloc(8);
    prefix.writeBigUInt64LE(BigInt(header.length));
    await writeFile(file, Buffer.concat([prefix, header]));
    await expect(readSafetensors(file)).rejects.toThrow(/header is not valid JSON/);
    const badShape = Buffer.from(JSON.stringify({ x: { dtype: "F32", shape: [2, 2], data_offsets: [0, 8] } }));
    prefix.writeBigUInt64LE(BigInt(badShape.length));
    await writeFile(file, Buffer.concat([prefix, badShape, Buffer.alloc(8)]));
    await expect(readSafetensors(file)).rejects.toThrow(/tensor "x" of shape \[2, 2\] F32 needs 16 bytes but its offsets span 8/);
    await expect(writeSafetensors(file, [{ name: "x", shape: [3], data: new Float32Array(2) }])).rejects.toThrow(/shape \[3\] but 2 values/);
  });
});
