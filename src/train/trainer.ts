// The training loop as a library: `for await (const event of trainer.run({ signal }))`. It owns the
// run folder (config, metrics, report, checkpoints, adapter) and never prints or exits; the CLI does.
import { createHash } from "node:crypto";
import { existsSync } from "node:fs";
import { mkdir, readFile } from "node:fs/promises";
import path from "node:path";
import type { NamedTensor } from "../native/addon.js";
import { loadTrainingData, packExamples, type DataReport, type PackedRow, type TokenizedExample } from "../data/index.js";
import { writeFileAtomic } from "../util/atomic-file.js";
import { writeGgufAdapter } from "../export/gguf-adapter.js";
import { readGgufModel } from "../gguf/read.js";
import { planEpoch, countSteps, type BatchingOptions, type EpochPlan } from "./batches.js";
import {
  listCheckpoints,
  loadLatestCheckpoint,
  pruneCheckpoints,
  saveCheckpoint,
  type Checkpoint,
  type CheckpointState,
} from "./checkpoint.js";
import {
  checkInputPaths,
  configHash,
  readConfigFile,
  resolveConfig,
  resolveDevice,
  trajectoryDifferences,
  TrainingConfigError,
  type TrainingConfig,
  type TrainingConfigInput,
} from "./config.js";
import { parseByteSize } from "./byte-size.js";
import { Engine } from "./engine.js";
import { appendMetrics, truncateMetrics, type EvalRecord, type MetricsRecord, type StepRecord } from "./metrics.js";
import { writeReport } from "./report.js";
import { Rng } from "./rng.js";
import { defaultWarmupSteps, learningRateAt, type LearningRateSchedule } from "./schedule.js";

export class TrainingError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "TrainingError";
  }
}

/** The loss (or gradient) stopped being a finite number: the run stops at `step` and keeps its last good checkpoint. */
export class TrainingDivergedError extends TrainingError {
  constructor(
    readonly step: number,
    /** what became non-finite, e.g. "the loss is NaN" */
    readonly reason: string,
    readonly learningRate: number,
    readonly lastCheckpoint: string | undefined,
  ) {
    super(
      `training diverged at step ${step}: ${reason} (learning rate ${learningRate}). ` +
        (lastCheckpoint ? `The last good checkpoint is ${lastCheckpoint}. ` : "No checkpoint was written before it. ") +
        `Lower the learning rate (e.g. --lr ${suggestLearningRate(learningRate)}) and train again.`,
    );
    this.name = "TrainingDivergedError";
  }
}

function suggestLearningRate(current: number): string {
  return Number((Math.min(current, 1e-2) / 10).toPrecision(2)).toString();
}

export interface TrainerStartEvent {
  type: "start";
  runDir: string;
  device: "cpu" | "cuda";
  /** optimizer steps of the whole run, and the one this run starts after (non-zero when resumed) */
  totalSteps: number;
  startStep: number;
  warmupSteps: number;
  resumedFrom?: string;
  trainExamples: number;
  validationExamples: number;
  trainRows: number;
  validationRows: number;
}
export interface TrainerStepEvent extends StepRecord {
  totalSteps: number;
}
export type TrainerEvalEvent = EvalRecord;
export interface TrainerCheckpointEvent {
  type: "checkpoint";
  step: number;
  dir: string;
  valLoss?: number;
}
export interface TrainerDoneEvent {
  type: "done";
  /** "stopped": the signal was aborted; a checkpoint to resume from was written */
  reason: "completed" | "stopped";
  step: number;
  totalSteps: number;
  runDir: string;
  /** <run>/adapter/adapter.gguf, written when the run completed */
  adapterPath?: string;
  checkpointDir?: string;
  bestCheckpointDir?: string;
  trainLoss?: number;
  valLoss?: number;
  elapsedMs: number;
}
export type TrainerEvent = TrainerStartEvent | TrainerStepEvent | TrainerEvalEvent | TrainerCheckpointEvent | TrainerDoneEvent;

export interface TrainerOptions {
  /** continue the run in `config.out` from its last complete checkpoint */
  resume?: boolean;
}

