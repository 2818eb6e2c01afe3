// GGUF metadata with each value's stored type. node-llama-cpp's reader returns plain JS values, which
// cannot say u32 from f32 or i32 from u64; llama.cpp's loader rejects a key of the wrong type, so a
// merged model must carry every key exactly as the base stored it. Only the key/value section is read.
import { open } from "node:fs/promises";
import type { GgufValue } from "../gguf/writer.js";
import { ExportError } from "./errors.js";

const scalarTypes = ["u8", "i8", "u16", "i16", "u32", "i32", "f32", "bool", "string", "array", "u64", "i64", "f64"] as const;
const scalarSizes: Record<string, number> = { u8: 1, i8: 1, u16: 2, i16: 2, u32: 4, i32: 4, f32: 4, bool: 1, u64: 8, i64: 8, f64: 8 };

class HeaderCursor {
  private buffer = Buffer.alloc(0);
  private start = 0;
  position = 0;

  constructor(
    private readonly handle: Awaited<ReturnType<typeof open>>,
    private readonly file: string,
    private readonly fileSize: number,
  ) {}

  /** Makes `count` bytes at the cursor available, reading ahead in 1 MiB chunks. */
  private async need(count: number): Promise<Buffer> {
    if (this.position + count > this.fileSize) {
      throw new ExportError(`${this.file} is truncated: its metadata runs past the end of the file at byte ${this.fileSize}`);
    }
    if (this.position < this.start || this.position + count > this.start + this.buffer.length) {
      const length = Math.min(Math.max(count, 1 << 20), this.fileSize - this.position);
      this.buffer = Buffer.alloc(length);
      await this.handle.read(this.buffer, 0, length, this.position);
      this.start = this.position;
    }
    const offset = this.position - this.start;
    this.position += count;
    return this.buffer.subarray(offset, offset + count);
  }

  async u32(): Promise<number> {
    return (await this.need(4)).readUInt32LE(0);
  }
  async u64(): Promise<bigint> {
    return (await this.need(8)).readBigUInt64LE(0);
  }
  async length(what: string): Promise<number> {
    const value = await this.u64();
    if (value > BigInt(this.fileSize)) throw new ExportError(`${this.file}: ${what} length ${value} exceeds the file size; the file is corrupt`);
    return Number(value);
  }
  async string(what: string): Promise<string> {
    const length = await this.length(what);
    return (await this.need(length)).toString("utf8");
  }
  async scalar(type: string, key: string): Promise<number | bigint | boolean | string> {
    if (type === "string") return this.string(`string value of "${key}"`);
    const bytes = await this.need(scalarSizes[type]);
    switch (type) {
      case "u8":
        return bytes.readUInt8(0);
      case "i8":
        return bytes.readInt8(0);
      case "u16":
        return bytes.readUInt16LE(0);
      case "i16":
        return bytes.readInt16LE(0);
      case "u32":
        return bytes.readUInt32LE(0);
      case "i32":
        return bytes.readInt32LE(0);
      case "f32":
        return bytes.readFloatLE(0);
      case "bool":
        return bytes.readUInt8(0) !== 0;
      case "u64":
        return bytes.readBigUInt64LE(0);
      case "i64":
        return bytes.readBigInt64LE(0);
      default:
        return bytes.readDoubleLE(0);
    }
  }
}

function typeName(id: number, file: string, key: string): (typeof scalarTypes)[number] {
  const name = scalarTypes[id];
  if (name === undefined) throw new ExportError(`${file}: metadata key "${key}" has unknown value type ${id}; the file is corrupt`);
  return name;
}

/** Every metadata key of a GGUF file with its stored type, in file order. */
export async function readTypedGgufMetadata(file: string): Promise<Map<string, GgufValue>> {
  const handle = await open(file, "r");
  try {
    const { size } = await handle.stat();
    const cursor = new HeaderCursor(handle, file, size);
    if ((await cursor.u32()) !== 0x46554747) throw new ExportError(`${file} is not a GGUF file (bad magic)`);
    const version = await cursor.u32();
    if (version < 2 || version > 3) throw new ExportError(`${file}: GGUF version ${version} is not supported (2 and 3 are)`);
    await cursor.u64(); // tensor count
    const keyCount = Number(await cursor.u64());
    const metadata = new Map<string, GgufValue>();
    for (let i = 0; i < keyCount; i++) {
      const key = await cursor.string("metadata key");
      const type = typeName(await cursor.u32(), file, key);
      if (type === "array") {
        const itemType = typeName(await cursor.u32(), file, key);
        if (itemType === "array") throw new ExportError(`${file}: metadata key "${key}" is a nested array, which thinktune does not copy`);
        const count = await cursor.length(`array "${key}"`);
        const items: (number | bigint | boolean | string)[] = new Array(count);
        for (let j = 0; j < count; j++) items[j] = await cursor.scalar(itemType, key);
        metadata.set(key, { type: "array", itemType, value: items } as GgufValue);
      } else {
        metadata.set(key, { type, value: await cursor.scalar(type, key) } as GgufValue);
      }
    }
    return metadata;
  } finally {
    await handle.close();
  }
}
