// Reading one tensor of a base GGUF: its raw bytes (bounds-checked), or its values dequantized by its own type.
import { open } from "node:fs/promises";
import { loadNativeAddon } from "../native/addon.js";
import type { GgufModelFile, GgufTensor } from "../gguf/read.js";
import { ggmlTensorBytes, ggmlTypeLayoutById } from "../gguf/ggml-types.js";
import { ExportError } from "./errors.js";

export function findTensor(file: GgufModelFile, name: string): GgufTensor {
  const tensor = file.tensors.find((entry) => entry.name === name);
  if (!tensor) throw new ExportError(`${file.path}: tensor "${name}" is missing`);
  return tensor;
}

export function tensorByteSize(file: GgufModelFile, tensor: GgufTensor): number {
  const layout = ggmlTypeLayoutById(tensor.type);
  if (!layout) throw new ExportError(`${file.path}: tensor "${tensor.name}" has ggml type ${tensor.type}, which thinktune does not read`);
  return ggmlTensorBytes(layout.name, tensor.dims, `${file.path}: tensor "${tensor.name}"`);
}

export function elementCount(tensor: GgufTensor): number {
  return tensor.dims.reduce((product, dim) => product * dim, 1);
}

export async function readTensorBytes(file: GgufModelFile, tensor: GgufTensor): Promise<Uint8Array> {
  const size = tensorByteSize(file, tensor);
  if (tensor.offset + size > file.fileSize) {
    throw new ExportError(`${file.path} is truncated: tensor "${tensor.name}" ends at byte ${tensor.offset + size} but the file has ${file.fileSize}`);
  }
  const bytes = new Uint8Array(size);
  const handle = await open(file.path, "r");
  try {
    await handle.read(bytes, 0, size, tensor.offset);
  } finally {
    await handle.close();
  }
  return bytes;
}

/** The tensor's values as F32 (row-major, rows of dims[0]), dequantized by the native addon. */
export async function readTensorF32(file: GgufModelFile, tensor: GgufTensor): Promise<Float32Array> {
  const bytes = await readTensorBytes(file, tensor);
  return loadNativeAddon().dequantize(tensor.type, bytes, elementCount(tensor));
}
