// `thinktune export RUN_OR_CHECKPOINT --format gguf|peft|merged|ollama --out PATH`
import path from "node:path";
import type { Command } from "commander";
import { exportAdapter, exportFormats, type ExportFormat, type ExportOptions } from "../export/export.js";

const typeNames: Record<string, ExportOptions["type"]> = { f32: "F32", f16: "F16", base: "base" };

export function registerExportCommand(program: Command): void {
  program
    .command("export")
    .description("export a trained LoRA for llama.cpp (gguf), transformers/vLLM (peft), tools without adapters (merged) or Ollama")
    .argument("<source>", "a run folder (its adapter/, else its newest checkpoint), a checkpoint folder, an adapter folder or adapter GGUF, or a PEFT folder")
    .requiredOption("-f, --format <format>", `one of ${exportFormats.join(", ")}`)
    .requiredOption("-o, --out <path>", "the file (gguf, merged) or folder (peft, ollama) to write")
    .option("--base <gguf>", "the base model GGUF (default: the one the run recorded)")
    .option("--type <type>", "gguf/peft/ollama: f32 (default) or f16; merged: f16 (default) or base (requantize each tensor to its base type)")
    .option("--force", "replace an existing output")
    .action(async (source: string, flags: { format: string; out: string; base?: string; type?: string; force?: boolean }) => {
      if (!(exportFormats as readonly string[]).includes(flags.format)) {
        program.error(`error: --format must be one of ${exportFormats.join(", ")}, got "${flags.format}"`);
      }
      const type = flags.type === undefined ? undefined : typeNames[flags.type.toLowerCase()];
      if (flags.type !== undefined && type === undefined) program.error(`error: --type must be f32, f16 or base, got "${flags.type}"`);
      try {
        const result = await exportAdapter(source, {
          format: flags.format as ExportFormat,
          out: flags.out,
          baseModelPath: flags.base,
          type,
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
