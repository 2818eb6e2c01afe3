// Resolves what `--lora` names into an adapter GGUF that llama.cpp can load: an adapter .gguf file, a run
// folder (its adapter/adapter.gguf, else its newest checkpoint), an adapter folder, a checkpoint folder
// (checkpoints/step-N, converted on the fly from lora.safetensors) or a PEFT folder (converted too).
// Every adapter is checked against the base model's tensor shapes first, so a mismatch is reported with
// the tensor's name instead of failing inside llama.cpp.
import { mkdtemp, rm, stat } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { loadAdapterSource } from "../export/source.js";
import { writeGgufAdapter } from "../export/gguf-adapter.js";

export interface ResolvedAdapter {
  /** the name clients choose it by (`model` in the API) */
  name: string;
  /** what the user gave */
  input: string;
  /** the adapter GGUF llama.cpp loads */
  ggufPath: string;
  /** a converted adapter lives in a temporary folder, removed by `dispose` */
  dispose(): Promise<void>;
}

export class AdapterResolveError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "AdapterResolveError";
  }
}

async function isFile(target: string): Promise<boolean> {
  try {
    return (await stat(target)).isFile();
  } catch {
    return false;
  }
}

/** `NAME=PATH` names an adapter explicitly; a bare PATH gets a name from its file or run folder. */
export function parseAdapterArgument(argument: string): { name?: string; input: string } {
  const match = /^([A-Za-z0-9][A-Za-z0-9._:-]*)=(.+)$/.exec(argument);
  if (match && !argument.startsWith("./") && !path.isAbsolute(argument)) return { name: match[1], input: match[2] };
  return { input: argument };
}

/** The name a model is served under: its file name without .gguf. */
export function modelNameFromPath(file: string): string {
  return path.basename(file).replace(/\.gguf$/i, "");
}

function adapterName(input: string, ggufPath: string): string {
  const absolute = path.resolve(input);
  const checkpoint = /^step-(\d+)$/.exec(path.basename(absolute));
  if (checkpoint && path.basename(path.dirname(absolute)) === "checkpoints") {
    return `${path.basename(path.dirname(path.dirname(absolute)))}-step-${checkpoint[1]}`;
  }
  const file = path.resolve(ggufPath);
  // runs/<run>/adapter/adapter.gguf and <folder>/adapter.gguf are named after the folder that holds them
  if (path.basename(file) === "adapter.gguf") {
    const folder = path.dirname(file);
    return path.basename(folder) === "adapter" ? path.basename(path.dirname(folder)) : path.basename(folder);
  }
  return modelNameFromPath(file);
}

export async function resolveAdapter(argument: string, baseModelPath: string): Promise<ResolvedAdapter> {
  const { name, input } = parseAdapterArgument(argument);
  let stats;
  try {
    stats = await stat(input);
  } catch {
    throw new AdapterResolveError(`--lora ${input} does not exist; give an adapter .gguf, a run folder or a checkpoint folder (checkpoints/step-N)`);
  }
  let direct: string | undefined;
  if (stats.isFile()) direct = input;
  else if (await isFile(path.join(input, "adapter", "adapter.gguf"))) direct = path.join(input, "adapter", "adapter.gguf");
  else if (await isFile(path.join(input, "adapter.gguf"))) direct = path.join(input, "adapter.gguf");

  // Reading the source checks architecture, every pair and every shape against the base.
  let source;
  try {
    source = await loadAdapterSource(direct ?? input, { baseModelPath });
  } catch (error) {
    throw new AdapterResolveError(`--lora ${input}: ${(error as Error).message}`);
  }
  if (direct) {
    return { name: name ?? adapterName(input, direct), input, ggufPath: path.resolve(direct), dispose: async () => {} };
  }
  const folder = await mkdtemp(path.join(os.tmpdir(), "thinktune-adapter-"));
  const ggufPath = path.join(folder, "adapter.gguf");
  try {
    await writeGgufAdapter(ggufPath, { baseModelPath, alpha: source.alpha, tensors: source.tensors });
  } catch (error) {
    await rm(folder, { recursive: true, force: true });
    throw new AdapterResolveError(`--lora ${input}: converting it to an adapter GGUF failed: ${(error as Error).message}`);
  }
  const resolvedName = name ?? adapterName(input, path.join(path.resolve(input), "adapter.gguf"));
  return { name: resolvedName, input, ggufPath, dispose: () => rm(folder, { recursive: true, force: true }) };
}
