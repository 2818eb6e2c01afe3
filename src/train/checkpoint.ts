// Checkpoints: checkpoints/step-N/{lora.safetensors, optimizer.safetensors, state.json}. Each is built
// in checkpoints/.step-N.tmp and renamed into place only when complete, so a process killed mid-write
// leaves every earlier checkpoint intact and the partial folder is ignored (and cleared next time).
import { readdir, readFile, rm } from "node:fs/promises";
import path from "node:path";
import { z } from "zod";
import type { NamedTensor } from "../native/addon.js";
import { readSafetensors, writeSafetensors } from "../export/safetensors.js";
import { isTemporarySiblingName, writeFileAtomic, writeFolderAtomic } from "../util/atomic-file.js";

export class CheckpointError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "CheckpointError";
  }
}

const rngStateSchema = z.tuple([z.int(), z.int(), z.int(), z.int()]);

export const checkpointStateSchema = z.object({
  version: z.literal(1),
  /** optimizer steps done */
  step: z.int().min(0),
  /** the epoch the next step belongs to (0-based) */
  epoch: z.int().min(0),
  /** index into that epoch's shuffled row order where the next step begins */
  dataPosition: z.int().min(0),
  /** generator state before that epoch's shuffle (restoring it redraws the same order) */
  rngState: rngStateSchema,
  /** learning-rate schedule: the step the next step's rate is computed for, and the run's length */
  scheduleStep: z.int().min(1),
  totalSteps: z.int().min(1),
  configHash: z.string(),
  dataHash: z.string(),
  /** the most recent validation loss at or before this step, when there was one */
  valLoss: z.number().optional(),
  trainLoss: z.number().optional(),
  elapsedMs: z.number().min(0),
  createdAt: z.string(),
});
export type CheckpointState = z.infer<typeof checkpointStateSchema>;

export interface Checkpoint {
  dir: string;
  state: CheckpointState;
  lora: NamedTensor[];
  optimizer: { step: number; tensors: NamedTensor[] };
}

export function checkpointsDir(runDir: string): string {
  return path.join(runDir, "checkpoints");
}

const completeName = /^step-(\d+)$/;

export async function saveCheckpoint(runDir: string, checkpoint: Omit<Checkpoint, "dir">): Promise<string> {
  const parent = checkpointsDir(runDir);
  const name = `step-${checkpoint.state.step}`;
  const finalDir = path.join(parent, name);
  // A checkpoint of the same step (a resumed run re-reaching it) is replaced only once the new one is whole.
  await writeFolderAtomic(
    finalDir,
    async (dir) => {
      await writeSafetensors(path.join(dir, "lora.safetensors"), checkpoint.lora, { format: "thinktune-lora" });
      await writeSafetensors(path.join(dir, "optimizer.safetensors"), checkpoint.optimizer.tensors, {
        format: "thinktune-adamw",
        step: String(checkpoint.optimizer.step),
      });
      await writeFileAtomic(path.join(dir, "state.json"), `${JSON.stringify(checkpoint.state, null, 2)}\n`);
    },
    { temporaryPath: path.join(parent, `.${name}.tmp`) },
  );
  return finalDir;
}

/** Complete checkpoint folders (step-N), oldest first; temporary and unrelated entries are skipped. */
export async function listCheckpoints(runDir: string): Promise<{ step: number; dir: string }[]> {
  let names: string[];
  try {
    names = await readdir(checkpointsDir(runDir));
  } catch {
    return [];
  }
  return names
    .map((name) => ({ name, match: completeName.exec(name) }))
    .filter((entry): entry is { name: string; match: RegExpExecArray } => entry.match !== null)
    .map((entry) => ({ step: Number(entry.match[1]), dir: path.join(checkpointsDir(runDir), entry.name) }))
    .sort((a, b) => a.step - b.step);
}

export async function loadCheckpoint(dir: string): Promise<Checkpoint> {
  let stateValue: unknown;
  try {
    stateValue = JSON.parse(await readFile(path.join(dir, "state.json"), "utf8"));
  } catch (error) {
    throw new CheckpointError(`${path.join(dir, "state.json")} cannot be read: ${(error as Error).message}`);
  }
  const parsed = checkpointStateSchema.safeParse(stateValue);
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    throw new CheckpointError(`${path.join(dir, "state.json")} is not a thinktune checkpoint state: ${issue.path.join(".")}: ${issue.message}`);
  }
  const lora = await readSafetensors(path.join(dir, "lora.safetensors"));
  const optimizer = await readSafetensors(path.join(dir, "optimizer.safetensors"));
  const optimizerStep = Number(optimizer.metadata.step);
  if (!Number.isInteger(optimizerStep) || optimizerStep < 0) {
    throw new CheckpointError(`${path.join(dir, "optimizer.safetensors")} has no valid "step" in its metadata`);
  }
  return { dir, state: parsed.data, lora: lora.tensors, optimizer: { step: optimizerStep, tensors: optimizer.tensors } };
}

/**
 * The newest checkpoint that loads. Older ones are tried when a newer one is unreadable; each
 * skipped folder is reported in `skipped` with the reason.
 */
export async function loadLatestCheckpoint(runDir: string): Promise<{ checkpoint: Checkpoint | undefined; skipped: string[] }> {
  const skipped: string[] = [];
  const all = await listCheckpoints(runDir);
  for (const entry of all.reverse()) {
    try {
      return { checkpoint: await loadCheckpoint(entry.dir), skipped };
    } catch (error) {
      skipped.push(`${entry.dir}: ${(error as Error).message}`);
    }
  }
  return { checkpoint: undefined, skipped };
}

/** Keeps the newest `keepLast` checkpoints and `keepStep` (the best by validation loss); removes leftovers. */
export async function pruneCheckpoints(runDir: string, keepLast: number, keepStep: number | undefined): Promise<void> {
  const all = await listCheckpoints(runDir);
  const keep = new Set(all.slice(-keepLast).map((entry) => entry.step));
  if (keepStep !== undefined) keep.add(keepStep);
  for (const entry of all) {
    if (!keep.has(entry.step)) await rm(entry.dir, { recursive: true, force: true });
  }
  let names: string[] = [];
  try {
    names = await readdir(checkpointsDir(runDir));
  } catch {
    return;
  }
  for (const name of names) {
    if (/^\.step-\d+\.tmp$/.test(name) || (name.startsWith(".step-") && isTemporarySiblingName(name))) await rm(path.join(checkpointsDir(runDir), name), { recursive: true, force: true });
  }
}
