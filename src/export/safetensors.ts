// safetensors files (https://huggingface.co/docs/safetensors): an 8-byte little-endian header length,
// a JSON header {name: {dtype, shape, data_offsets}, "__metadata__": {string: string}}, then the raw data.
// Used for checkpoints and PEFT adapters. Typed arrays are read and written in the platform's byte
// order, which is little-endian on every platform Node ships for.
import { readFile } from "node:fs/promises";
import type { NamedTensor } from "../native/addon.js";
import { writeFileAtomic } from "../util/atomic-file.js";
import { bfloat16ToFloat32Array, float16ToFloat32Array, float32ArrayToFloat16 } from "./float16.js";

export class SafetensorsError extends Error {
  constructor(
    message: string,
    readonly file: string,
  ) {
    super(message);
    this.name = "SafetensorsError";
  }
}

export type SafetensorsDtype = "F32" | "F16";

const readableDtypes = { F32: 4, F16: 2, BF16: 2 } as const;

export interface SafetensorsFile {
  tensors: NamedTensor[];
  metadata: Record<string, string>;
}

function elementCount(shape: readonly number[]): number {
  return shape.reduce((product, dim) => product * dim, 1);
}

/** Writes `tensors` (F32, or F16 when `dtype` says so) to `file` under a temporary name, then renames it. */
export async function writeSafetensors(
  file: string,
  tensors: NamedTensor[],
  metadata?: Record<string, string>,
  dtype: SafetensorsDtype = "F32",
): Promise<void> {
  const elementBytes = dtype === "F32" ? 4 : 2;
  const header: Record<string, unknown> = {};
  if (metadata && Object.keys(metadata).length > 0) header.__metadata__ = metadata;
  const seen = new Set<string>();
  let offset = 0;
  for (const tensor of tensors) {
    if (tensor.name === "__metadata__" || seen.has(tensor.name)) {
      throw new SafetensorsError(`cannot write ${file}: tensor name "${tensor.name}" is ${seen.has(tensor.name) ? "used twice" : "reserved"}`, file);
    }
    seen.add(tensor.name);
    if (tensor.shape.some((dim) => !Number.isInteger(dim) || dim < 0) || elementCount(tensor.shape) !== tensor.data.length) {
      throw new SafetensorsError(
        `cannot write ${file}: tensor "${tensor.name}" has shape [${tensor.shape.join(", ")}] but ${tensor.data.length} values`,
        file,
      );
    }
    const bytes = tensor.data.length * elementBytes;
    header[tensor.name] = { dtype, shape: tensor.shape, data_offsets: [offset, offset + bytes] };
    offset += bytes;
  }
  // pad the header with spaces so the data starts 8-byte aligned, as the reference implementation does
  let headerText = JSON.stringify(header);
  headerText += " ".repeat((8 - ((8 + Buffer.byteLength(headerText)) % 8)) % 8);
  const headerBytes = Buffer.from(headerText, "utf8");
  const prefix = Buffer.alloc(8);
  prefix.writeBigUInt64LE(BigInt(headerBytes.length));

  function* chunks(): Generator<Uint8Array> {
    yield prefix;
    yield headerBytes;
    for (const tensor of tensors) {
      const values = dtype === "F32" ? tensor.data : float32ArrayToFloat16(tensor.data);
      yield new Uint8Array(values.buffer, values.byteOffset, values.byteLength);
    }
  }
  await writeFileAtomic(file, chunks());
}

interface HeaderEntry {
  dtype: string;
  shape: number[];
  data_offsets: [number, number];
}

function parseEntry(file: string, name: string, value: unknown): HeaderEntry {
  const entry = value as Partial<HeaderEntry> | null;
  const valid =
    entry !== null &&
    typeof entry === "object" &&
    typeof entry.dtype === "string" &&
    Array.isArray(entry.shape) &&
    entry.shape.every((dim) => Number.isInteger(dim) && dim >= 0) &&
    Array.isArray(entry.data_offsets) &&
    entry.data_offsets.length === 2 &&
    entry.data_offsets.every((o) => Number.isInteger(o) && o >= 0);
  if (!valid) {
    throw new SafetensorsError(`${file}: header entry for tensor "${name}" is malformed (expected {dtype, shape, data_offsets}); the file is corrupt`, file);
  }
  return entry as HeaderEntry;
}

