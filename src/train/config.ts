// The training configuration: one zod schema, layered defaults → config file → flags, and the
// messages a person sees when a value is wrong ("Expected X for Y, got Z").
import { createHash } from "node:crypto";
import { existsSync } from "node:fs";
import { readFile } from "node:fs/promises";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { z } from "zod";
import { loadNativeAddon } from "../native/addon.js";
import { dataSettingsSchema, type DataOptions } from "../data/options.js";
import { parseByteSize } from "./byte-size.js";
import { loraSettingsSchema, optimizerSettingsSchema, threadsSchema, type EngineOptions } from "./engine-options.js";

export class TrainingConfigError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "TrainingConfigError";
  }
}

const projectRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..", "..");
/** The tiny R1-style model and the sample reasoning data shipped with the package. */
export const embeddedModelPath = path.join(projectRoot, "models", "tiny-r1.gguf");
export const embeddedDataPath = path.join(projectRoot, "examples", "data");

const positiveInt = z.int().min(1);
const data = dataSettingsSchema.shape;

/**
 * Composed from the schemas of each concern (data: data/options.ts; LoRA, optimizer, threads:
 * engine-options.ts), which state their defaults and bounds; what is only the trainer's is stated here.
 */
export const trainingConfigSchema = z.strictObject({
  /** free text, ignored: where a recipe comes from */
  comment: z.union([z.string(), z.array(z.string())]).optional(),
  /** GGUF base model */
  model: z.string().min(1).default(embeddedModelPath),
  /** training data: a JSONL/JSON file or a folder of them */
  data: z.string().min(1).default(embeddedDataPath),
  /** separate validation data; without it `valSplit` of the training data is held out */
  valData: z.string().min(1).optional(),
  valSplit: data.valSplit,
  format: data.format,
  template: data.template,
  think: data.think,
  onInvalid: data.onInvalid,
  trainOn: data.trainOn,
  truncate: data.truncate,
  strict: data.strict,
  /** run folder; runs/<timestamp> when absent */
  out: z.string().min(1).optional(),
  device: z.enum(["auto", "cpu", "cuda"]).default("auto"),
  /** CUDA only: plan memory as if the GPU had this much ("24GiB"), to check a run fits a smaller card */
  gpuMemory: z
    .string()
    .refine((text) => parseByteSize(text) !== undefined, 'Expected a size like "24GiB" or "512MiB" for gpuMemory')
    .optional(),
  threads: threadsSchema,
  lora: loraSettingsSchema.prefault({}),
  learningRate: z.number().positive().default(1e-4),
  /** linear warmup steps; 5% of the run when absent */
  warmupSteps: z.int().min(0).optional(),
  lrSchedule: z.enum(["cosine", "constant"]).default("cosine"),
  /** where cosine decay ends */
  minLearningRate: z.number().min(0).default(0),
  optimizer: optimizerSettingsSchema.prefault({}),
  /** longest example and packed row in tokens (the engine plans its memory for rows this long) */
  maxLength: data.maxLength,
  /** token budget of one micro-batch; maxLength when absent */
  batchTokens: positiveInt.optional(),
  /** micro-batches accumulated into one optimizer step */
  gradAccum: positiveInt.default(1),
  epochs: positiveInt.default(3),
  /** stop after this many optimizer steps (cycling epochs as needed); overrides `epochs` */
  maxSteps: positiveInt.optional(),
  /** data order, validation split, LoRA initialization and dropout */
  seed: data.seed,
  /** validation loss every N steps (and at the end) */
  evalEvery: positiveInt.default(100),
  checkpointEvery: positiveInt.default(100),
  /** a checkpoint also once this many minutes have passed since the last one, so a killed run loses minutes; 0 = off */
  checkpointEveryMinutes: z.number().min(0).default(10),
  /** the last K checkpoints are kept, plus the best by validation loss */
  keepCheckpoints: positiveInt.default(3),
  /** a plain progress line every N steps when the output is not a terminal */
  logEvery: positiveInt.default(10),
  /** tokens of one training prompt's answer printed before and after training; 0 = off */
  previewTokens: z.int().min(0).default(0),
  /** which weights adapter/ holds: the last step's, or the checkpoint's with the lowest validation loss */
  adapter: z.enum(["last", "best"]).default("last"),
});

