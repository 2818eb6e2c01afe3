// A seeded mutation fuzzer for model GGUFs: each variant is the base file with one to three mutations,
// most aimed at header fields (counts, lengths, types, dims, offsets, hyper-parameters, special ids, tensor
// names), some at random header bytes, some a truncation. The fuzz test runs `inspect` and Engine.load on
// each variant in child processes (gguf-fuzz-worker.ts) and counts crashes, hangs and unclear refusals.
import { walkGgufHeader, type GgufHeaderField } from "../../src/gguf/header.js";
import { random as seededRandom } from "../native/engine-fixtures.js";

export interface GgufVariant {
  index: number;
  /** what was changed, for the report of a failing variant */
  mutations: string[];
  bytes: Buffer;
}

export interface BaseLayout {
  bytes: Buffer;
  fields: GgufHeaderField[];
  dataStart: number;
}

export async function baseLayout(file: string, bytes: Buffer): Promise<BaseLayout> {
  const fields: GgufHeaderField[] = [];
  const layout = await walkGgufHeader(file, bytes.length, { onField: (field) => fields.push(field) });
  return { bytes, fields, dataStart: layout.dataStart };
}

const interesting64 = [0n, 1n, 2n, 3n, 4n, 5n, 63n, 64n, 255n, 256n, 0x7fffn, 0xffffn, 0x7fffffffn, 0x80000000n, 0xffffffffn, 0x100000000n, 1n << 53n, (1n << 53n) + 1n, 1n << 62n, 1n << 63n, (1n << 64n) - 1n];
const knownTypeIds = [0, 1, 2, 8, 12, 13, 14, 30];
const interestingFloats = [0, -1, 1, 1e-30, 1e-7, 0.5, 1e10, 1e38, Number.NaN, Number.POSITIVE_INFINITY, -0];

function pick<T>(random: () => number, items: readonly T[]): T {
  return items[Math.floor(random() * items.length)]!;
}

function writeUnsigned(bytes: Buffer, offset: number, width: number, value: bigint): void {
  const masked = value & ((1n << BigInt(8 * width)) - 1n);
  if (width === 8) bytes.writeBigUInt64LE(masked, offset);
  else if (width === 4) bytes.writeUInt32LE(Number(masked), offset);
  else if (width === 2) bytes.writeUInt16LE(Number(masked), offset);
  else bytes.writeUInt8(Number(masked), offset);
}

function readUnsigned(bytes: Buffer, offset: number, width: number): bigint {
  if (width === 8) return bytes.readBigUInt64LE(offset);
  if (width === 4) return BigInt(bytes.readUInt32LE(offset));
  if (width === 2) return BigInt(bytes.readUInt16LE(offset));
  return BigInt(bytes.readUInt8(offset));
}

