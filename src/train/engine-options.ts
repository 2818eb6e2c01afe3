// The engine's settings, one zod schema per concern: LoRA, the optimizer, and the engine itself (device,
// threads, precision, memory). The training config (config.ts) composes the same schemas, so every
// default and bound is stated here once; the native addon checks the values again as a last line of defence.
import { z } from "zod";
import type { LoraTarget } from "../native/addon.js";

export const loraTargets = ["q", "k", "v", "o", "gate", "up", "down"] as const satisfies readonly LoraTarget[];

export const loraSettingsSchema = z.strictObject({
  rank: z.int().min(1).max(4096).default(16),
  /** the update is scaled by alpha / rank, as llama.cpp and PEFT apply it */
  alpha: z.number().positive().default(32),
  targets: z
    .array(z.enum(loraTargets))
    .min(1)
    .refine((targets) => new Set(targets).size === targets.length, { error: (issue) => `lists a target twice (${(issue.input as string[]).join(", ")})` })
    .default([...loraTargets]),
  dropout: z.number().min(0).max(0.9).default(0),
});

export const optimizerSettingsSchema = z.strictObject({
  // a beta of 1 would divide by zero in AdamW's bias correction
  beta1: z.number().min(0).lt(1).default(0.9),
  beta2: z.number().min(0).lt(1).default(0.999),
  eps: z.number().positive().default(1e-8),
  weightDecay: z.number().min(0).default(0),
  /** clip the global gradient norm to this; 0 turns clipping off */
  clipNorm: z.number().min(0).default(1),
});

/** CPU threads; 0 = every core */
export const threadsSchema = z.int().min(0).max(1024).default(0);

export const engineOptionsSchema = z.strictObject({
  device: z.enum(["cpu", "cuda"]).default("cpu"),
  threads: threadsSchema,
  /**
   * Arithmetic of the base-weight matmuls. "fp32" is the reference (matches llama.cpp's F32 logits to
   * 1e-5); "bf16" rounds both operands to bfloat16 and runs about twice as fast on CPUs with AVX512-BF16.
   */
  precision: z.enum(["fp32", "bf16"]).default("fp32"),
  /** CUDA only: plan as if the GPU had this many bytes (e.g. a 24 GB card on a bigger one) */
  gpuMemoryBytes: z.int().min(1).optional(),
  /** keep at most this many layers' activations from the forward (default: as many as the budget fits: the GPU's free memory or --gpu-memory, a quarter of the host's memory on the CPU; 0 = lean, recompute every layer) */
  maxKeptLayers: z.int().min(0).optional(),
  /** positions per feed-forward chunk (default: each (positions, FFN width) buffer holds at most 128 MiB on the CPU, 384 MiB on CUDA, so it does not grow with the sequence length) */
  feedForwardTokens: z.int().min(1).optional(),
  /** CUDA only: where each layer's saved input (its residual checkpoint) lives: "auto" keeps them on the GPU unless the budget then cannot keep every layer's activations, and moves them to pinned host memory (copied on a second stream, overlapping the compute) */
  checkpoints: z.enum(["auto", "gpu", "host"]).default("auto"),
  /** longest row (tokens) a batch may hold; defaults to min(2048, the model's context length) */
  maxTokens: z.int().min(1).optional(),
  /** `seed` draws the initial A matrices and the dropout masks */
  lora: loraSettingsSchema.extend({ seed: z.int().min(0).default(0) }).prefault({}),
  optimizer: optimizerSettingsSchema.prefault({}),
});

export type LoraSettings = z.output<typeof loraSettingsSchema>;
export type OptimizerSettings = z.output<typeof optimizerSettingsSchema>;
export type EngineOptions = z.input<typeof engineOptionsSchema>;
export type ResolvedEngineOptions = z.output<typeof engineOptionsSchema> & { maxTokens: number };
