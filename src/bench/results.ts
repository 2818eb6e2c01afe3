// Benchmark records: one JSON line per measurement in bench/results.jsonl, and bench/RESULTS.md, a
// table for people regenerated from all records each time.
import { existsSync } from "node:fs";
import { appendFile, mkdir, readFile } from "node:fs/promises";
import path from "node:path";
import { writeFileAtomic } from "../util/atomic-file.js";

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
  /** CUDA: the most device memory in use during the measurement, read on the device (cudaMemGetInfo) */
  measuredPeakGiB?: number | null;
  /** CUDA: the memory budget planned against (--gpu-memory), null for the card's free memory */
  gpuMemoryGiB?: number | null;
  /** CUDA: layers whose activations the plan kept from the forward (the rest are recomputed) */
  keptLayers?: number | null;
  /** CUDA: of the kept layers, those whose feed-forward products were kept too (the others recompute them) */
  keptWholeLayers?: number | null;
  /** CUDA: pinned host memory holding the layers' residual checkpoints (GiB; 0 when they stay on the GPU) */
  hostGiB?: number | null;
  /** CUDA: the share of the timed steps' wall time the GPU waited for checkpoint copies that did not overlap compute */
  copyWaitShare?: number | null;
}

/** Attention forward + backward alone: thinktune's fused kernels beside torch SDPA at the same shape. */
export interface AttentionRecord {
  kind: "attention";
  date: string;
  machine: string;
  gpu: string | null;
  commit: string;
  seq: number;
  heads: number;
  kvHeads: number;
  headDim: number;
  forwardTflops: number;
  forwardBackwardTflops: number;
  /** torch.nn.functional.scaled_dot_product_attention, causal, enable_gqa, bf16 (../shared/bench/sdpa_attention.py) */
  sdpaFlashTflops: number | null;
  sdpaCudnnTflops: number | null;
}

export type AnyBenchRecord = BenchRecord | AttentionRecord;

export function isAttentionRecord(record: AnyBenchRecord): record is AttentionRecord {
  return (record as AttentionRecord).kind === "attention";
}

export class BenchResultsError extends Error {
  override name = "BenchResultsError";
}

export async function readBenchRecords(file: string): Promise<AnyBenchRecord[]> {
  if (!existsSync(file)) return [];
  const text = await readFile(file, "utf8");
  return text
    .split("\n")
    .map((line, index) => ({ line, index }))
    .filter(({ line }) => line.trim() !== "")
    .map(({ line, index }) => {
      try {
        return JSON.parse(line) as AnyBenchRecord;
      } catch (error) {
        throw new BenchResultsError(`${file}:${index + 1}: not a JSON record (${(error as Error).message}); fix or delete that line`);
      }
    });
}

export async function appendBenchRecords(file: string, records: AnyBenchRecord[]): Promise<void> {
  await mkdir(path.dirname(file), { recursive: true });
  await appendFile(file, records.map((record) => `${JSON.stringify(record)}\n`).join(""));
}

function format(value: number | null | undefined, digits = 1): string {
  return value === null || value === undefined || !Number.isFinite(value) ? "–" : value.toFixed(digits);
}

function percent(share: number | null | undefined): string {
  return share === null || share === undefined || !Number.isFinite(share) ? "–" : `${(share * 100).toFixed(1)}%`;
}

/** ours / theirs as "1.23x" ("–" when either side is missing). */
function ratio(ours: number | null | undefined, theirs: number | null | undefined): string {
  if (!ours || !theirs) return "–";
  return `${(ours / theirs).toFixed(2)}x`;
}

/** The goals of issues 4 (CPU) and 9 (CUDA), judged on the newest record of each (device, type, seq). */
function goalLines(records: BenchRecord[]): string[] {
  const newest = new Map<string, BenchRecord>();
  for (const record of records) newest.set(`${record.device}|${record.machine}|${record.model}|${record.type}|${record.seq}|${record.gpuMemoryGiB ?? ""}`, record);
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
      // issue 13's goals on the GPU: 1.5x at 1024 and 4096 tokens (2x aimed at), 1x at 16384 (1.3x aimed at), 1x for the lean 10 GiB plan
      const lean = record.device === "cuda" && record.gpuMemoryGiB !== undefined && record.gpuMemoryGiB !== null && record.gpuMemoryGiB <= 10;
      const [needed, aim] = record.device !== "cuda" || lean ? [1, undefined] : record.seq >= 16384 ? [1, 1.3] : [1.5, 2];
      const goal = aim === undefined ? `≥ ${needed}x` : `≥ ${needed}x, aiming at ${aim}x`;
      verdicts.push(`training at ${trainRatio.toFixed(2)}x PEFT's tokens/s (goal ${goal}: ${trainRatio >= needed ? "met" : "not met"})`);
    }
    if (record.device === "cuda") {
      // issue 13: at most the budget it planned against, measured on the device
      const peak = record.measuredPeakGiB ?? record.peakGiB;
      const limit = record.gpuMemoryGiB ?? (record.seq >= 16384 ? 24 : record.seq === 4096 ? 10 : undefined);
      const what = record.measuredPeakGiB === undefined || record.measuredPeakGiB === null ? "planned" : "measured";
      if (peak !== undefined && peak !== null && limit !== undefined) verdicts.push(`peak ${peak.toFixed(2)} GiB ${what} (goal ≤ ${limit} GiB: ${peak <= limit ? "met" : "not met"})`);
      // what a long length paid to fit: checkpoints moved to host memory, and the copies compute did not hide
      if (record.hostGiB) {
        const wait = record.copyWaitShare === undefined || record.copyWaitShare === null ? "" : `, ${percent(record.copyWaitShare)} of the step time waiting on checkpoint copies`;
        verdicts.push(`${record.hostGiB.toFixed(2)} GiB of checkpoints in host memory${wait}`);
      }
    }
    if (verdicts.length > 0) lines.push(`- ${label}: ${verdicts.join("; ")}.`);
  }
  return lines;
}