/** One mutation of `bytes` in place (or a shorter copy, for a truncation); returns what it did. */
function mutate(random: () => number, base: BaseLayout, bytes: Buffer): { bytes: Buffer; what: string } {
  const roll = random();
  const { fields, dataStart } = base;
  if (roll < 0.45) {
    // a structural field set to an interesting value of its width
    const field = pick(random, fields.filter((f) => f.kind !== "value"));
    const original = readUnsigned(bytes, field.offset, field.bytes);
    const value = pick(random, [...interesting64, original + 1n, original - 1n, original * 2n, original ^ (1n << BigInt(Math.floor(random() * 8 * field.bytes)))]);
    writeUnsigned(bytes, field.offset, field.bytes, value < 0n ? 0n : value);
    return { bytes, what: `${field.kind} of ${field.owner} at byte ${field.offset}: ${original} → ${value < 0n ? 0n : value & ((1n << BigInt(8 * field.bytes)) - 1n)}` };
  }
  if (roll < 0.65) {
    // a metadata value (hyper-parameter, special id, ...) set to an interesting value of its type
    const field = pick(random, fields.filter((f) => f.kind === "value"));
    if (field.valueType === "f32") {
      const value = pick(random, interestingFloats);
      bytes.writeFloatLE(value, field.offset);
      return { bytes, what: `${field.owner} (f32) at byte ${field.offset} → ${value}` };
    }
    if (field.valueType === "f64") {
      const value = pick(random, interestingFloats);
      bytes.writeDoubleLE(value, field.offset);
      return { bytes, what: `${field.owner} (f64) at byte ${field.offset} → ${value}` };
    }
    const original = readUnsigned(bytes, field.offset, field.bytes);
    const value = pick(random, [...interesting64, original + 1n, original - 1n, original * 2n, original / 2n, 1280n, 1279n]);
    writeUnsigned(bytes, field.offset, field.bytes, value < 0n ? 0n : value);
    return { bytes, what: `${field.owner} (${field.valueType}) at byte ${field.offset}: ${original} → ${value}` };
  }
  if (roll < 0.75) {
    // a tensor retyped to another known type, or its data offset moved onto another tensor's
    const typeFields = fields.filter((f) => f.kind === "type" && f.owner.startsWith("tensor"));
    const field = pick(random, typeFields);
    if (random() < 0.5) {
      const type = pick(random, knownTypeIds);
      bytes.writeUInt32LE(type, field.offset);
      return { bytes, what: `type of ${field.owner} → ${type}` };
    }
    const offsets = fields.filter((f) => f.kind === "offset");
    const target = pick(random, offsets);
    const own = offsets.find((f) => f.owner === field.owner)!;
    const value = bytes.readBigUInt64LE(target.offset);
    bytes.writeBigUInt64LE(value, own.offset);
    return { bytes, what: `data offset of ${own.owner} → ${value} (that of ${target.owner})` };
  }
  if (roll < 0.85) {
    // a flipped bit or a random byte anywhere in the header
    const at = Math.floor(random() * dataStart);
    if (random() < 0.5) {
      const bit = Math.floor(random() * 8);
      bytes[at]! ^= 1 << bit;
      return { bytes, what: `bit ${bit} of byte ${at} flipped` };
    }
    const value = Math.floor(random() * 256);
    bytes[at] = value;
    return { bytes, what: `byte ${at} → ${value}` };
  }
  if (roll < 0.93) {
    // one character of a key or tensor name changed (an unknown tensor, a missing key)
    const lengths = fields.filter((f) => f.kind === "length" && (f.owner.startsWith("the key") || f.owner.startsWith("the name")));
    const field = pick(random, lengths);
    const length = Number(bytes.readBigUInt64LE(field.offset));
    if (length === 0) return { bytes, what: `nothing (empty name at ${field.offset})` };
    const at = field.offset + 8 + Math.floor(random() * length);
    const value = pick(random, [0x2e, 0x30 + Math.floor(random() * 10), 0x61 + Math.floor(random() * 26), 0xff, 0x00]);
    bytes[at] = value;
    return { bytes, what: `${field.owner} byte ${at} → ${value}` };
  }
  // truncation: mostly inside the header, sometimes in the tensor data
  const end = random() < 0.7 ? Math.floor(random() * dataStart) : dataStart + Math.floor(random() * (bytes.length - dataStart));
  return { bytes: bytes.subarray(0, end), what: `truncated to ${end} bytes` };
}

/** The `index`-th variant of the base file for `seed`: the same inputs give the same bytes. */
export function makeVariant(base: BaseLayout, seed: number, index: number): GgufVariant {
  const random = seededRandom((seed * 0x9e3779b1 + index * 0x85ebca6b) >>> 0);
  let bytes = Buffer.from(base.bytes);
  const mutations: string[] = [];
  const count = 1 + Math.floor(random() * random() * 3);
  for (let i = 0; i < count; i++) {
    const result = mutate(random, base, bytes);
    bytes = result.bytes;
    mutations.push(result.what);
    if (bytes.length < base.bytes.length) break; // a truncation is the last mutation
  }
  return { index, mutations, bytes };
}
