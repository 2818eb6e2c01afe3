// `thinktune export`: one LoRA source, four destinations.
import path from "node:path";
import { checkWritable, ExportError } from "./errors.js";
import { writeGgufAdapter, type AdapterTensorType } from "./gguf-adapter.js";
import { synthTypeNames } from "../gguf/synth.js";
import { writeMergedModel, type MergedTensorType } from "./merged.js";
import { writeOllamaFolder } from "./ollama.js";
import { writePeftAdapter } from "./peft.js";
import { loadAdapterSource, type AdapterSource } from "./source.js";

export const exportFormats = ["gguf", "peft", "merged", "ollama"] as const;
export type ExportFormat = (typeof exportFormats)[number];

/** Types of the adapter's own tensors (gguf, peft, ollama). */
export const adapterTypeNames = ["F32", "F16"] as const;
/** Types of a merged model's matrices: what synth can write, or "base" (each tensor keeps its base type). */
export const mergedTypeNames: readonly MergedTensorType[] = [...synthTypeNames, "base"];
/** Every name --type takes, for any format. */
export const exportTypeNames: readonly (AdapterTensorType | MergedTensorType)[] = mergedTypeNames;

export interface ExportOptions {
  format: ExportFormat;
  /** a file for gguf and merged, a folder for peft and ollama */
  out: string;
  /** the base GGUF, when the source does not record it or it has moved */
  baseModelPath?: string;
  /** gguf / peft / ollama: "F32" (default) or "F16"; merged: one of mergedTypeNames, "F16" by default */
  type?: AdapterTensorType | MergedTensorType;
  /** peft: base_model_name_or_path (default: the source repository the GGUF names, else its name) */
  baseModelId?: string;
  /** replace an existing destination */
  overwrite?: boolean;
}

export interface ExportResult {
  format: ExportFormat;
  out: string;
  source: AdapterSource;
}

export async function exportAdapter(input: string, options: ExportOptions): Promise<ExportResult> {
  if (!(exportFormats as readonly string[]).includes(options.format)) {
    throw new ExportError(`unknown export format "${options.format}"; expected one of ${exportFormats.join(", ")}`);
  }
  const type = options.type;
  const allowed: readonly string[] = options.format === "merged" ? mergedTypeNames : adapterTypeNames;
  if (type !== undefined && !allowed.includes(type)) {
    throw new ExportError(`type ${type} does not apply to ${options.format}; use one of ${allowed.join(", ")}`);
  }
  const out = path.resolve(options.out);
  if (options.format === "gguf" || options.format === "merged") await checkWritable(out, options.overwrite ?? false);
  const source = await loadAdapterSource(input, { baseModelPath: options.baseModelPath });
  const common = { baseModelPath: source.baseModelPath, alpha: source.alpha, tensors: source.tensors };
  switch (options.format) {
    case "gguf":
      await writeGgufAdapter(out, { ...common, type: type as AdapterTensorType | undefined });
      break;
    case "peft":
      await writePeftAdapter(out, { ...common, dtype: type as AdapterTensorType | undefined, baseModelId: options.baseModelId, overwrite: options.overwrite });
      break;
    case "merged":
      await writeMergedModel(out, { ...common, type: type as MergedTensorType | undefined });
      break;
    case "ollama":
      await writeOllamaFolder(out, { ...common, type: type as AdapterTensorType | undefined, overwrite: options.overwrite });
      break;
  }
  return { format: options.format, out, source };
}
