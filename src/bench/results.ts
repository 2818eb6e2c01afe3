// Benchmark records: one JSON line per measurement in bench/results.jsonl, and bench/RESULTS.md, a
// table for people regenerated from all records each time.
import { existsSync } from "node:fs";
import { appendFile, mkdir, readFile, rename, writeFile } from "node:fs/promises";
import path from "node:path";

export interface BenchRecord {
  /** YYYY-MM-DD */
  date: string;
  /** in words: cores, CPU, GPU */
  machine: string;
  /** GPU name, null on the CPU */
  gpu: string | null;
  /** short git commit of the measured code */
  commit: string;
  device: "cpu" | "cuda";
  /** model shape in words, e.g. "synth qwen2 8x1024 ffn 2816 vocab 32000" */
  model: string;
  /** ggml type of the base weights */
  type: string;
  /** tokens per sequence (one sequence per step) */
  seq: number;
  threads: number | null;
  rank: number;
  /** LoRA training: forward + backward + AdamW update */
  tokensPerSecond: number;
  stepSeconds: number;
  /** thinktune forward (evaluate) */
  forwardTokensPerSecond: number | null;
  /** node-llama-cpp prompt evaluation of the same file, same threads */
  llamaCppForwardTokensPerSecond: number | null;
  /** transformers + PEFT training the same shape (../shared/bench/peft_lora.py), same command */
  peftTokensPerSecond: number | null;
  /** the engine's planned memory, its peak by design (GiB; on the CPU the mapped weights included) */
  peakGiB?: number | null;
  peftPeakGiB?: number | null;
  /** model FLOPs utilization of the training step (CUDA) */
  mfu?: number | null;
}

export class BenchResultsError extends Error {
  override name = "BenchResultsError";
}

export async function readBenchRecords(file: string): Promise<BenchRecord[]> {
  if (!existsSync(file)) return [];
  const text = await readFile(file, "utf8");
  return text
    .split("\n")
    .map((line, index) => ({ line, index }))
    .filter(({ line }) => line.trim() !== "")
    .map(({ line, index }) => {
      try {
        return JSON.parse(line) as BenchRecord;
      } catch (error) {
        throw new BenchResultsError(`${file}:${index + 1}: not a JSON record (${(error as Error).message}); fix or delete that line`);
      }
    });
}

export async function appendBenchRecords(file: string, records: BenchRecord[]): Promise<void> {
  await mkdir(path.dirname(file), { recursive: true });
  await appendFile(file, records.map((record) => `${JSON.stringify(record)}\n`).join(""));
}

function format(value: number | null | undefined, digits = 1): string {
  return value === null || value === undefined || !Number.isFinite(value) ? "–" : value.toFixed(digits);
}

/** ours / theirs as "1.23x" ("–" when either side is missing). */
function ratio(ours: number | null | undefined, theirs: number | null | undefined): string {
  if (!ours || !theirs) return "–";
  return `${(ours / theirs).toFixed(2)}x`;
}