/** What a user may write: every key optional. */
export type TrainingConfigInput = z.input<typeof trainingConfigSchema>;
/** The resolved configuration with every default filled in. */
export type TrainingConfig = z.output<typeof trainingConfigSchema>;

/**
 * The defaults of `thinktune train` with no arguments: the embedded tiny model on the sample data,
 * tuned so the loss falls visibly in about a minute on 2 CPU cores.
 */
export const embeddedDefaultOverrides: TrainingConfigInput = {
  comment: "thinktune's embedded default: the tiny model on examples/data, tuned to learn visibly in about a minute on 2 CPU cores",
  // measured on 2 shared cores: 200 steps of one 512-token row take ~40 s; the training loss falls
  // from ~9.2 to ~0.4 and the greedy answer to the first prompt turns into the trained one
  lora: { rank: 16, alpha: 32 },
  learningRate: 3e-3,
  warmupSteps: 10,
  maxLength: 512,
  maxSteps: 200,
  evalEvery: 50,
  checkpointEvery: 50,
  logEvery: 25,
  previewTokens: 60,
};

function describeValue(value: unknown): string {
  if (value === undefined) return "nothing";
  if (value === null) return "null";
  if (Array.isArray(value)) return "an array";
  if (typeof value === "string") return `string ${JSON.stringify(value.length > 40 ? `${value.slice(0, 40)}…` : value)}`;
  if (typeof value === "number") return Number.isInteger(value) ? `integer ${value}` : `number ${value}`;
  if (typeof value === "object") return "an object";
  return `${typeof value} ${String(value)}`;
}

