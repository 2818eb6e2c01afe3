// The benchmark: LoRA training and forward throughput of thinktune's engine on a synth model, measured in
// the same command beside llama.cpp's prompt evaluation (CPU) and transformers + PEFT training.
import { createHash } from "node:crypto";
import { execFile } from "node:child_process";
import { existsSync } from "node:fs";
import { mkdir } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { performance } from "node:perf_hooks";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import type { Token } from "node-llama-cpp";
import { resolveSynthOptions, synthParameterCount, writeSynthModel, type SynthInput, type SynthOptions } from "../gguf/synth.js";
import { loadNativeAddon, nativeErrorCode, type GgmlTypeName, type NativeRow } from "../native/addon.js";
import { Engine, loraTargets } from "../train/engine.js";
import { defaultPeftScript, defaultPython, defaultSdpaScript, jsonLines, llamaCppPromptEvaluation, runPeftBaseline, runSdpaBaseline, type PeftRun, type PeftShape } from "./peers.js";
import type { AnyBenchRecord, AttentionRecord, BenchRecord } from "./results.js";

const run = promisify(execFile);
export const projectRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..", "..");
export const benchModelDir = path.join(projectRoot, "node_modules", ".cache", "thinktune-bench");

export class BenchError extends Error {
  override name = "BenchError";
}

/** The CPU benchmark model: ~156M parameters, the shape peft_lora.py's CPU example uses. */
export const cpuBenchShape: SynthInput = {
  arch: "qwen2",
  nLayer: 8,
  nEmbd: 1024,
  nHead: 16,
  nHeadKv: 4,
  nFf: 2816,
  nVocab: 32000,
  contextLength: 32768,
  tiedOutput: false,
  qkvBias: true,
  seed: 0,
};

/** LoRA of both benchmarks and of peft_lora.py: rank 16 (alpha 32) on all seven targets. */
const benchLora = { rank: 16, alpha: 32, targets: [...loraTargets], dropout: 0, seed: 0 };
const learningRate = 1e-4;

export interface BenchProgress {
  (message: string): void;
}

/** A synth GGUF for these options, written once under node_modules/.cache/thinktune-bench. */
export async function benchModel(input: SynthInput, progress: BenchProgress): Promise<{ path: string; options: SynthOptions }> {
  const options = resolveSynthOptions(input);
  const key = createHash("sha256").update(JSON.stringify(options)).digest("hex").slice(0, 12);
  const file = path.join(benchModelDir, `bench-${options.arch}-${options.nLayer}x${options.nEmbd}-${options.type}-${key}.gguf`);
  if (!existsSync(file)) {
    await mkdir(benchModelDir, { recursive: true });
    progress(`writing the benchmark model ${path.relative(process.cwd(), file)} (${(synthParameterCount(options) / 1e6).toFixed(0)}M parameters, ${options.type}); cached for later runs`);
    let lastReport = 0;
    // written under a temporary name and renamed (GgufWriter), so an interrupted run leaves no model behind
    await writeSynthModel(file, options, ({ index, count }) => {
      const now = performance.now();
      if (now - lastReport > 10_000) {
        lastReport = now;
        progress(`  tensor ${index}/${count}`);
      }
    });
  }
  return { path: file, options };
}

export function describeModel(options: SynthOptions): string {
  return `synth ${options.arch} ${options.nLayer}x${options.nEmbd} ffn ${options.nFf} heads ${options.nHead}/${options.nHeadKv} vocab ${options.nVocab}`;
}

function peftShape(options: SynthOptions): PeftShape {
  return { layers: options.nLayer, hidden: options.nEmbd, ffn: options.nFf, heads: options.nHead, kvHeads: options.nHeadKv, vocab: options.nVocab };
}

/** Deterministic token ids below nVocab (the model is random: the text does not matter, only the count). */
function benchTokens(count: number, nVocab: number): Int32Array {
  const tokens = new Int32Array(count);
  let state = 0x2545f491;
  for (let i = 0; i < count; i++) {
    state = (Math.imul(state, 1664525) + 1013904223) >>> 0;
    tokens[i] = state % nVocab;
  }
  return tokens;
}

/** A training row: next-token targets everywhere but the last position (as peft_lora.py's labels=input). */
function trainingRow(tokens: Int32Array): NativeRow {
  const targets = new Int32Array(tokens.length).fill(-1);
  for (let i = 0; i + 1 < tokens.length; i++) targets[i] = tokens[i + 1];
  return { tokens, targets, seqStarts: Int32Array.of(0) };
}

