import { mkdtemp, readFile, readdir, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { readGgufFileInfo } from "node-llama-cpp";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { readGgufModel } from "../../src/gguf/read.js";
import { ggmlTensorBytes, ggmlTypeLayouts, ggmlTypeNames } from "../../src/gguf/ggml-types.js";
import { GgufWriter, gguf, type GgufValue } from "../../src/gguf/writer.js";

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(path.join(tmpdir(), "thinktune-gguf-writer-"));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

/** Deterministic bytes so a misplaced tensor cannot read back as the right one. */
function patternBytes(count: number, salt: number): Uint8Array {
  const bytes = new Uint8Array(count);
  for (let i = 0; i < count; i++) bytes[i] = (i * 31 + salt * 17 + (i >> 8)) & 0xff;
  return bytes;
}

const scalarCases: [string, GgufValue, unknown][] = [
  ["test.u8", gguf.u8(255), 255],
  ["test.i8", gguf.i8(-128), -128],
  ["test.u16", gguf.u16(65535), 65535],
  ["test.i16", gguf.i16(-32768), -32768],
  ["test.u32", gguf.u32(4294967295), 4294967295],
  ["test.i32", gguf.i32(-2147483648), -2147483648],
  ["test.u64", gguf.u64(18446744073709551615n), 18446744073709551615n],
  ["test.u64_small", gguf.u64(1234), 1234],
  ["test.i64", gguf.i64(-9223372036854775808n), -9223372036854775808n],
  ["test.f32", gguf.f32(0.1), Math.fround(0.1)],
  ["test.f64", gguf.f64(0.1), 0.1],
  ["test.bool_true", gguf.bool(true), true],
  ["test.bool_false", gguf.bool(false), false],
  ["test.string", gguf.string("héllo ｜世界｜ <think>\n"), "héllo ｜世界｜ <think>\n"],
  ["test.string_empty", gguf.string(""), ""],
];

const arrayCases: [string, GgufValue, unknown[]][] = [
  ["arr.u8", gguf.array("u8", [0, 1, 255]), [0, 1, 255]],
  ["arr.i8", gguf.array("i8", [-128, 0, 127]), [-128, 0, 127]],
  ["arr.u16", gguf.array("u16", [0, 65535]), [0, 65535]],
  ["arr.i16", gguf.array("i16", [-32768, 32767]), [-32768, 32767]],
  ["arr.u32", gguf.array("u32", [0, 4294967295]), [0, 4294967295]],
  ["arr.i32", gguf.array("i32", [-5, 7, 2147483647]), [-5, 7, 2147483647]],
  ["arr.u64", gguf.array("u64", [1n, 18446744073709551615n]), [1, 18446744073709551615n]],
  ["arr.i64", gguf.array("i64", [-1n, 9223372036854775807n]), [-1, 9223372036854775807n]],
  ["arr.f32", gguf.array("f32", [1.5, -0.25, 3e-7]), [1.5, -0.25, Math.fround(3e-7)]],
  ["arr.f64", gguf.array("f64", [Math.PI, -1e300]), [Math.PI, -1e300]],
  ["arr.bool", gguf.array("bool", [true, false, true]), [true, false, true]],
  ["arr.string", gguf.array("string", ["a", "", "<｜User｜>", "Ġthe"]), ["a", "", "<｜User｜>", "Ġthe"]],
  ["arr.empty", gguf.array("i32", []), []],
];

function normalize(value: unknown): unknown {
  // node-llama-cpp gives 64-bit values as numbers when they are safe integers, as bigint otherwise
  if (Array.isArray(value)) return value.map(normalize);
  return typeof value === "bigint" && value >= BigInt(Number.MIN_SAFE_INTEGER) && value <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(value) : value;
}

describe("GgufWriter", () => {
  it("round-trips every metadata value type and every tensor type through node-llama-cpp's reader", async () => {
    const file = path.join(dir, "all-types.gguf");
    const writer = new GgufWriter();
    writer.set("general.architecture", gguf.string("llama"));
    for (const [key, value] of [...scalarCases, ...arrayCases]) writer.set(key, value);
    const tensorData = new Map<string, Uint8Array>();
    ggmlTypeNames.forEach((type, index) => {
      const layout = ggmlTypeLayouts[type];
      const dims = [layout.blockSize * 2, 3];
      const bytes = patternBytes(ggmlTensorBytes(type, dims), index);
      const name = `tensor.${type}`;
      tensorData.set(name, bytes);
      // alternate the producer shapes: one buffer, sync chunks, async chunks
      if (index % 3 === 0) writer.addTensor(name, type, dims, async () => bytes);
      else if (index % 3 === 1) writer.addTensor(name, type, dims, () => [bytes.subarray(0, 5), bytes.subarray(5)]);
      else
        writer.addTensor(name, type, dims, async function* () {
          for (let start = 0; start < bytes.length; start += 7) yield bytes.subarray(start, start + 7);
        });
    });
    const size = await writer.write(file);

    const fileBytes = await readFile(file);
    expect(fileBytes.length).toBe(size);
    const info = await readGgufFileInfo(file, { readTensorInfo: true, logWarnings: false });
    expect(info.version).toBe(3);
    const model = await readGgufModel(file);
    for (const [key, , expected] of scalarCases) expect(normalize(model.metadata[key]), key).toEqual(normalize(expected));
    for (const [key, , expected] of arrayCases) expect(normalize(model.metadata[key]), key).toEqual(normalize(expected));
    expect(model.alignment).toBe(32);
    expect(model.tensors.map((tensor) => tensor.name)).toEqual([...tensorData.keys()]);
    for (const tensor of model.tensors) {
      const type = tensor.name.slice("tensor.".length) as keyof typeof ggmlTypeLayouts;
      expect(tensor.type).toBe(ggmlTypeLayouts[type].id);
      expect(tensor.dims).toEqual([ggmlTypeLayouts[type].blockSize * 2, 3]);
      expect(tensor.offset % 32).toBe(0);
      const expected = tensorData.get(tensor.name)!;
      expect(Buffer.compare(fileBytes.subarray(tensor.offset, tensor.offset + expected.length), expected), tensor.name).toBe(0);
    }
    expect(await readdir(dir)).not.toContain("all-types.gguf.tmp");
  });

  it("pads to a custom alignment and records it in general.alignment", async () => {
    const file = path.join(dir, "aligned.gguf");
    const writer = new GgufWriter({ alignment: 64 });
    writer.set("general.architecture", gguf.string("llama"));
    writer.addTensor("a", "F32", [3], () => new Uint8Array(12).fill(1));
    writer.addTensor("b", "F16", [5, 2], () => new Uint8Array(20).fill(2));
    const size = await writer.write(file);
    const model = await readGgufModel(file);
    expect(model.alignment).toBe(64);
    expect(model.metadata["general.alignment"]).toBe(64);
    expect(model.tensors.map((tensor) => tensor.relativeOffset)).toEqual([0, 64]);
    expect(model.tensors.every((tensor) => tensor.offset % 64 === 0)).toBe(true);
    expect(size % 64).toBe(0);
    const bytes = await readFile(file);
    expect([...bytes.subarray(model.tensors[1].offset, model.tensors[1].offset + 20)]).toEqual(new Array(20).fill(2));
  });

  it("rejects a producer that gives the wrong number of bytes and leaves no file behind", async () => {
    const file = path.join(dir, "short.gguf");
    const writer = new GgufWriter();
    writer.addTensor("w", "Q8_0", [32, 2], () => new Uint8Array(67));
    await expect(writer.write(file)).rejects.toThrow(/"w": its producer gave 67 bytes, a Q8_0 \[32, 2\] tensor takes 68/);
    const long = new GgufWriter().addTensor("w", "F32", [2], () => [new Uint8Array(8), new Uint8Array(1)]);
    await expect(long.write(file)).rejects.toThrow(/more than the 8 bytes/);
    const names = await readdir(dir);
    expect(names).not.toContain("short.gguf");
    expect(names).not.toContain("short.gguf.tmp");
  });

  it("names the path it cannot write", async () => {
    const writer = new GgufWriter().addTensor("w", "F32", [1], () => new Uint8Array(4));
    await expect(writer.write(path.join(dir, "no-such-folder", "m.gguf"))).rejects.toThrow(/cannot write .*no-such-folder\/m\.gguf: its folder does not exist/);
  });

  it("rejects values out of their type's range and shapes that are not whole blocks", () => {
    const writer = new GgufWriter();
    writer.set("x", gguf.u8(256));
    expect(() => (writer as unknown as { header(): Buffer }).header()).toThrow(/"x": expected an integer in \[0, 255\] for a u8 value, got 256/);
    writer.set("x", gguf.array("string", ["a", 5 as unknown as string]));
    expect(() => (writer as unknown as { header(): Buffer }).header()).toThrow(/"x": expected a string/);
    expect(() => new GgufWriter().addTensor("w", "Q4_K", [128, 2], () => new Uint8Array())).toThrow(/multiple of 256, got 128/);
    expect(() => new GgufWriter().addTensor("w", "F32", [0], () => new Uint8Array())).toThrow(/positive integers/);
    expect(() => new GgufWriter().addTensor("w", "F32", [1], () => new Uint8Array()).addTensor("w", "F32", [1], () => new Uint8Array())).toThrow(
      /added twice/,
    );
  });
});