function keyPath(issuePath: readonly PropertyKey[]): string {
  return issuePath.map((part) => (typeof part === "number" ? `[${part}]` : String(part))).join(".").replace(/\.\[/g, "[");
}

/** One line per problem, each naming the key (as `label` names it), what it should be and what it was. */
export function formatConfigIssues(issues: readonly z.core.$ZodIssue[], label: (key: string) => string = (key) => key): string[] {
  const lines: string[] = [];
  for (const issue of issues) {
    const at = label(keyPath(issue.path));
    const input = (issue as { input?: unknown }).input;
    switch (issue.code) {
      case "unrecognized_keys":
        for (const key of issue.keys) {
          const parent = keyPath(issue.path);
          const full = parent === "" ? key : `${parent}.${key}`;
          lines.push(`Unknown key "${full}"${suggestKey(key, issue.path)}`);
        }
        break;
      case "invalid_type":
        lines.push(`Expected ${issue.expected === "int" ? "integer" : issue.expected} for ${at}, got ${describeValue(input)}`);
        break;
      case "invalid_value":
        lines.push(`Expected one of ${issue.values.map((value) => JSON.stringify(value)).join(", ")} for ${at}, got ${describeValue(input)}`);
        break;
      case "too_small":
        lines.push(
          issue.origin === "array" || issue.origin === "string"
            ? `Expected at least ${String(issue.minimum)} ${issue.origin === "array" ? "entries" : "characters"} for ${at}, got ${describeValue(input)}`
            : `Expected a number ${issue.inclusive ? "≥" : ">"} ${String(issue.minimum)} for ${at}, got ${describeValue(input)}`,
        );
        break;
      case "too_big":
        lines.push(`Expected a number ${issue.inclusive ? "≤" : "<"} ${String(issue.maximum)} for ${at}, got ${describeValue(input)}`);
        break;
      default:
        lines.push(`${at === "" ? "config" : at}: ${issue.message}`);
    }
  }
  return lines;
}

function suggestKey(key: string, parent: readonly PropertyKey[]): string {
  let shape: Record<string, unknown> = trainingConfigSchema.shape;
  for (const part of parent) {
    const child = shape[String(part)] as { unwrap?: () => unknown; shape?: Record<string, unknown> } | undefined;
    const inner = (child?.shape ? child : (child?.unwrap?.() as typeof child)) ?? undefined;
    if (!inner?.shape) return "";
    shape = inner.shape;
  }
  const lower = key.toLowerCase().replace(/[-_]/g, "");
  const match = Object.keys(shape).find((candidate) => candidate.toLowerCase() === lower);
  return match ? `; did you mean "${match}"?` : `; known keys: ${Object.keys(shape).join(", ")}`;
}

/** One layer of configuration: a config file, the command line, a library call. */
export interface ConfigLayer {
  value: unknown;
  /** names the layer in errors: a file path, "command line" */
  source: string;
  /** how a key is named in this layer's errors, e.g. "learningRate (--lr)" */
  label?: (key: string) => string;
}

/** Validates one layer on its own, so an error names the layer it is in. */
export function validateConfigLayer({ value, source, label }: ConfigLayer): TrainingConfigInput {
  const result = trainingConfigSchema.partial().safeParse(value, { reportInput: true });
  if (!result.success) {
    const lines = formatConfigIssues(result.error.issues, label);
    throw new TrainingConfigError(`${source}: ${lines.length === 1 ? lines[0] : `\n  ${lines.join("\n  ")}`}`);
  }
  return value as TrainingConfigInput;
}

function mergeLayers(layers: TrainingConfigInput[]): TrainingConfigInput {
  const merged: Record<string, unknown> = {};
  for (const layer of layers) {
    for (const [key, value] of Object.entries(layer)) {
      if (value === undefined) continue;
      const previous = merged[key];
      merged[key] =
        value !== null && typeof value === "object" && !Array.isArray(value) && previous !== null && typeof previous === "object" && !Array.isArray(previous)
          ? { ...previous, ...value }
          : value;
    }
  }
  return merged as TrainingConfigInput;
}

// configurations resolveConfig made: handed down (CLI → Trainer), they are used as they are
const resolvedConfigs = new WeakSet<object>();

/** True for a configuration resolveConfig returned (and nothing has replaced since). */
export function isResolvedConfig(config: TrainingConfigInput | TrainingConfig): config is TrainingConfig {
  return resolvedConfigs.has(config);
}

/** Defaults ← each layer in order (later wins, nested objects merged); paths made absolute. */
export function resolveConfig(layers: ConfigLayer[], cwd = process.cwd()): TrainingConfig {
  const validated = layers.map(validateConfigLayer);
  const result = trainingConfigSchema.safeParse(mergeLayers(validated), { reportInput: true });
  if (!result.success) throw new TrainingConfigError(`configuration: ${formatConfigIssues(result.error.issues).join("; ")}`);
  const config = result.data;
  config.model = path.resolve(cwd, config.model);
  config.data = path.resolve(cwd, config.data);
  if (config.valData !== undefined) config.valData = path.resolve(cwd, config.valData);
  if (config.out !== undefined) config.out = path.resolve(cwd, config.out);
  resolvedConfigs.add(config);
  return config;
}

/** The data loader's options: the config's data settings (data/options.ts) and its data paths. */
export function dataOptionsOf(config: TrainingConfig): DataOptions {
  const settings = Object.fromEntries(Object.keys(dataSettingsSchema.shape).map((key) => [key, config[key as keyof typeof dataSettingsSchema.shape]]));
  return { ...settings, data: config.data, valData: config.valData };
}

/** The engine's options: the config's LoRA (seeded by the run's seed), optimizer and device settings. */
export function engineOptionsOf(config: TrainingConfig, device: "cpu" | "cuda"): EngineOptions {
  return {
    device,
    threads: config.threads,
    lora: { ...config.lora, seed: config.seed },
    optimizer: config.optimizer,
    // every packed row is at most maxLength tokens long
    maxTokens: config.maxLength,
    ...(config.gpuMemory === undefined ? {} : { gpuMemoryBytes: parseByteSize(config.gpuMemory) }),
  };
}

/** Reads a JSON config file; a missing file or bad JSON is a TrainingConfigError naming the file. */
export async function readConfigFile(file: string): Promise<unknown> {
  let text: string;
  try {
    text = await readFile(file, "utf8");
  } catch (error) {
    throw new TrainingConfigError(`cannot read config file ${file}: ${(error as NodeJS.ErrnoException).code === "ENOENT" ? "it does not exist" : (error as Error).message}`);
  }
  try {
    return JSON.parse(text);
  } catch (error) {
    throw new TrainingConfigError(`config file ${file} is not valid JSON: ${(error as Error).message}`);
  }
}

/** The inputs must exist before anything heavy loads. */
export function checkInputPaths(config: TrainingConfig): void {
  const inputs: [string, string | undefined][] = [
    ["model", config.model],
    ["data", config.data],
    ["valData", config.valData],
  ];
  for (const [key, file] of inputs) {
    if (file !== undefined && !existsSync(file)) {
      throw new TrainingConfigError(`${key}: ${file} does not exist${key === "model" ? "; pass --model with a GGUF file" : `; pass --${key === "data" ? "data" : "val-data"} with a JSONL/JSON file or a folder of them`}`);
    }
  }
}

/** auto = CUDA when the addon was built with it and a device is present. */
export function resolveDevice(device: TrainingConfig["device"]): "cpu" | "cuda" {
  if (device === "cpu") return device;
  const addon = loadNativeAddon();
  const cudaBuilt = addon.backends.includes("cuda");
  const cudaDevices = cudaBuilt ? addon.cudaDeviceCount() : 0;
  if (device === "auto") return cudaDevices > 0 ? "cuda" : "cpu";
  if (!cudaBuilt) {
    throw new TrainingConfigError("device: cuda was asked for, but the native addon was built without CUDA (backends: cpu); use --device cpu or auto, or rebuild with a CUDA toolkit");
  }
  if (cudaDevices === 0) throw new TrainingConfigError("device: cuda was asked for, but no CUDA device is visible; use --device cpu or auto");
  return "cuda";
}

/** The keys that decide the sequence of losses; resuming requires them unchanged. */
const trajectoryKeys = [
  "model",
  "data",
  "valData",
  "valSplit",
  "format",
  "template",
  "think",
  "onInvalid",
  "trainOn",
  "truncate",
  "lora",
  "learningRate",
  "warmupSteps",
  "lrSchedule",
  "minLearningRate",
  "optimizer",
  "maxLength",
  "batchTokens",
  "gradAccum",
  "epochs",
  "maxSteps",
  "seed",
] as const satisfies readonly (keyof TrainingConfig)[];

function canonicalJson(value: unknown): string {
  if (Array.isArray(value)) return `[${value.map(canonicalJson).join(",")}]`;
  if (value !== null && typeof value === "object") {
    const entries = Object.entries(value as Record<string, unknown>).filter(([, child]) => child !== undefined);
    entries.sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
    return `{${entries.map(([key, child]) => `${JSON.stringify(key)}:${canonicalJson(child)}`).join(",")}}`;
  }
  return JSON.stringify(value ?? null);
}

export function configHash(config: TrainingConfig): string {
  const picked = Object.fromEntries(trajectoryKeys.map((key) => [key, config[key]]));
  return createHash("sha256").update(canonicalJson(picked)).digest("hex").slice(0, 16);
}

/** The trajectory keys whose values differ, for a resume refused because the config changed. */
export function trajectoryDifferences(a: TrainingConfig, b: TrainingConfig): string[] {
  return trajectoryKeys.filter((key) => canonicalJson(a[key]) !== canonicalJson(b[key]));
}
