// PEFT LoRA adapters (adapter_model.safetensors + adapter_config.json) for transformers, peft and vLLM,
// with the base model's config.json beside them so no download is needed to know its shape.
import { readFile, writeFile } from "node:fs/promises";
import path from "node:path";
import type { NamedTensor } from "../native/addon.js";
import { readGgufModel, type GgufModelFile } from "../gguf/read.js";
import { modelConfigFromGguf } from "../gguf/model-config.js";
import { checkWritable, ExportError } from "./errors.js";
import { writeFolderAtomic } from "../util/atomic-file.js";
import { findTensor, readTensorF32 } from "./base-tensors.js";
import { checkLoraAgainstBase } from "./gguf-adapter.js";
import { ggufTensorOfHfModule, hfBaseModelName, hfConfigFromGguf, hfModuleOfGgufTensor, permuteRows, permutedHeads } from "./hf.js";
import { readSafetensors, writeSafetensors, type SafetensorsDtype } from "./safetensors.js";

export interface PeftExportOptions {
  baseModelPath: string;
  alpha: number;
  /** llama.cpp-named LoRA tensors: `<base tensor>.lora_a` [rank, in], `.lora_b` [out, rank] */
  tensors: NamedTensor[];
  dtype?: SafetensorsDtype;
  /** base_model_name_or_path; by default the source repository the GGUF names, else its name */
  baseModelId?: string;
  /** replace an existing folder at the destination */
  overwrite?: boolean;
}

const peftPrefix = "base_model.model.model.layers";

/** The base's config.json as transformers reads it. */
export async function baseHfConfig(base: GgufModelFile): Promise<Record<string, unknown>> {
  const hasRopeFreqs = base.tensors.some((tensor) => tensor.name === "rope_freqs.weight");
  const ropeFreqs = hasRopeFreqs ? await readTensorF32(base, findTensor(base, "rope_freqs.weight")) : undefined;
  return hfConfigFromGguf(base, ropeFreqs);
}

/** adapter_config.json: the LoraConfig fields peft and vLLM read. */
export function peftAdapterConfig(base: GgufModelFile, rank: number, alpha: number, targetModules: string[], baseModelId?: string): Record<string, unknown> {
  return {
    peft_type: "LORA",
    task_type: "CAUSAL_LM",
    base_model_name_or_path: baseModelId ?? hfBaseModelName(base),
    r: rank,
    lora_alpha: alpha,
    lora_dropout: 0,
    target_modules: targetModules,
    bias: "none",
    fan_in_fan_out: false,
    inference_mode: true,
    init_lora_weights: true,
    use_rslora: false,
    use_dora: false,
    modules_to_save: null,
    layers_to_transform: null,
    layers_pattern: null,
    rank_pattern: {},
    alpha_pattern: {},
    revision: null,
  };
}

/** PEFT tensors from llama.cpp-named ones: HF module names, llama's Q/K B rows back in HF order. */
export function toPeftTensors(base: GgufModelFile, tensors: NamedTensor[]): { tensors: NamedTensor[]; rank: number; targetModules: string[] } {
  const config = modelConfigFromGguf(base);
  const { rank, pairs } = checkLoraAgainstBase(base, tensors, "PEFT export");
  const targetModules = new Set<string>();
  const out: NamedTensor[] = [];
  for (const pair of pairs) {
    const { layer, kind, module } = hfModuleOfGgufTensor(pair.base);
    targetModules.add(module.split(".")[1]);
    const heads = permutedHeads(config, kind);
    const b = heads === undefined ? pair.b : permuteRows(pair.b, heads, false);
    const prefix = `${peftPrefix}.${layer}.${module}`;
    out.push({ name: `${prefix}.lora_A.weight`, shape: pair.a.shape, data: pair.a.data });
    out.push({ name: `${prefix}.lora_B.weight`, shape: b.shape, data: b.data });
  }
  return { tensors: out, rank, targetModules: [...targetModules].sort() };
}

/** Writes `outDir` with adapter_model.safetensors, adapter_config.json and the base's config.json. */
export async function writePeftAdapter(outDir: string, options: PeftExportOptions): Promise<void> {
  if (!Number.isFinite(options.alpha) || options.alpha <= 0) throw new ExportError(`LoRA alpha must be a positive number, got ${options.alpha}`);
  const base = await readGgufModel(options.baseModelPath);
  const { tensors, rank, targetModules } = toPeftTensors(base, options.tensors);
  const adapterConfig = peftAdapterConfig(base, rank, options.alpha, targetModules, options.baseModelId);
  const hfConfig = await baseHfConfig(base);
  await checkWritable(outDir, options.overwrite ?? false);
  await writeFolderAtomic(outDir, async (dir) => {
    await writeSafetensors(path.join(dir, "adapter_model.safetensors"), tensors, { format: "pt" }, options.dtype ?? "F32");
    await writeFile(path.join(dir, "adapter_config.json"), `${JSON.stringify(adapterConfig, null, 2)}\n`);
    await writeFile(path.join(dir, "config.json"), `${JSON.stringify(hfConfig, null, 2)}\n`);
  });
}

export interface PeftAdapter {
  alpha: number;
  rank: number;
  /** llama.cpp-named, in GGUF row order */
  tensors: NamedTensor[];
}

/** Reads a PEFT LoRA folder back into llama.cpp-named tensors for `baseModelPath` (llama Q/K B rows permuted). */
export async function readPeftAdapter(dir: string, baseModelPath: string): Promise<PeftAdapter> {
  const configPath = path.join(dir, "adapter_config.json");
  let adapterConfig: { r?: unknown; lora_alpha?: unknown; use_rslora?: unknown; use_dora?: unknown };
  try {
    adapterConfig = JSON.parse(await readFile(configPath, "utf8"));
  } catch (error) {
    throw new ExportError(`cannot read ${configPath}: ${(error as Error).message}`);
  }
  if (typeof adapterConfig.r !== "number" || typeof adapterConfig.lora_alpha !== "number") {
    throw new ExportError(`${configPath}: "r" and "lora_alpha" must be numbers`);
  }
  if (adapterConfig.use_rslora === true || adapterConfig.use_dora === true) {
    throw new ExportError(`${configPath}: rsLoRA and DoRA adapters scale differently from llama.cpp's LoRA and are not supported`);
  }
  const base = await readGgufModel(baseModelPath);
  const config = modelConfigFromGguf(base);
  const file = await readSafetensors(path.join(dir, "adapter_model.safetensors"));
  const tensors: NamedTensor[] = [];
  for (const tensor of file.tensors) {
    const match = /^(.*)\.lora_([AB])(?:\.default)?\.weight$/.exec(tensor.name);
    const ggufName = match ? ggufTensorOfHfModule(match[1]) : undefined;
    if (!match || !ggufName) throw new ExportError(`${dir}: tensor "${tensor.name}" is not a LoRA A/B of a decoder-layer linear`);
    const { kind } = hfModuleOfGgufTensor(ggufName);
    const heads = permutedHeads(config, kind);
    const isB = match[2] === "B";
    const data = isB && heads !== undefined ? permuteRows(tensor, heads, true).data : tensor.data;
    tensors.push({ name: `${ggufName}.lora_${isB ? "b" : "a"}`, shape: tensor.shape, data });
  }
  const { rank } = checkLoraAgainstBase(base, tensors, dir);
  if (rank !== adapterConfig.r) throw new ExportError(`${configPath}: r is ${adapterConfig.r} but the tensors have rank ${rank}`);
  return { alpha: adapterConfig.lora_alpha, rank, tensors };
}
