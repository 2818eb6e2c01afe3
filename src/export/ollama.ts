// An Ollama model folder: the GGUF adapter and a Modelfile naming the base GGUF, so that
// `ollama create NAME -f Modelfile` is the only step left. The template and parameters are those an
// R1 distill needs: DeepSeek's turn tokens, a generation prompt that opens <think>, the R1 stop tokens,
// and DeepSeek's recommended sampling (temperature 0.6, top_p 0.95).
import { writeFile } from "node:fs/promises";
import path from "node:path";
import type { NamedTensor } from "../native/addon.js";
import { readGgufModel, type GgufModelFile } from "../gguf/read.js";
import { checkWritable, ExportError } from "./errors.js";
import { writeFolderAtomic } from "../util/atomic-file.js";
import { writeGgufAdapter, type AdapterTensorType } from "./gguf-adapter.js";

export interface OllamaExportOptions {
  baseModelPath: string;
  alpha: number;
  tensors: NamedTensor[];
  type?: AdapterTensorType;
  overwrite?: boolean;
}

export const ollamaAdapterFileName = "adapter.gguf";

const r1TurnTokens = ["<｜User｜>", "<｜Assistant｜>"];

/**
 * Ollama's Go template for R1 turns: the system prompt right after BOS (Ollama adds BOS itself),
 * <｜User｜>/<｜Assistant｜> turns, finished assistant turns closed by end-of-sentence, and the generation
 * prompt <｜Assistant｜><think>\n, as the model was trained to continue.
 */
export function r1OllamaTemplate(endOfSentence: string): string {
  return [
    "{{- if .System }}{{ .System }}{{ end }}",
    "{{- range $i, $_ := .Messages }}",
    "{{- $last := eq (len (slice $.Messages $i)) 1 }}",
    '{{- if eq .Role "user" }}<｜User｜>{{ .Content }}',
    `{{- else if eq .Role "assistant" }}<｜Assistant｜>{{ .Content }}{{ if not $last }}${endOfSentence}{{ end }}`,
    "{{- end }}",
    '{{- if and $last (ne .Role "assistant") }}<｜Assistant｜><think>',
    "{{ end }}",
    "{{- end }}",
  ].join("\n");
}

function tokenText(base: GgufModelFile, key: string): string | undefined {
  const tokens = base.metadata["tokenizer.ggml.tokens"];
  const id = base.metadata[key];
  if (!Array.isArray(tokens) || (typeof id !== "number" && typeof id !== "bigint")) return undefined;
  const text = tokens[Number(id)];
  return typeof text === "string" ? text : undefined;
}

function quoted(value: string): string {
  return JSON.stringify(value);
}

/** The Modelfile text for an R1 base at `baseAbsolutePath` with the adapter beside the Modelfile. */
export function r1Modelfile(base: GgufModelFile, baseAbsolutePath: string): string {
  const tokens = base.metadata["tokenizer.ggml.tokens"];
  const vocabulary = new Set(Array.isArray(tokens) ? (tokens as unknown[]) : []);
  const missing = r1TurnTokens.filter((token) => !vocabulary.has(token));
  const endOfSentence = tokenText(base, "tokenizer.ggml.eos_token_id");
  if (missing.length > 0 || endOfSentence === undefined) {
    throw new ExportError(
      `${base.path} is not a DeepSeek-R1 distill: its vocabulary lacks ${[...missing, ...(endOfSentence === undefined ? ["an end-of-sentence token"] : [])].join(", ")}, which the Ollama template needs`,
    );
  }
  const beginOfSentence = tokenText(base, "tokenizer.ggml.bos_token_id");
  if (baseAbsolutePath.includes("\n") || baseAbsolutePath.includes('"""')) {
    throw new ExportError(`the base model path ${JSON.stringify(baseAbsolutePath)} cannot be written into a Modelfile`);
  }
  const stops = [...new Set([...(beginOfSentence ? [beginOfSentence] : []), endOfSentence, ...r1TurnTokens])];
  return [
    `FROM ${baseAbsolutePath}`,
    `ADAPTER ./${ollamaAdapterFileName}`,
    `TEMPLATE """${r1OllamaTemplate(endOfSentence)}"""`,
    ...stops.map((stop) => `PARAMETER stop ${quoted(stop)}`),
    "PARAMETER temperature 0.6",
    "PARAMETER top_p 0.95",
    "",
  ].join("\n");
}

/** Writes `outDir` with adapter.gguf and a Modelfile (the folder is built under a temporary name). */
export async function writeOllamaFolder(outDir: string, options: OllamaExportOptions): Promise<void> {
  const baseAbsolutePath = path.resolve(options.baseModelPath);
  const base = await readGgufModel(baseAbsolutePath);
  const modelfile = r1Modelfile(base, baseAbsolutePath);
  await checkWritable(outDir, options.overwrite ?? false);
  await writeFolderAtomic(outDir, async (dir) => {
    await writeGgufAdapter(path.join(dir, ollamaAdapterFileName), {
      baseModelPath: baseAbsolutePath,
      alpha: options.alpha,
      tensors: options.tensors,
      type: options.type,
    });
    await writeFile(path.join(dir, "Modelfile"), modelfile);
  });
}
