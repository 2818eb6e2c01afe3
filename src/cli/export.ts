// `thinktune export RUN_OR_CHECKPOINT --format gguf|peft|merged|ollama --out PATH`
import path from "node:path";
import type { Command } from "commander";
import { adapterTypeNames, exportAdapter, exportFormats, exportTypeNames, mergedTypeNames, type ExportFormat, type ExportOptions } from "../export/export.js";
import { nameArgument } from "./names.js";
import { modelSourceHelp, resolveModelSource } from "./model-source.js";

export function registerExportCommand(program: Command): void {
  program
    .command("export")
    .description("export a trained LoRA for llama.cpp (gguf), transformers/vLLM (peft), tools without adapters (merged) or Ollama")
    .argument("<source>", "a run folder (its adapter/, else its newest checkpoint), a checkpoint folder, an adapter folder or adapter GGUF, or a PEFT folder")
    .requiredOption("-f, --format <format>", `one of ${exportFormats.join(", ")}`, nameArgument(exportFormats))
    .requiredOption("-o, --out <path>", "the file (gguf, merged) or folder (peft, ollama) to write")
    .option("--base <model>", `the base model (default: the one the run recorded): ${modelSourceHelp}`)
    .option(
      "--type <type>",
      `gguf/peft/ollama: ${adapterTypeNames.join(" (default) or ")}; merged: F16 (default), ${mergedTypeNames.filter((name) => name !== "F16" && name !== "base").join(", ")}, or base (each tensor in its base type); any case`,
      nameArgument(exportTypeNames),
    )
    .option("--base-model-id <id>", "peft: base_model_name_or_path, the base's hub id (default: the source repository the GGUF names, else its name)")
    .option("--force", "replace an existing output")
    .action(async (source: string, flags: { format: ExportFormat; out: string; base?: string; type?: ExportOptions["type"]; baseModelId?: string; force?: boolean }) => {
      try {
        const result = await exportAdapter(source, {
          format: flags.format,
          out: flags.out,
          baseModelPath: flags.base === undefined ? undefined : await resolveModelSource(flags.base),
          type: flags.type,
          baseModelId: flags.baseModelId,
          overwrite: flags.force ?? false,
        });
        const { source: adapter } = result;
        const step = adapter.step === undefined ? "" : ` (step ${adapter.step})`;
        process.stdout.write(
          `exported ${adapter.description}${step}: rank ${adapter.rank}, alpha ${adapter.alpha}, ${adapter.tensors.length / 2} adapted tensors, base ${adapter.baseModelPath}\n` +
            `wrote ${result.format} → ${path.relative(process.cwd(), result.out) || result.out}\n`,
        );
        if (result.format === "ollama") process.stdout.write(`next: ollama create NAME -f ${path.join(result.out, "Modelfile")}\n`);
      } catch (error) {
        program.error(`error: ${(error as Error).message}`, { exitCode: 1 });
      }
    });
}
