// `thinktune inspect FILE [--json]`
import type { Command } from "commander";
import { readGgufAdapter } from "../export/gguf-adapter.js";
import { inspectGguf, type GgufInspection } from "../gguf/inspect.js";
import { readGgufModel } from "../gguf/read.js";
import { resolveModelSource } from "./model-source.js";
import { userCommand } from "./user-command.js";
import { formatBytes } from "./bytes.js";

function formatCount(count: number): string {
  return count >= 1e9 ? `${(count / 1e9).toFixed(2)}B` : count >= 1e6 ? `${(count / 1e6).toFixed(2)}M` : `${count}`;
}

function describe(info: GgufInspection): string {
  const lines = [`${info.path}: GGUF v${info.version}, ${formatBytes(info.fileSize)}${info.name ? `, "${info.name}"` : ""}`];
  lines.push(`architecture  ${info.architecture}${info.trainable ? "" : " (thinktune trains qwen2 and llama only)"}`);
  if (info.shape) {
    const s = info.shape;
    lines.push(
      `shape         ${s.nLayer} layers, embedding ${s.nEmbd}, ${s.nHead} heads / ${s.nHeadKv} KV heads (head size ${s.headDim}), FFN ${s.nFf}, vocabulary ${s.nVocab}`,
      `              context ${s.contextLength}, rope base ${s.ropeBase}, rms eps ${Number(s.rmsEps.toPrecision(6))}, ${s.tiedOutput ? "tied" : "separate"} output` +
        `${s.hasQkvBias ? ", QKV bias" : ""}${s.hasRopeFreqs ? ", rope_freqs" : ""}`,
    );
  }
  lines.push(`parameters    ${formatCount(info.parameterCount)} in ${info.tensorCount} tensors (${formatBytes(info.tensorBytes)})`);
  for (const type of info.tensorTypes) {
    lines.push(`  ${type.type.padEnd(6)} ${String(type.count).padStart(5)} tensors ${formatBytes(type.bytes).padStart(11)}  ${formatCount(type.parameters)} parameters`);
  }
  const tokenizer = info.tokenizer;
  lines.push(
    `tokenizer     ${tokenizer.model ?? "none"}${tokenizer.pre ? ` (pre ${tokenizer.pre})` : ""}, ${tokenizer.vocabularySize} tokens, ${tokenizer.mergeCount} merges` +
      `${tokenizer.addBosToken === undefined ? "" : `, add bos ${tokenizer.addBosToken}`}`,
  );
  for (const token of tokenizer.specialTokens) lines.push(`  ${token.role.padEnd(13)} ${String(token.id).padStart(7)}  ${token.text === undefined ? "(not in vocabulary)" : JSON.stringify(token.text)}`);
  const template = info.chatTemplate;
  lines.push(`chat template ${template.present ? `present (${template.length} characters), ${template.r1Style ? "R1-style" : "not R1-style"}` : "none"}`);
  for (const note of info.notes) lines.push(`note          ${note}`);
  return lines.join("\n") + "\n";
}

interface AdapterSummary {
  path: string;
  type: "lora-adapter";
  architecture: string;
  rank: number;
  alpha: number;
  /** adapted matrices, one per layer and target */
  matrices: number;
  targets: string[];
}

async function summarizeAdapter(file: string): Promise<AdapterSummary> {
  const adapter = await readGgufAdapter(file);
  const pairs = adapter.tensors.filter((tensor) => tensor.name.endsWith(".lora_a"));
  const targets = [...new Set(pairs.map((tensor) => /^blk\.\d+\.(.+)\.weight\.lora_a$/.exec(tensor.name)?.[1] ?? tensor.name))];
  return { path: file, type: "lora-adapter", architecture: adapter.arch, rank: pairs[0]?.shape[0] ?? 0, alpha: adapter.alpha, matrices: pairs.length, targets };
}

/** An adapter is not a model: say what it is and where it goes instead of naming a missing model key. */
function describeAdapter(adapter: AdapterSummary): string {
  return (
    `${adapter.path}: a LoRA adapter for ${adapter.architecture || "an unnamed architecture"}, not a model: rank ${adapter.rank}, alpha ${adapter.alpha}, ` +
    `${adapter.matrices} adapted matrices (${adapter.targets.join(", ")})\n` +
    `Use it on its base model: ${userCommand("chat", "--model", "BASE.gguf", "--lora", adapter.path)} (serve takes --lora too; export takes it with --base BASE.gguf)\n`
  );
}

export function registerInspectCommand(program: Command): void {
  program
    .command("inspect")
    .description("show a model GGUF's architecture, shape, parameters, tensor types, tokenizer and chat template")
    .argument("<file>", `a model GGUF (an adapter GGUF is named as such), hf:OWNER/REPO:QUANT, hf:OWNER/REPO/FILE.gguf or an https:// URL`)
    .option("--json", "print the report as JSON")
    .action(async (source: string, flags: { json?: boolean }) => {
      const file = await resolveModelSource(source);
      if ((await readGgufModel(file)).metadata["general.type"] === "adapter") {
        const adapter = await summarizeAdapter(file);
        process.stdout.write(flags.json ? `${JSON.stringify(adapter, null, 2)}\n` : describeAdapter(adapter));
        return;
      }
      const info = await inspectGguf(file);
      process.stdout.write(flags.json ? `${JSON.stringify(info, null, 2)}\n` : describe(info));
    });
}
