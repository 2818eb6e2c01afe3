// Block formats of the native addon: hand-built blocks decoded exactly, quantize→dequantize within
// each format's error bound, bit-exactness against ggml's own reference C code and gguf-py (both
// from llama.cpp's source bundle), and clear errors for bad input.
import { execFileSync, spawnSync } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { GgmlType, type GgmlTypeName, loadNativeAddon } from "../../src/native/addon.js";

const addon = loadNativeAddon();
const projectRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..", "..");
const llamaBundle = path.join(projectRoot, "node_modules", "node-llama-cpp", "llama", "gitRelease.bundle");

const TYPES: GgmlTypeName[] = ["F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_K", "Q5_K", "Q6_K"];
/** [values per block, bytes per block], from ggml-common.h */
const LAYOUT: Record<GgmlTypeName, [number, number]> = {
  F32: [1, 4],
  F16: [1, 2],
  BF16: [1, 2],
  Q8_0: [32, 34],
  Q4_0: [32, 18],
  Q4_K: [256, 144],
  Q5_K: [256, 176],
  Q6_K: [256, 210],
};

// ---------------------------------------------------------------------------------------------
// Deterministic test data

function mulberry32(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function gaussian(count: number, seed: number, sigma = 1, mean = 0): Float32Array {
  const random = mulberry32(seed);
  const out = new Float32Array(count);
  for (let i = 0; i < count; i++) {
    const u = Math.max(random(), 1e-12);
    out[i] = mean + sigma * Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * random());
  }
  return out;
}

/** Super-blocks (256 values) that steer the quantizers into their special paths. */
function edgeCaseBlocks(): Float32Array {
  const blocks: Float32Array[] = [];
  blocks.push(new Float32Array(256)); // all zero
  blocks.push(new Float32Array(256).fill(0.75)); // constant positive: max == min in every sub-block
  blocks.push(new Float32Array(256).fill(-3)); // constant negative
  blocks.push(gaussian(256, 11, 1, 5)); // all positive: the fitted min is clamped to 0
  blocks.push(gaussian(256, 12, 1, -5)); // all negative
  blocks.push(gaussian(256, 13, 1e-20)); // below GROUP_MAX_EPS for Q6_K
  const outlier = gaussian(256, 14, 0.01);
  outlier[77] = 40;
  blocks.push(outlier);
  // Sub-blocks of very different scale: small ones quantize their 6-bit scale to 0.
  const mixed = gaussian(256, 15);
  for (let i = 0; i < 256; i++) mixed[i] *= 10 ** ((i >> 5) - 4);
  blocks.push(mixed);
  // Small integers and halves: many products land exactly on rounding ties.
  const ties = new Float32Array(256);
  for (let i = 0; i < 256; i++) ties[i] = ((i * 7) % 17) - 8 + (i % 3 === 0 ? 0.5 : 0);
  blocks.push(ties);
  blocks.push(gaussian(256, 16, 3000)); // large magnitudes
  const sparse = new Float32Array(256);
  sparse[3] = -1;
  sparse[200] = 0.5;
  blocks.push(sparse);
  const out = new Float32Array(blocks.length * 256);
  blocks.forEach((block, i) => out.set(block, i * 256));
  return out;
}

/** Random data of several shapes plus the edge cases; a multiple of every block size. */
const oracleInput = (() => {
  const weightLike = gaussian(256 * 64, 2024, 0.02);
  const heavyTailed = gaussian(256 * 32, 2025).map((v) => v * v * v);
  // every 32 values shifted by their own offset: sub-blocks entirely above or below zero
  const random = mulberry32(2026);
  const shifted = gaussian(256 * 32, 2027, 0.5);
  for (let start = 0; start < shifted.length; start += 32) {
    const offset = 4 * random() - 2;
    for (let i = start; i < start + 32; i++) shifted[i] += offset;
  }
  const parts = [weightLike, heavyTailed, shifted, edgeCaseBlocks()];
  const out = new Float32Array(parts.reduce((sum, part) => sum + part.length, 0));
  let at = 0;
  for (const part of parts) {
    out.set(part, at);
    at += part.length;
  }
  return out;
})();

function bitsEqualCount(a: Float32Array, b: Float32Array): number {
  const ua = new Uint32Array(a.buffer, a.byteOffset, a.length);
  const ub = new Uint32Array(b.buffer, b.byteOffset, b.length);
  let same = 0;
  for (let i = 0; i < ua.length; i++) if (ua[i] === ub[i]) same++;
  return same;
}