interface PreparedData {
  train: TokenizedExample[];
  validation: TokenizedExample[];
  report: DataReport;
  trainRows: PackedRow[];
  validationRows: PackedRow[];
  dataHash: string;
  totalSteps: number;
  warmupSteps: number;
}

/** Where the next optimizer step begins. */
interface Position {
  step: number;
  epoch: number;
  plan: EpochPlan;
  /** index into plan.steps */
  stepInEpoch: number;
}

function timestampFolder(): string {
  return new Date().toISOString().replace(/\..*$/, "").replace(/:/g, "-");
}

function hashRows(rows: PackedRow[], hash: ReturnType<typeof createHash>): void {
  for (const row of rows) {
    hash.update(new Uint8Array(row.tokens.buffer, row.tokens.byteOffset, row.tokens.byteLength));
    hash.update(new Uint8Array(row.targets.buffer, row.targets.byteOffset, row.targets.byteLength));
    hash.update(new Uint8Array(row.seqStarts.buffer, row.seqStarts.byteOffset, row.seqStarts.byteLength));
  }
}

function peakMemoryBytes(): number {
  return process.resourceUsage().maxRSS * 1024;
}

export class Trainer {
  readonly config: TrainingConfig;
  readonly runDir: string;
  private readonly resume: boolean;
  private data: PreparedData | undefined;
  private engine: Engine | undefined;
  private device: "cpu" | "cuda" | undefined;
  private resumeCheckpoint: Checkpoint | undefined;
  private running = false;

  /** Validates `config` (unknown keys and wrong types throw TrainingConfigError); nothing loads yet. */
  constructor(config: TrainingConfigInput, options: TrainerOptions = {}) {
    this.config = resolveConfig([{ value: config, source: "trainer config" }]);
    this.resume = options.resume ?? false;
    if (this.resume && this.config.out === undefined) throw new TrainingConfigError("resume needs `out`: the run folder to continue");
    this.runDir = this.config.out ?? path.resolve("runs", timestampFolder());
    this.config.out = this.runDir;
  }

  /** A trainer with its data and engine loaded. */
  static async create(config: TrainingConfigInput, options: TrainerOptions = {}): Promise<Trainer> {
    const trainer = new Trainer(config, options);
    await trainer.prepare();
    return trainer;
  }

  /**
   * A trainer continuing the run in `runDir` with the configuration saved there; `overrides` may
   * change only what does not alter the losses (device, threads, evaluation and checkpoint cadence).
   */
  static async resume(runDir: string, overrides: TrainingConfigInput = {}): Promise<Trainer> {
    const configFile = path.join(runDir, "config.json");
    if (!existsSync(configFile)) throw new TrainingConfigError(`cannot resume ${runDir}: it has no config.json, so it is not a thinktune run folder`);
    const saved = resolveConfig([{ value: await readConfigFile(configFile), source: configFile }]);
    const merged = resolveConfig([
      { value: saved, source: configFile },
      { value: { ...overrides, out: path.resolve(runDir) }, source: "resume overrides" },
    ]);
    const changed = trajectoryDifferences(saved, merged);
    if (changed.length > 0) {
      throw new TrainingConfigError(
        `cannot resume ${runDir} with a different ${changed.join(", ")}: a resumed run must keep the settings that decide its losses; start a new run instead`,
      );
    }
    return new Trainer(merged, { resume: true });
  }

  get dataReport(): DataReport | undefined {
    return this.data?.report;
  }

  get totalSteps(): number | undefined {
    return this.data?.totalSteps;
  }

  /** The first training example (after the split), once the data is prepared: the CLI's before/after prompt. */
  get firstTrainingExample(): TokenizedExample | undefined {
    return this.data?.train[0];
  }

