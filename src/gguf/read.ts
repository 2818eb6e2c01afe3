// Reads GGUF metadata and the tensor index with node-llama-cpp's own reader (no header parser of ours).
import { open, stat } from "node:fs/promises";
import { readGgufFileInfo } from "node-llama-cpp";
import type { NativeTensorEntry } from "../native/addon.js";

export class GgufError extends Error {
  constructor(
    message: string,
    readonly file: string,
  ) {
    super(message);
    this.name = "GgufError";
  }
}

export interface GgufTensor extends NativeTensorEntry {
  /** offset relative to the start of the tensor data section */
  relativeOffset: number;
}

export interface GgufModelFile {
  path: string;
  version: number;
  fileSize: number;
  alignment: number;
  /** flat metadata as stored: "general.architecture" → value */
  metadata: Record<string, unknown>;
  tensors: GgufTensor[];
}

/** Flattens node-llama-cpp's nested metadata object back into dotted GGUF keys. */
function flattenMetadata(value: unknown, prefix: string, out: Record<string, unknown>): void {
  if (value !== null && typeof value === "object" && !Array.isArray(value) && !ArrayBuffer.isView(value)) {
    for (const [key, child] of Object.entries(value as Record<string, unknown>)) {
      flattenMetadata(child, prefix === "" ? key : `${prefix}.${key}`, out);
    }
  } else {
    out[prefix] = value;
  }
}

const corruptAdvice = "the file is truncated or corrupt; re-download or re-export it";

// Smallest encodings of one metadata entry (empty key, type, one byte of value) and one tensor info
// (empty name, one dimension, type, offset): counts beyond what the file could hold are corrupt.
const minMetadataEntryBytes = 8 + 4 + 1;
const minTensorInfoBytes = 8 + 4 + 8 + 4 + 8;
const preambleBytes = 24; // magic, version, tensor count, metadata entry count

/**
 * Checks the fixed 24-byte preamble before node-llama-cpp parses the rest: its reader returns zeros past
 * the end of the file, so a truncated or corrupt count would otherwise have it read zeros for a very long time.
 */
async function checkPreamble(file: string, fileSize: number): Promise<void> {
  if (fileSize < preambleBytes) throw new GgufError(`${file} is not a GGUF file: it has only ${fileSize} bytes, less than a GGUF header; ${corruptAdvice}`, file);
  const handle = await open(file, "r");
  const preamble = Buffer.alloc(preambleBytes);
  try {
    await handle.read(preamble, 0, preambleBytes, 0);
  } finally {
    await handle.close();
  }
  const magic = preamble.subarray(0, 4);
  if (magic.toString("latin1") !== "GGUF") {
    throw new GgufError(`${file} is not a GGUF file: it starts with bytes ${magic.toString("hex")} instead of "GGUF"`, file);
  }
  const version = preamble.readUInt32LE(4);
  if (version !== 2 && version !== 3) {
    throw new GgufError(`${file} is GGUF version ${version}, which thinktune cannot read (it reads versions 2 and 3); re-convert it with a current llama.cpp`, file);
  }
  const tensorCount = preamble.readBigUInt64LE(8);
  const metadataCount = preamble.readBigUInt64LE(16);
  const needed = tensorCount * BigInt(minTensorInfoBytes) + metadataCount * BigInt(minMetadataEntryBytes) + BigInt(preambleBytes);
  if (needed > BigInt(fileSize)) {
    throw new GgufError(`${file} declares ${tensorCount} tensors and ${metadataCount} metadata entries, more than its ${fileSize} bytes can hold; ${corruptAdvice}`, file);
  }
}

export interface ReadGgufOptions {
  /** give up parsing the header after this long (a corrupt array length makes node-llama-cpp read zeros) */
  headerTimeoutMs?: number;
}

export async function readGgufModel(file: string, options: ReadGgufOptions = {}): Promise<GgufModelFile> {
  let info: Awaited<ReturnType<typeof readGgufFileInfo>>;
  let fileSize: number;
  try {
    const stats = await stat(file);
    if (stats.isDirectory()) throw new GgufError(`${file} is a directory, not a GGUF file`, file);
    if (!stats.isFile()) throw new GgufError(`${file} is not a regular file`, file);
    fileSize = stats.size;
    await checkPreamble(file, fileSize);
  } catch (error) {
    if (error instanceof GgufError) throw error;
    const code = (error as NodeJS.ErrnoException).code;
    const reason = code === "ENOENT" ? "no such file" : code === "EACCES" ? "permission denied" : (error as Error).message;
    throw new GgufError(`cannot read ${file}: ${reason}`, file);
  }
  const timeoutMs = options.headerTimeoutMs ?? 30_000;
  const watchdog = new AbortController();
  const timer = setTimeout(() => watchdog.abort(new Error("timeout")), timeoutMs);
  try {
    info = await readGgufFileInfo(file, { readTensorInfo: true, ignoreKeys: [], logWarnings: false, signal: watchdog.signal, spliceSplitFiles: false });
  } catch (error) {
    const reason = watchdog.signal.aborted
      ? `reading its header took over ${timeoutMs / 1000} s, so a length in it is wrong`
      : `its header cannot be parsed (${(error as Error).message})`;
    throw new GgufError(`${file} is not a valid GGUF file: ${reason}; ${corruptAdvice}`, file);
  } finally {
    clearTimeout(timer);
  }
  const headerEnd = (info.metadataSize ?? 0) + (info.tensorInfoSize ?? 0);
  if (headerEnd > fileSize) {
    throw new GgufError(`${file} is truncated: its header needs ${headerEnd} bytes but the file has ${fileSize}; ${corruptAdvice}`, file);
  }
  const metadata: Record<string, unknown> = {};
  flattenMetadata(info.metadata, "", metadata);
  if (Number(metadata["split.count"] ?? 1) > 1) {
    throw new GgufError(`${file} is part ${Number(metadata["split.no"] ?? 0) + 1} of a ${metadata["split.count"]}-part split GGUF; merge the parts into one file first (llama-gguf-split --merge)`, file);
  }
  const alignment = Number(metadata["general.alignment"] ?? 32);
  const tensors: GgufTensor[] = (info.fullTensorInfo ?? info.tensorInfo ?? []).map((tensor) => {
    const unsafe = [...tensor.dimensions, tensor.offset].find((value) => typeof value === "bigint");
    if (unsafe !== undefined) {
      throw new GgufError(
        `${file}: tensor ${tensor.name} has dimensions [${tensor.dimensions.join(", ")}] at offset ${tensor.offset}, ${unsafe} is beyond 2^53; ${corruptAdvice}`,
        file,
      );
    }
    return {
      name: tensor.name,
      type: tensor.ggmlType,
      dims: tensor.dimensions.map(Number),
      offset: Number(tensor.fileOffset),
      relativeOffset: Number(tensor.offset),
    };
  });
  return { path: file, version: info.version, fileSize, alignment, metadata, tensors };
}