function firstByteDifference(a: Uint8Array, b: Uint8Array): string {
  if (a.length !== b.length) return `lengths differ: ${a.length} vs ${b.length}`;
  const i = a.findIndex((v, k) => v !== b[k]);
  return i < 0 ? "identical" : `first difference at byte ${i}: ${a[i]} vs ${b[i]}`;
}

const f32 = Math.fround;

// ---------------------------------------------------------------------------------------------
// Hand-built blocks: bytes written from the format definitions, values computed independently

function halfBytes(bits: number): number[] {
  return [bits & 0xff, bits >> 8];
}

describe("dequantize hand-built blocks", () => {
  it("F32 is the bytes themselves", async () => {
    const values = new Float32Array([1.5, -2, 0, 3.25e-20, -1e30, 7]);
    const out = await addon.dequantize(GgmlType.F32, new Uint8Array(values.buffer), values.length);
    expect(Array.from(out)).toEqual(Array.from(values));
  });

  it("F16 decodes normals, subnormals, zeros and infinities", async () => {
    const cases: [number, number][] = [
      [0x3c00, 1],
      [0xc000, -2],
      [0x7bff, 65504],
      [0x0001, 2 ** -24],
      [0x03ff, 1023 * 2 ** -24],
      [0x0400, 2 ** -14],
      [0x3555, 0.333251953125],
      [0x7c00, Infinity],
      [0xfc00, -Infinity],
      [0x8000, -0],
    ];
    const bytes = new Uint8Array(cases.flatMap(([bits]) => halfBytes(bits)));
    const out = await addon.dequantize(GgmlType.F16, bytes, cases.length);
    cases.forEach(([, value], i) => expect(Object.is(out[i], value)).toBe(true));
    const nan = await addon.dequantize(GgmlType.F16, new Uint8Array(halfBytes(0x7e00)), 1);
    expect(Number.isNaN(nan[0])).toBe(true);
  });

  it("BF16 is the top half of an f32", async () => {
    const cases: [number, number][] = [
      [0x3f80, 1],
      [0xc0a0, -5],
      [0x3f81, 1 + 2 ** -7],
      [0x0001, 2 ** -133],
      [0x7f80, Infinity],
    ];
    const bytes = new Uint8Array(cases.flatMap(([bits]) => halfBytes(bits)));
    const out = await addon.dequantize(GgmlType.BF16, bytes, cases.length);
    expect(Array.from(out)).toEqual(cases.map(([, value]) => value));
  });

  it("Q8_0: d = 0.5, qs = -3..28", async () => {
    const block = [...halfBytes(0x3800), ...Array.from({ length: 32 }, (_, j) => (j - 3) & 0xff)];
    const out = await addon.dequantize(GgmlType.Q8_0, new Uint8Array(block), 32);
    expect(Array.from(out)).toEqual(Array.from({ length: 32 }, (_, j) => (j - 3) * 0.5));
  });

  it("Q4_0: d = -0.25, low nibbles j, high nibbles 15 - j", async () => {
    const block = [...halfBytes(0xb400), ...Array.from({ length: 16 }, (_, j) => j | ((15 - j) << 4))];
    const out = await addon.dequantize(GgmlType.Q4_0, new Uint8Array(block), 32);
    const expected = Array.from({ length: 32 }, (_, i) => (i < 16 ? i - 8 : 15 - (i - 16) - 8) * -0.25);
    expect(Array.from(out)).toEqual(expected); // level 8 times negative d is -0, as in IEEE arithmetic
  });

  // Q4_K / Q5_K: 8 sub-blocks of 32 with 6-bit scales sc and mins m packed in 12 bytes:
  // bytes 0-3: sc[0..3] | top 2 bits of sc[4..7]; bytes 4-7: m[0..3] | top 2 bits of m[4..7];
  // bytes 8-11: low 4 bits of sc[4..7] | low 4 bits of m[4..7] << 4.
  const sc = [1, 2, 3, 4, 17, 33, 50, 63];
  const mins = [0, 5, 10, 63, 20, 40, 1, 62];
  function packScalesAndMins(): number[] {
    const bytes = new Array<number>(12).fill(0);
    for (let j = 0; j < 4; j++) {
      bytes[j] = sc[j] | ((sc[j + 4] >> 4) << 6);
      bytes[j + 4] = mins[j] | ((mins[j + 4] >> 4) << 6);
      bytes[j + 8] = (sc[j + 4] & 0xf) | ((mins[j + 4] & 0xf) << 4);
    }
    return bytes;
  }
  // value = d·sc[sub] · q − dmin·m[sub], sub = element / 32; d = 0.5, dmin = 0.25
  const kExpected = (level: (e: number) => number) =>
    Array.from({ length: 256 }, (_, e) => {
      const sub = e >> 5;
      return f32(f32(f32(0.5 * sc[sub]) * level(e)) - f32(0.25 * mins[sub]));
    });

  it("Q4_K: chosen scales and mins, levels (7e mod 16)", async () => {
    const level = (e: number) => (e * 7) % 16;
    // each 64 values: 32 bytes, element 64c + r in byte 32c + r % 32, low nibble when r < 32
    const qs = new Array<number>(128).fill(0);
    for (let e = 0; e < 256; e++) {
      const c = e >> 6;
      const r = e % 64;
      qs[32 * c + (r % 32)] |= r < 32 ? level(e) : level(e) << 4;
    }
    const block = [...halfBytes(0x3800), ...halfBytes(0x3400), ...packScalesAndMins(), ...qs];
    expect(block.length).toBe(LAYOUT.Q4_K[1]);
    const out = await addon.dequantize(GgmlType.Q4_K, new Uint8Array(block), 256);
    expect(Array.from(out)).toEqual(kExpected(level));
  });

  it("Q5_K: chosen scales and mins, levels (11e mod 32) with the fifth bit in qh", async () => {
    const level = (e: number) => (e * 11) % 32;
    const qh = new Array<number>(32).fill(0);
    const qs = new Array<number>(128).fill(0);
    for (let e = 0; e < 256; e++) {
      const c = e >> 6;
      const r = e % 64;
      const q = level(e);
      qs[32 * c + (r % 32)] |= r < 32 ? q & 0xf : (q & 0xf) << 4;
      qh[r % 32] |= (q >> 4) << (2 * c + (r < 32 ? 0 : 1));
    }
    const block = [...halfBytes(0x3800), ...halfBytes(0x3400), ...packScalesAndMins(), ...qh, ...qs];
    expect(block.length).toBe(LAYOUT.Q5_K[1]);
    const out = await addon.dequantize(GgmlType.Q5_K, new Uint8Array(block), 256);
    expect(Array.from(out)).toEqual(kExpected(level));
  });

  it("Q6_K: int8 scales of both signs, 6-bit levels split into ql and qh", async () => {
    const level = (e: number) => (e * 13) % 64;
    const scales = Array.from({ length: 16 }, (_, i) => ((i * 13) % 40) - 20);
    // per 128 values (half h): four runs g of 32; element 128h + 32g + l has its low 4 bits in
    // ql[64h + l + 32(g % 2)] (low nibble for g < 2), its top 2 bits at 2g in qh[32h + l], and the
    // scale scales[8h + l / 16 + 2g].
    const ql = new Array<number>(128).fill(0);
    const qh = new Array<number>(64).fill(0);
    const expected: number[] = [];
    for (let e = 0; e < 256; e++) {
      const h = e >> 7;
      const g = (e % 128) >> 5;
      const l = e % 32;
      const q = level(e);
      ql[64 * h + l + 32 * (g % 2)] |= g < 2 ? q & 0xf : (q & 0xf) << 4;
      qh[32 * h + l] |= (q >> 4) << (2 * g);
      expected.push(f32(f32(0.125 * scales[8 * h + (l >> 4) + 2 * g]) * (q - 32)));
    }
    const block = [...ql, ...qh, ...scales.map((s) => s & 0xff), ...halfBytes(0x3000)];
    expect(block.length).toBe(LAYOUT.Q6_K[1]);
    const out = await addon.dequantize(GgmlType.Q6_K, new Uint8Array(block), 256);
    expect(Array.from(out)).toEqual(expected);
  });
});

