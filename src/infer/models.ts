// A base model and the adapters served on it. llama.cpp applies LoRA per context, so each name (the
// base, and each adapter) gets its own context, created on first use, with `parallel` sequences.
// At most `parallel` generations run at once over all names; the rest wait in order (FIFO) and leave
// the queue when their client goes away.
import { EventEmitter } from "node:events";
import { stat } from "node:fs/promises";
import path from "node:path";
import { getLlama, LlamaLogLevel, type Llama, type LlamaContext, type LlamaContextSequence, type LlamaModel } from "node-llama-cpp";
import { checkModelFile } from "../gguf/model-check.js";
import { readGgufModel } from "../gguf/read.js";
import { resolveAdapter, modelNameFromPath, type ResolvedAdapter } from "./adapter.js";
import { generateOnSequence, type GenerationOptions, type GenerationResult } from "./generate.js";
import { ChatPromptRenderer, ChatTemplateError, type ChatMessage } from "./prompt.js";
import { FreeCoreMeter } from "./threads.js";

export interface ModelHostOptions {
  /** the base model GGUF */
  modelPath: string;
  /** adapters: files, run folders, checkpoint folders; `NAME=PATH` names one */
  adapters?: readonly string[];
  /** "auto" uses a GPU when node-llama-cpp finds one; false forces the CPU */
  gpu?: "auto" | false;
  /** tokens per sequence; up to 8192 (and the model's training context) when absent */
  contextSize?: number;
  /** generations at once; more wait in a queue */
  parallel?: number;
  /** CPU threads for evaluation; 0 or absent = the cores free when each generation starts (measured) */
  threads?: number;
}

export interface ServedModel {
  /** what clients pass as `model` */
  id: string;
  /** absent for the base */
  adapter?: ResolvedAdapter;
}

export class UnknownModelError extends Error {
  constructor(
    readonly model: string,
    readonly available: readonly string[],
  ) {
    super(`the model "${model}" does not exist; available: ${available.join(", ")}`);
    this.name = "UnknownModelError";
  }
}

export class QueueAbortedError extends Error {
  constructor() {
    super("the request was cancelled while it waited for a free slot");
    this.name = "QueueAbortedError";
  }
}

/** First-in first-out permits; a waiter whose signal aborts leaves the queue. */
export class Semaphore {
  #free: number;
  readonly #waiting: { grant: () => void }[] = [];

  constructor(permits: number) {
    this.#free = permits;
  }

  get queued(): number {
    return this.#waiting.length;
  }

  async acquire(signal?: AbortSignal): Promise<() => void> {
    if (signal?.aborted) throw new QueueAbortedError();
    if (this.#free > 0 && this.#waiting.length === 0) {
      this.#free--;
      return this.#releaser();
    }
    await new Promise<void>((resolve, reject) => {
      const waiter = {
        grant: () => {
          signal?.removeEventListener("abort", onAbort);
          resolve();
        },
      };
      const onAbort = () => {
        const index = this.#waiting.indexOf(waiter);
        if (index >= 0) this.#waiting.splice(index, 1);
        reject(new QueueAbortedError());
      };
      signal?.addEventListener("abort", onAbort, { once: true });
      this.#waiting.push(waiter);
    });
    return this.#releaser();
  }

  #releaser(): () => void {
    let released = false;
    return () => {
      if (released) return;
      released = true;
      const next = this.#waiting.shift();
      if (next) next.grant();
      else this.#free++;
    };
  }
}

/** Emitted as "generation" when a generation ends (finished, cut at a limit, or aborted). */
export interface GenerationRecord {
  model: string;
  result: GenerationResult;
  durationMs: number;
}

interface Slot {
  served: ServedModel;
  context?: Promise<LlamaContext>;
  freeSequences: LlamaContextSequence[];
}

/** llama.cpp's own error for a missing file is a bare ENOENT; say which file and what is expected. */
async function checkModelExists(modelPath: string): Promise<void> {
  const stats = await stat(modelPath).catch(() => undefined);
  if (!stats) throw new ModelFileError(`the model ${modelPath} does not exist (resolved as ${path.resolve(modelPath)}); give the path of a model GGUF`);
  if (!stats.isFile()) throw new ModelFileError(`the model ${modelPath} is not a file; give the path of a model GGUF`);
}

export class ModelFileError extends Error {
  readonly code = "MODEL_NOT_FOUND";
  constructor(message: string) {
    super(message);
    this.name = "ModelFileError";
  }
}

export class ModelHost extends EventEmitter<{ generation: [GenerationRecord] }> {
  readonly llama: Llama;
  readonly model: LlamaModel;
  readonly modelPath: string;
  readonly renderer: ChatPromptRenderer;
  readonly parallel: number;
  readonly #contextSize: number | { max: number };
  readonly #threads: number;
  /** absent when the threads were given */
  readonly #freeCores: FreeCoreMeter | undefined;
  readonly #slots = new Map<string, Slot>();
  readonly #semaphore: Semaphore;
  #active = 0;
  #disposed = false;

