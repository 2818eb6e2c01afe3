// A full GGUF with the LoRA folded in (W + alpha/rank · B·A), for tools that take no adapters.
// Every metadata key is copied with its stored type (tokenizer and chat template included); each
// adapted tensor is dequantized by its own type, merged in F32, and written as F16 or requantized to
// that tensor's own base type. Unadapted tensors are copied byte for byte (or converted to F16).
import { loadNativeAddon, GgmlType, type GgmlTypeName, type NamedTensor } from "../native/addon.js";
import { readGgufModel, type GgufTensor } from "../gguf/read.js";
import { ggmlTypeLayoutById } from "../gguf/ggml-types.js";
import { GgufWriter, gguf } from "../gguf/writer.js";
import { ExportError } from "./errors.js";
import { elementCount, readTensorBytes } from "./base-tensors.js";
import { checkLoraAgainstBase, type LoraPair } from "./gguf-adapter.js";
import { readTypedGgufMetadata } from "./gguf-metadata.js";

/** "F16": matrices in F16 (norms and other vectors stay F32); "base": each tensor keeps its base type. */
export type MergedTensorType = "F16" | "base";

export interface MergedExportOptions {
  baseModelPath: string;
  alpha: number;
  tensors: NamedTensor[];
  type?: MergedTensorType;
}

/** llama_ftype value of an all-F16 file (llama.h LLAMA_FTYPE_MOSTLY_F16). */
const FILE_TYPE_MOSTLY_F16 = 1;

/** W (row-major [out, in]) += scale · B [out, rank] · A [rank, in], in place. */
export function addLoraDelta(weight: Float32Array, pair: LoraPair, scale: number): void {
  const [rank, inFeatures] = pair.a.shape;
  const outFeatures = pair.b.shape[0];
  const a = pair.a.data;
  const b = pair.b.data;
  for (let o = 0; o < outFeatures; o++) {
    const row = weight.subarray(o * inFeatures, (o + 1) * inFeatures);
    for (let r = 0; r < rank; r++) {
      const coefficient = scale * b[o * rank + r];
      if (coefficient === 0) continue;
      const aRow = a.subarray(r * inFeatures, (r + 1) * inFeatures);
      for (let i = 0; i < inFeatures; i++) row[i] += coefficient * aRow[i];
    }
  }
}

function outputType(tensor: GgufTensor, mode: MergedTensorType, baseTypeName: GgmlTypeName): GgmlTypeName {
  if (mode === "base") return baseTypeName;
  // vectors (norms, biases, rope_freqs) stay F32 as in llama.cpp's own F16 files
  return tensor.dims.length === 1 ? "F32" : "F16";
}

/** Writes the merged model to `file` (temporary name, then renamed). */
export async function writeMergedModel(file: string, options: MergedExportOptions): Promise<void> {
  const mode = options.type ?? "F16";
  if (!Number.isFinite(options.alpha) || options.alpha <= 0) throw new ExportError(`LoRA alpha must be a positive number, got ${options.alpha}`);
  const base = await readGgufModel(options.baseModelPath);
  const { rank, pairs } = checkLoraAgainstBase(base, options.tensors, "merged export");
  const scale = options.alpha / rank;
  const pairByBase = new Map(pairs.map((pair) => [pair.base, pair]));
  const metadata = await readTypedGgufMetadata(base.path);
  const addon = loadNativeAddon();

  const writer = new GgufWriter({ alignment: base.alignment });
  for (const [key, value] of metadata) {
    if (key === "general.alignment") continue;
    writer.set(key, value);
  }
  if (mode === "F16") writer.set("general.file_type", gguf.u32(FILE_TYPE_MOSTLY_F16));

  for (const tensor of base.tensors) {
    const layout = ggmlTypeLayoutById(tensor.type);
    if (!layout) throw new ExportError(`${base.path}: tensor "${tensor.name}" has ggml type ${tensor.type}, which thinktune cannot merge or copy`);
    const target = outputType(tensor, mode, layout.name);
    const pair = pairByBase.get(tensor.name);
    writer.addTensor(tensor.name, target, tensor.dims, async () => {
      const bytes = await readTensorBytes(base, tensor);
      if (!pair && target === layout.name) return bytes;
      const values = await addon.dequantize(tensor.type, bytes, elementCount(tensor));
      if (pair) addLoraDelta(values, pair, scale);
      return target === "F32" ? new Uint8Array(values.buffer, values.byteOffset, values.byteLength) : addon.quantize(GgmlType[target], values);
    });
  }
  await writer.write(file);
}