// ---------------------------------------------------------------------------------------------
// Quantize: known encodings and round-trip error bounds

describe("quantize", () => {
  it("F16 rounds to nearest even, overflows to infinity and keeps NaN", async () => {
    const cases: [number, number][] = [
      [1, 0x3c00],
      [1 + 2 ** -11, 0x3c00], // tie → even
      [1 + 3 * 2 ** -11, 0x3c02], // tie → even (up)
      [65504, 0x7bff],
      [65519.99, 0x7bff],
      [65520, 0x7c00],
      [2 ** -25, 0x0000], // tie between 0 and the smallest subnormal → 0
      [3 * 2 ** -25, 0x0002],
      [2 ** -14 - 2 ** -25, 0x0400], // rounds up into the normals
      [-0.1, 0xae66],
      [NaN, 0x7e00],
      [-Infinity, 0xfc00],
    ];
    const bytes = await addon.quantize(GgmlType.F16, new Float32Array(cases.map(([v]) => v)));
    const halves = Array.from({ length: cases.length }, (_, i) => bytes[2 * i] | (bytes[2 * i + 1] << 8));
    expect(halves).toEqual(cases.map(([, bits]) => bits));
  });

  it("BF16 rounds to nearest even and quiets NaN", async () => {
    const cases: [number, number][] = [
      [1, 0x3f80],
      [1 + 2 ** -8, 0x3f80], // tie → even
      [1 + 3 * 2 ** -8, 0x3f82],
      [-2.5, 0xc020],
      [3.4e38, 0x7f80], // rounds past the largest bf16
    ];
    const bytes = await addon.quantize(GgmlType.BF16, new Float32Array(cases.map(([v]) => v)));
    const halves = Array.from({ length: cases.length }, (_, i) => bytes[2 * i] | (bytes[2 * i + 1] << 8));
    expect(halves).toEqual(cases.map(([, bits]) => bits));
    const nan = new Float32Array(new Uint32Array([0x7f800001]).buffer); // signalling NaN
    const nanBytes = await addon.quantize(GgmlType.BF16, nan);
    expect(nanBytes[0] | (nanBytes[1] << 8)).toBe(0x7fc0);
  });

  it("F32, F16 and BF16 round-trip exactly on values they represent", async () => {
    const random = mulberry32(7);
    const halves = new Uint16Array(4096).map(() => {
      const bits = Math.floor(random() * 0x10000);
      return (bits & 0x7c00) === 0x7c00 ? bits & 0x83ff : bits; // no inf/NaN
    });
    const fromHalf = await addon.dequantize(GgmlType.F16, new Uint8Array(halves.buffer), halves.length);
    const backToHalf = await addon.quantize(GgmlType.F16, fromHalf);
    expect(Array.from(new Uint16Array(backToHalf.buffer))).toEqual(Array.from(halves));

    const bf16 = new Uint16Array(4096).map(() => {
      const bits = Math.floor(random() * 0x10000);
      return (bits & 0x7f80) === 0x7f80 ? bits & 0x807f : bits;
    });
    const fromBf16 = await addon.dequantize(GgmlType.BF16, new Uint8Array(bf16.buffer), bf16.length);
    const backToBf16 = await addon.quantize(GgmlType.BF16, fromBf16);
    expect(Array.from(new Uint16Array(backToBf16.buffer))).toEqual(Array.from(bf16));

    const values = gaussian(1000, 8, 100);
    const f32Bytes = await addon.quantize(GgmlType.F32, values);
    expect(Array.from(await addon.dequantize(GgmlType.F32, f32Bytes, values.length))).toEqual(Array.from(values));
  });

  it("F16 and BF16 stay within half an ulp on arbitrary values", async () => {
    const values = gaussian(8192, 9, 10);
    for (const [type, relative] of [
      ["F16", 2 ** -11],
      ["BF16", 2 ** -8],
    ] as const) {
      const back = await addon.dequantize(GgmlType[type], await addon.quantize(GgmlType[type], values), values.length);
      for (let i = 0; i < values.length; i++) {
        // normal range only (|x| >= 2^-14 for F16); below it the absolute bound 2^-25 applies
        expect(Math.abs(back[i] - values[i])).toBeLessThanOrEqual(Math.max(Math.abs(values[i]) * relative, 2 ** -25));
      }
    }
  });

  it("Q8_0 and Q4_0 stay within their per-block bounds", async () => {
    const values = gaussian(32 * 512, 10);
    // Q8_0: step d = amax/127 (stored as f16); rounding to the nearest level errs by ≤ d/2, the f16
    // rounding of d adds ≤ 127·d·2^-11 — well inside amax/127.
    // Q4_0: step d = amax/8, the extreme value maps to -8 exactly; values of the other sign reach
    // only +7, so the error is ≤ d = amax/8, plus ≤ 8·d·2^-11 from the f16 rounding of d.
    const bounds = { Q8_0: (amax: number) => amax / 127, Q4_0: (amax: number) => (amax / 8) * (1 + 2 ** -7) };
    for (const type of ["Q8_0", "Q4_0"] as const) {
      const back = await addon.dequantize(GgmlType[type], await addon.quantize(GgmlType[type], values), values.length);
      let worstRatio = 0;
      for (let block = 0; block < values.length / 32; block++) {
        const slice = values.subarray(block * 32, block * 32 + 32);
        const amax = Math.max(...Array.from(slice, Math.abs));
        for (let j = 0; j < 32; j++) {
          const error = Math.abs(back[block * 32 + j] - slice[j]);
          worstRatio = Math.max(worstRatio, error / bounds[type](amax));
        }
      }
      expect(worstRatio, type).toBeLessThanOrEqual(1);
    }
  });

  it("K-quants stay within RMS bounds set by their bit widths", async () => {
    const values = gaussian(256 * 256, 11);
    // Uniform quantization with step s has RMS error s/√12. For unit-Gaussian sub-blocks:
    // Q4_K: 32 values spanning ≈ 4.1σ on 15 steps → s ≈ 0.27σ → 0.079σ;
    // Q5_K: 31 steps → 0.038σ; Q6_K: 16 values, max |x| ≈ 1.8σ mapped to 32 steps → s ≈ 0.056σ →
    // 0.016σ. The 6/8-bit sub-block scales and f16 super-scales add a few percent; the fit of scale
    // and min lowers it. Bounds: 1.25× the uniform-noise estimate.
    const bounds = { Q4_K: 0.099, Q5_K: 0.048, Q6_K: 0.02 };
    const rms = (a: ArrayLike<number>) => Math.sqrt(Array.from(a).reduce((s, v) => s + v * v, 0) / a.length);
    for (const type of ["Q4_K", "Q5_K", "Q6_K"] as const) {
      const back = await addon.dequantize(GgmlType[type], await addon.quantize(GgmlType[type], values), values.length);
      const relative = rms(back.map((v, i) => v - values[i])) / rms(values);
      expect(relative, type).toBeLessThanOrEqual(bounds[type]);
      expect(relative, type).toBeGreaterThan(bounds[type] / 4); // the bound is the right order of magnitude
      // No value may be off by more than a few steps of its super-block (scale and min fitted).
      let worst = 0;
      for (let i = 0; i < values.length; i++) worst = Math.max(worst, Math.abs(back[i] - values[i]));
      expect(worst, type).toBeLessThan(1);
    }
  });

  it("writes the documented number of bytes for every type", async () => {
    for (const type of TYPES) {
      const [blockSize, typeSize] = LAYOUT[type];
      const count = 256 * 3;
      const bytes = await addon.quantize(GgmlType[type], gaussian(count, 12));
      expect(bytes.length, type).toBe((count / blockSize) * typeSize);
    }
  });
});

