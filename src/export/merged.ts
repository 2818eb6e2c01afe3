// A full GGUF with the LoRA folded in (W + alpha/rank · B·A), for tools that take no adapters.
// Every metadata key is copied with its stored type (tokenizer and chat template included); each
// adapted tensor is dequantized by its own type and merged in F32. Matrices are then written in the
// type asked for (F16 by default; Q4_K_M and Q5_K_M mix types per tensor as llama-quantize does), or
// each in its own base type ("base"). Tensors whose type does not change are copied byte for byte.
import { loadNativeAddon, GgmlType, type GgmlTypeName, type NamedTensor } from "../native/addon.js";
import { readGgufModel, type GgufTensor } from "../gguf/read.js";
import { ggmlTypeLayoutById, ggmlTypeLayouts } from "../gguf/ggml-types.js";
import { fileTypeIds, matrixTypeIn, type SynthTypeName } from "../gguf/synth.js";
import { GgufWriter, gguf } from "../gguf/writer.js";
import { ExportError } from "./errors.js";
import { elementCount, readTensorBytes } from "./base-tensors.js";
import { checkLoraAgainstBase, type LoraPair } from "./gguf-adapter.js";
import { readTypedGgufMetadata } from "./gguf-metadata.js";

/** A type (or Q4_K_M / Q5_K_M mix) for the matrices, vectors staying F32; "base": each tensor keeps its base type. */
export type MergedTensorType = SynthTypeName | "base";

export interface MergedExportOptions {
  baseModelPath: string;
  alpha: number;
  tensors: NamedTensor[];
  type?: MergedTensorType;
}


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

function outputType(tensor: GgufTensor, mode: MergedTensorType, baseTypeName: GgmlTypeName, nLayer: number, tiedOutput: boolean): GgmlTypeName {
  if (mode === "base") return baseTypeName;
  // vectors (norms, biases, rope_freqs) stay F32 as in llama.cpp's own files
  if (tensor.dims.length === 1) return "F32";
  const type = matrixTypeIn(mode, tensor.name, nLayer, tiedOutput);
  // rows that are not whole blocks of the type: Q8_0 (32 per block) as llama-quantize's fallback, else F16
  if (tensor.dims[0] % ggmlTypeLayouts[type].blockSize === 0) return type;
  return tensor.dims[0] % ggmlTypeLayouts.Q8_0.blockSize === 0 ? "Q8_0" : "F16";
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
  // llama_ftype of the whole file, as llama-quantize records it
  if (mode !== "base") writer.set("general.file_type", gguf.u32(fileTypeIds[mode]));
  const nLayer = Number(base.metadata[`${String(base.metadata["general.architecture"])}.block_count`]);
  const tiedOutput = !base.tensors.some((tensor) => tensor.name === "output.weight");

  for (const tensor of base.tensors) {
    const layout = ggmlTypeLayoutById(tensor.type);
    if (!layout) throw new ExportError(`${base.path}: tensor "${tensor.name}" has ggml type ${tensor.type}, which thinktune cannot merge or copy`);
    const target = outputType(tensor, mode, layout.name, nLayer, tiedOutput);
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