  /** Reads, checks, tokenizes and packs the data (before any model weights load). */
  async prepareData(): Promise<DataReport> {
    if (this.data) return this.data.report;
    const config = this.config;
    checkInputPaths(config);
    this.device = resolveDevice(config.device);
    const loaded = await loadTrainingData(config.model, {
      data: config.data,
      valData: config.valData,
      valSplit: config.valSplit,
      format: config.format,
      template: config.template,
      trainOn: config.trainOn,
      think: config.think,
      onInvalid: config.onInvalid,
      maxLength: config.maxLength,
      truncate: config.truncate,
      strict: config.strict,
      seed: config.seed,
    });
    const trainRows = packExamples(loaded.train, config.maxLength);
    const validationRows = packExamples(loaded.validation, config.maxLength);
    const hash = createHash("sha256");
    hashRows(trainRows, hash);
    hash.update("|");
    hashRows(validationRows, hash);
    const totalSteps = config.maxSteps ?? countSteps(trainRows.map((row) => row.tokens.length), config.seed, config.epochs, this.batching());
    this.data = {
      ...loaded,
      trainRows,
      validationRows,
      dataHash: hash.digest("hex").slice(0, 16),
      totalSteps,
      warmupSteps: Math.min(config.warmupSteps ?? defaultWarmupSteps(totalSteps), totalSteps),
    };
    return loaded.report;
  }

  /** Loads the data, then the engine, then (when resuming) the last complete checkpoint into it. */
  async prepare(): Promise<void> {
    await this.prepareData();
    if (this.engine) return;
    const config = this.config;
    if (!this.resume) await this.checkRunFolderIsFree();
    const checkpoint = this.resume ? await this.findResumeCheckpoint() : undefined;
    const engine = await Engine.load(config.model, {
      device: this.device,
      threads: config.threads,
      lora: { ...config.lora, seed: config.seed },
      optimizer: config.optimizer,
      maxTokens: config.maxLength,
      ...(config.gpuMemory === undefined ? {} : { gpuMemoryBytes: parseByteSize(config.gpuMemory) }),
    });
    if (checkpoint) {
      try {
        engine.setLora(checkpoint.lora);
        engine.setOptimizerState(checkpoint.optimizer);
      } catch (error) {
        engine.dispose();
        throw new TrainingError(`checkpoint ${checkpoint.dir} does not fit the model: ${(error as Error).message}`);
      }
    }
    this.engine = engine;
    this.resumeCheckpoint = checkpoint;
  }

  private batching(): BatchingOptions {
    return { batchTokens: this.config.batchTokens ?? this.config.maxLength, gradAccum: this.config.gradAccum };
  }

  private async checkRunFolderIsFree(): Promise<void> {
    const used = ["metrics.jsonl", "checkpoints", "adapter"].filter((name) => existsSync(path.join(this.runDir, name)));
    if (used.length > 0) {
      throw new TrainingConfigError(
        `${this.runDir} already holds a run (${used.join(", ")}); continue it with --resume ${this.runDir} or choose another --out`,
      );
    }
  }

  private async findResumeCheckpoint(): Promise<Checkpoint> {
    const { checkpoint, skipped } = await loadLatestCheckpoint(this.runDir);
    if (!checkpoint) {
      const why = skipped.length > 0 ? `; unreadable: ${skipped.join("; ")}` : "";
      throw new TrainingError(`cannot resume ${this.runDir}: it has no complete checkpoint${why}`);
    }
    const { state } = checkpoint;
    const data = this.data!;
    if (state.configHash !== configHash(this.config)) {
      throw new TrainingError(`cannot resume from ${checkpoint.dir}: it was written with a different configuration than ${path.join(this.runDir, "config.json")}`);
    }
    if (state.dataHash !== data.dataHash) {
      throw new TrainingError(`cannot resume from ${checkpoint.dir}: the training data changed since it was written (${this.config.data})`);
    }
    if (state.totalSteps !== data.totalSteps) {
      throw new TrainingError(`cannot resume from ${checkpoint.dir}: it plans ${state.totalSteps} steps, this data and config give ${data.totalSteps}`);
    }
    return checkpoint;
  }

  /** Releases the engine; `run` does this itself when it ends. */
  dispose(): void {
    this.engine?.dispose();
    this.engine = undefined;
  }

