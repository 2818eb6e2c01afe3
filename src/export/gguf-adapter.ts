// llama.cpp LoRA adapters as GGUF (the format llama_adapter_lora_init reads, src/llama-adapter.cpp):
// general.type = "adapter", general.architecture = the base's, adapter.type = "lora", adapter.lora.alpha
// (float32), and for each adapted base tensor W a pair `<W>.lora_a` / `<W>.lora_b`.
// Shapes: lora_a is row-major [rank, in] = ggml dims [in, rank]; lora_b is row-major [out, rank] = ggml
// dims [rank, out]; llama.cpp checks W.ne[0] == a.ne[0] (in), W.ne[1] == b.ne[1] (out), a.ne[1] == b.ne[0].
import { open } from "node:fs/promises";
import path from "node:path";
import type { NamedTensor } from "../native/addon.js";
import { GgmlType } from "../native/addon.js";
import { readGgufModel, type GgufModelFile } from "../gguf/read.js";
import { ggmlTensorBytes, ggmlTypeLabel } from "../gguf/ggml-types.js";
import { GgufWriter, gguf } from "../gguf/writer.js";
import { ExportError } from "./errors.js";
import { float16ToFloat32Array, float32ArrayToFloat16 } from "./float16.js";

export type AdapterTensorType = "F32" | "F16";

export interface GgufAdapterOptions {
  /** the base model GGUF the adapter was trained on; its architecture and shapes are checked */
  baseModelPath: string;
  /** that model's header when the caller has read it already (a training run reads it once) */
  baseModel?: GgufModelFile;
  alpha: number;
  /** `<base tensor>.lora_a` [rank, in] and `<base tensor>.lora_b` [out, rank], row-major */
  tensors: NamedTensor[];
  type?: AdapterTensorType;
}

export interface LoraPair {
  /** the base tensor name, e.g. blk.0.attn_q.weight */
  base: string;
  a: NamedTensor;
  b: NamedTensor;
}

export interface AdapterShapeSummary {
  arch: string;
  rank: number;
  pairs: LoraPair[];
}

function shapeText(shape: readonly number[]): string {
  return `[${shape.join(", ")}]`;
}

/**
 * Pairs lora_a/lora_b tensors and checks them against the base model's tensor index (no weights are read):
 * every pair complete, its base tensor present and a matrix, A [rank, in] and B [out, rank] fitting it,
 * one rank throughout. Errors name the tensor and both shapes.
 */
export function checkLoraAgainstBase(base: GgufModelFile, tensors: NamedTensor[], adapterLabel: string): AdapterShapeSummary {
  const arch = String(base.metadata["general.architecture"] ?? "");
  const baseTensors = new Map(base.tensors.map((tensor) => [tensor.name, tensor]));
  const halves = new Map<string, { a?: NamedTensor; b?: NamedTensor }>();
  for (const tensor of tensors) {
    const match = /^(.*)\.lora_([ab])$/.exec(tensor.name);
    if (!match) {
      throw new ExportError(`${adapterLabel}: tensor "${tensor.name}" is not a LoRA tensor (its name must end in .lora_a or .lora_b)`);
    }
    if (tensor.shape.length !== 2 || tensor.data.length !== tensor.shape[0] * tensor.shape[1]) {
      throw new ExportError(`${adapterLabel}: tensor "${tensor.name}" must be a matrix with shape[0]·shape[1] values, got shape ${shapeText(tensor.shape)} and ${tensor.data.length} values`);
    }
    const entry = halves.get(match[1]) ?? {};
    if (entry[match[2] as "a" | "b"]) throw new ExportError(`${adapterLabel}: tensor "${tensor.name}" appears twice`);
    entry[match[2] as "a" | "b"] = tensor;
    halves.set(match[1], entry);
  }
  if (halves.size === 0) throw new ExportError(`${adapterLabel} holds no LoRA tensors`);
  let rank: number | undefined;
  const pairs: LoraPair[] = [];
  for (const [baseName, { a, b }] of halves) {
    if (!a || !b) {
      throw new ExportError(`${adapterLabel}: "${baseName}.lora_${a ? "b" : "a"}" is missing; every adapted tensor needs both lora_a and lora_b`);
    }
    const baseTensor = baseTensors.get(baseName);
    if (!baseTensor) {
      throw new ExportError(
        `${adapterLabel}: LoRA tensor "${a.name}" adapts "${baseName}", which the base model ${base.path} (${arch}) does not have; the adapter was trained on another model`,
      );
    }
    if (baseTensor.dims.length !== 2) {
      throw new ExportError(`${adapterLabel}: "${baseName}" in ${base.path} is not a matrix (ggml dims ${shapeText(baseTensor.dims)}); it cannot carry a LoRA`);
    }
    const [inFeatures, outFeatures] = baseTensor.dims;
    const baseShape = `[${outFeatures}, ${inFeatures}] (out, in)`;
    if (a.shape[1] !== inFeatures) {
      throw new ExportError(
        `${adapterLabel}: "${a.name}" has shape ${shapeText(a.shape)} (rank, in) but the base tensor "${baseName}" in ${base.path} is ${baseShape}: in must be ${inFeatures}; the adapter does not match this base model`,
      );
    }
    if (b.shape[0] !== outFeatures) {
      throw new ExportError(
        `${adapterLabel}: "${b.name}" has shape ${shapeText(b.shape)} (out, rank) but the base tensor "${baseName}" in ${base.path} is ${baseShape}: out must be ${outFeatures}; the adapter does not match this base model`,
      );
    }
    if (a.shape[0] !== b.shape[1]) {
      throw new ExportError(`${adapterLabel}: "${a.name}" ${shapeText(a.shape)} and "${b.name}" ${shapeText(b.shape)} disagree on the rank`);
    }
    if (rank !== undefined && a.shape[0] !== rank) {
      throw new ExportError(`${adapterLabel}: "${a.name}" has rank ${a.shape[0]} but other tensors have rank ${rank}; one adapter has one rank`);
    }
    rank = a.shape[0];
    pairs.push({ base: baseName, a, b });
  }
  return { arch, rank: rank as number, pairs };
}

