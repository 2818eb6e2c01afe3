// The training loop as a library: `for await (const event of trainer.run({ signal }))`. It owns the
// run folder (config, metrics, report, checkpoints, adapter) and never prints or exits; the CLI does.
import { createHash } from "node:crypto";
import { existsSync } from "node:fs";
import { mkdir, readFile } from "node:fs/promises";
import path from "node:path";
import { nativeErrorCode, type NamedTensor } from "../native/addon.js";
import { loadTrainingData, packExamples, type DataReport, type PackedRow, type TokenizedExample } from "../data/index.js";
import { writeFileAtomic } from "../util/atomic-file.js";
import { writeGgufAdapter } from "../export/gguf-adapter.js";
import { modelConfigFromGguf } from "../gguf/model-config.js";
import { readGgufModel, type GgufModelFile } from "../gguf/read.js";
import { planEpoch, countSteps, type BatchingOptions, type EpochPlan } from "./batches.js";
import {
  listCheckpoints,
  loadCheckpoint,
  loadLatestCheckpoint,
  pruneCheckpoints,
  saveCheckpoint,
  type Checkpoint,
  type CheckpointState,
} from "./checkpoint.js";
import {
  checkInputPaths,
  configHash,
  dataOptionsOf,
  engineOptionsOf,
  isResolvedConfig,
  readConfigFile,
  resolveConfig,
  resolveDevice,
  trajectoryDifferences,
  TrainingConfigError,
  type ConfigLayer,
  type TrainingConfig,
  type TrainingConfigInput,
} from "./config.js";
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
  /** a resumed run that was stopped before its first checkpoint: it starts again from step 0 with its saved configuration */
  restarted?: boolean;
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
  /** the step whose weights the adapter holds, and why that one ("last", or "best" by validation loss) */
  adapterStep?: number;
  adapterChoice?: "last" | "best";
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

/** One run as it trains: where it is, what it has recorded, when it last evaluated and checkpointed. */
interface RunState {
  metricsFile: string;
  reportFile: string;
  rowLengths: number[];
  records: MetricsRecord[];
  position: Position;
  /** the generator as it is after the current epoch's shuffle: the next epoch draws from it */
  rngForEpochs: Rng;
  /** training time of the run before this process took it over (a resumed run) */
  elapsedBefore: number;
  startedAt: number;
  /** performance.now() of the last checkpoint written, or of the start of training in this process */
  lastCheckpointAt: number;
  lastValLoss?: number;
  lastTrainLoss?: number;
  lastCheckpointDir?: string;
  /** the steps of the last evaluation and checkpoint, -1 when none yet */
  evaluatedAt: number;
  checkpointedAt: number;
}

