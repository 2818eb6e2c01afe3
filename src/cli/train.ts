// `thinktune train`: defaults → config file → flags, then the Trainer's events as a progress bar (in a
// terminal) or plain lines (in a pipe). Ctrl-C / SIGTERM stop after the current step with a checkpoint.
import type { Command } from "commander";
import { realpathSync } from "node:fs";
import path from "node:path";
import {
  embeddedDataPath,
  embeddedDefaultOverrides,
  embeddedModelPath,
  readConfigFile,
  resolveConfig,
  TrainingConfigError,
  type ConfigLayer,
  type TrainingConfig,
} from "../train/config.js";
import { generatePreview, verbatimLeadingWords, type Preview } from "../train/preview.js";
import { Trainer, TrainingDivergedError, type TrainerEvent, type TrainerStepEvent } from "../train/trainer.js";
import type { DataReport } from "../data/index.js";
import { resolveModelSource } from "./model-source.js";
import { printableText } from "./printable.js";
import { userCommand } from "./user-command.js";
import { formatBytes } from "./bytes.js";

type FlagKind = "string" | "number" | "list" | "boolean";
interface FlagSpec {
  flag: string;
  /** dotted config key */
  key: string;
  kind: FlagKind;
  description: string;
}

/** Every config key that has a flag; the flag's value lands on the key as the file's would. */
const flagSpecs: FlagSpec[] = [
  { flag: "--model <gguf>", key: "model", kind: "string", description: "base model GGUF (default: the embedded models/tiny-r1.gguf)" },
  { flag: "--data <path>", key: "data", kind: "string", description: "training data: JSONL/JSON file or folder (default: examples/data)" },
  { flag: "--val-data <path>", key: "valData", kind: "string", description: "validation data (default: a split of the training data)" },
  { flag: "--val-split <fraction>", key: "valSplit", kind: "number", description: "fraction held out for validation" },
  { flag: "--format <name>", key: "format", kind: "string", description: "data format (detected per file by default)" },
  { flag: "--template <name>", key: "template", kind: "string", description: "built-in chat template r1|chatml|llama3 instead of the model's" },
  { flag: "--think <mode>", key: "think", kind: "string", description: "reasoning required|optional|auto" },
  { flag: "--on-invalid <mode>", key: "onInvalid", kind: "string", description: "invalid examples: error|skip" },
  { flag: "--train-on <turns>", key: "trainOn", kind: "string", description: "assistant turns trained: last|all" },
  { flag: "--truncate", key: "truncate", kind: "boolean", description: "cut examples longer than --max-length instead of dropping them" },
  { flag: "--strict", key: "strict", kind: "boolean", description: "data warnings stop the run" },
  { flag: "--out <dir>", key: "out", kind: "string", description: "run folder (default: runs/<timestamp>)" },
  { flag: "--device <device>", key: "device", kind: "string", description: "auto|cpu|cuda" },
  { flag: "--gpu-memory <size>", key: "gpuMemory", kind: "string", description: "CUDA: plan as if the GPU had this much memory, e.g. 24GiB" },
  { flag: "--threads <n>", key: "threads", kind: "number", description: "CPU threads, 0 = all cores" },
  { flag: "--rank <n>", key: "lora.rank", kind: "number", description: "LoRA rank (16)" },
  { flag: "--alpha <n>", key: "lora.alpha", kind: "number", description: "LoRA alpha (32)" },
  { flag: "--targets <list>", key: "lora.targets", kind: "list", description: "LoRA targets, comma-separated from q,k,v,o,gate,up,down (all)" },
  { flag: "--dropout <p>", key: "lora.dropout", kind: "number", description: "LoRA dropout (0)" },
  { flag: "--lr <rate>", key: "learningRate", kind: "number", description: "peak learning rate (1e-4)" },
  { flag: "--warmup-steps <n>", key: "warmupSteps", kind: "number", description: "linear warmup steps (5% of the run)" },
  { flag: "--lr-schedule <name>", key: "lrSchedule", kind: "string", description: "cosine|constant after warmup (cosine)" },
  { flag: "--min-lr <rate>", key: "minLearningRate", kind: "number", description: "where cosine decay ends (0)" },
  { flag: "--beta1 <b>", key: "optimizer.beta1", kind: "number", description: "AdamW beta1 (0.9)" },
  { flag: "--beta2 <b>", key: "optimizer.beta2", kind: "number", description: "AdamW beta2 (0.999)" },
  { flag: "--eps <e>", key: "optimizer.eps", kind: "number", description: "AdamW epsilon (1e-8)" },
  { flag: "--weight-decay <w>", key: "optimizer.weightDecay", kind: "number", description: "AdamW decoupled weight decay (0)" },
  { flag: "--clip-norm <n>", key: "optimizer.clipNorm", kind: "number", description: "global gradient norm clip, 0 = off (1.0)" },
  { flag: "--max-length <tokens>", key: "maxLength", kind: "number", description: "longest example and packed row (4096)" },
  { flag: "--batch-tokens <tokens>", key: "batchTokens", kind: "number", description: "token budget of a micro-batch (max length)" },
  { flag: "--grad-accum <n>", key: "gradAccum", kind: "number", description: "micro-batches per optimizer step (1)" },
  { flag: "--epochs <n>", key: "epochs", kind: "number", description: "passes over the data (3)" },
  { flag: "--max-steps <n>", key: "maxSteps", kind: "number", description: "optimizer steps, instead of --epochs" },
  { flag: "--seed <n>", key: "seed", kind: "number", description: "seed of data order, split and LoRA init (0)" },
  { flag: "--eval-every <steps>", key: "evalEvery", kind: "number", description: "validation loss every N steps (100)" },
  { flag: "--checkpoint-every <steps>", key: "checkpointEvery", kind: "number", description: "checkpoint every N steps (100)" },
  { flag: "--checkpoint-every-minutes <m>", key: "checkpointEveryMinutes", kind: "number", description: "also checkpoint once M minutes have passed since the last one, 0 = off (10)" },
  { flag: "--keep-checkpoints <k>", key: "keepCheckpoints", kind: "number", description: "keep the last K checkpoints, plus the best (3)" },
  { flag: "--log-every <steps>", key: "logEvery", kind: "number", description: "a progress line every N steps when not in a terminal (10)" },
  { flag: "--preview-tokens <n>", key: "previewTokens", kind: "number", description: "print one training prompt's answer before and after, this long (0 = off)" },
  { flag: "--adapter <which>", key: "adapter", kind: "string", description: "the weights adapter/ holds: last (the last step's, default) or best (the checkpoint with the lowest validation loss)" },
];

