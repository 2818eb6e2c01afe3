// The public training engine: a GGUF model with LoRA adapters, trained and evaluated by the native
// addon off the JS thread. Options are validated here (zod); the native side gets a plain config.
import os from "node:os";
import { z } from "zod";
import { readCheckedModel } from "../gguf/model-check.js";
import {
  loadNativeAddon,
  type LoraTarget,
  type NamedTensor,
  type NativeEngine,
  type NativeEngineOptions,
  type NativeModelConfig,
  type NativeRow,
} from "../native/addon.js";

export const loraTargets = ["q", "k", "v", "o", "gate", "up", "down"] as const satisfies readonly LoraTarget[];

const positiveInteger = z.number().int().positive();

export const engineOptionsSchema = z
  .object({
    device: z.enum(["cpu", "cuda"]).default("cpu"),
    /** CPU threads; 0 = every core */
    threads: z.number().int().min(0).max(1024).default(0),
    /**
     * Arithmetic of the base-weight matmuls. "fp32" is the reference (matches llama.cpp's F32 logits to
     * 1e-5); "bf16" rounds both operands to bfloat16 and runs about twice as fast on CPUs with AVX512-BF16.
     */
    precision: z.enum(["fp32", "bf16"]).default("fp32"),
    /** CUDA only: plan as if the GPU had this many bytes (e.g. a 24 GB card on a bigger one) */
    gpuMemoryBytes: positiveInteger.optional(),
    /** CUDA only: keep at most this many layers' activations (default: as many as the memory budget fits; 0 = lean, recompute every layer) */
    maxKeptLayers: z.number().int().min(0).optional(),
    /** longest row (tokens) a batch may hold; defaults to min(2048, the model's context length) */
    maxTokens: positiveInteger.optional(),
    lora: z
      .object({
        rank: positiveInteger.max(4096).default(8),
        alpha: z.number().positive().finite().default(16),
        targets: z
          .array(z.enum(loraTargets))
          .min(1)
          .refine((targets) => new Set(targets).size === targets.length, "targets must not repeat")
          .default([...loraTargets]),
        dropout: z.number().min(0).lt(1).default(0),
        seed: z.number().int().min(0).max(Number.MAX_SAFE_INTEGER).default(0),
      })
      .strict()
      .prefault({}),
    optimizer: z
      .object({
        beta1: z.number().min(0).lt(1).default(0.9),
        beta2: z.number().min(0).lt(1).default(0.999),
        eps: z.number().positive().finite().default(1e-8),
        weightDecay: z.number().min(0).finite().default(0),
        /** global gradient-norm clipping; 0 = off */
        clipNorm: z.number().min(0).finite().default(1),
      })
      .strict()
      .prefault({}),
  })
  .strict();

export type EngineOptions = z.input<typeof engineOptionsSchema>;
export type ResolvedEngineOptions = z.output<typeof engineOptionsSchema> & { maxTokens: number };

export type EngineRow = NativeRow;

export interface EngineStepResult {
  /** summed cross-entropy over the step's target tokens */
  lossSum: number;
  /** mean cross-entropy per target token */
  loss: number;
  tokens: number;
  /** global L2 norm of the mean gradient, before clipping */
  gradNorm: number;
}

export interface EngineLossResult {
  lossSum: number;
  loss: number;
  tokens: number;
}

export interface EngineGradients {
  lossSum: number;
  tokens: number;
  /** gradient of the summed loss for each LoRA tensor, named like the tensor */
  tensors: NamedTensor[];
}

export interface OptimizerState {
  step: number;
  tensors: NamedTensor[];
}

export interface CallOptions {
  /** aborting stops the native call between layers; the promise rejects with "aborted" */
  signal?: AbortSignal;
}

export class EngineError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "EngineError";
  }
}

function formatIssues(error: z.ZodError): string {
  return error.issues
    .map((issue) => `${issue.path.length > 0 ? issue.path.join(".") : "options"}: ${issue.message}`)
    .join("; ");
}

export class Engine {
  /** @internal */
  readonly #native: NativeEngine;

  private constructor(
    native: NativeEngine,
    readonly path: string,
    readonly config: NativeModelConfig,
    readonly options: ResolvedEngineOptions,
  ) {
    this.#native = native;
  }

