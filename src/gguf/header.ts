// A bounded walk over a GGUF header: every count, length, type and offset is checked against the file's
// size (and against limits no real model comes near) before anything is allocated or read for it. It runs
// before node-llama-cpp's reader sees the file: that reader trusts the header, so one flipped byte could
// abort the process (a string length of 2^31 or more reaches fs.read) or have it read zeros for minutes.
import { open, type FileHandle } from "node:fs/promises";

/** A model file that cannot be used, with a message naming the file and what is wrong where. */
export class GgufError extends Error {
  constructor(
    message: string,
    readonly file: string,
  ) {
    super(message);
    this.name = "GgufError";
  }
}

export const corruptAdvice = "the file is truncated or corrupt; re-download or re-export it";

/** GGUF metadata value types (gguf.h) and the bytes one value takes; strings and arrays have no fixed size. */
const valueTypeNames = ["u8", "i8", "u16", "i16", "u32", "i32", "f32", "bool", "string", "array", "u64", "i64", "f64"] as const;
const valueTypeBytes = [1, 1, 2, 2, 4, 4, 4, 1, 0, 0, 8, 8, 8];
const stringType = 8;
const arrayType = 9;
const u32Type = 4;

/** GGML_MAX_DIMS and GGML_MAX_NAME (the name buffer holds 63 bytes and a NUL), as llama.cpp reads tensors. */
export const maxTensorDims = 4;
export const maxTensorNameBytes = 63;
/** GGUF keys are at most 65535 bytes (the GGUF spec). */
const maxKeyBytes = 65535;
/**
 * Longer than any real metadata string (chat templates and embedded tokenizer.json files are a few MB) and
 * well below 2^31, which node-llama-cpp's reader cannot pass to fs.read.
 */
const maxStringBytes = 64 << 20;
/** More elements than any vocabulary or merge list holds (the largest are a few hundred thousand). */
const maxArrayElements = 1 << 24;
const preambleBytes = 24; // magic, version, tensor count, metadata entry count
// smallest encodings of one metadata entry (empty key, type, one byte of value) and one tensor info
// (empty name, one dimension, type, offset): counts beyond what the file could hold are corrupt
const minMetadataEntryBytes = 8 + 4 + 1;
const minTensorInfoBytes = 8 + 4 + 8 + 4 + 8;

/** One field of the header as stored, for tools that look at the layout (the fuzz test mutates these). */
export interface GgufHeaderField {
  offset: number;
  bytes: number;
  /** "count", "length", "type", "value", "dim", "n_dims", "offset" */
  kind: "count" | "length" | "type" | "value" | "dim" | "n_dims" | "offset";
  /** what it belongs to: `metadata "general.alignment"`, `tensor "blk.0.attn_q.weight"` */
  owner: string;
  /** for a metadata value: its GGUF type ("u32", "f32", ...) */
  valueType?: string;
}

export interface GgufHeaderLayout {
  version: number;
  tensorCount: number;
  metadataCount: number;
  alignment: number;
  /** byte just past the last tensor info */
  headerBytes: number;
  /** where tensor data starts: headerBytes rounded up to the alignment */
  dataStart: number;
}

export interface WalkGgufHeaderOptions {
  /** called with each field's position, in file order */
  onField?: (field: GgufHeaderField) => void;
}

const readChunkBytes = 1 << 20;

/** Sequential reads through a window of the file; never reads past fileSize. */
class HeaderCursor {
  position = 0;
  #window = Buffer.alloc(0);
  #windowStart = 0;

  constructor(
    private readonly handle: FileHandle,
    readonly file: string,
    readonly fileSize: number,
  ) {}

  /** Makes `bytes` bytes from the position readable, or throws naming what needed them. */
  async need(bytes: number, what: string): Promise<void> {
    const end = this.position + bytes;
    if (end > this.fileSize) this.truncated(end, what, this.position);
    if (this.position >= this.#windowStart && end <= this.#windowStart + this.#window.length) return;
    const length = Math.min(Math.max(bytes, readChunkBytes), this.fileSize - this.position);
    const window = Buffer.alloc(length);
    const { bytesRead } = await this.handle.read(window, 0, length, this.position);
    if (bytesRead < bytes) throw new GgufError(`${this.file} changed while it was read (${what} at byte ${this.position})`, this.file);
    this.#window = window.subarray(0, bytesRead);
    this.#windowStart = this.position;
  }

  #at(bytes: number): number {
    const at = this.position - this.#windowStart;
    this.position += bytes;
    return at;
  }

  async u32(what: string): Promise<number> {
    await this.need(4, what);
    return this.#window.readUInt32LE(this.#at(4));
  }

  async u64(what: string): Promise<bigint> {
    await this.need(8, what);
    return this.#window.readBigUInt64LE(this.#at(8));
  }

  async bytes(length: number, what: string): Promise<Buffer> {
    await this.need(length, what);
    const at = this.#at(length);
    return this.#window.subarray(at, at + length);
  }