  /**
   * Trains, yielding events. Aborting `signal` lets the running step finish, writes a checkpoint and
   * ends with a "done" event whose reason is "stopped". A non-finite loss throws TrainingDivergedError.
   */
  async *run(options: { signal?: AbortSignal } = {}): AsyncGenerator<TrainerEvent, void, undefined> {
    if (this.running) throw new TrainingError("this trainer is already running; create another Trainer for another run");
    this.running = true;
    try {
      await this.prepare();
      yield* this.loop(options.signal);
    } finally {
      this.dispose();
    }
  }

  private async *loop(signal: AbortSignal | undefined): AsyncGenerator<TrainerEvent, void, undefined> {
    const config = this.config;
    const data = this.data!;
    const engine = this.engine!;
    const checkpoint = this.resumeCheckpoint;
    const metricsFile = path.join(this.runDir, "metrics.jsonl");
    const reportFile = path.join(this.runDir, "report.html");
    const rowLengths = data.trainRows.map((row) => row.tokens.length);
    const batching = this.batching();
    const totalSteps = data.totalSteps;
    const schedule: LearningRateSchedule = {
      peak: config.learningRate,
      warmupSteps: data.warmupSteps,
      totalSteps,
      decay: config.lrSchedule,
      minimum: config.minLearningRate,
    };

    await mkdir(this.runDir, { recursive: true });
    await writeFileAtomic(path.join(this.runDir, "config.json"), [Buffer.from(`${JSON.stringify(config, null, 2)}\n`)]);
    let records: MetricsRecord[];
    let position: Position;
    let elapsedBefore = 0;
    let lastValLoss: number | undefined;
    let lastTrainLoss: number | undefined;
    let lastCheckpointDir: string | undefined;
    // the generator as it is after the current epoch's shuffle: the next epoch draws from it
    let rngForEpochs: Rng;
    if (checkpoint) {
      const { state } = checkpoint;
      records = await truncateMetrics(metricsFile, state.step);
      const rng = Rng.fromState(state.rngState);
      const plan = planEpoch(rowLengths, rng, batching);
      const stepInEpoch = plan.steps.findIndex((planned) => planned.start === state.dataPosition);
      if (stepInEpoch < 0) throw new TrainingError(`checkpoint ${checkpoint.dir}: data position ${state.dataPosition} is not a step boundary of epoch ${state.epoch}`);
      position = { step: state.step, epoch: state.epoch, plan, stepInEpoch };
      rngForEpochs = rng;
      elapsedBefore = state.elapsedMs;
      lastValLoss = state.valLoss;
      lastTrainLoss = state.trainLoss;
      lastCheckpointDir = checkpoint.dir;
    } else {
      records = [];
      await writeFileAtomic(metricsFile, []);
      const rng = Rng.fromSeed(config.seed);
      position = { step: 0, epoch: 0, plan: planEpoch(rowLengths, rng, batching), stepInEpoch: 0 };
      rngForEpochs = rng;
    }

    yield {
      type: "start",
      runDir: this.runDir,
      device: this.device!,
      totalSteps,
      startStep: position.step,
      warmupSteps: data.warmupSteps,
      resumedFrom: checkpoint?.dir,
      trainExamples: data.train.length,
      validationExamples: data.validation.length,
      trainRows: data.trainRows.length,
      validationRows: data.validationRows.length,
    };

    const startedAt = performance.now();
    const elapsed = () => elapsedBefore + (performance.now() - startedAt);
    let evaluatedAt = checkpoint && records.some((record) => record.type === "eval" && record.step === position.step) ? position.step : -1;
    let checkpointedAt = checkpoint ? position.step : -1;

    const evaluate = async (): Promise<TrainerEvalEvent | undefined> => {
      if (data.validationRows.length === 0) return undefined;
      const result = await engine.evaluate(data.validationRows);
      const record: EvalRecord = { type: "eval", step: position.step, valLoss: result.tokens > 0 ? result.lossSum / result.tokens : Number.NaN };
      evaluatedAt = position.step;
      lastValLoss = record.valLoss;
      records.push(record);
      await appendMetrics(metricsFile, record);
      return record;
    };

    const writeCheckpoint = async (): Promise<TrainerCheckpointEvent> => {
      const next = this.nextStepPosition(position, rngForEpochs);
      const state: CheckpointState = {
        version: 1,
        step: position.step,
        epoch: next.epoch,
        dataPosition: next.dataPosition,
        rngState: next.rngState,
        scheduleStep: position.step + 1,
        totalSteps,
        configHash: configHash(config),
        dataHash: data.dataHash,
        valLoss: lastValLoss,
        trainLoss: lastTrainLoss,
        elapsedMs: elapsed(),
        createdAt: new Date().toISOString(),
      };
      const dir = await saveCheckpoint(this.runDir, { state, lora: engine.getLora(), optimizer: engine.getOptimizerState() });
      await pruneCheckpoints(this.runDir, config.keepCheckpoints, await this.bestCheckpointStep());
      await writeReport(reportFile, { config, records, totalSteps, status: `checkpoint at step ${position.step} of ${totalSteps}` });
      checkpointedAt = position.step;
      lastCheckpointDir = dir;
      return { type: "checkpoint", step: position.step, dir, valLoss: lastValLoss };
    };

    while (position.step < totalSteps) {
      if (signal?.aborted) {
        if (checkpointedAt !== position.step) yield await writeCheckpoint();
        await writeReport(reportFile, { config, records, totalSteps, status: `stopped at step ${position.step} of ${totalSteps}; resume with --resume` });
        yield await this.doneEvent("stopped", position.step, totalSteps, lastCheckpointDir, lastTrainLoss, lastValLoss, elapsed());
        return;
      }
      if (position.stepInEpoch >= position.plan.steps.length) {
        position = { step: position.step, epoch: position.epoch + 1, plan: planEpoch(rowLengths, rngForEpochs, batching), stepInEpoch: 0 };
      }
      const planned = position.plan.steps[position.stepInEpoch];
      const rows = planned.rows.map((index) => data.trainRows[index]);
      const stepNumber = position.step + 1;
      const lr = learningRateAt(schedule, stepNumber);
      const stepStarted = performance.now();
      let result: Awaited<ReturnType<Engine["step"]>>;
      try {
        result = await engine.step(rows, lr);
      } catch (error) {
        // The engine refuses non-finite losses and gradients itself (before updating). After at least one
        // update that is divergence; on the very first step the model or data are at fault, not the rate.
        const message = (error as Error).message;
        if (position.step > 0 && /NaN or infinite/.test(message)) {
          const reason = message.split(";")[0];
          await writeReport(reportFile, { config, records, totalSteps, status: `diverged at step ${stepNumber}: ${reason}` });
          throw new TrainingDivergedError(stepNumber, reason, lr, lastCheckpointDir);
        }
        throw error;
      }
      const stepMs = performance.now() - stepStarted;
      const loss = result.tokens > 0 ? result.lossSum / result.tokens : Number.NaN;
      const nonFinite = !Number.isFinite(loss) ? `the loss is ${loss}` : !Number.isFinite(result.gradNorm) ? `the gradient norm is ${result.gradNorm}` : undefined;
      if (nonFinite) {
        await writeReport(reportFile, { config, records, totalSteps, status: `diverged at step ${stepNumber}: ${nonFinite}` });
        throw new TrainingDivergedError(stepNumber, nonFinite, lr, lastCheckpointDir);
      }
      position = { ...position, step: stepNumber, stepInEpoch: position.stepInEpoch + 1 };
      lastTrainLoss = loss;
      const processed = rows.reduce((sum, row) => sum + row.tokens.length, 0);
      const record: StepRecord = {
        type: "step",
        step: stepNumber,
        epoch: position.epoch + position.stepInEpoch / position.plan.steps.length,
        loss,
        lr,
        tokens: processed,
        lossTokens: result.tokens,
        tokensPerSecond: processed / (stepMs / 1000),
        gradNorm: result.gradNorm,
        elapsedMs: elapsed(),
        peakMemory: this.peakMemory(engine),
      };
      records.push(record);
      await appendMetrics(metricsFile, record);
      yield { ...record, totalSteps };
      const last = stepNumber === totalSteps;
      if (stepNumber % config.evalEvery === 0 || last) {
        const evalEvent = await evaluate();
        if (evalEvent) yield evalEvent;
      }
      if (stepNumber % config.checkpointEvery === 0 || last) yield await writeCheckpoint();
    }

    // A resumed run whose checkpoint was already the last step still ends with its evaluation.
    if (evaluatedAt !== position.step) {
      const evalEvent = await evaluate();
      if (evalEvent) yield evalEvent;
    }
    if (checkpointedAt !== position.step) yield await writeCheckpoint();
    const adapterPath = await this.writeAdapter(engine.getLora(), position.step);
    await writeReport(reportFile, { config, records, totalSteps, status: `completed ${position.step} steps` });
    yield await this.doneEvent("completed", position.step, totalSteps, lastCheckpointDir, lastTrainLoss, lastValLoss, elapsed(), adapterPath);
  }