  /** Maps the GGUF at `path` and plans all memory for rows of up to options.maxTokens tokens. */
  static async load(path: string, options: EngineOptions = {}): Promise<Engine> {
    const parsed = engineOptionsSchema.safeParse(options);
    if (!parsed.success) throw new EngineError(`Invalid engine options: ${formatIssues(parsed.error)}`);
    const { file, config } = await readCheckedModel(path);
    const maxTokens = parsed.data.maxTokens ?? Math.min(2048, config.contextLength);
    if (maxTokens > config.contextLength) {
      throw new EngineError(`Invalid engine options: maxTokens ${maxTokens} exceeds the context length ${config.contextLength} of ${path}`);
    }
    const resolved: ResolvedEngineOptions = { ...parsed.data, maxTokens };
    const nativeOptions: NativeEngineOptions = {
      path: file.path,
      alignment: file.alignment,
      config,
      tensors: file.tensors.map(({ name, type, dims, offset }) => ({ name, type, dims, offset })),
      device: resolved.device,
      precision: resolved.precision,
      threads: resolved.threads === 0 ? os.availableParallelism() : resolved.threads,
      lora: resolved.lora,
      optimizer: resolved.optimizer,
      maxTokens,
      ...(resolved.gpuMemoryBytes === undefined ? {} : { gpuMemoryBytes: resolved.gpuMemoryBytes }),
      ...(resolved.maxKeptLayers === undefined ? {} : { maxKeptLayers: resolved.maxKeptLayers }),
    };
    const native = await loadNativeAddon().Engine.create(nativeOptions);
    return new Engine(native, file.path, config, resolved);
  }

  /** One optimizer step over all rows (micro-batches accumulated), at learning rate lr. */
  async step(rows: EngineRow[], lr: number, options: CallOptions = {}): Promise<EngineStepResult> {
    const result = await this.#withSignal(options.signal, () => this.#native.step(rows, lr));
    return { ...result, loss: result.lossSum / result.tokens };
  }

  async evaluate(rows: EngineRow[], options: CallOptions = {}): Promise<EngineLossResult> {
    const result = await this.#withSignal(options.signal, () => this.#native.evaluate(rows));
    return { ...result, loss: result.tokens > 0 ? result.lossSum / result.tokens : Number.NaN };
  }

  /** Logits (tokens.length × nVocab, row-major) of one sequence, or of a packed row. */
  async logits(input: Int32Array | { tokens: Int32Array; seqStarts: Int32Array }, options: CallOptions = {}): Promise<Float32Array> {
    const row = input instanceof Int32Array ? { tokens: input, seqStarts: Int32Array.of(0) } : input;
    return this.#withSignal(options.signal, () => this.#native.logits(row));
  }

  /** Gradients of the summed loss for every LoRA tensor, without an update. */
  async gradients(rows: EngineRow[], options: CallOptions = {}): Promise<EngineGradients> {
    return this.#withSignal(options.signal, () => this.#native.gradients(rows));
  }

  /** LoRA tensors `blk.N.<proj>.weight.lora_a` (rank, in) and `.lora_b` (out, rank). */
  getLora(): NamedTensor[] {
    return this.#native.getLora();
  }

  setLora(tensors: NamedTensor[]): void {
    this.#native.setLora(tensors);
  }

  /** AdamW moments `<lora name>.m` / `.v` and the step count. */
  getOptimizerState(): OptimizerState {
    return this.#native.getOptimizerState();
  }

  setOptimizerState(state: OptimizerState): void {
    this.#native.setOptimizerState(state);
  }

  /** Bytes per lifetime (weights mapped, converted weights, LoRA, activations, scratch, total). */
  memoryPlan(): Record<string, number> {
    return this.#native.memoryPlan();
  }

  /** Stops the running call between layers; it rejects with "aborted". */
  abort(): void {
    this.#native.abort();
  }

  dispose(): void {
    this.#native.dispose();
  }

  async #withSignal<T>(signal: AbortSignal | undefined, call: () => Promise<T>): Promise<T> {
    if (signal?.aborted) throw new EngineError("aborted");
    const promise = call();
    if (!signal) return promise;
    const onAbort = () => this.#native.abort();
    signal.addEventListener("abort", onAbort, { once: true });
    try {
      return await promise;
    } finally {
      signal.removeEventListener("abort", onAbort);
    }
  }
}
