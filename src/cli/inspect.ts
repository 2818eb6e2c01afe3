// `thinktune inspect FILE [--json]`
import type { Command } from "commander";
import { inspectGguf, type GgufInspection } from "../gguf/inspect.js";

function formatBytes(bytes: number): string {
  if (bytes >= 1 << 30) return `${(bytes / (1 << 30)).toFixed(2)} GiB`;
  if (bytes >= 1 << 20) return `${(bytes / (1 << 20)).toFixed(2)} MiB`;
  return `${(bytes / 1024).toFixed(1)} KiB`;
}

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

export function registerInspectCommand(program: Command): void {
  program
    .command("inspect")
    .description("show a model GGUF's architecture, shape, parameters, tensor types, tokenizer and chat template")
    .argument("<file>", "a model GGUF")
    .option("--json", "print the report as JSON")
    .action(async (file: string, flags: { json?: boolean }) => {
      const info = await inspectGguf(file);
      process.stdout.write(flags.json ? `${JSON.stringify(info, null, 2)}\n` : describe(info));
    });
}