/** A forward row with a single target: like a prompt evaluation, the output layer runs for one position. */
function forwardRow(tokens: Int32Array): NativeRow {
  const targets = new Int32Array(tokens.length).fill(-1);
  targets[tokens.length - 2] = tokens[tokens.length - 1];
  return { tokens, targets, seqStarts: Int32Array.of(0) };
}

/** The engine's whole planned memory (every lifetime, mapped weights included): its peak by design. */
function plannedBytes(engine: Engine): number {
  const plan = engine.memoryPlan();
  if (typeof plan.total === "number") return plan.total;
  return Object.values(plan).reduce((sum, bytes) => sum + bytes, 0);
}

async function timeMean(repeats: number, warmup: number, call: () => Promise<unknown>): Promise<number> {
  for (let i = 0; i < warmup; i++) await call();
  const start = performance.now();
  for (let i = 0; i < repeats; i++) await call();
  return (performance.now() - start) / 1000 / repeats;
}

export async function gitCommit(): Promise<string> {
  try {
    const { stdout } = await run("git", ["-C", projectRoot, "rev-parse", "--short", "HEAD"]);
    const { stdout: status } = await run("git", ["-C", projectRoot, "status", "--porcelain", "--untracked-files=no"]);
    return `${stdout.trim()}${status.trim() === "" ? "" : "-dirty"}`;
  } catch {
    return "unknown";
  }
}

async function gpuName(): Promise<string | null> {
  try {
    const { stdout } = await run("nvidia-smi", ["--query-gpu=name", "--format=csv,noheader"]);
    return stdout.trim().split("\n")[0] || null;
  } catch {
    return null;
  }
}

export function describeMachine(gpu: string | null): string {
  const cpu = os.cpus()[0]?.model.trim() ?? "unknown CPU";
  return `${os.availableParallelism()}-core ${cpu}${gpu ? "" : ", no GPU"}`;
}

export interface CommonBenchOptions {
  types: GgmlTypeName[];
  seqs: number[];
  /** timed training steps after the warm-up */
  steps: number;
  peft: boolean;
  python?: string;
  peftScript?: string;
  date: string;
  machine?: string;
  commit?: string;
  progress: BenchProgress;
}

export interface CpuBenchOptions extends CommonBenchOptions {
  threads: number;
  llamaCpp: boolean;
  /** timed forward passes after the warm-up */
  forwardRepeats: number;
}

/**
 * Checks what can be checked before minutes of measuring: every length needs a next-token target and a
 * position before it, and the PEFT script must exist when PEFT runs.
 */
function checkBenchOptions(options: CommonBenchOptions): void {
  const { seqs } = options;
  const short = seqs.filter((seq) => !Number.isInteger(seq) || seq < 2);
  if (seqs.length === 0 || short.length > 0) throw new BenchError(`--seq needs lengths of at least 2 tokens, got ${seqs.join(",") || "none"}`);
  const script = options.peftScript ?? defaultPeftScript(projectRoot);
  if (options.peft && !existsSync(script)) throw new BenchError(`the PEFT peer script ${script} is missing; pass --peft-script PATH or --no-peft`);
}

async function peftBaseline(options: CommonBenchOptions, device: "cpu" | "cuda", shape: PeftShape | undefined): Promise<PeftRun | undefined> {
  if (!options.peft) return undefined;
  const python = options.python ?? defaultPython(projectRoot);
  const script = options.peftScript ?? defaultPeftScript(projectRoot);
  options.progress(`transformers + PEFT (${python} ${script}, DEVICE=${device}, SEQS=${options.seqs.join(",")})`);
  try {
    const result = await runPeftBaseline({ python, script, device, shape, seqs: options.seqs, rank: benchLora.rank, onLine: (line) => options.progress(`  peft: ${line}`) });
    if (result.failure) options.progress(`  peft stopped early: ${result.failure}`);
    return result;
  } catch (error) {
    // the engine's measurements stand without the peer: recorded as missing
    options.progress(`  peft could not run (${(error as Error).message}); recorded as missing`);
    return undefined;
  }
}