  async skip(length: number, what: string): Promise<void> {
    if (this.position + length > this.fileSize) await this.need(length, what);
    this.position += length;
  }

  /** Throws: the header needs `end` bytes for `what`, which starts at byte `at`. */
  truncated(end: number | bigint, what: string, at: number): never {
    throw new GgufError(`${this.file} is truncated: its header needs ${end} bytes but the file has ${this.fileSize} (${what} at byte ${at}); ${corruptAdvice}`, this.file);
  }

  get remaining(): number {
    return this.fileSize - this.position;
  }
}

/** A key or tensor name as it appears in messages: quoted, and cut when very long. */
function quoted(text: string): string {
  return JSON.stringify(text.length > 80 ? `${text.slice(0, 80)}…` : text);
}

/**
 * Checks the header of the GGUF `file` (of `fileSize` bytes) field by field and returns its layout; throws
 * GgufError naming the field and its byte offset at the first one that is impossible.
 */
export async function walkGgufHeader(file: string, fileSize: number, options: WalkGgufHeaderOptions = {}): Promise<GgufHeaderLayout> {
  const onField = options.onField ?? (() => {});
  const fail = (message: string): never => {
    throw new GgufError(`${file}: ${message}; ${corruptAdvice}`, file);
  };
  if (fileSize < preambleBytes) throw new GgufError(`${file} is not a GGUF file: it has only ${fileSize} bytes, less than a GGUF header; ${corruptAdvice}`, file);
  const handle = await open(file, "r");
  try {
    const cursor = new HeaderCursor(handle, file, fileSize);
    const magic = await cursor.bytes(4, "the magic");
    if (magic.toString("latin1") !== "GGUF") {
      throw new GgufError(`${file} is not a GGUF file: it starts with bytes ${magic.toString("hex")} instead of "GGUF"`, file);
    }
    const version = await cursor.u32("the version");
    if (version !== 2 && version !== 3) {
      throw new GgufError(`${file} is GGUF version ${version}, which thinktune cannot read (it reads versions 2 and 3); re-convert it with a current llama.cpp`, file);
    }
    onField({ offset: cursor.position, bytes: 8, kind: "count", owner: "tensor count" });
    const tensorCount = await cursor.u64("the tensor count");
    onField({ offset: cursor.position, bytes: 8, kind: "count", owner: "metadata entry count" });
    const metadataCount = await cursor.u64("the metadata entry count");
    const needed = tensorCount * BigInt(minTensorInfoBytes) + metadataCount * BigInt(minMetadataEntryBytes) + BigInt(preambleBytes);
    if (needed > BigInt(fileSize)) {
      throw new GgufError(`${file} declares ${tensorCount} tensors and ${metadataCount} metadata entries, more than its ${fileSize} bytes can hold; ${corruptAdvice}`, file);
    }

    /** A length-prefixed string's length, checked against `limit` and the bytes left in the file. */
    const stringLength = async (what: string, limit: number, limitWhy: string): Promise<number> => {
      const at = cursor.position;
      onField({ offset: at, bytes: 8, kind: "length", owner: what });
      const length = await cursor.u64(`the length of ${what}`);
      if (length > BigInt(limit)) fail(`${what} at byte ${at} declares a length of ${length} bytes, more than ${limitWhy} (${limit})`);
      if (length > BigInt(cursor.remaining)) cursor.truncated(BigInt(cursor.position) + length, `${what}, ${length} bytes long,`, at);
      return Number(length);
    };

    let alignment = 32;
    const keysSeen = new Map<string, number>();
    for (let entry = 0; entry < Number(metadataCount); entry++) {
      const entryAt = cursor.position;
      const keyLength = await stringLength(`the key of metadata entry ${entry}`, maxKeyBytes, "a GGUF key may have");
      const keyBytes = await cursor.bytes(keyLength, `the key of metadata entry ${entry}`);
      // llama.cpp aborts on an empty key, and reads a key as a C string (GGML_ASSERT in gguf.cpp)
      if (keyLength === 0 || keyBytes.includes(0)) fail(`metadata entry ${entry} at byte ${entryAt} has ${keyLength === 0 ? "an empty key" : "a key with a NUL byte"}`);
      const key = keyBytes.toString("utf8");
      const owner = `metadata ${quoted(key)}`;
      const earlier = keysSeen.get(key);
      if (earlier !== undefined) fail(`metadata key ${quoted(key)} appears twice (entries at bytes ${earlier} and ${entryAt})`);
      keysSeen.set(key, entryAt);
      const typeAt = cursor.position;
      onField({ offset: typeAt, bytes: 4, kind: "type", owner });
      const type = await cursor.u32(`the value type of ${owner}`);
      if (type >= valueTypeNames.length) fail(`${owner} at byte ${typeAt} has value type ${type}, which is not a GGUF type (0 to ${valueTypeNames.length - 1})`);
      if (type === arrayType) {
        const elementTypeAt = cursor.position;
        onField({ offset: elementTypeAt, bytes: 4, kind: "type", owner: `${owner} elements` });
        const elementType = await cursor.u32(`the element type of ${owner}`);
        if (elementType >= valueTypeNames.length) fail(`${owner} at byte ${elementTypeAt} is an array of type ${elementType}, which is not a GGUF type (0 to ${valueTypeNames.length - 1})`);
        if (elementType === arrayType) fail(`${owner} at byte ${elementTypeAt} is an array of arrays, which GGUF readers (llama.cpp's too) do not read`);
        const countAt = cursor.position;
        onField({ offset: countAt, bytes: 8, kind: "count", owner });
        const count = await cursor.u64(`the element count of ${owner}`);
        const elementName = valueTypeNames[elementType];
        if (count > BigInt(maxArrayElements)) fail(`${owner} at byte ${countAt} declares ${count} ${elementName} elements, more than any model metadata holds (${maxArrayElements})`);
        const minElementBytes = elementType === stringType ? 8 : valueTypeBytes[elementType];
        if (count * BigInt(minElementBytes) > BigInt(cursor.remaining)) {
          cursor.truncated(BigInt(cursor.position) + count * BigInt(minElementBytes), `${owner}, ${count} ${elementName} elements,`, countAt);
        }
        if (elementType === stringType) {
          for (let index = 0; index < Number(count); index++) {
            const length = await stringLength(`${owner}[${index}]`, maxStringBytes, "thinktune reads in one metadata string");
            await cursor.skip(length, `${owner}[${index}]`);
          }
        } else {
          await cursor.skip(Number(count) * valueTypeBytes[elementType], `the elements of ${owner}`);
        }
      } else if (type === stringType) {
        const length = await stringLength(`the value of ${owner}`, maxStringBytes, "thinktune reads in one metadata string");
        await cursor.skip(length, `the value of ${owner}`);
      } else {
        const valueAt = cursor.position;
        onField({ offset: valueAt, bytes: valueTypeBytes[type], kind: "value", owner, valueType: valueTypeNames[type] });
        if (key === "general.alignment") {
          if (type !== u32Type) fail(`${owner} at byte ${typeAt} has type ${valueTypeNames[type]}; GGUF stores it as u32`);
          alignment = await cursor.u32(`the value of ${owner}`);
          if (alignment === 0 || (alignment & (alignment - 1)) !== 0) fail(`${owner} at byte ${valueAt} is ${alignment}, not a power of two`);
        } else {
          await cursor.skip(valueTypeBytes[type], `the value of ${owner}`);
        }
      }
    }

    for (let index = 0; index < Number(tensorCount); index++) {
      const nameLength = await stringLength(`the name of tensor info ${index}`, maxTensorNameBytes, "a ggml tensor name may have");
      const nameAt = cursor.position;
      const nameBytes = await cursor.bytes(nameLength, `the name of tensor info ${index}`);
      // ggml keeps names as C strings: an empty one, or one with a NUL byte, is not the name the file says
      if (nameLength === 0 || nameBytes.includes(0)) fail(`tensor info ${index} at byte ${nameAt - 8} has ${nameLength === 0 ? "an empty name" : "a name with a NUL byte"}`);
      const name = nameBytes.toString("utf8");
      const owner = `tensor ${quoted(name)}`;
      const nDimsAt = cursor.position;
      onField({ offset: nDimsAt, bytes: 4, kind: "n_dims", owner });
      const nDims = await cursor.u32(`n_dims of ${owner}`);
      if (nDims < 1 || nDims > maxTensorDims) fail(`${owner} at byte ${nDimsAt} has n_dims ${nDims}; a ggml tensor has 1 to ${maxTensorDims} dimensions`);
      const dimsAt = cursor.position;
      const dims: bigint[] = [];
      for (let d = 0; d < nDims; d++) {
        onField({ offset: cursor.position, bytes: 8, kind: "dim", owner });
        dims.push(await cursor.u64(`dimension ${d} of ${owner}`));
      }
      onField({ offset: cursor.position, bytes: 4, kind: "type", owner });
      await cursor.u32(`the type of ${owner}`);
      const offsetAt = cursor.position;
      onField({ offset: offsetAt, bytes: 8, kind: "offset", owner });
      const offset = await cursor.u64(`the data offset of ${owner}`);
      const unsafe = [...dims, offset].find((value) => value > BigInt(Number.MAX_SAFE_INTEGER));
      if (unsafe !== undefined) {
        fail(`tensor ${name} has dimensions [${dims.join(", ")}] at offset ${offset} (tensor info at byte ${dimsAt}): ${unsafe} is beyond 2^53`);
      }
    }
    const headerBytes = cursor.position;
    const dataStart = Math.ceil(headerBytes / alignment) * alignment;
    return { version, tensorCount: Number(tensorCount), metadataCount: Number(metadataCount), alignment, headerBytes, dataStart };
  } finally {
    await handle.close();
  }
}