// ---------------------------------------------------------------------------------------------
// Bad input

describe("quant errors", () => {
  it("names an unsupported type and lists the supported ones", async () => {
    await expect(addon.quantize(16, new Float32Array(256))).rejects.toThrow(
      /IQ2_XXS \(16\).*thinktune can read; supported: F32, F16, BF16, Q8_0, Q4_0, Q4_K, Q5_K, Q6_K/,
    );
    await expect(addon.dequantize(3, new Uint8Array(20), 32)).rejects.toThrow(/Q4_1 \(3\)/);
    await expect(addon.dequantize(29, new Uint8Array(4), 1)).rejects.toThrow(/IQ1_M \(29\)/);
    await expect(addon.dequantize(39, new Uint8Array(4), 1)).rejects.toThrow(/MXFP4 \(39\)/);
    await expect(addon.dequantize(31, new Uint8Array(4), 1)).rejects.toThrow(/unknown type \(31\)/); // removed Q4_0_4_4
    await expect(addon.dequantize(99, new Uint8Array(4), 1)).rejects.toThrow(/unknown type \(99\)/);
    await expect(addon.quantize(1.5, new Float32Array(1))).rejects.toThrow(/not a ggml type id/);
  });

  it("rejects lengths that do not fit the format, naming both numbers", async () => {
    await expect(addon.quantize(GgmlType.Q4_K, new Float32Array(300))).rejects.toThrow(
      /300 values are not a multiple of the Q4_K block size 256/,
    );
    await expect(addon.dequantize(GgmlType.Q8_0, new Uint8Array(34), 33)).rejects.toThrow(
      /33 values are not a multiple of the Q8_0 block size 32/,
    );
    await expect(addon.dequantize(GgmlType.Q6_K, new Uint8Array(200), 256)).rejects.toThrow(
      /256 values take 210 bytes, but 200 bytes were given/,
    );
    await expect(addon.dequantize(GgmlType.F32, new Uint8Array(8), -1)).rejects.toThrow(/count -1.* not a non-negative integer/);
  });

  it("rejects wrong array types and non-finite input to block formats", async () => {
    await expect(addon.quantize(GgmlType.Q8_0, new Float64Array(32) as unknown as Float32Array)).rejects.toThrow(
      /values must be a Float32Array/,
    );
    await expect(addon.dequantize(GgmlType.Q8_0, new Int8Array(34) as unknown as Uint8Array, 32)).rejects.toThrow(
      /bytes must be a Uint8Array/,
    );
    const values = new Float32Array(256);
    values[5] = NaN;
    await expect(addon.quantize(GgmlType.Q4_K, values)).rejects.toThrow(/Q4_K: value 5 is NaN/);
    values[5] = 0;
    values[200] = -Infinity;
    await expect(addon.quantize(GgmlType.Q8_0, values)).rejects.toThrow(/Q8_0: value 200 is infinite/);
  });

  it("converts views at an offset and empty arrays", async () => {
    const backing = new Float32Array(64 + 7);
    backing.set(gaussian(64, 13), 7);
    const view = backing.subarray(7);
    const direct = await addon.quantize(GgmlType.Q8_0, new Float32Array(view));
    expect(Array.from(await addon.quantize(GgmlType.Q8_0, view))).toEqual(Array.from(direct));
    const bytes = new Uint8Array(direct.length + 3);
    bytes.set(direct, 3); // odd byte offset: blocks are read byte-wise
    const decoded = await addon.dequantize(GgmlType.Q8_0, bytes.subarray(3), 64);
    expect(Array.from(decoded)).toEqual(Array.from(await addon.dequantize(GgmlType.Q8_0, direct, 64)));
    expect((await addon.quantize(GgmlType.Q4_K, new Float32Array(0))).length).toBe(0);
    const shared = new Float32Array(new SharedArrayBuffer(64 * 4));
    shared.set(view);
    expect(Array.from(await addon.quantize(GgmlType.Q8_0, shared))).toEqual(Array.from(direct));
  });

  it("runs off the JS thread: timers fire while a large quantization is under way", async () => {
    const values = gaussian(2 * 1024 * 1024, 15);
    let settled = false;
    const work = addon.quantize(GgmlType.Q4_K, values).then((bytes) => {
      settled = true;
      return bytes;
    });
    const timerFiredFirst = await new Promise<boolean>((resolve) => setTimeout(() => resolve(!settled), 0));
    expect(timerFiredFirst).toBe(true);
    expect((await work).length).toBe((values.length / 256) * 144);
  });

  it("gives the same bytes and values multi-threaded (large arrays) as in small single-threaded pieces", async () => {
    const values = gaussian(256 * 1024, 14); // 1 MiB: above the size where the work is split across threads
    const piece = 16 * 1024; // 64 KiB: converted on one thread
    for (const type of TYPES) {
      const [blockSize, typeSize] = LAYOUT[type];
      const whole = await addon.quantize(GgmlType[type], values);
      const pieceBytes = (piece / blockSize) * typeSize;
      for (let start = 0; start < values.length; start += piece) {
        const part = await addon.quantize(GgmlType[type], values.subarray(start, start + piece));
        const offset = (start / piece) * pieceBytes;
        expect(firstByteDifference(part, whole.subarray(offset, offset + pieceBytes)), type).toBe("identical");
      }
      const decoded = await addon.dequantize(GgmlType[type], whole, values.length);
      const firstPiece = await addon.dequantize(GgmlType[type], whole.subarray(0, pieceBytes), piece);
      const lastPiece = await addon.dequantize(GgmlType[type], whole.subarray(whole.length - pieceBytes), piece);
      expect(bitsEqualCount(firstPiece, decoded.subarray(0, piece)), type).toBe(piece);
      expect(bitsEqualCount(lastPiece, decoded.subarray(values.length - piece)), type).toBe(piece);
    }
  });
});

