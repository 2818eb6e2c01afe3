// What `thinktune export` reads: a run folder (its final adapter, else its newest checkpoint), an adapter
// folder (adapter.gguf + thinktune.json), a checkpoint folder (lora.safetensors + state.json), an adapter
// GGUF, or a PEFT folder. Every source is checked against its base model's tensor index before any
// export is written.
import { readdir, readFile, stat } from "node:fs/promises";
import path from "node:path";
import type { NamedTensor } from "../native/addon.js";
import { readGgufModel } from "../gguf/read.js";
import { ExportError } from "./errors.js";
import { checkLoraAgainstBase, readGgufAdapter } from "./gguf-adapter.js";
import { readPeftAdapter } from "./peft.js";
import { readSafetensors } from "./safetensors.js";

export interface AdapterSource {
  /** what was read, for messages */
  description: string;
  baseModelPath: string;
  arch: string;
  alpha: number;
  rank: number;
  /** llama.cpp-named LoRA tensors, row-major lora_a [rank, in] / lora_b [out, rank] */
  tensors: NamedTensor[];
  /** optimizer step the adapter was taken at, when known */
  step?: number;
}

export interface AdapterSourceOptions {
  /** the base model GGUF; overrides the one the run recorded, and is required for bare adapter files */
  baseModelPath?: string;
}

async function isFile(target: string): Promise<boolean> {
  try {
    return (await stat(target)).isFile();
  } catch {
    return false;
  }
}

async function readJson(file: string): Promise<Record<string, unknown>> {
  let text: string;
  try {
    text = await readFile(file, "utf8");
  } catch (error) {
    throw new ExportError(`cannot read ${file}: ${(error as Error).message}`);
  }
  try {
    const value = JSON.parse(text) as unknown;
    if (value === null || typeof value !== "object" || Array.isArray(value)) throw new Error("not a JSON object");
    return value as Record<string, unknown>;
  } catch (error) {
    throw new ExportError(`${file} is not valid JSON: ${(error as Error).message}`);
  }
}

function requireString(record: Record<string, unknown>, key: string, file: string): string {
  const value = record[key];
  if (typeof value !== "string" || value === "") throw new ExportError(`${file}: "${key}" must be a non-empty string`);
  return value;
}

function requirePositive(record: Record<string, unknown>, key: string, file: string): number {
  const value = record[key];
  if (typeof value !== "number" || !(value > 0)) throw new ExportError(`${file}: "${key}" must be a positive number`);
  return value;
}

/** The base GGUF: the one given, else the recorded one (resolved against `relativeTo`), which must exist. */
async function resolveBase(recorded: string | undefined, options: AdapterSourceOptions, recordedIn: string, relativeTo: string): Promise<string> {
  if (options.baseModelPath) {
    if (!(await isFile(options.baseModelPath))) throw new ExportError(`base model ${options.baseModelPath} does not exist`);
    return path.resolve(options.baseModelPath);
  }
  if (!recorded) throw new ExportError(`${recordedIn} does not say which base model it belongs to; pass --base with the base GGUF`);
  const candidates = path.isAbsolute(recorded) ? [recorded] : [path.resolve(recorded), path.resolve(relativeTo, recorded)];
  for (const candidate of candidates) if (await isFile(candidate)) return candidate;
  throw new ExportError(`the base model ${recorded} recorded in ${recordedIn} does not exist; pass --base with the base GGUF`);
}

/** Checks architecture and every shape against the base's tensor index, then returns the source. */
async function checked(source: AdapterSource): Promise<AdapterSource> {
  const base = await readGgufModel(source.baseModelPath);
  const baseArch = String(base.metadata["general.architecture"] ?? "");
  if (source.arch !== "" && source.arch !== baseArch) {
    throw new ExportError(`${source.description} is a ${source.arch} adapter but the base model ${source.baseModelPath} is ${baseArch}; they do not belong together`);
  }
  const { rank } = checkLoraAgainstBase(base, source.tensors, source.description);
  if (rank !== source.rank) throw new ExportError(`${source.description}: its tensors have rank ${rank} but it records rank ${source.rank}`);
  return { ...source, arch: baseArch };
}

