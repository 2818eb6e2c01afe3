// The public training engine: a GGUF model with LoRA adapters, trained and evaluated by the native
// addon off the JS thread. Options are validated here (zod); the native side gets a plain config.
import os from "node:os";
import type { z } from "zod";
import { checkedModel } from "../gguf/model-check.js";
import { readGgufModel, type GgufModelFile } from "../gguf/read.js";
import {
  loadNativeAddon,
  type NativeErrorCode,
  type NamedTensor,
  type NativeEngine,
  type NativeEngineOptions,
  type NativeModelConfig,
  type NativeRow,
} from "../native/addon.js";
import { engineOptionsSchema, type EngineOptions, type ResolvedEngineOptions } from "./engine-options.js";

export { engineOptionsSchema, loraTargets } from "./engine-options.js";
export type { EngineOptions, ResolvedEngineOptions } from "./engine-options.js";

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
  constructor(
    message: string,
    readonly code?: NativeErrorCode,
  ) {
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
  #nextCallId = 0;

  private constructor(
    native: NativeEngine,
    readonly path: string,
    readonly config: NativeModelConfig,
    readonly options: ResolvedEngineOptions,
  ) {
    this.#native = native;
  }

  /**
   * Maps the GGUF at `model` (a path, or a file a caller has already read) and plans all memory for rows
   * of up to options.maxTokens tokens.
   */
  static async load(model: string | GgufModelFile, options: EngineOptions = {}): Promise<Engine> {
    const parsed = engineOptionsSchema.safeParse(options);
    if (!parsed.success) throw new EngineError(`Invalid engine options: ${formatIssues(parsed.error)}`);
    const { file, config } = await checkedModel(typeof model === "string" ? await readGgufModel(model) : model);
    const path = file.path;
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
      ...(resolved.feedForwardTokens === undefined ? {} : { feedForwardTokens: resolved.feedForwardTokens }),
      checkpoints: resolved.checkpoints,
    };
    const native = await loadNativeAddon().Engine.create(nativeOptions);
    return new Engine(native, file.path, config, resolved);
  }

  /** One optimizer step over all rows (micro-batches accumulated), at learning rate lr. */
  async step(rows: EngineRow[], lr: number, options: CallOptions = {}): Promise<EngineStepResult> {
    const result = await this.#withSignal(options.signal, (callId) => this.#native.step(rows, lr, callId));
    return { ...result, loss: result.lossSum / result.tokens };
  }

  async evaluate(rows: EngineRow[], options: CallOptions = {}): Promise<EngineLossResult> {
    const result = await this.#withSignal(options.signal, (callId) => this.#native.evaluate(rows, callId));
    return { ...result, loss: result.tokens > 0 ? result.lossSum / result.tokens : Number.NaN };
  }

  /** Logits (tokens.length × nVocab, row-major) of one sequence, or of a packed row. */
  async logits(input: Int32Array | { tokens: Int32Array; seqStarts: Int32Array }, options: CallOptions = {}): Promise<Float32Array> {
    const row = input instanceof Int32Array ? { tokens: input, seqStarts: Int32Array.of(0) } : input;
    return this.#withSignal(options.signal, (callId) => this.#native.logits(row, callId));
  }

  /** Gradients of the summed loss for every LoRA tensor, without an update. */
  async gradients(rows: EngineRow[], options: CallOptions = {}): Promise<EngineGradients> {
    return this.#withSignal(options.signal, (callId) => this.#native.gradients(rows, callId));
  }

  /** LoRA tensors `blk.N.<proj>.weight.lora_a` (rank, in) and `.lora_b` (out, rank). */
  async getLora(): Promise<NamedTensor[]> {
    return this.#native.getLora();
  }

  async setLora(tensors: NamedTensor[]): Promise<void> {
    return this.#native.setLora(tensors);
  }

  /** AdamW moments `<lora name>.m` / `.v` and the step count. */
  async getOptimizerState(): Promise<OptimizerState> {
    return this.#native.getOptimizerState();
  }

  async setOptimizerState(state: OptimizerState): Promise<void> {
    return this.#native.setOptimizerState(state);
  }

  /** Bytes per lifetime (weights mapped, converted weights, LoRA, activations, scratch, total). */
  memoryPlan(): Record<string, number> {
    return this.#native.memoryPlan();
  }

  /** Stops every running call between layers; they reject with "aborted". */
  abort(): void {
    this.#native.abort();
  }

  dispose(): void {
    this.#native.dispose();
  }

  // The signal stops this call only (its own call id), never another one running at the time.
  async #withSignal<T>(signal: AbortSignal | undefined, call: (callId: number) => Promise<T>): Promise<T> {
    if (signal?.aborted) throw new EngineError("aborted", "aborted");
    const callId = this.#nextCallId++;
    const promise = call(callId);
    if (!signal) return promise;
    const onAbort = () => this.#native.abort(callId);
    signal.addEventListener("abort", onAbort, { once: true });
    try {
      return await promise;
    } finally {
      signal.removeEventListener("abort", onAbort);
    }
  }
}