/** The goals of issues 4 (CPU) and 9 (CUDA), judged on the newest record of each (device, type, seq). */
function goalLines(records: BenchRecord[]): string[] {
  const newest = new Map<string, BenchRecord>();
  for (const record of records) newest.set(`${record.device}|${record.machine}|${record.model}|${record.type}|${record.seq}`, record);
  const lines: string[] = [];
  for (const record of newest.values()) {
    const label = `${record.device} ${record.type} seq ${record.seq} (${record.date}, ${record.machine}, ${record.commit})`;
    const verdicts: string[] = [];
    if (record.forwardTokensPerSecond && record.llamaCppForwardTokensPerSecond) {
      // time ratio: how many times llama.cpp's prompt-evaluation time ours takes (goal ≤ 1.5)
      const timeRatio = record.llamaCppForwardTokensPerSecond / record.forwardTokensPerSecond;
      verdicts.push(`forward takes ${timeRatio.toFixed(2)}x llama.cpp's time (goal ≤ 1.5x: ${timeRatio <= 1.5 ? "met" : "not met"})`);
    }
    if (record.peftTokensPerSecond) {
      const trainRatio = record.tokensPerSecond / record.peftTokensPerSecond;
      const goal = record.device === "cuda" ? "≥ 1x, aiming at 2x" : "≥ 1x";
      verdicts.push(`training at ${trainRatio.toFixed(2)}x PEFT's tokens/s (goal ${goal}: ${trainRatio >= 1 ? "met" : "not met"})`);
    }
    if (record.device === "cuda" && record.peakGiB !== undefined && record.peakGiB !== null) {
      const limit = record.seq >= 16384 ? 24 : record.seq === 4096 ? 10 : undefined;
      if (limit !== undefined) verdicts.push(`peak ${record.peakGiB.toFixed(2)} GiB (goal ≤ ${limit} GiB: ${record.peakGiB <= limit ? "met" : "not met"})`);
    }
    if (verdicts.length > 0) lines.push(`- ${label}: ${verdicts.join("; ")}.`);
  }
  return lines;
}

export function renderResultsMarkdown(records: BenchRecord[]): string {
  const header = [
    "# thinktune benchmark results",
    "",
    "Written by `npm run bench` from bench/results.jsonl (one record per measurement); do not edit by hand.",
    "Each row was measured in one command: the same file and threads for thinktune and llama.cpp",
    "(node-llama-cpp prompt evaluation), and transformers + PEFT (`../shared/bench/peft_lora.py`) training",
    "a model of the same shape, rank 16 on all seven targets, one sequence per step.",
    "Forward: our evaluate pass vs llama.cpp's prompt evaluation (both compute the output layer for the",
    "last position only). Train: LoRA step (forward + backward + AdamW) tokens/s. \"vs\" columns are",
    "speed ratios, ours / theirs (above 1x: thinktune is faster). Peak GiB: the engine's planned memory",
    "(its peak by design; on the CPU the memory-mapped weights included).",
    "",
    "| date | machine | commit | device | model | type | seq | threads | train tok/s | PEFT tok/s | vs PEFT | forward tok/s | llama.cpp tok/s | vs llama.cpp | step s | peak GiB | PEFT peak GiB | MFU |",
    "|---|---|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
  ];
  const rows = records.map((record) =>
    [
      record.date,
      record.gpu ? `${record.machine} (${record.gpu})` : record.machine,
      record.commit,
      record.device,
      record.model,
      record.type,
      String(record.seq),
      record.threads === null ? "–" : String(record.threads),
      format(record.tokensPerSecond),
      format(record.peftTokensPerSecond),
      ratio(record.tokensPerSecond, record.peftTokensPerSecond),
      format(record.forwardTokensPerSecond),
      format(record.llamaCppForwardTokensPerSecond),
      ratio(record.forwardTokensPerSecond, record.llamaCppForwardTokensPerSecond),
      format(record.stepSeconds, 3),
      format(record.peakGiB, 2),
      format(record.peftPeakGiB, 2),
      record.mfu === null || record.mfu === undefined ? "–" : `${(record.mfu * 100).toFixed(1)}%`,
    ].join(" | "),
  );
  const goals = goalLines(records);
  return [
    ...header,
    ...rows.map((row) => `| ${row} |`),
    "",
    "## Against the goals (newest measurement of each configuration)",
    "",
    ...(goals.length > 0 ? goals : ["No measurement with a peer yet."]),
    "",
  ].join("\n");
}

/** Rewrites the Markdown table from every record (temp file + rename). */
export async function writeResultsMarkdown(file: string, records: BenchRecord[]): Promise<void> {
  await mkdir(path.dirname(file), { recursive: true });
  const temp = `${file}.${process.pid}.tmp`;
  await writeFile(temp, renderResultsMarkdown(records));
  await rename(temp, file);
}