async function fromAdapterFolder(dir: string, options: AdapterSourceOptions): Promise<AdapterSource> {
  const descriptionFile = path.join(dir, "thinktune.json");
  const description = await readJson(descriptionFile);
  const adapterFile = path.join(dir, typeof description.adapter === "string" ? description.adapter : "adapter.gguf");
  const adapter = await readGgufAdapter(adapterFile);
  const alpha = requirePositive(description, "alpha", descriptionFile);
  if (Math.abs(adapter.alpha - alpha) > 1e-6 * alpha) {
    throw new ExportError(`${adapterFile} has adapter.lora.alpha ${adapter.alpha} but ${descriptionFile} says alpha ${alpha}`);
  }
  return checked({
    description: adapterFile,
    baseModelPath: await resolveBase(description.baseModelPath as string | undefined, options, descriptionFile, dir),
    arch: typeof description.arch === "string" ? description.arch : adapter.arch,
    alpha,
    rank: requirePositive(description, "rank", descriptionFile),
    tensors: adapter.tensors,
    step: typeof description.step === "number" ? description.step : undefined,
  });
}

async function fromCheckpoint(dir: string, options: AdapterSourceOptions): Promise<AdapterSource> {
  // checkpoints/step-N lives in the run folder, whose config.json records the base model and LoRA settings
  const runDir = path.dirname(path.dirname(path.resolve(dir)));
  const configFile = path.join(runDir, "config.json");
  if (!(await isFile(configFile))) {
    throw new ExportError(`${dir} is a checkpoint but ${configFile} is missing, so its base model and alpha are unknown; export the run folder instead`);
  }
  const config = await readJson(configFile);
  const lora = (config.lora ?? {}) as Record<string, unknown>;
  const file = await readSafetensors(path.join(dir, "lora.safetensors"));
  const state = await readJson(path.join(dir, "state.json"));
  return checked({
    description: path.join(dir, "lora.safetensors"),
    baseModelPath: await resolveBase(config.model as string | undefined, options, configFile, runDir),
    arch: "",
    alpha: requirePositive(lora, "alpha", `${configFile} (lora)`),
    rank: requirePositive(lora, "rank", `${configFile} (lora)`),
    tensors: file.tensors,
    step: typeof state.step === "number" ? state.step : undefined,
  });
}

async function newestCheckpoint(runDir: string): Promise<string | undefined> {
  let names: string[];
  try {
    names = await readdir(path.join(runDir, "checkpoints"));
  } catch {
    return undefined;
  }
  const steps = names.map((name) => /^step-(\d+)$/.exec(name)).filter((match): match is RegExpExecArray => match !== null);
  steps.sort((a, b) => Number(b[1]) - Number(a[1]));
  return steps.length > 0 ? path.join(runDir, "checkpoints", steps[0][0]) : undefined;
}

/** Loads the LoRA to export from `input` and checks it against its base model. */
export async function loadAdapterSource(input: string, options: AdapterSourceOptions = {}): Promise<AdapterSource> {
  let stats;
  try {
    stats = await stat(input);
  } catch {
    throw new ExportError(`${input} does not exist; give a run folder, a checkpoint folder, an adapter folder or an adapter GGUF`);
  }
  if (stats.isFile()) {
    if (!input.toLowerCase().endsWith(".gguf")) throw new ExportError(`${input} is not an adapter GGUF (.gguf)`);
    const adapter = await readGgufAdapter(input);
    const siblingDescription = path.join(path.dirname(input), "thinktune.json");
    if (!options.baseModelPath && (await isFile(siblingDescription))) return fromAdapterFolder(path.dirname(input), options);
    const rank = adapter.tensors.find((tensor) => tensor.name.endsWith(".lora_a"))?.shape[0] ?? 0;
    return checked({
      description: input,
      baseModelPath: await resolveBase(undefined, options, input, path.dirname(input)),
      arch: adapter.arch,
      alpha: adapter.alpha,
      rank,
      tensors: adapter.tensors,
    });
  }
  if (await isFile(path.join(input, "thinktune.json"))) return fromAdapterFolder(input, options);
  if (await isFile(path.join(input, "lora.safetensors"))) return fromCheckpoint(input, options);
  if (await isFile(path.join(input, "adapter_config.json"))) {
    const baseModelPath = await resolveBase(undefined, options, path.join(input, "adapter_config.json"), input);
    const peft = await readPeftAdapter(input, baseModelPath);
    return checked({ description: input, baseModelPath, arch: "", alpha: peft.alpha, rank: peft.rank, tensors: peft.tensors });
  }
  if (await isFile(path.join(input, "config.json"))) {
    if (await isFile(path.join(input, "adapter", "thinktune.json"))) return fromAdapterFolder(path.join(input, "adapter"), options);
    const checkpoint = await newestCheckpoint(input);
    if (checkpoint) return fromCheckpoint(checkpoint, options);
    throw new ExportError(`${input} is a run folder with neither an adapter/ nor a checkpoint yet; train first`);
  }
  throw new ExportError(
    `${input} is not a thinktune run folder (config.json), adapter folder (thinktune.json), checkpoint (lora.safetensors) or PEFT folder (adapter_config.json)`,
  );
}