function optionName(flag: string): string {
  const long = flag.split(" ")[0].replace(/^--/, "");
  return long.replace(/-([a-z])/g, (_, letter: string) => letter.toUpperCase());
}

/** A numeric flag keeps its text when it is not a number, so validation names it ("got string …"). */
function flagValue(kind: FlagKind, raw: unknown): unknown {
  if (kind === "number" && typeof raw === "string") {
    const value = Number(raw);
    return raw.trim() !== "" && Number.isFinite(value) ? value : raw;
  }
  if (kind === "list" && typeof raw === "string") return raw.split(",").map((item) => item.trim()).filter((item) => item !== "");
  return raw;
}

function flagsLayer(options: Record<string, unknown>): { layer: Record<string, unknown>; given: string[] } {
  const layer: Record<string, unknown> = {};
  const given: string[] = [];
  for (const spec of flagSpecs) {
    const raw = options[optionName(spec.flag)];
    if (raw === undefined) continue;
    given.push(spec.key);
    const keys = spec.key.split(".");
    let target = layer;
    for (const key of keys.slice(0, -1)) target = (target[key] ??= {}) as Record<string, unknown>;
    target[keys.at(-1)!] = flagValue(spec.kind, raw);
  }
  return { layer, given };
}

function flagFor(key: string): string | undefined {
  return flagSpecs.find((spec) => spec.key === key)?.flag.split(" ")[0];
}

function formatDuration(ms: number): string {
  if (!Number.isFinite(ms)) return "--:--";
  const seconds = Math.max(0, Math.round(ms / 1000));
  const h = Math.floor(seconds / 3600);
  const m = Math.floor((seconds % 3600) / 60);
  const s = seconds % 60;
  return h > 0 ? `${h}:${String(m).padStart(2, "0")}:${String(s).padStart(2, "0")}` : `${m}:${String(s).padStart(2, "0")}`;
}

