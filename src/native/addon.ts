// The only module that loads the native addon, and the one place its interface is typed.
// Every long call returns a Promise and runs off the JS thread.
import { existsSync } from "node:fs";
import { createRequire } from "node:module";
import path from "node:path";
import { fileURLToPath } from "node:url";

/** ggml type ids as stored in GGUF files (ggml.h), for the types thinktune reads and writes. */
export const GgmlType = {
  F32: 0,
  F16: 1,
  Q4_0: 2,
  Q8_0: 8,
  Q4_K: 12,
  Q5_K: 13,
  Q6_K: 14,
  BF16: 30,
} as const;
export type GgmlTypeName = keyof typeof GgmlType;

/** One tensor of a GGUF file as the native side checks and maps it. */
export interface NativeTensorEntry {
  name: string;
  /** ggml type id */
  type: number;
  /** ggml order: dims[0] is the contiguous (row) length */
  dims: number[];
  /** absolute byte offset in the file */
  offset: number;
}

export type LoraTarget = "q" | "k" | "v" | "o" | "gate" | "up" | "down";

/** Model hyper-parameters read from GGUF metadata (src/gguf/model-config.ts). */
export interface NativeModelConfig {
  arch: "qwen2" | "llama";
  nLayer: number;
  nEmbd: number;
  nHead: number;
  nHeadKv: number;
  headDim: number;
  nFf: number;
  nVocab: number;
  contextLength: number;
  ropeBase: number;
  rmsEps: number;
  /** true when the file has no output.weight and the token embedding is reused */
  tiedOutput: boolean;
  hasQkvBias: boolean;
  /** true when the file carries rope_freqs.weight (llama3 frequency scaling) */
  hasRopeFreqs: boolean;
}

export interface NativeEngineOptions {
  path: string;
  config: NativeModelConfig;
  tensors: NativeTensorEntry[];
  device: "cpu" | "cuda";
  /** CPU threads; 0 = all cores */
  threads: number;
  lora: { rank: number; alpha: number; targets: LoraTarget[]; dropout: number; seed: number };
  optimizer: { beta1: number; beta2: number; eps: number; weightDecay: number; clipNorm: number };
  /** longest row (tokens) a batch may hold: sizes the memory plan */
  maxTokens: number;
  /** CUDA only: act as a card with this many bytes */
  gpuMemoryBytes?: number;
  /** keep at most this many layers' activations from the forward (default: as many as the budget fits; 0 recomputes every layer) */
  maxKeptLayers?: number;
  /** positions per feed-forward chunk (default: each (positions, FFN width) buffer ≤ 128 MiB on the CPU, 384 MiB on CUDA) */
  feedForwardTokens?: number;
  /** CUDA only: where the layers' residual checkpoints live ("auto": the GPU unless the budget needs pinned host memory) */
  checkpoints?: "auto" | "gpu" | "host";
  /** the file's tensor data alignment (general.alignment, 32 when absent): offsets are checked against it */
  alignment?: number;
  /** arithmetic of the base-weight matmuls: "fp32" (default, the reference) or "bf16" (AVX512-BF16 CPUs, about 2x faster) */
  precision?: "fp32" | "bf16";
}

/** One row of a batch: packed sequences, targets -1 where there is no loss. */
export interface NativeRow {
  tokens: Int32Array;
  targets: Int32Array;
  /** index where each packed sequence starts; first is 0 */
  seqStarts: Int32Array;
}

export interface NamedTensor {
  name: string;
  /** row-major shape */
  shape: number[];
  data: Float32Array;
}

export interface NativeStepResult {
  /** summed cross-entropy over all target tokens of the step */
  lossSum: number;
  tokens: number;
  /** global L2 norm of the LoRA gradient before clipping */
  gradNorm: number;
}

/**
 * Every native rejection carries one of these as `error.code`: the input was wrong, an allocation
 * failed, a CUDA/cuBLAS call failed (the engine refuses later calls), training produced a NaN or
 * infinite loss, gradient or update (nothing was applied), or the call was aborted.
 */
export type NativeErrorCode = "bad-input" | "out-of-memory" | "device-failure" | "diverged" | "aborted";

export interface NativeError extends Error {
  code: NativeErrorCode;
}

const nativeErrorCodes: readonly string[] = ["bad-input", "out-of-memory", "device-failure", "diverged", "aborted"] satisfies NativeErrorCode[];

/** The kind of a native rejection, or undefined when `error` did not come from the addon. */
export function nativeErrorCode(error: unknown): NativeErrorCode | undefined {
  const code = (error as { code?: unknown } | null)?.code;
  return typeof code === "string" && nativeErrorCodes.includes(code) ? (code as NativeErrorCode) : undefined;
}

/**
 * The long calls take an optional call id (any number the caller picks): `abort(callId)` stops that
 * call only, `abort()` every call in flight.
 */
export interface NativeEngine {
  step(rows: NativeRow[], lr: number, callId?: number): Promise<NativeStepResult>;
  evaluate(rows: NativeRow[], callId?: number): Promise<{ lossSum: number; tokens: number }>;
  /** [tokens.length, nVocab] row-major */
  logits(row: { tokens: Int32Array; seqStarts: Int32Array }, callId?: number): Promise<Float32Array>;
  /** LoRA gradients of the summed loss, without an update (tests and checks) */
  gradients(rows: NativeRow[], callId?: number): Promise<{ lossSum: number; tokens: number; tensors: NamedTensor[] }>;
  getLora(): Promise<NamedTensor[]>;
  setLora(tensors: NamedTensor[]): Promise<void>;
  getOptimizerState(): Promise<{ step: number; tensors: NamedTensor[] }>;
  setOptimizerState(state: { step: number; tensors: NamedTensor[] }): Promise<void>;
  /** bytes planned per lifetime, known before the first step */
  memoryPlan(): Record<string, number>;
  /** stop a call between layers (the one with this id, or every call in flight); it rejects with "aborted" */
  abort(callId?: number): void;
  dispose(): void;
}

export interface NativeAddon {
  readonly version: string;
  readonly backends: readonly ("cpu" | "cuda")[];
  /** the GPU architectures the CUDA backend was compiled for, comma-separated ("80,90a"); "" without it */
  readonly cudaArchitectures: string;
  /** number of usable CUDA devices (0 without the CUDA build or a GPU) */
  cudaDeviceCount(): number;
  quantize(type: number, values: Float32Array): Promise<Uint8Array>;
  dequantize(type: number, bytes: Uint8Array, count: number): Promise<Float32Array>;
  /** memory-maps the file and checks every tensor (type, size, bounds, alignment) */
  checkTensors(path: string, tensors: NativeTensorEntry[], alignment: number): Promise<void>;
  Engine: { create(options: NativeEngineOptions): Promise<NativeEngine> };
}

export class NativeAddonError extends Error {}

const here = path.dirname(fileURLToPath(import.meta.url));
const projectRoot = path.resolve(here, "..", "..");
let loaded: NativeAddon | undefined;

/** Loads build/Release/thinktune.node once (THINKTUNE_ADDON names another build of it). */
export function loadNativeAddon(): NativeAddon {
  if (loaded) return loaded;
  const addonPath = process.env.THINKTUNE_ADDON ?? path.join(projectRoot, "build", "Release", "thinktune.node");
  if (!existsSync(addonPath)) {
    throw new NativeAddonError(`thinktune's native addon is not built (${addonPath} is missing); run \`npm install\` or \`npm run build:native\`.`);
  }
  const require = createRequire(import.meta.url);
  loaded = require(addonPath) as NativeAddon;
  return loaded;
}