  private async doneEvent(
    reason: TrainerDoneEvent["reason"],
    step: number,
    totalSteps: number,
    checkpointDir: string | undefined,
    trainLoss: number | undefined,
    valLoss: number | undefined,
    elapsedMs: number,
    adapterPath?: string,
  ): Promise<TrainerDoneEvent> {
    const best = await this.bestCheckpointStep();
    const bestCheckpointDir = best === undefined ? undefined : path.join(this.runDir, "checkpoints", `step-${best}`);
    return { type: "done", reason, step, totalSteps, runDir: this.runDir, adapterPath, checkpointDir, bestCheckpointDir, trainLoss, valLoss, elapsedMs };
  }

  /** Where the step after `position` begins, as a checkpoint stores it. */
  private nextStepPosition(position: Position, rngAfterShuffle: Rng): { epoch: number; dataPosition: number; rngState: CheckpointState["rngState"] } {
    if (position.stepInEpoch < position.plan.steps.length) {
      return { epoch: position.epoch, dataPosition: position.plan.steps[position.stepInEpoch].start, rngState: position.plan.rngState };
    }
    // the epoch is finished: the next one starts with a shuffle drawn from the generator as it is now
    return { epoch: position.epoch + 1, dataPosition: 0, rngState: rngAfterShuffle.state() };
  }