/** `--device cpu`: forward beside llama.cpp and training beside PEFT, same file and threads. */
export async function runCpuBench(options: CpuBenchOptions): Promise<BenchRecord[]> {
  checkBenchOptions(options);
  const commit = options.commit ?? (await gitCommit());
  const machine = options.machine ?? describeMachine(null);
  const records: BenchRecord[] = [];
  let shapeOptions: SynthOptions | undefined;
  const measured: Omit<BenchRecord, "peftTokensPerSecond">[] = [];
  for (const type of options.types) {
    const { path: file, options: synth } = await benchModel({ ...cpuBenchShape, type }, options.progress);
    shapeOptions = synth;
    const maxSeq = Math.max(...options.seqs);
    if (maxSeq > synth.contextLength) throw new BenchError(`--seq ${maxSeq} exceeds the benchmark model's context length ${synth.contextLength}`);
    options.progress(`thinktune CPU engine, ${type}, ${options.threads} threads`);
    const engine = await Engine.load(file, { device: "cpu", threads: options.threads, maxTokens: maxSeq, lora: benchLora });
    const results: { seq: number; forward: number; step: number }[] = [];
    const peakGiB = round(plannedBytes(engine) / 2 ** 30, 2);
    try {
      for (const seq of options.seqs) {
        const tokens = benchTokens(seq, synth.nVocab);
        const forward = await timeMean(options.forwardRepeats, 1, () => engine.evaluate([forwardRow(tokens)]));
        options.progress(`  seq ${seq}: forward ${(seq / forward).toFixed(1)} tokens/s (${forward.toFixed(3)} s)`);
        const row = trainingRow(tokens);
        const step = await timeMean(options.steps, 1, () => engine.step([row], learningRate));
        options.progress(`  seq ${seq}: LoRA step ${(seq / step).toFixed(1)} tokens/s (${step.toFixed(3)} s)`);
        results.push({ seq, forward, step });
      }
    } finally {
      engine.dispose();
    }
    for (const { seq, forward, step } of results) {
      let llamaCpp: number | null = null;
      if (options.llamaCpp) {
        // node-llama-cpp brands token ids; these are valid ids of this model's vocabulary
        const tokens = Array.from(benchTokens(seq, synth.nVocab)) as Token[];
        try {
          const measurement = await llamaCppPromptEvaluation(file, tokens, options.threads, options.forwardRepeats);
          llamaCpp = measurement.tokensPerSecond;
          options.progress(`  seq ${seq}: llama.cpp prompt evaluation ${llamaCpp.toFixed(1)} tokens/s (${measurement.seconds.toFixed(3)} s)`);
        } catch (error) {
          // a failing peer must not throw away the engine's measurements: recorded as missing
          options.progress(`  seq ${seq}: llama.cpp prompt evaluation failed (${(error as Error).message}); recorded as missing`);
        }
      }
      measured.push({
        date: options.date,
        machine,
        gpu: null,
        commit,
        device: "cpu",
        model: describeModel(synth),
        type,
        seq,
        threads: options.threads,
        rank: benchLora.rank,
        tokensPerSecond: round(seq / step),
        stepSeconds: round(step, 4),
        forwardTokensPerSecond: round(seq / forward),
        llamaCppForwardTokensPerSecond: llamaCpp === null ? null : round(llamaCpp),
        peakGiB,
      });
    }
  }
  // PEFT trains a random model of the same shape: one run serves every base type
  const peft = shapeOptions ? await peftBaseline(options, "cpu", peftShape(shapeOptions)) : undefined;
  for (const record of measured) {
    const peer = peft?.measurements.find((measurement) => measurement.seq === record.seq);
    records.push({ ...record, peftTokensPerSecond: peer ? peer.tokensPerSecond : null });
  }
  return records;
}

export interface CudaBenchOptions extends CommonBenchOptions {
  /** dense bf16 peak of the GPU in TFLOP/s, for MFU (default: known for H100/H200/A100) */
  peakTflops?: number;
  /** plan as if the GPU had this many bytes (--gpu-memory 24GiB) */
  gpuMemoryBytes?: number;
  /** also time the fused attention alone beside torch SDPA (default true) */
  attention?: boolean;
}

/** The fused attention's timing program, built next to the addon with the CUDA engine. */
export const attentionProgram = path.join(projectRoot, "build", "Release", "thinktune_attention_check");

