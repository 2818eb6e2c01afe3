// A streamed GGUF v3 writer: the header is built in memory, tensor data is pulled from one producer per
// tensor and written in order, so a multi-GB file never sits in memory. Written to <path>.tmp, then renamed.
import { ggmlTensorBytes, ggmlTypeLayouts } from "./ggml-types.js";
import type { GgmlTypeName } from "../native/addon.js";
import { writeFileAtomic } from "../util/atomic-file.js";

const GGUF_MAGIC = 0x46554747; // "GGUF" little-endian
const GGUF_VERSION = 3;
export const GGUF_DEFAULT_ALIGNMENT = 32;

/** GGUF metadata value type ids (gguf.h, enum gguf_type). */
const valueTypeIds = {
  u8: 0,
  i8: 1,
  u16: 2,
  i16: 3,
  u32: 4,
  i32: 5,
  f32: 6,
  bool: 7,
  string: 8,
  array: 9,
  u64: 10,
  i64: 11,
  f64: 12,
} as const;

export type GgufNumberType = "u8" | "i8" | "u16" | "i16" | "u32" | "i32" | "f32" | "f64";
export type GgufBigIntType = "u64" | "i64";
export type GgufScalarType = GgufNumberType | GgufBigIntType | "bool" | "string";

/** A metadata value with its GGUF type said explicitly (a JS number alone cannot say u32 from f32). */
export type GgufValue =
  | { type: GgufNumberType; value: number }
  | { type: GgufBigIntType; value: bigint | number }
  | { type: "bool"; value: boolean }
  | { type: "string"; value: string }
  | { type: "array"; itemType: GgufNumberType | GgufBigIntType; value: readonly (number | bigint)[] }
  | { type: "array"; itemType: "bool"; value: readonly boolean[] }
  | { type: "array"; itemType: "string"; value: readonly string[] };

/** Constructors for typed metadata values: gguf.u32(5), gguf.array("string", names). */
export const gguf = {
  u8: (value: number): GgufValue => ({ type: "u8", value }),
  i8: (value: number): GgufValue => ({ type: "i8", value }),
  u16: (value: number): GgufValue => ({ type: "u16", value }),
  i16: (value: number): GgufValue => ({ type: "i16", value }),
  u32: (value: number): GgufValue => ({ type: "u32", value }),
  i32: (value: number): GgufValue => ({ type: "i32", value }),
  u64: (value: bigint | number): GgufValue => ({ type: "u64", value }),
  i64: (value: bigint | number): GgufValue => ({ type: "i64", value }),
  f32: (value: number): GgufValue => ({ type: "f32", value }),
  f64: (value: number): GgufValue => ({ type: "f64", value }),
  bool: (value: boolean): GgufValue => ({ type: "bool", value }),
  string: (value: string): GgufValue => ({ type: "string", value }),
  array(itemType: GgufScalarType, value: readonly (number | bigint | boolean | string)[]): GgufValue {
    return { type: "array", itemType, value } as GgufValue;
  },
};

/** Tensor bytes: one buffer, or chunks in order (their total must be the tensor's byte size). */
export type TensorDataProducer = () => Promise<Uint8Array> | Uint8Array | AsyncIterable<Uint8Array> | Iterable<Uint8Array>;

interface PendingTensor {
  name: string;
  type: GgmlTypeName;
  /** ggml order: dims[0] is contiguous */
  dims: number[];
  bytes: number;
  produce: TensorDataProducer;
}

/** Integer ranges per number type, checked before writing so a bad value never wraps silently. */
const integerRanges: Record<string, [bigint, bigint]> = {
  u8: [0n, 255n],
  i8: [-128n, 127n],
  u16: [0n, 65535n],
  i16: [-32768n, 32767n],
  u32: [0n, 4294967295n],
  i32: [-2147483648n, 2147483647n],
  u64: [0n, 18446744073709551615n],
  i64: [-9223372036854775808n, 9223372036854775807n],
};

/** A growable little-endian byte buffer for the header. */
class ByteSink {
  private buffer = Buffer.alloc(1 << 16);
  length = 0;