  private constructor(llama: Llama, model: LlamaModel, options: ModelHostOptions, renderer: ChatPromptRenderer, served: ServedModel[]) {
    super();
    this.llama = llama;
    this.model = model;
    this.modelPath = options.modelPath;
    this.renderer = renderer;
    this.parallel = options.parallel ?? 1;
    this.#contextSize = options.contextSize ?? { max: 8192 };
    // Contexts ask for every math core; before each generation the llama instance's limit is set to
    // the cores free then, and llama.cpp's thread splitter gives each evaluation at most that.
    this.#threads = options.threads || llama.cpuMathCores;
    this.#freeCores = options.threads ? undefined : new FreeCoreMeter(llama.cpuMathCores);
    llama.maxThreads = this.#threads;
    this.#semaphore = new Semaphore(this.parallel);
    for (const entry of served) this.#slots.set(entry.id, { served: entry, freeSequences: [] });
  }

  static async load(options: ModelHostOptions): Promise<ModelHost> {
    const parallel = options.parallel ?? 1;
    if (!Number.isInteger(parallel) || parallel < 1) throw new RangeError(`parallel must be a whole number of at least 1, got ${parallel}`);
    await checkModelExists(options.modelPath);
    const baseId = modelNameFromPath(options.modelPath);
    const adapters: ResolvedAdapter[] = [];
    try {
      for (const argument of options.adapters ?? []) {
        const adapter = await resolveAdapter(argument, options.modelPath);
        const taken = adapter.name === baseId || adapters.some((other) => other.name === adapter.name);
        if (taken) {
          await adapter.dispose();
          throw new RangeError(`two models would be served as "${adapter.name}" (${argument}); name the adapter with NAME=PATH`);
        }
        adapters.push(adapter);
      }
      // llama.cpp trusts the file more than thinktune does: check it first
      await checkModelFile(await readGgufModel(options.modelPath));
      const llama = await getLlama({ gpu: options.gpu ?? "auto", build: "never", logLevel: LlamaLogLevel.error, maxThreads: options.threads || undefined });
      const model = await llama.loadModel({ modelPath: options.modelPath });
      const template = model.fileInfo.metadata?.tokenizer?.chat_template;
      if (typeof template !== "string" || template.trim() === "") {
        await model.dispose();
        throw new ChatTemplateError(`${options.modelPath} has no chat template (tokenizer.chat_template); chat needs a chat model`);
      }
      const renderer = new ChatPromptRenderer({
        template,
        bosToken: model.tokens.bosString ?? "",
        eosToken: model.tokens.eosString ?? "",
        source: options.modelPath,
      });
      const served: ServedModel[] = [{ id: baseId }, ...adapters.map((adapter) => ({ id: adapter.name, adapter }))];
      return new ModelHost(llama, model, options, renderer, served);
    } catch (error) {
      await Promise.all(adapters.map((adapter) => adapter.dispose()));
      throw error;
    }
  }

  /** The base first, then the adapters in the order given. */
  get models(): ServedModel[] {
    return [...this.#slots.values()].map((slot) => slot.served);
  }

  get baseId(): string {
    return this.models[0].id;
  }

  /** CPU threads generations may use now: the number given, or the free cores last measured */
  get threads(): number {
    return this.llama.maxThreads;
  }

  /** generations running now */
  get active(): number {
    return this.#active;
  }

  /** requests waiting for a free slot */
  get queued(): number {
    return this.#semaphore.queued;
  }

  has(id: string): boolean {
    return this.#slots.has(id);
  }

  /**
   * Runs one chat completion on the named model (base or adapter). Waits for a free slot when
   * `parallel` generations are running; the signal cancels the wait or stops the generation.
   */
  async generate(id: string, messages: readonly ChatMessage[], options: GenerationOptions = {}): Promise<GenerationResult> {
    const slot = this.#slots.get(id);
    if (!slot) throw new UnknownModelError(id, [...this.#slots.keys()]);
    const prompt = this.renderer.render(messages);
    const release = await this.#semaphore.acquire(options.signal);
    let sequence: LlamaContextSequence | undefined;
    try {
      if (this.#freeCores) this.llama.maxThreads = await this.#freeCores.measure();
      sequence = await this.#takeSequence(slot);
      this.#active++;
      const started = performance.now();
      try {
        const result = await generateOnSequence(this.model, sequence, prompt, options);
        this.emit("generation", { model: id, result, durationMs: performance.now() - started });
        return result;
      } finally {
        this.#active--;
      }
    } finally {
      if (sequence) slot.freeSequences.push(sequence);
      release();
    }
  }

  async #takeSequence(slot: Slot): Promise<LlamaContextSequence> {
    if (this.#disposed) throw new Error("the model host was disposed");
    if (!slot.context) {
      slot.context = this.model.createContext({
        contextSize: this.#contextSize,
        sequences: this.parallel,
        threads: this.#threads,
        lora: slot.served.adapter ? { adapters: [{ filePath: slot.served.adapter.ggufPath }] } : undefined,
      });
      slot.context.catch(() => {
        slot.context = undefined; // a failed creation is retried by the next request
      });
    }
    const context = await slot.context;
    const reused = slot.freeSequences.pop();
    if (reused) return reused;
    // At most `parallel` generations run at once, so a context with `parallel` sequences always has one.
    return context.getSequence();
  }

  async dispose(): Promise<void> {
    if (this.#disposed) return;
    this.#disposed = true;
    for (const slot of this.#slots.values()) {
      const context = await slot.context?.catch(() => undefined);
      await context?.dispose();
      await slot.served.adapter?.dispose();
    }
    await this.model.dispose();
  }
}