function formatRate(value: number): string {
  return value === 0 ? "0" : value.toExponential(2);
}

/** Progress lines: a redrawn bar in a terminal, a plain line every `logEvery` steps elsewhere. */
class Progress {
  private smoothedLoss: number | undefined;
  private barShown = false;
  private firstStepAt: { step: number; time: number } | undefined;

  constructor(
    private readonly tty: boolean,
    private readonly logEvery: number,
    private readonly epochs: number | undefined,
  ) {}

  step(event: TrainerStepEvent): void {
    // an exponential moving average keeps the bar's loss readable while steps vary
    this.smoothedLoss = this.smoothedLoss === undefined ? event.loss : 0.9 * this.smoothedLoss + 0.1 * event.loss;
    const now = performance.now();
    // timed from the start of this process's first step (elapsedMs also counts the time before a resume)
    this.firstStepAt ??= { step: event.step - 1, time: now - (event.tokens / event.tokensPerSecond) * 1000 };
    const stepsDone = event.step - this.firstStepAt.step;
    const msPerStep = (now - this.firstStepAt.time) / Math.max(1, stepsDone);
    const eta = formatDuration(msPerStep * (event.totalSteps - event.step));
    const epoch = this.epochs === undefined ? event.epoch.toFixed(2) : `${event.epoch.toFixed(2)}/${this.epochs}`;
    const fields = `step ${event.step}/${event.totalSteps} | epoch ${epoch} | loss(avg) ${this.smoothedLoss.toFixed(4)} | lr ${formatRate(event.lr)} | ${Math.round(event.tokensPerSecond)} tok/s | ETA ${eta} | mem ${formatBytes(event.peakMemory)}${event.hostMemory ? ` + ${formatBytes(event.hostMemory)} host` : ""}`;
    if (this.tty) {
      const width = 20;
      const filled = Math.round((event.step / event.totalSteps) * width);
      process.stderr.write(`\r\x1b[2K[${"#".repeat(filled)}${".".repeat(width - filled)}] ${fields}`);
      this.barShown = true;
    } else if (event.step % this.logEvery === 0 || event.step === event.totalSteps || event.step === 1) {
      console.log(`${fields} | loss(step) ${event.loss.toFixed(4)}`);
    }
  }

  /** a message above the bar */
  line(text: string): void {
    if (this.barShown) {
      process.stderr.write("\r\x1b[2K");
      this.barShown = false;
    }
    console.log(text);
  }

  end(): void {
    if (this.barShown) process.stderr.write("\n");
    this.barShown = false;
  }
}

interface TrainFlags extends Record<string, unknown> {
  config?: string;
  resume?: string;
}

