// Reads GGUF metadata and the tensor index with node-llama-cpp's own reader (no header parser of ours).
import { stat } from "node:fs/promises";
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

export async function readGgufModel(file: string): Promise<GgufModelFile> {
  let info: Awaited<ReturnType<typeof readGgufFileInfo>>;
  let fileSize: number;
  try {
    const stats = await stat(file);
    if (stats.isDirectory()) throw new GgufError(`${file} is a directory, not a GGUF file`, file);
    fileSize = stats.size;
  } catch (error) {
    if (error instanceof GgufError) throw error;
    throw new GgufError(`cannot read ${file}: ${(error as Error).message}`, file);
  }
  try {
    info = await readGgufFileInfo(file, { readTensorInfo: true, ignoreKeys: [] });
  } catch (error) {
    throw new GgufError(`${file} is not a valid GGUF file: ${(error as Error).message}`, file);
  }
  const metadata: Record<string, unknown> = {};
  flattenMetadata(info.metadata, "", metadata);
  const alignment = Number(metadata["general.alignment"] ?? 32);
  const tensors: GgufTensor[] = (info.fullTensorInfo ?? info.tensorInfo ?? []).map((tensor) => ({
    name: tensor.name,
    type: tensor.ggmlType,
    dims: tensor.dimensions.map(Number),
    offset: Number(tensor.fileOffset),
    relativeOffset: Number(tensor.offset),
  }));
  return { path: file, version: info.version, fileSize, alignment, metadata, tensors };
}
