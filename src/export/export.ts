// `thinktune export`: one LoRA source, four destinations.
import path from "node:path";
import { checkWritable, ExportError } from "./errors.js";
import { writeGgufAdapter, type AdapterTensorType } from "./gguf-adapter.js";
import { writeMergedModel, type MergedTensorType } from "./merged.js";
import { writeOllamaFolder } from "./ollama.js";
import { writePeftAdapter } from "./peft.js";
import { loadAdapterSource, type AdapterSource } from "./source.js";

export const exportFormats = ["gguf", "peft", "merged", "ollama"] as const;
export type ExportFormat = (typeof exportFormats)[number];

export interface ExportOptions {
  format: ExportFormat;
  /** a file for gguf and merged, a folder for peft and ollama */
  out: string;
  /** the base GGUF, when the source does not record it or it has moved */
  baseModelPath?: string;
  /** gguf / peft / ollama: "F32" (default) or "F16"; merged: "F16" (default) or "base" (each tensor's own type) */
  type?: AdapterTensorType | MergedTensorType;
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
  if (options.format === "merged" ? type !== undefined && type !== "F16" && type !== "base" : type !== undefined && type !== "F32" && type !== "F16") {
    throw new ExportError(`--type ${type} does not apply to ${options.format}; use ${options.format === "merged" ? "f16 or base" : "f32 or f16"}`);
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
      await writePeftAdapter(out, { ...common, dtype: type as AdapterTensorType | undefined, overwrite: options.overwrite });
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