// ---------------------------------------------------------------------------------------------
// Oracles from llama.cpp's source bundle: ggml's reference C and gguf-py

const REFERENCE_DRIVER = String.raw`
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "ggml-quants.h"
#include "ggml-impl.h"
// usage: ref quantize|dequantize TYPE COUNT IN OUT
int main(int argc, char ** argv) {
  if (argc != 6) return 2;
  const int quantize = strcmp(argv[1], "quantize") == 0;
  const char * type = argv[2];
  const long n = atol(argv[3]);
  FILE * in = fopen(argv[4], "rb");
  const size_t inBytes = quantize ? (size_t)n * 4 : (size_t)atol(getenv("REF_BYTES"));
  unsigned char * src = malloc(inBytes + 1);
  if (!in || fread(src, 1, inBytes, in) != inBytes) return 3;
  unsigned char * dst = malloc((size_t)n * 4 + 1);
  size_t outBytes = 0;
  const float * x = (const float *) src;
  float * y = (float *) dst;
  if (quantize) {
    if (!strcmp(type, "F16")) { for (long i = 0; i < n; i++) ((ggml_fp16_t *) dst)[i] = GGML_FP32_TO_FP16(x[i]); outBytes = n * 2; }
    else if (!strcmp(type, "BF16")) { for (long i = 0; i < n; i++) ((ggml_bf16_t *) dst)[i] = GGML_FP32_TO_BF16(x[i]); outBytes = n * 2; }
    else if (!strcmp(type, "Q8_0")) { quantize_row_q8_0_ref(x, (void *) dst, n); outBytes = n / 32 * 34; }
    else if (!strcmp(type, "Q4_0")) { quantize_row_q4_0_ref(x, (void *) dst, n); outBytes = n / 32 * 18; }
    else if (!strcmp(type, "Q4_K")) { quantize_row_q4_K_ref(x, (void *) dst, n); outBytes = n / 256 * 144; }
    else if (!strcmp(type, "Q5_K")) { quantize_row_q5_K_ref(x, (void *) dst, n); outBytes = n / 256 * 176; }
    else if (!strcmp(type, "Q6_K")) { quantize_row_q6_K_ref(x, (void *) dst, n); outBytes = n / 256 * 210; }
    else return 4;
  } else {
    if (!strcmp(type, "F16")) { for (long i = 0; i < n; i++) y[i] = GGML_FP16_TO_FP32(((ggml_fp16_t *) src)[i]); }
    else if (!strcmp(type, "BF16")) { for (long i = 0; i < n; i++) y[i] = GGML_BF16_TO_FP32(((ggml_bf16_t *) src)[i]); }
    else if (!strcmp(type, "Q8_0")) dequantize_row_q8_0((void *) src, y, n);
    else if (!strcmp(type, "Q4_0")) dequantize_row_q4_0((void *) src, y, n);
    else if (!strcmp(type, "Q4_K")) dequantize_row_q4_K((void *) src, y, n);
    else if (!strcmp(type, "Q5_K")) dequantize_row_q5_K((void *) src, y, n);
    else if (!strcmp(type, "Q6_K")) dequantize_row_q6_K((void *) src, y, n);
    else return 4;
    outBytes = (size_t)n * 4;
  }
  FILE * out = fopen(argv[5], "wb");
  if (!out || fwrite(dst, 1, outBytes, out) != outBytes) return 5;
  fclose(out);
  return 0;
}
`;

