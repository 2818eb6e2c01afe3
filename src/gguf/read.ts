// Reads GGUF metadata and the tensor index with node-llama-cpp's own reader, after our bounded walk
// (header.ts) has checked that every length and count in the header fits the file.
import { stat } from "node:fs/promises";
import { readGgufFileInfo } from "node-llama-cpp";
import type { NativeTensorEntry } from "../native/addon.js";
import { corruptAdvice, GgufError, walkGgufHeader, type GgufHeaderLayout } from "./header.js";

export { GgufError } from "./header.js";

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

export async function readGgufModel(file: string): Promise<GgufModelFile> {
  let info: Awaited<ReturnType<typeof readGgufFileInfo>>;
  let fileSize: number;
  let layout: GgufHeaderLayout;
  try {
    const stats = await stat(file);
    if (stats.isDirectory()) throw new GgufError(`${file} is a directory, not a GGUF file`, file);
    if (!stats.isFile()) throw new GgufError(`${file} is not a regular file`, file);
    fileSize = stats.size;
    layout = await walkGgufHeader(file, fileSize);
  } catch (error) {
    if (error instanceof GgufError) throw error;
    const code = (error as NodeJS.ErrnoException).code;
    const reason = code === "ENOENT" ? "no such file" : code === "EACCES" ? "permission denied" : (error as Error).message;
    throw new GgufError(`cannot read ${file}: ${reason}`, file);
  }
  try {
    info = await readGgufFileInfo(file, { readTensorInfo: true, ignoreKeys: [], logWarnings: false, spliceSplitFiles: false });
  } catch (error) {
    throw new GgufError(`${file} is not a valid GGUF file: its header cannot be parsed (${(error as Error).message}); ${corruptAdvice}`, file);
  }
  const metadata: Record<string, unknown> = {};
  flattenMetadata(info.metadata, "", metadata);
  if (Number(metadata["split.count"] ?? 1) > 1) {
    throw new GgufError(`${file} is part ${Number(metadata["split.no"] ?? 0) + 1} of a ${metadata["split.count"]}-part split GGUF; merge the parts into one file first (llama-gguf-split --merge)`, file);
  }
  // the walk checked every dimension and offset to be below 2^53, so Number() is exact
  const tensors: GgufTensor[] = (info.fullTensorInfo ?? info.tensorInfo ?? []).map((tensor) => {
    return {
      name: tensor.name,
      type: tensor.ggmlType,
      dims: tensor.dimensions.map(Number),
      offset: layout.dataStart + Number(tensor.offset),
      relativeOffset: Number(tensor.offset),
    };
  });
  return { path: file, version: layout.version, fileSize, alignment: layout.alignment, metadata, tensors };
}