/** thinktune's attention forward + backward alone at the model's attention shape, beside torch SDPA's flash and cuDNN backends. */
async function attentionBench(options: CudaBenchOptions, synth: SynthOptions, record: Pick<AttentionRecord, "date" | "machine" | "gpu" | "commit">): Promise<AttentionRecord[]> {
  if (!existsSync(attentionProgram)) throw new BenchError(`${attentionProgram} is missing: it is built with the CUDA engine (THINKTUNE_CUDA=on npm run build:native), or pass --no-attention`);
  const heads = synth.nHead, kvHeads = synth.nHeadKv, headDim = synth.nEmbd / synth.nHead;
  options.progress(`attention forward + backward at ${heads}/${kvHeads} heads, head dim ${headDim}: thinktune's fused kernels, then torch SDPA`);
  const ours: Record<string, unknown>[] = [];
  const failure = await jsonLines(attentionProgram, ["--no-check", "--seqs", options.seqs.join(",")], process.env, (line) => {
    ours.push(line);
    options.progress(`  thinktune seq ${String(line.seq)}: ${String(line.fwd_bwd_tflops)} TFLOP/s forward + backward`);
  });
  if (failure) throw new BenchError(`the attention timing failed: ${failure}`);
  const sdpa = await runSdpaBaseline({ python: options.python ?? defaultPython(projectRoot), script: defaultSdpaScript(projectRoot), seqs: options.seqs, heads, kvHeads, headDim });
  if (sdpa.failure) options.progress(`  torch SDPA stopped early: ${sdpa.failure}`);
  return ours.map((line) => {
    const seq = Number(line.seq);
    const peer = sdpa.measurements.find((measurement) => measurement.seq === seq);
    return {
      kind: "attention" as const,
      ...record,
      seq,
      heads,
      kvHeads,
      headDim,
      forwardTflops: Number(line.fwd_tflops),
      forwardBackwardTflops: Number(line.fwd_bwd_tflops),
      sdpaFlashTflops: peer?.flashForwardBackwardTflops ?? null,
      sdpaCudnnTflops: peer?.cudnnForwardBackwardTflops ?? null,
    };
  });
}

/** Dense bf16 tensor-core peaks (TFLOP/s) of the GPUs we know, for model-FLOPs utilization. */
const bf16PeakTflops: [RegExp, number][] = [
  [/H100.*PCIe/i, 756],
  [/H100|H200|GH200/i, 989],
  [/A100/i, 312],
  [/L40S/i, 362],
  [/RTX 4090/i, 165],
];

/**
 * Model FLOPs of one trained token (no recomputation counted): the frozen matrices' forward (2·N) and
 * input-gradient backward (2·N), N = every matrix parameter including the output layer; causal attention
 * 2·d·T per layer forward and twice that backward. LoRA's own FLOPs are negligible at rank 16.
 */
export function trainingFlopsPerToken(options: SynthOptions, seq: number): number {
  const headDim = options.nEmbd / options.nHead;
  const kvWidth = headDim * options.nHeadKv;
  const perLayer = options.nEmbd * (2 * options.nEmbd + 2 * kvWidth) + 3 * options.nEmbd * options.nFf;
  const matrices = options.nLayer * perLayer + options.nEmbd * options.nVocab;
  return 4 * matrices + 6 * options.nLayer * options.nEmbd * seq;
}