function tensorBytes(tensor: NamedTensor, type: AdapterTensorType): Uint8Array {
  const values = type === "F32" ? tensor.data : float32ArrayToFloat16(tensor.data);
  return new Uint8Array(values.buffer, values.byteOffset, values.byteLength);
}

/**
 * Writes a llama.cpp LoRA adapter GGUF for `baseModelPath` (checked first: architecture and every shape).
 * The file is written under a temporary name and renamed into place.
 */
export async function writeGgufAdapter(file: string, options: GgufAdapterOptions): Promise<void> {
  const type = options.type ?? "F32";
  if (!Number.isFinite(options.alpha) || options.alpha <= 0) {
    // llama.cpp treats alpha 0 as "scale 1", not as alpha/rank: refuse rather than change the numbers
    throw new ExportError(`LoRA alpha must be a positive number, got ${options.alpha}`);
  }
  const base = options.baseModel ?? (await readGgufModel(options.baseModelPath));
  const { arch, rank, pairs } = checkLoraAgainstBase(base, options.tensors, `adapter for ${file}`);
  const baseName = typeof base.metadata["general.name"] === "string" ? (base.metadata["general.name"] as string) : path.basename(base.path, ".gguf");
  const writer = new GgufWriter();
  writer.set("general.type", gguf.string("adapter"));
  writer.set("general.architecture", gguf.string(arch));
  writer.set("general.name", gguf.string(`${baseName} LoRA`));
  writer.set("adapter.type", gguf.string("lora"));
  writer.set("adapter.lora.alpha", gguf.f32(options.alpha));
  writer.set("thinktune.lora.rank", gguf.u32(rank));
  for (const { a, b } of pairs) {
    // row-major [rank, in] is ggml [in, rank]; row-major [out, rank] is ggml [rank, out]: same bytes
    writer.addTensor(a.name, type, [a.shape[1], a.shape[0]], () => tensorBytes(a, type));
    writer.addTensor(b.name, type, [b.shape[1], b.shape[0]], () => tensorBytes(b, type));
  }
  await writer.write(file);
}

export interface GgufAdapter {
  path: string;
  arch: string;
  alpha: number;
  /** row-major [rank, in] / [out, rank], widened to F32 */
  tensors: NamedTensor[];
}

/** Reads a LoRA adapter GGUF (ours or llama.cpp's convert_lora_to_gguf.py output) into row-major F32 tensors. */
export async function readGgufAdapter(file: string): Promise<GgufAdapter> {
  const info = await readGgufModel(file);
  const generalType = info.metadata["general.type"];
  const adapterType = info.metadata["adapter.type"];
  if (generalType !== "adapter" || adapterType !== "lora") {
    throw new ExportError(
      `${file} is not a LoRA adapter GGUF (general.type is ${JSON.stringify(generalType)}, adapter.type is ${JSON.stringify(adapterType)}; expected "adapter" and "lora")`,
    );
  }
  const alpha = Number(info.metadata["adapter.lora.alpha"] ?? 0);
  const tensors: NamedTensor[] = [];
  const handle = await open(file, "r");
  try {
    for (const tensor of info.tensors) {
      if (tensor.type !== GgmlType.F32 && tensor.type !== GgmlType.F16) {
        throw new ExportError(`${file}: tensor "${tensor.name}" is ${ggmlTypeLabel(tensor.type)}; LoRA adapters are read as F32 or F16`);
      }
      if (tensor.dims.length !== 2) {
        throw new ExportError(`${file}: tensor "${tensor.name}" has ggml dims [${tensor.dims.join(", ")}]; LoRA tensors are matrices`);
      }
      const typeName = tensor.type === GgmlType.F32 ? "F32" : "F16";
      const bytes = ggmlTensorBytes(typeName, tensor.dims, `${file}: tensor "${tensor.name}"`);
      if (tensor.offset + bytes > info.fileSize) {
        throw new ExportError(
          `${file} is truncated: tensor "${tensor.name}" needs bytes ${tensor.offset}..${tensor.offset + bytes} but the file has ${info.fileSize}; export the adapter again`,
        );
      }
      const raw = new Uint8Array(bytes);
      await handle.read(raw, 0, bytes, tensor.offset);
      const data = typeName === "F32" ? new Float32Array(raw.buffer) : float16ToFloat32Array(new Uint16Array(raw.buffer));
      tensors.push({ name: tensor.name, shape: [tensor.dims[1], tensor.dims[0]], data });
    }
  } finally {
    await handle.close();
  }
  return { path: file, arch: String(info.metadata["general.architecture"] ?? ""), alpha, tensors };
}