  private reserve(bytes: number): void {
    if (this.length + bytes <= this.buffer.length) return;
    let size = this.buffer.length * 2;
    while (size < this.length + bytes) size *= 2;
    const grown = Buffer.alloc(size);
    this.buffer.copy(grown, 0, 0, this.length);
    this.buffer = grown;
  }

  u8(value: number): void {
    this.reserve(1);
    this.buffer.writeUInt8(value, this.length);
    this.length += 1;
  }
  i8(value: number): void {
    this.reserve(1);
    this.buffer.writeInt8(value, this.length);
    this.length += 1;
  }
  u16(value: number): void {
    this.reserve(2);
    this.buffer.writeUInt16LE(value, this.length);
    this.length += 2;
  }
  i16(value: number): void {
    this.reserve(2);
    this.buffer.writeInt16LE(value, this.length);
    this.length += 2;
  }
  u32(value: number): void {
    this.reserve(4);
    this.buffer.writeUInt32LE(value, this.length);
    this.length += 4;
  }
  i32(value: number): void {
    this.reserve(4);
    this.buffer.writeInt32LE(value, this.length);
    this.length += 4;
  }
  u64(value: bigint): void {
    this.reserve(8);
    this.buffer.writeBigUInt64LE(value, this.length);
    this.length += 8;
  }
  i64(value: bigint): void {
    this.reserve(8);
    this.buffer.writeBigInt64LE(value, this.length);
    this.length += 8;
  }
  f32(value: number): void {
    this.reserve(4);
    this.buffer.writeFloatLE(value, this.length);
    this.length += 4;
  }
  f64(value: number): void {
    this.reserve(8);
    this.buffer.writeDoubleLE(value, this.length);
    this.length += 8;
  }
  string(value: string): void {
    const bytes = Buffer.from(value, "utf8");
    this.u64(BigInt(bytes.length));
    this.reserve(bytes.length);
    bytes.copy(this.buffer, this.length);
    this.length += bytes.length;
  }
  zeros(count: number): void {
    this.reserve(count);
    this.buffer.fill(0, this.length, this.length + count);
    this.length += count;
  }
  bytes(): Buffer {
    return this.buffer.subarray(0, this.length);
  }
}

function alignUp(offset: number, alignment: number): number {
  return Math.ceil(offset / alignment) * alignment;
}

function writeScalar(sink: ByteSink, type: GgufScalarType, value: unknown, key: string): void {
  const fail = (expected: string): never => {
    throw new TypeError(`GGUF metadata "${key}": expected ${expected} for a ${type} value, got ${typeof value === "bigint" ? `${value}n` : JSON.stringify(value)}`);
  };
  switch (type) {
    case "bool":
      if (typeof value !== "boolean") fail("a boolean");
      sink.u8(value ? 1 : 0);
      return;
    case "string":
      if (typeof value !== "string") fail("a string");
      sink.string(value as string);
      return;
    case "f32":
    case "f64":
      if (typeof value !== "number") fail("a number");
      if (type === "f32") sink.f32(value as number);
      else sink.f64(value as number);
      return;
    default: {
      if (typeof value !== "number" && typeof value !== "bigint") fail("an integer");
      if (typeof value === "number" && !Number.isSafeInteger(value)) fail("a safe integer (use a bigint beyond 2^53)");
      const integer = BigInt(value as number | bigint);
      const [min, max] = integerRanges[type];
      if (integer < min || integer > max) fail(`an integer in [${min}, ${max}]`);
      if (type === "u64") sink.u64(integer);
      else if (type === "i64") sink.i64(integer);
      else sink[type](Number(integer));
    }
  }
}

export class GgufWriter {
  private readonly metadata = new Map<string, GgufValue>();
  private readonly tensors: PendingTensor[] = [];
  private readonly tensorNames = new Set<string>();
  readonly alignment: number;

  constructor(options: { alignment?: number } = {}) {
    this.alignment = options.alignment ?? GGUF_DEFAULT_ALIGNMENT;
    if (!Number.isInteger(this.alignment) || this.alignment <= 0 || this.alignment % 8 !== 0) {
      throw new RangeError(`GGUF alignment must be a positive multiple of 8, got ${this.alignment}`);
    }
    if (this.alignment !== GGUF_DEFAULT_ALIGNMENT) this.metadata.set("general.alignment", gguf.u32(this.alignment));
  }