/** `--device cuda`: the 7B preset at each type and length, beside PEFT (bf16) on the same GPU. */
export async function runCudaBench(options: CudaBenchOptions): Promise<AnyBenchRecord[]> {
  checkBenchOptions(options);
  const addon = loadNativeAddon();
  const devices = typeof addon.cudaDeviceCount === "function" ? addon.cudaDeviceCount() : 0;
  if (!addon.backends.includes("cuda") || devices === 0) {
    throw new BenchError(
      `--device cuda needs thinktune's CUDA build and a visible GPU; this addon has backends [${addon.backends.join(", ")}] and sees ${devices} CUDA device(s). ` +
        "Build with the CUDA toolkit present (npm run build:native) on a GPU machine, or run --device cpu.",
    );
  }
  const gpu = await gpuName();
  const commit = options.commit ?? (await gitCommit());
  const machine = options.machine ?? describeMachine(gpu);
  const peakTflops = options.peakTflops ?? bf16PeakTflops.find(([pattern]) => gpu !== null && pattern.test(gpu))?.[1];
  const measured: Omit<BenchRecord, "peftTokensPerSecond" | "peftPeakGiB">[] = [];
  let shapeOptions: SynthOptions | undefined;
  for (const type of options.types) {
    const { path: file, options: synth } = await benchModel({ preset: "r1-distill-qwen-7b", type }, options.progress);
    shapeOptions = synth;
    options.progress(`thinktune CUDA engine, ${type}${gpu ? ` on ${gpu}` : ""}`);
    for (const seq of options.seqs) {
      // one engine per length, so each record's peak is the plan for that length alone
      let engine: Engine;
      try {
        engine = await Engine.load(file, { device: "cuda", maxTokens: seq, lora: benchLora, ...(options.gpuMemoryBytes ? { gpuMemoryBytes: options.gpuMemoryBytes } : {}) });
      } catch (error) {
        // a length the budget cannot hold is a result too: said with the plan's estimate, and the other lengths still run
        if (nativeErrorCode(error) !== "out-of-memory") throw error;
        options.progress(`  seq ${seq}: does not fit: ${(error as Error).message}`);
        continue;
      }
      try {
        const peakBytes = plannedBytes(engine);
        const tokens = benchTokens(seq, synth.nVocab);
        const forward = await timeMean(3, 1, () => engine.evaluate([forwardRow(tokens)]));
        const row = trainingRow(tokens);
        // two untimed warm-up steps
        for (let i = 0; i < 2; i++) await engine.step([row], learningRate);
        // the copy wait is cumulative since the engine was created: the timed steps' share is its growth over them
        const waitBefore = engine.memoryPlan().copyWaitSeconds;
        const step = await timeMean(options.steps, 0, () => engine.step([row], learningRate));
        const mfu = peakTflops ? (trainingFlopsPerToken(synth, seq) * (seq / step)) / (peakTflops * 1e12) : null;
        const plan = engine.memoryPlan();
        const measuredPeak = plan.deviceUsedPeak ?? null;
        const hostBytes = plan.hostCheckpoints ?? null;
        const copyWaitShare = waitBefore === undefined || plan.copyWaitSeconds === undefined ? null : (plan.copyWaitSeconds - waitBefore) / (step * options.steps);
        options.progress(
          `  seq ${seq}: LoRA step ${(seq / step).toFixed(1)} tokens/s (${step.toFixed(3)} s), forward ${(seq / forward).toFixed(1)} tokens/s, ` +
            `plan ${(peakBytes / 2 ** 30).toFixed(2)} GiB (${plan.keptLayers ?? 0} of ${synth.nLayer} layers kept, ${plan.keptWholeLayers ?? 0} with their feed-forward products), measured ${measuredPeak === null ? "–" : (measuredPeak / 2 ** 30).toFixed(2)} GiB, ` +
            `host ${hostBytes === null ? "–" : (hostBytes / 2 ** 30).toFixed(2)} GiB, copy wait ${copyWaitShare === null ? "–" : `${(copyWaitShare * 100).toFixed(1)}%`} of the step time`,
        );
        measured.push({
          date: options.date,
          machine,
          gpu,
          commit,
          device: "cuda",
          model: describeModel(synth),
          type,
          seq,
          threads: null,
          rank: benchLora.rank,
          tokensPerSecond: round(seq / step),
          stepSeconds: round(step, 4),
          forwardTokensPerSecond: round(seq / forward),
          llamaCppForwardTokensPerSecond: null,
          peakGiB: round(peakBytes / 2 ** 30, 2),
          measuredPeakGiB: measuredPeak === null ? null : round(measuredPeak / 2 ** 30, 2),
          gpuMemoryGiB: options.gpuMemoryBytes ? round(options.gpuMemoryBytes / 2 ** 30, 2) : null,
          keptLayers: plan.keptLayers ?? null,
          keptWholeLayers: plan.keptWholeLayers ?? null,
          hostGiB: hostBytes === null ? null : round(hostBytes / 2 ** 30, 2),
          copyWaitShare: copyWaitShare === null ? null : round(copyWaitShare, 4),
          mfu: mfu === null ? null : round(mfu, 4),
        });
      } finally {
        engine.dispose();
      }
    }
  }
  // peft_lora.py's default shape is the 7B preset's; bf16 base on the GPU
  const peft = shapeOptions ? await peftBaseline(options, "cuda", peftShape(shapeOptions)) : undefined;
  const training = measured.map((record) => {
    const peer = peft?.measurements.find((measurement) => measurement.seq === record.seq);
    return { ...record, peftTokensPerSecond: peer ? peer.tokensPerSecond : null, peftPeakGiB: peer ? peer.peakGiB : null };
  });
  const attention = shapeOptions && options.attention !== false ? await attentionBench(options, shapeOptions, { date: options.date, machine, gpu, commit }) : [];
  return [...training, ...attention];
}

function round(value: number, digits = 1): number {
  const scale = 10 ** digits;
  return Math.round(value * scale) / scale;
}