/** "learningRate (--lr)": a key as errors about the command line name it. */
function withFlag(key: string): string {
  const flag = flagFor(key.replace(/\[.*$/, ""));
  return flag ? `${key} (${flag})` : key;
}

function samePath(a: string, b: string): boolean {
  const real = (file: string) => {
    try {
      return realpathSync(file);
    } catch {
      return path.resolve(file);
    }
  };
  return real(a) === real(b);
}

/** The configuration, resolved once here, handed to the Trainer as it is. */
async function resolveTrainer(flags: TrainFlags): Promise<Trainer> {
  const { layer, given } = flagsLayer(flags);
  const commandLine: ConfigLayer = { value: layer, source: "command line", label: withFlag };
  if (flags.resume !== undefined) {
    if (flags.config !== undefined) throw new TrainingConfigError("--resume continues a run with the config saved in it; drop --config");
    return Trainer.resume(path.resolve(flags.resume), commandLine);
  }
  if (typeof layer.model === "string") layer.model = await resolveModelSource(layer.model);
  // no config, and the model and data not named or named as the embedded ones: the embedded default
  // run, whose defaults are tuned for the tiny model
  const isEmbedded = (key: "model" | "data", embedded: string) => !given.includes(key) || samePath(String(layer[key]), embedded);
  const embeddedDefault = flags.config === undefined && isEmbedded("model", embeddedModelPath) && isEmbedded("data", embeddedDataPath);
  const layers: ConfigLayer[] = [];
  if (embeddedDefault) layers.push({ value: embeddedDefaultOverrides, source: "embedded default" });
  if (flags.config !== undefined) layers.push({ value: await readConfigFile(flags.config), source: flags.config });
  layers.push(commandLine);
  return new Trainer(resolveConfig(layers));
}

/** The data facts that matter before a run starts, above all examples lost to the max length. */
function describeDataReport(report: DataReport): string[] {
  const { examples, lengths, dropped } = report;
  const lines = [
    `Data: ${report.records} records → ${examples.total} examples (${examples.train} train, ${examples.validation} validation), ` +
      `${examples.withReasoning} with reasoning; tokens per example p50 ${lengths.total.p50}, p95 ${lengths.total.p95}, max ${lengths.total.max} ` +
      `(reasoning p95 ${lengths.reasoning.p95}, max ${lengths.reasoning.max}); template: ${report.template.source}`,
  ];
  if (dropped.tooLong > 0) {
    lines.push(
      dropped.truncated > 0
        ? `Warning: ${dropped.tooLong} examples are longer than the max length ${dropped.maxLength} (the longest has ${dropped.longest} tokens) and were CUT: ` +
            `their reasoning is trained incomplete, which teaches the model to stop thinking mid-way. --max-length ${dropped.lengthToKeepAll} keeps them whole.`
        : `Warning: ${dropped.tooLong} examples are longer than the max length ${dropped.maxLength} (the longest has ${dropped.longestIsLowerBound ? "at least " : ""}${dropped.longest} tokens) and were DROPPED: ` +
            `the max length is shorter than the data's reasoning. --max-length ${dropped.lengthToKeepAll} keeps them all.`,
    );
  }
  if (dropped.invalid > 0) lines.push(`Skipped ${dropped.invalid} invalid records (onInvalid "skip"); \`thinktune data check\` lists them.`);
  if (report.warningCount > 0) {
    const counts = Object.entries(report.warningCounts).map(([kind, count]) => `${count} ${kind}`);
    lines.push(`Data warnings: ${counts.join(", ")}; \`thinktune data check\` lists them.`);
  }
  return lines;
}

function printConfig(config: TrainingConfig): void {
  const { comment, ...shown } = config;
  console.log("Resolved configuration:");
  if (comment !== undefined) console.log(`  # ${Array.isArray(comment) ? comment.join("\n  # ") : comment}`);
  for (const [key, value] of Object.entries(shown)) console.log(`  ${key}: ${JSON.stringify(value)}`);
}

async function train(flags: TrainFlags): Promise<number> {
  const trainer = await resolveTrainer(flags);
  const config = trainer.config;
  printConfig(config);

  const report = await trainer.prepareData();
  for (const line of describeDataReport(report)) console.log(line);

  const previewExample = config.previewTokens > 0 && flags.resume === undefined ? trainer.firstTrainingExample : undefined;
  let before: Preview | undefined;
  if (previewExample) {
    before = await generatePreview({
      modelPath: config.model,
      promptTokens: previewExample.tokens.subarray(0, previewExample.lossFrom),
      referenceTokens: previewExample.tokens.subarray(previewExample.lossFrom),
      maxTokens: config.previewTokens,
      threads: config.threads,
    });
  }

  const controller = new AbortController();
  const progress = new Progress(Boolean(process.stderr.isTTY), config.logEvery, config.maxSteps === undefined ? config.epochs : undefined);
  let interrupts = 0;
  const onSignal = (signal: NodeJS.Signals) => {
    interrupts++;
    if (interrupts > 1) {
      progress.line(`${signal} again: exiting now without a checkpoint.`);
      // process.exit would wait for the step running on libuv's thread pool (it joins the pool at exit);
      // dying by the signal itself ends the process at once, with the exit status 128 + signal (130 for SIGINT)
      process.off("SIGINT", onSignal);
      process.off("SIGTERM", onSignal);
      process.kill(process.pid, signal);
      return;
    }
    progress.line(`${signal}: finishing the current step and writing a checkpoint (press Ctrl-C again to exit at once)…`);
    controller.abort();
  };
  process.on("SIGINT", onSignal);
  process.on("SIGTERM", onSignal);

  let exitCode = 0;
  try {
    for await (const event of trainer.run({ signal: controller.signal })) {
      exitCode = handleEvent(event, progress) ?? exitCode;
      if (event.type === "done" && event.reason === "completed" && previewExample && event.adapterPath) {
        const after = await generatePreview({
          modelPath: config.model,
          adapterPath: event.adapterPath,
          promptTokens: previewExample.tokens.subarray(0, previewExample.lossFrom),
          maxTokens: config.previewTokens,
          threads: config.threads,
        });
        printPreview(previewExample.source, config.previewTokens, before!, after);
      }
    }
  } catch (error) {
    progress.end();
    if (error instanceof TrainingDivergedError) {
      console.error(`error: ${error.message}`);
      return 1;
    }
    throw error;
  } finally {
    process.off("SIGINT", onSignal);
    process.off("SIGTERM", onSignal);
  }
  return exitCode;
}

function handleEvent(event: TrainerEvent, progress: Progress): number | undefined {
  switch (event.type) {
    case "start":
      progress.line(
        `${event.resumedFrom ? `Resuming from ${event.resumedFrom} at step ${event.startStep}` : event.restarted ? "Starting again from step 0: the run had no checkpoint yet; training" : "Training"} on ${event.device}: ` +
          `${event.trainExamples} examples in ${event.trainRows} rows, ${event.validationExamples} for validation; ` +
          `${event.totalSteps} steps (${event.warmupSteps} warmup). Run folder: ${event.runDir}`,
      );
      return undefined;
    case "step":
      progress.step(event);
      return undefined;
    case "eval":
      progress.line(`step ${event.step}: validation loss ${event.valLoss.toFixed(4)}`);
      return undefined;
    case "checkpoint":
      progress.line(`step ${event.step}: checkpoint ${event.dir}`);
      return undefined;
    case "done":
      progress.end();
      if (event.reason === "stopped") {
        console.log(`Stopped at step ${event.step} of ${event.totalSteps}; checkpoint ${event.checkpointDir ?? "(none)"}.`);
        console.log(`Resume with: ${userCommand("train", "--resume", event.runDir)}`);
        return 130;
      }
      console.log(
        `Done: ${event.step} steps in ${formatDuration(event.elapsedMs)}; train loss of the last step ${event.trainLoss?.toFixed(4) ?? "–"}` +
          (event.valLoss !== undefined ? `, validation loss ${event.valLoss.toFixed(4)}` : "") +
          (event.bestCheckpointDir ? `; best checkpoint ${event.bestCheckpointDir}` : ""),
      );
      const which = event.adapterChoice === "best" ? "the best by validation loss" : "the last step";
      console.log(`Adapter: ${event.adapterPath} (step ${event.adapterStep}, ${which}; --adapter best|last chooses)`);
      console.log(`Report: ${path.join(event.runDir, "report.html")}`);
      return 0;
  }
}

function printPreview(source: string, maxTokens: number, before: Preview, after: Preview): void {
  console.log(`\nOne training prompt (${source}); greedy answers by llama.cpp (node-llama-cpp), at most ${maxTokens} tokens:`);
  console.log(`--- prompt ---\n${printableText(before.prompt)}`);
  console.log(`--- trained answer (from the data) ---\n${printableText(before.reference ?? "")}`);
  console.log(`--- before training ---\n${printableText(before.answer)}`);
  console.log(`--- after training (base model + adapter) ---\n${printableText(after.answer)}`);
  if (before.reference) {
    const { words, of } = verbatimLeadingWords(before.reference, after.answer);
    console.log(`--- the adapter repeats the trained answer's first ${words} of ${of} words verbatim (before training: ${verbatimLeadingWords(before.reference, before.answer).words}) ---`);
  }
}

export function registerTrainCommand(program: Command): void {
  const command = program
    .command("train")
    .description("LoRA-fine-tune a GGUF model on reasoning data; with no arguments, trains the embedded tiny model on examples/data")
    .option("--config <file>", "JSON config file (flags override it)")
    .option("--resume <run>", "continue the run in this folder from its last complete checkpoint");
  for (const spec of flagSpecs) command.option(spec.flag, spec.description);
  command.action(async (flags: TrainFlags) => {
    let code: number;
    try {
      code = await train(flags);
    } catch (error) {
      console.error(`error: ${(error as Error).message}`);
      code = 1;
    }
    // node-llama-cpp and the engine may keep handles open; the result is final here
    process.exit(code);
  });
}