function isConfigLayer(value: TrainingConfigInput | ConfigLayer): value is ConfigLayer {
  return "source" in value && "value" in value;
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
  /** the base model's header, read once per run: the data, the engine and the adapter writer all use it */
  private model: GgufModelFile | undefined;
  private engine: Engine | undefined;
  private device: "cpu" | "cuda" | undefined;
  private resumeCheckpoint: Checkpoint | undefined;
  private running = false;

  /**
   * Validates `config` (unknown keys and wrong types throw TrainingConfigError) unless it is one
   * resolveConfig already resolved; nothing loads yet.
   */
  constructor(config: TrainingConfigInput | TrainingConfig, options: TrainerOptions = {}) {
    const resolved = isResolvedConfig(config) ? config : resolveConfig([{ value: config, source: "trainer config" }]);
    this.resume = options.resume ?? false;
    if (this.resume && resolved.out === undefined) throw new TrainingConfigError("resume needs `out`: the run folder to continue");
    this.runDir = resolved.out ?? path.resolve("runs", timestampFolder());
    this.config = { ...resolved, out: this.runDir };
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
  static async resume(runDir: string, overrides: TrainingConfigInput | ConfigLayer = {}): Promise<Trainer> {
    const overridesLayer: ConfigLayer = isConfigLayer(overrides) ? overrides : { value: overrides, source: "resume overrides" };
    const configFile = path.join(runDir, "config.json");
    if (!existsSync(configFile)) throw new TrainingConfigError(`cannot resume ${runDir}: it has no config.json, so it is not a thinktune run folder`);
    const savedValue = await readConfigFile(configFile);
    const saved = resolveConfig([{ value: savedValue, source: configFile }]);
    const merged = resolveConfig([
      { value: savedValue, source: configFile },
      { ...overridesLayer, value: { ...(overridesLayer.value as TrainingConfigInput), out: path.resolve(runDir) } },
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
    this.model = await readGgufModel(config.model);
    checkMaxLengthFitsContext(config.maxLength, this.model);
    const loaded = await loadTrainingData(this.model, dataOptionsOf(config));
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
    const engine = await Engine.load(this.model!, engineOptionsOf(config, this.device!));
    if (checkpoint) {
      try {
        await engine.setLora(checkpoint.lora);
        await engine.setOptimizerState(checkpoint.optimizer);
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

  /**
   * A folder with a complete checkpoint or an adapter holds a run worth keeping. One stopped before its
   * first checkpoint holds nothing to resume from, so a new run may start there.
   */
  private async checkRunFolderIsFree(): Promise<void> {
    const used = [
      ...((await listCheckpoints(this.runDir)).length > 0 ? ["checkpoints"] : []),
      ...(existsSync(path.join(this.runDir, "adapter")) ? ["adapter"] : []),
    ];
    if (used.length > 0) {
      throw new TrainingConfigError(
        `${this.runDir} already holds a run (${used.join(", ")}); continue it with --resume ${this.runDir} or choose another --out`,
      );
    }
  }

  /** The checkpoint to continue from; none when the run was stopped before its first one (it starts again). */
  private async findResumeCheckpoint(): Promise<Checkpoint | undefined> {
    const { checkpoint, skipped } = await loadLatestCheckpoint(this.runDir);
    if (!checkpoint && skipped.length === 0) return undefined;
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
    const run = await this.openRun();
    yield this.startEvent(run);
    run.startedAt = performance.now();
    run.lastCheckpointAt = run.startedAt;
    const totalSteps = this.data!.totalSteps;
    while (run.position.step < totalSteps) {
      if (signal?.aborted) {
        yield* this.stop(run);
        return;
      }
      const record = await this.trainStep(run);
      yield { ...record, totalSteps };
      const last = record.step === totalSteps;
      if (record.step % this.config.evalEvery === 0 || last) {
        const evalEvent = await this.evaluate(run);
        if (evalEvent) yield evalEvent;
      }
      if (record.step % this.config.checkpointEvery === 0 || last || this.checkpointIsDue(run)) yield await this.writeCheckpoint(run);
    }
    yield* this.finish(run);
  }

  /** Writes config.json, then starts the metrics afresh or restores the run from the resume checkpoint. */
  private async openRun(): Promise<RunState> {
    await mkdir(this.runDir, { recursive: true });
    await writeFileAtomic(path.join(this.runDir, "config.json"), `${JSON.stringify(this.config, null, 2)}\n`);
    const checkpoint = this.resumeCheckpoint;
    const rowLengths = this.data!.trainRows.map((row) => row.tokens.length);
    const common = { startedAt: performance.now(), lastCheckpointAt: performance.now(), metricsFile: path.join(this.runDir, "metrics.jsonl"), reportFile: path.join(this.runDir, "report.html"), rowLengths };
    if (!checkpoint) {
      await writeFileAtomic(common.metricsFile, "");
      const rng = Rng.fromSeed(this.config.seed);
      const position = { step: 0, epoch: 0, plan: planEpoch(rowLengths, rng, this.batching()), stepInEpoch: 0 };
      return { ...common, records: [], position, rngForEpochs: rng, elapsedBefore: 0, evaluatedAt: -1, checkpointedAt: -1 };
    }
    const { state } = checkpoint;
    const records = await truncateMetrics(common.metricsFile, state.step);
    const rng = Rng.fromState(state.rngState);
    const plan = planEpoch(rowLengths, rng, this.batching());
    const stepInEpoch = plan.steps.findIndex((planned) => planned.start === state.dataPosition);
    if (stepInEpoch < 0) throw new TrainingError(`checkpoint ${checkpoint.dir}: data position ${state.dataPosition} is not a step boundary of epoch ${state.epoch}`);
    return {
      ...common,
      records,
      position: { step: state.step, epoch: state.epoch, plan, stepInEpoch },
      rngForEpochs: rng,
      elapsedBefore: state.elapsedMs,
      lastValLoss: state.valLoss,
      lastTrainLoss: state.trainLoss,
      lastCheckpointDir: checkpoint.dir,
      evaluatedAt: records.some((record) => record.type === "eval" && record.step === state.step) ? state.step : -1,
      checkpointedAt: state.step,
    };
  }

  private startEvent(run: RunState): TrainerStartEvent {
    const data = this.data!;
    return {
      type: "start",
      runDir: this.runDir,
      device: this.device!,
      totalSteps: data.totalSteps,
      startStep: run.position.step,
      warmupSteps: data.warmupSteps,
      resumedFrom: this.resumeCheckpoint?.dir,
      ...(this.resume && !this.resumeCheckpoint ? { restarted: true } : {}),
      trainExamples: data.train.length,
      validationExamples: data.validation.length,
      trainRows: data.trainRows.length,
      validationRows: data.validationRows.length,
    };
  }

  /** The time-based cadence: minutes since the last checkpoint (or since this process started training). */
  private checkpointIsDue(run: RunState): boolean {
    const minutes = this.config.checkpointEveryMinutes;
    return minutes > 0 && performance.now() - run.lastCheckpointAt >= minutes * 60_000;
  }

  private elapsed(run: RunState): number {
    return run.elapsedBefore + (performance.now() - run.startedAt);
  }

  private schedule(): LearningRateSchedule {
    const { learningRate, lrSchedule, minLearningRate } = this.config;
    const { warmupSteps, totalSteps } = this.data!;
    return { peak: learningRate, warmupSteps, totalSteps, decay: lrSchedule, minimum: minLearningRate };
  }

  /** One optimizer step on the next planned rows (a new epoch's plan when this one is used up), recorded in the metrics. */
  private async trainStep(run: RunState): Promise<StepRecord> {
    const data = this.data!;
    if (run.position.stepInEpoch >= run.position.plan.steps.length) {
      run.position = { step: run.position.step, epoch: run.position.epoch + 1, plan: planEpoch(run.rowLengths, run.rngForEpochs, this.batching()), stepInEpoch: 0 };
    }
    const planned = run.position.plan.steps[run.position.stepInEpoch];
    const rows = planned.rows.map((index) => data.trainRows[index]);
    const stepNumber = run.position.step + 1;
    const lr = learningRateAt(this.schedule(), stepNumber);
    const stepStarted = performance.now();
    const result = await this.stepOrDiverge(run, rows, lr, stepNumber);
    const stepMs = performance.now() - stepStarted;
    const loss = result.tokens > 0 ? result.lossSum / result.tokens : Number.NaN;
    const nonFinite = !Number.isFinite(loss) ? `the loss is ${loss}` : !Number.isFinite(result.gradNorm) ? `the gradient norm is ${result.gradNorm}` : undefined;
    if (nonFinite) await this.diverged(run, stepNumber, nonFinite, lr);
    run.position = { ...run.position, step: stepNumber, stepInEpoch: run.position.stepInEpoch + 1 };
    run.lastTrainLoss = loss;
    const processed = rows.reduce((sum, row) => sum + row.tokens.length, 0);
    const record: StepRecord = {
      type: "step",
      step: stepNumber,
      epoch: run.position.epoch + run.position.stepInEpoch / run.position.plan.steps.length,
      loss,
      lr,
      tokens: processed,
      lossTokens: result.tokens,
      tokensPerSecond: processed / (stepMs / 1000),
      gradNorm: result.gradNorm,
      elapsedMs: this.elapsed(run),
      ...this.memory(this.engine!),
    };
    run.records.push(record);
    await appendMetrics(run.metricsFile, record);
    return record;
  }

  /**
   * The engine refuses non-finite losses and gradients itself (before updating). After at least one
   * update that is divergence; on the very first step the model or data are at fault, not the rate.
   */
  private async stepOrDiverge(run: RunState, rows: PackedRow[], lr: number, stepNumber: number): Promise<Awaited<ReturnType<Engine["step"]>>> {
    try {
      return await this.engine!.step(rows, lr);
    } catch (error) {
      if (run.position.step > 0 && nativeErrorCode(error) === "diverged") {
        await this.diverged(run, stepNumber, (error as Error).message.split(";")[0], lr);
      }
      throw error;
    }
  }

  /** Records the divergence in the report and stops the run; the last checkpoint stays the last good one. */
  private async diverged(run: RunState, stepNumber: number, reason: string, lr: number): Promise<never> {
    await this.writeRunReport(run, `diverged at step ${stepNumber}: ${reason}`);
    throw new TrainingDivergedError(stepNumber, reason, lr, run.lastCheckpointDir);
  }

  private async writeRunReport(run: RunState, status: string): Promise<void> {
    await writeReport(run.reportFile, { config: this.config, records: run.records, totalSteps: this.data!.totalSteps, status });
  }

  private async evaluate(run: RunState): Promise<TrainerEvalEvent | undefined> {
    const data = this.data!;
    if (data.validationRows.length === 0) return undefined;
    const result = await this.engine!.evaluate(data.validationRows);
    const record: EvalRecord = { type: "eval", step: run.position.step, valLoss: result.tokens > 0 ? result.lossSum / result.tokens : Number.NaN };
    run.evaluatedAt = run.position.step;
    run.lastValLoss = record.valLoss;
    run.records.push(record);
    await appendMetrics(run.metricsFile, record);
    return record;
  }

  private async writeCheckpoint(run: RunState): Promise<TrainerCheckpointEvent> {
    const { position } = run;
    const totalSteps = this.data!.totalSteps;
    const next = this.nextStepPosition(position, run.rngForEpochs);
    const state: CheckpointState = {
      version: 1,
      step: position.step,
      epoch: next.epoch,
      dataPosition: next.dataPosition,
      rngState: next.rngState,
      scheduleStep: position.step + 1,
      totalSteps,
      configHash: configHash(this.config),
      dataHash: this.data!.dataHash,
      valLoss: run.lastValLoss,
      trainLoss: run.lastTrainLoss,
      elapsedMs: this.elapsed(run),
      createdAt: new Date().toISOString(),
    };
    const engine = this.engine!;
    const dir = await saveCheckpoint(this.runDir, { state, lora: await engine.getLora(), optimizer: await engine.getOptimizerState() });
    await pruneCheckpoints(this.runDir, this.config.keepCheckpoints, await this.bestCheckpointStep());
    await this.writeRunReport(run, `checkpoint at step ${position.step} of ${totalSteps}`);
    run.checkpointedAt = position.step;
    run.lastCheckpointAt = performance.now();
    run.lastCheckpointDir = dir;
    return { type: "checkpoint", step: position.step, dir, valLoss: run.lastValLoss };
  }

  /** The signal was aborted: a checkpoint to resume from (unless this step has one), then "stopped". */
  private async *stop(run: RunState): AsyncGenerator<TrainerEvent, void, undefined> {
    const { step } = run.position;
    const totalSteps = this.data!.totalSteps;
    if (run.checkpointedAt !== step) yield await this.writeCheckpoint(run);
    await this.writeRunReport(run, `stopped at step ${step} of ${totalSteps}; resume with --resume`);
    yield await this.doneEvent("stopped", step, totalSteps, run.lastCheckpointDir, run.lastTrainLoss, run.lastValLoss, this.elapsed(run));
  }

  /** Every step is done: the final evaluation and checkpoint where the last step had none, the adapter, "completed". */
  private async *finish(run: RunState): AsyncGenerator<TrainerEvent, void, undefined> {
    const { step } = run.position;
    const totalSteps = this.data!.totalSteps;
    // A resumed run whose checkpoint was already the last step still ends with its evaluation.
    if (run.evaluatedAt !== step) {
      const evalEvent = await this.evaluate(run);
      if (evalEvent) yield evalEvent;
    }
    if (run.checkpointedAt !== step) yield await this.writeCheckpoint(run);
    // adapter "best": the checkpoint with the lowest validation loss, when any was evaluated
    const best = this.config.adapter === "best" ? await this.bestCheckpointStep() : undefined;
    const adapterStep = best ?? step;
    const lora = best === undefined ? await this.engine!.getLora() : (await loadCheckpoint(path.join(this.runDir, "checkpoints", `step-${best}`))).lora;
    const adapterPath = await this.writeAdapter(lora, adapterStep);
    await this.writeRunReport(run, `completed ${step} steps`);
    const done = await this.doneEvent("completed", step, totalSteps, run.lastCheckpointDir, run.lastTrainLoss, run.lastValLoss, this.elapsed(run), adapterPath);
    yield { ...done, adapterStep, adapterChoice: best === undefined ? "last" : "best" };
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

  private memory(engine: Engine): Pick<StepRecord, "peakMemory" | "hostMemory"> {
    if (this.device !== "cuda") return { peakMemory: peakMemoryBytes() };
    const plan = engine.memoryPlan();
    // an engine that has not measured its device use (0 or no key) still has its plan's total
    const peakMemory = plan.deviceUsedPeak !== undefined && plan.deviceUsedPeak > 0 ? plan.deviceUsedPeak : (plan.total ?? 0);
    return plan.hostCheckpoints === undefined ? { peakMemory } : { peakMemory, hostMemory: plan.hostCheckpoints };
  }

  private async writeAdapter(lora: NamedTensor[], step: number): Promise<string> {
    const adapterDir = path.join(this.runDir, "adapter");
    const adapterPath = path.join(adapterDir, "adapter.gguf");
    await mkdir(adapterDir, { recursive: true });
    const base = this.model!;
    await writeGgufAdapter(adapterPath, { baseModelPath: this.config.model, baseModel: base, alpha: this.config.lora.alpha, tensors: lora });
    const description = {
      baseModelPath: this.config.model,
      arch: base.metadata["general.architecture"],
      rank: this.config.lora.rank,
      alpha: this.config.lora.alpha,
      targets: this.config.lora.targets,
      step,
      adapter: "adapter.gguf",
    };
    await writeFileAtomic(path.join(adapterDir, "thinktune.json"), `${JSON.stringify(description, null, 2)}\n`);
    return adapterPath;
  }
}

/** Positions past the model's context length were never trained (RoPE); refuse before the data is tokenized. */
function checkMaxLengthFitsContext(maxLength: number, model: GgufModelFile): void {
  const { arch, contextLength } = modelConfigFromGguf(model);
  if (maxLength > contextLength) {
    throw new TrainingConfigError(
      `maxLength (--max-length) ${maxLength} is more than the model's context length ${contextLength} (${arch}.context_length in ${model.path}); use --max-length ${contextLength} or less`,
    );
  }
}