  /** The checkpoint with the lowest validation loss (the earliest of equals), if any has one. */
  private async bestCheckpointStep(): Promise<number | undefined> {
    let best: { step: number; valLoss: number } | undefined;
    for (const entry of await listCheckpoints(this.runDir)) {
      try {
        const state = JSON.parse(await readFile(path.join(entry.dir, "state.json"), "utf8")) as Partial<CheckpointState>;
        if (typeof state.valLoss === "number" && Number.isFinite(state.valLoss) && (best === undefined || state.valLoss < best.valLoss)) {
          best = { step: entry.step, valLoss: state.valLoss };
        }
      } catch {
        // an unreadable checkpoint cannot be the best one
      }
    }
    return best?.step;
  }

  private peakMemory(engine: Engine): number {
    if (this.device === "cuda") return engine.memoryPlan().total ?? 0;
    return peakMemoryBytes();
  }

  private async writeAdapter(lora: NamedTensor[], step: number): Promise<string> {
    const adapterDir = path.join(this.runDir, "adapter");
    const adapterPath = path.join(adapterDir, "adapter.gguf");
    await mkdir(adapterDir, { recursive: true });
    await writeGgufAdapter(adapterPath, { baseModelPath: this.config.model, alpha: this.config.lora.alpha, tensors: lora });
    const base = await readGgufModel(this.config.model);
    const description = {
      baseModelPath: this.config.model,
      arch: base.metadata["general.architecture"],
      rank: this.config.lora.rank,
      alpha: this.config.lora.alpha,
      targets: this.config.lora.targets,
      step,
      adapter: "adapter.gguf",
    };
    await writeFileAtomic(path.join(adapterDir, "thinktune.json"), [Buffer.from(`${JSON.stringify(description, null, 2)}\n`)]);
    return adapterPath;
  }
}
