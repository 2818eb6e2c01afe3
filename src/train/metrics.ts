// metrics.jsonl: one JSON record per optimizer step and per evaluation, appended as they happen.
import { appendFile, readFile } from "node:fs/promises";
import { writeFileAtomic } from "../util/atomic-file.js";

export interface StepRecord {
  type: "step";
  step: number;
  epoch: number;
  /** mean cross-entropy per target token of the step */
  loss: number;
  lr: number;
  /** tokens processed (row lengths), and of those the ones that carry loss */
  tokens: number;
  lossTokens: number;
  tokensPerSecond: number;
  gradNorm: number;
  elapsedMs: number;
  /**
   * bytes: the process's peak resident memory on the CPU; on CUDA the most device memory in use so far,
   * measured on the device (the plan's total where the engine reports no measurement)
   */
  peakMemory: number;
  /** bytes of pinned host memory holding the layers' checkpoints (CUDA, where the engine reports it; 0 when they stay on the GPU) */
  hostMemory?: number;
}

export interface EvalRecord {
  type: "eval";
  step: number;
  valLoss: number;
}

export type MetricsRecord = StepRecord | EvalRecord;

export async function appendMetrics(file: string, record: MetricsRecord): Promise<void> {
  await appendFile(file, `${JSON.stringify(record)}\n`);
}

/** Records of a metrics file; a torn last line (a process killed mid-append) is dropped. */
export async function readMetrics(file: string): Promise<MetricsRecord[]> {
  let text: string;
  try {
    text = await readFile(file, "utf8");
  } catch {
    return [];
  }
  const records: MetricsRecord[] = [];
  for (const line of text.split("\n")) {
    if (line.trim() === "") continue;
    try {
      records.push(JSON.parse(line) as MetricsRecord);
    } catch {
      // only the line being written when a process died can be partial
    }
  }
  return records;
}

/** A resumed run redoes the steps after its checkpoint: their old records go. */
export async function truncateMetrics(file: string, lastStep: number): Promise<MetricsRecord[]> {
  const kept = (await readMetrics(file)).filter((record) => record.step <= lastStep);
  await writeFileAtomic(file, [Buffer.from(kept.map((record) => `${JSON.stringify(record)}\n`).join(""))]);
  return kept;
}