  /** Sets (or replaces) one metadata key; keys are written in the order first set. */
  set(key: string, value: GgufValue): this {
    if (key === "general.alignment") {
      throw new Error(`set general.alignment through new GgufWriter({ alignment }) so the writer pads to it`);
    }
    this.metadata.set(key, value);
    return this;
  }

  /** Adds a tensor; its bytes come from `produce` when the file is written, in the order added. */
  addTensor(name: string, type: GgmlTypeName, dims: readonly number[], produce: TensorDataProducer): this {
    if (this.tensorNames.has(name)) throw new Error(`GGUF tensor "${name}" is added twice`);
    if (!Object.hasOwn(ggmlTypeLayouts, type)) throw new Error(`GGUF tensor "${name}": unsupported type ${String(type)}`);
    if (dims.length === 0 || dims.length > 4 || dims.some((dim) => !Number.isSafeInteger(dim) || dim <= 0)) {
      throw new RangeError(`GGUF tensor "${name}": dims must be 1 to 4 positive integers, got [${dims.join(", ")}]`);
    }
    this.tensorNames.add(name);
    this.tensors.push({ name, type, dims: [...dims], bytes: ggmlTensorBytes(type, dims, `GGUF tensor "${name}"`), produce });
    return this;
  }

  private header(): Buffer {
    const sink = new ByteSink();
    sink.u32(GGUF_MAGIC);
    sink.u32(GGUF_VERSION);
    sink.u64(BigInt(this.tensors.length));
    sink.u64(BigInt(this.metadata.size));
    for (const [key, value] of this.metadata) {
      sink.string(key);
      sink.u32(valueTypeIds[value.type]);
      if (value.type === "array") {
        sink.u32(valueTypeIds[value.itemType]);
        sink.u64(BigInt(value.value.length));
        for (const item of value.value) writeScalar(sink, value.itemType, item, key);
      } else {
        writeScalar(sink, value.type, value.value, key);
      }
    }
    let offset = 0;
    for (const tensor of this.tensors) {
      sink.string(tensor.name);
      sink.u32(tensor.dims.length);
      for (const dim of tensor.dims) sink.u64(BigInt(dim));
      sink.u32(ggmlTypeLayouts[tensor.type].id);
      sink.u64(BigInt(offset));
      offset = alignUp(offset + tensor.bytes, this.alignment);
    }
    sink.zeros(alignUp(sink.length, this.alignment) - sink.length);
    return sink.bytes();
  }

  /** Writes the file to `<path>.tmp`, then renames it to `path`. Returns the file size. */
  async write(path: string): Promise<number> {
    return writeFileAtomic(path, this.fileChunks(), { createFolder: false, temporaryPath: `${path}.tmp` });
  }

  /** Header, then each tensor's bytes padded to the alignment, as produced. */
  private async *fileChunks(): AsyncGenerator<Uint8Array> {
    const header = this.header();
    yield header;
    let position = header.length;
    const padding = new Uint8Array(this.alignment);
    for (const tensor of this.tensors) {
      let written = 0;
      const produced = await tensor.produce();
      const chunks: AsyncIterable<Uint8Array> | Iterable<Uint8Array> = produced instanceof Uint8Array ? [produced] : produced;
      for await (const chunk of chunks) {
        if (written + chunk.length > tensor.bytes) {
          throw new Error(`GGUF tensor "${tensor.name}": its producer gave more than the ${tensor.bytes} bytes a ${tensor.type} [${tensor.dims.join(", ")}] tensor takes`);
        }
        yield chunk;
        written += chunk.length;
      }
      if (written !== tensor.bytes) {
        throw new Error(`GGUF tensor "${tensor.name}": its producer gave ${written} bytes, a ${tensor.type} [${tensor.dims.join(", ")}] tensor takes ${tensor.bytes}`);
      }
      position += written;
      const pad = alignUp(position, this.alignment) - position;
      yield padding.subarray(0, pad);
      position += pad;
    }
  }
}