// Reads values.f32 and <type>.ours (our bytes) for each type; writes <type>.deq (gguf-py's
// dequantization of our bytes) and, where gguf-py can quantize, <type>.q (its bytes).
const GGUF_PY_SCRIPT = String.raw`
import sys, os
import numpy as np
from gguf import quants, GGMLQuantizationType as T
work = sys.argv[1]
values = np.fromfile(os.path.join(work, "values.f32"), dtype=np.float32)
for name in sys.argv[2:]:
    qtype = T[name]
    ours = np.fromfile(os.path.join(work, name + ".ours"), dtype=np.uint8)
    if name == "F32":
        deq = ours.view(np.float32)
    else:
        deq = quants.dequantize(ours.reshape(1, -1), qtype).reshape(-1)
    deq.astype(np.float32).tofile(os.path.join(work, name + ".deq"))
    if name in ("F16", "BF16", "Q8_0", "Q4_0"):
        q = quants.quantize(values.reshape(1, -1), qtype)
        np.ascontiguousarray(q).view(np.uint8).tofile(os.path.join(work, name + ".q"))
`;

describe("bit-exact with llama.cpp's reference implementations", () => {
  let work = "";
  let llamaSource = "";
  let driver = "";
  let skipReason = "";
  const ours = new Map<GgmlTypeName, Uint8Array>();

  beforeAll(async () => {
    if (!existsSync(llamaBundle)) {
      skipReason = `llama.cpp source bundle missing (${llamaBundle}); reinstall node-llama-cpp`;
      return;
    }
    work = mkdtempSync(path.join(tmpdir(), "thinktune-quant-oracle-"));
    llamaSource = path.join(work, "llama.cpp");
    execFileSync("git", ["-c", "advice.detachedHead=false", "clone", "-q", llamaBundle, llamaSource], { stdio: "ignore" });
    writeFileSync(path.join(work, "values.f32"), oracleInput);
    for (const type of TYPES) {
      const bytes = await addon.quantize(GgmlType[type], oracleInput);
      ours.set(type, bytes);
      writeFileSync(path.join(work, `${type}.ours`), bytes);
    }
  }, 120_000);

  afterAll(() => {
    if (work) rmSync(work, { recursive: true, force: true });
  });

  function buildDriver(): string {
    if (driver) return driver;
    const ggml = path.join(llamaSource, "ggml");
    writeFileSync(path.join(work, "driver.c"), REFERENCE_DRIVER);
    const binary = path.join(work, "ggml-ref");
    // No -march: plain SSE2 arithmetic, no fused multiply-add, as the format's reference intends.
    const result = spawnSync(
      "cc",
      [
        "-O2", "-DNDEBUG", "-ffp-contract=off", "-ffunction-sections", "-fdata-sections",
        `-I${path.join(ggml, "include")}`, `-I${path.join(ggml, "src")}`,
        path.join(work, "driver.c"), path.join(ggml, "src", "ggml-quants.c"),
        "-Wl,--gc-sections", "-lm", "-o", binary,
      ],
      { encoding: "utf8" },
    );
    if (result.status !== 0) throw new Error(`cannot compile ggml's reference quantizers: ${result.error ?? result.stderr}`);
    driver = binary;
    return driver;
  }

  function runReference(mode: "quantize" | "dequantize", type: GgmlTypeName, inputFile: string, inputBytes: number): Uint8Array {
    const out = path.join(work, `${type}.${mode}.ref`);
    execFileSync(buildDriver(), [mode, type, String(oracleInput.length), inputFile, out], {
      env: { ...process.env, REF_BYTES: String(inputBytes) },
    });
    return new Uint8Array(readFileSync(out));
  }

  it("quantize matches ggml's quantize_row_*_ref byte for byte", (ctx) => {
    if (skipReason) ctx.skip(skipReason);
    const cc = spawnSync("cc", ["--version"]);
    if (cc.status !== 0) ctx.skip("no C compiler (cc) to build ggml's reference quantizers");
    for (const type of TYPES.filter((t) => t !== "F32")) {
      const reference = runReference("quantize", type, path.join(work, "values.f32"), oracleInput.length * 4);
      const mine = ours.get(type)!;
      expect(firstByteDifference(mine, reference), type).toBe("identical");
    }
  });

  it("dequantize matches ggml's dequantize_row_* bit for bit", async (ctx) => {
    if (skipReason) ctx.skip(skipReason);
    const cc = spawnSync("cc", ["--version"]);
    if (cc.status !== 0) ctx.skip("no C compiler (cc) to build ggml's reference quantizers");
    for (const type of TYPES.filter((t) => t !== "F32")) {
      const bytes = ours.get(type)!;
      const reference = runReference("dequantize", type, path.join(work, `${type}.ours`), bytes.length);
      const mine = await addon.dequantize(GgmlType[type], bytes, oracleInput.length);
      const theirs = new Float32Array(reference.buffer, reference.byteOffset, reference.length / 4);
      expect(bitsEqualCount(mine, theirs), type).toBe(oracleInput.length);
    }
  });

  it("gguf-py dequantizes our bytes of every type to our values, and quantizes as we do", async (ctx) => {
    if (skipReason) ctx.skip(skipReason);
    const numpy = spawnSync("python3", ["-c", "import numpy"]);
    if (numpy.status !== 0) ctx.skip("python3 with numpy is needed for the gguf-py oracle");
    writeFileSync(path.join(work, "oracle.py"), GGUF_PY_SCRIPT);
    execFileSync("python3", [path.join(work, "oracle.py"), work, ...TYPES], {
      env: { ...process.env, PYTHONPATH: path.join(llamaSource, "gguf-py") },
    });
    for (const type of TYPES) {
      const bytes = ours.get(type)!;
      const mine = await addon.dequantize(GgmlType[type], bytes, oracleInput.length);
      const deq = readFileSync(path.join(work, `${type}.deq`));
      const theirs = new Float32Array(deq.buffer, deq.byteOffset, deq.length / 4);
      expect(bitsEqualCount(mine, theirs), `${type} dequantize`).toBe(oracleInput.length);
      const quantizedFile = path.join(work, `${type}.q`);
      if (existsSync(quantizedFile)) {
        expect(firstByteDifference(bytes, new Uint8Array(readFileSync(quantizedFile))), `${type} quantize`).toBe("identical");
      }
    }
    expect(existsSync(path.join(work, "Q4_0.q")) && existsSync(path.join(work, "Q8_0.q"))).toBe(true);
  });
});