function attentionLines(records: AttentionRecord[]): string[] {
  if (records.length === 0) return [];
  const newest = new Map<string, AttentionRecord>();
  for (const record of records) newest.set(`${record.machine}|${record.seq}|${record.heads}|${record.kvHeads}|${record.headDim}`, record);
  const goals = [...newest.values()].map((record) => {
    const label = `attention seq ${record.seq} (${record.date}, ${record.machine}, ${record.commit})`;
    if (record.sdpaFlashTflops === null) return `- ${label}: no SDPA flash measurement.`;
    const met = record.forwardBackwardTflops >= record.sdpaFlashTflops;
    const cudnn = record.sdpaCudnnTflops === null ? "" : `; cuDNN's ${record.sdpaCudnnTflops.toFixed(1)} (aimed at: ${record.forwardBackwardTflops >= record.sdpaCudnnTflops ? "met" : "not met"})`;
    return `- ${label}: forward + backward ${record.forwardBackwardTflops.toFixed(1)} TFLOP/s against SDPA flash's ${record.sdpaFlashTflops.toFixed(1)} (goal ≥: ${met ? "met" : "not met"})${cudnn}.`;
  });
  return [
    "",
    "## Attention kernels",
    "",
    "thinktune's fused attention (bench/kernels/flash_attention_check.cu) beside torch's scaled_dot_product_attention",
    "(`../shared/bench/sdpa_attention.py`: causal, grouped-query, bf16) in the same command; TFLOP/s of the useful",
    "causal work (forward 4·T²·D·H/2, forward + backward 3.5× that).",
    "",
    "| date | machine | commit | seq | heads | head dim | fwd TFLOP/s | fwd+bwd TFLOP/s | SDPA flash fwd+bwd | SDPA cuDNN fwd+bwd |",
    "|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ...records.map(
      (r) =>
        `| ${[r.date, r.gpu ? `${r.machine} (${r.gpu})` : r.machine, r.commit, r.seq, `${r.heads}/${r.kvHeads}`, r.headDim, format(r.forwardTflops), format(r.forwardBackwardTflops), format(r.sdpaFlashTflops), format(r.sdpaCudnnTflops)].join(" | ")} |`,
    ),
    "",
    ...goals,
  ];
}

/**
 * @param profile Markdown of the newest per-kernel time breakdown (bench/profile.md, written by hand
 * from bench/kernels/ncu_summary.mjs), shown under its own heading
 */
export function renderResultsMarkdown(all: AnyBenchRecord[], profile?: string): string {
  const records = all.filter((record): record is BenchRecord => !isAttentionRecord(record));
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
    "(its peak by design; on the CPU the memory-mapped weights included); measured GiB: the most device memory",
    "in use during the measurement (cudaMemGetInfo, the CUDA context included). Budget: --gpu-memory; kept:",
    "layers whose activations the plan kept from the forward (the others are recomputed in the backward), and in",
    "brackets how many of them kept their feed-forward products too (the rest recompute gate and up).",
    "Host GiB: pinned host memory holding layer checkpoints; copy wait: the share of the training time the GPU",
    "waited for checkpoint copies that did not overlap compute.",
    "",
    "| date | machine | commit | device | model | type | seq | threads | train tok/s | PEFT tok/s | vs PEFT | forward tok/s | llama.cpp tok/s | vs llama.cpp | step s | peak GiB | measured GiB | budget GiB | kept | host GiB | copy wait | PEFT peak GiB | MFU |",
    "|---|---|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
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
      format(record.measuredPeakGiB, 2),
      format(record.gpuMemoryGiB, 0),
      record.keptLayers === null || record.keptLayers === undefined
        ? "–"
        : `${record.keptLayers}${typeof record.keptWholeLayers === "number" ? ` (${record.keptWholeLayers})` : ""}`,
      format(record.hostGiB, 2),
      percent(record.copyWaitShare),
      format(record.peftPeakGiB, 2),
      percent(record.mfu),
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
    ...attentionLines(all.filter(isAttentionRecord)),
    ...(profile ? ["", "## Where the time goes (bench/profile.md)", "", profile.trim()] : []),
    "",
  ].join("\n");
}

/** Rewrites the Markdown table from every record (temp file + rename). */
export async function writeResultsMarkdown(file: string, records: AnyBenchRecord[]): Promise<void> {
  const profileFile = path.join(path.dirname(file), "profile.md");
  const profile = existsSync(profileFile) ? await readFile(profileFile, "utf8") : undefined;
  await writeFileAtomic(file, renderResultsMarkdown(records, profile));
}