/** Reads a safetensors file; F16 and BF16 tensors are widened to F32. */
export async function readSafetensors(file: string): Promise<SafetensorsFile> {
  let bytes: Buffer;
  try {
    bytes = await readFile(file);
  } catch (error) {
    throw new SafetensorsError(`cannot read ${file}: ${(error as Error).message}`, file);
  }
  if (bytes.length < 8) {
    throw new SafetensorsError(`${file} is truncated: ${bytes.length} bytes, shorter than the 8-byte safetensors header length`, file);
  }
  const headerLength = bytes.readBigUInt64LE(0);
  if (headerLength > BigInt(bytes.length - 8)) {
    throw new SafetensorsError(
      `${file} is truncated or not a safetensors file: its header claims ${headerLength} bytes but only ${bytes.length - 8} follow`,
      file,
    );
  }
  const dataStart = 8 + Number(headerLength);
  let header: Record<string, unknown>;
  try {
    header = JSON.parse(bytes.subarray(8, dataStart).toString("utf8")) as Record<string, unknown>;
    if (header === null || typeof header !== "object" || Array.isArray(header)) throw new Error("the header is not a JSON object");
  } catch (error) {
    throw new SafetensorsError(`${file} is corrupt or not a safetensors file: its header is not valid JSON (${(error as Error).message})`, file);
  }
  const dataLength = bytes.length - dataStart;
  const metadata: Record<string, string> = {};
  const tensors: NamedTensor[] = [];
  let dataEnd = 0;
  for (const [name, value] of Object.entries(header)) {
    if (name === "__metadata__") {
      for (const [key, metaValue] of Object.entries((value ?? {}) as Record<string, unknown>)) {
        if (typeof metaValue !== "string") {
          throw new SafetensorsError(`${file}: __metadata__ value for "${key}" is not a string; the file is corrupt`, file);
        }
        metadata[key] = metaValue;
      }
      continue;
    }
    const entry = parseEntry(file, name, value);
    const elementBytes = readableDtypes[entry.dtype as keyof typeof readableDtypes];
    if (elementBytes === undefined) {
      throw new SafetensorsError(`${file}: tensor "${name}" has dtype ${entry.dtype}; thinktune reads ${Object.keys(readableDtypes).join(", ")}`, file);
    }
    const [begin, end] = entry.data_offsets;
    const count = elementCount(entry.shape);
    if (end - begin !== count * elementBytes) {
      throw new SafetensorsError(
        `${file}: tensor "${name}" of shape [${entry.shape.join(", ")}] ${entry.dtype} needs ${count * elementBytes} bytes but its offsets span ${end - begin}; the file is corrupt`,
        file,
      );
    }
    if (end > dataLength) {
      throw new SafetensorsError(
        `${file} is truncated: tensor "${name}" ends at data byte ${end} but the file holds only ${dataLength} bytes of data`,
        file,
      );
    }
    dataEnd = Math.max(dataEnd, end);
    // copy into an aligned buffer: the data section is not guaranteed 4-byte aligned within the file buffer
    const raw = new Uint8Array(count * elementBytes);
    raw.set(bytes.subarray(dataStart + begin, dataStart + end));
    const data =
      entry.dtype === "F32"
        ? new Float32Array(raw.buffer)
        : entry.dtype === "F16"
          ? float16ToFloat32Array(new Uint16Array(raw.buffer))
          : bfloat16ToFloat32Array(new Uint16Array(raw.buffer));
    tensors.push({ name, shape: entry.shape, data });
  }
  if (dataEnd !== dataLength) {
    throw new SafetensorsError(`${file} has ${dataLength - dataEnd} bytes after the last tensor; the file is corrupt`, file);
  }
  return { tensors, metadata };
}
