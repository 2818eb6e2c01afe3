// The two peers the benchmark measures beside thinktune, in the same command: llama.cpp's own prompt
// evaluation (node-llama-cpp, CPU) and transformers + PEFT training (the shared peft_lora.py script).
import { spawn } from "node:child_process";
import { existsSync } from "node:fs";
import path from "node:path";
import { performance } from "node:perf_hooks";
import type { Token } from "node-llama-cpp";

export class BenchPeerError extends Error {
  override name = "BenchPeerError";
}

/** Model shape in peft_lora.py's environment names. */
export interface PeftShape {
  layers: number;
  hidden: number;
  ffn: number;
  heads: number;
  kvHeads: number;
  vocab: number;
}

export interface PeftMeasurement {
  seq: number;
  tokensPerSecond: number;
  stepSeconds: number;
  peakGiB: number | null;
}

export interface PeftRun {
  measurements: PeftMeasurement[];
  /** what the script printed on stderr when it failed part-way (e.g. out of memory at the longest seq) */
  failure?: string;
}

/** The peer script: ../shared/bench/peft_lora.py from the project root, or .device/bench on the GPU machine. */
export function defaultPeftScript(projectRoot: string): string {
  const candidates = [path.resolve(projectRoot, "..", "shared", "bench", "peft_lora.py"), path.join(projectRoot, ".device", "bench", "peft_lora.py")];
  return candidates.find((candidate) => existsSync(candidate)) ?? candidates[0];
}

/** The reference venv's Python when it exists (CPU bench), else python3 (the GPU machine has torch system-wide). */
export function defaultPython(projectRoot: string): string {
  const venv = path.join(projectRoot, ".venv-ref", "bin", "python");
  return existsSync(venv) ? venv : "python3";
}

/**
 * Runs peft_lora.py with the given shape and sequence lengths and parses its JSON lines. A script that
 * dies part-way still returns the lengths it measured, with the reason.
 */
export function runPeftBaseline(options: {
  python: string;
  script: string;
  device: "cpu" | "cuda";
  shape?: PeftShape;
  seqs: number[];
  rank: number;
  onLine?: (line: string) => void;
}): Promise<PeftRun> {
  if (!existsSync(options.script)) {
    return Promise.reject(new BenchPeerError(`the PEFT peer script ${options.script} is missing; pass --peft-script PATH or --no-peft`));
  }
  const env: NodeJS.ProcessEnv = { ...process.env, DEVICE: options.device, SEQS: options.seqs.join(","), RANK: String(options.rank) };
  if (options.shape) {
    Object.assign(env, {
      LAYERS: String(options.shape.layers),
      HIDDEN: String(options.shape.hidden),
      FFN: String(options.shape.ffn),
      HEADS: String(options.shape.heads),
      KV_HEADS: String(options.shape.kvHeads),
      VOCAB: String(options.shape.vocab),
    });
  }
  const measurements: PeftMeasurement[] = [];
  return jsonLines(options.python, [options.script], env, (record, line) => {
    options.onLine?.(line);
    if (typeof record.seq === "number" && typeof record.tok_s === "number" && typeof record.step_s === "number") {
      measurements.push({
        seq: record.seq,
        tokensPerSecond: record.tok_s,
        stepSeconds: record.step_s,
        peakGiB: typeof record.peak_GiB === "number" ? record.peak_GiB : null,
      });
    }
  }).then(
    (failure) => (failure === undefined ? { measurements } : { measurements, failure }),
    (error: Error) => Promise.reject(new BenchPeerError(`${error.message}; pass --python PATH or --no-peft`)),
  );
}

/**
 * Runs a program and hands each JSON object it prints on stdout to onRecord (other lines are skipped:
 * libraries may print plain text). Resolves with undefined on exit code 0, else with the reason and
 * the end of stderr, so a run that dies part-way keeps what it measured.
 */
export function jsonLines(
  command: string,
  args: string[],
  env: NodeJS.ProcessEnv,
  onRecord: (record: Record<string, unknown>, line: string) => void,
): Promise<string | undefined> {
  return new Promise((resolve, reject) => {
    const child = spawn(command, args, { env, stdio: ["ignore", "pipe", "pipe"] });
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (chunk: Buffer) => {
      stdout += chunk.toString();
      let newline: number;
      while ((newline = stdout.indexOf("\n")) >= 0) {
        const line = stdout.slice(0, newline).trim();
        stdout = stdout.slice(newline + 1);
        if (!line.startsWith("{")) continue;
        let record: Record<string, unknown>;
        try {
          record = JSON.parse(line) as Record<string, unknown>;
        } catch {
          continue;
        }
        onRecord(record, line);
      }
    });
    child.stderr.on("data", (chunk: Buffer) => {
      stderr = (stderr + chunk.toString()).slice(-4000);
    });
    child.on("error", (error) => reject(new Error(`cannot start ${command} ${args.join(" ")}: ${error.message}`)));
    child.on("close", (code) => {
      if (code === 0) resolve(undefined);
      else resolve(`${path.basename(args[0] ?? command)} exited with ${code}: ${stderr.trim().split("\n").slice(-3).join(" | ")}`);
    });
  });
}

/** torch's scaled_dot_product_attention (flash and cuDNN backends) at our attention shape: ../shared/bench/sdpa_attention.py. */
export interface SdpaMeasurement {
  seq: number;
  flashForwardBackwardTflops: number | null;
  cudnnForwardBackwardTflops: number | null;
}

export function defaultSdpaScript(projectRoot: string): string {
  return path.join(path.dirname(defaultPeftScript(projectRoot)), "sdpa_attention.py");
}

export async function runSdpaBaseline(options: {
  python: string;
  script: string;
  seqs: number[];
  heads: number;
  kvHeads: number;
  headDim: number;
}): Promise<{ measurements: SdpaMeasurement[]; failure?: string }> {
  if (!existsSync(options.script)) throw new BenchPeerError(`the attention peer script ${options.script} is missing; pass --no-attention to skip it`);
  const env = { ...process.env, SEQS: options.seqs.join(","), HEADS: String(options.heads), KV_HEADS: String(options.kvHeads), HEAD_DIM: String(options.headDim) };
  const measurements: SdpaMeasurement[] = [];
  const tflops = (backend: unknown) => {
    const value = (backend as { fwd_bwd_tflops?: unknown } | undefined)?.fwd_bwd_tflops;
    return typeof value === "number" ? value : null;
  };
  const failure = await jsonLines(options.python, [options.script], env, (record) => {
    if (typeof record.seq !== "number") return;
    measurements.push({ seq: record.seq, flashForwardBackwardTflops: tflops(record.flash), cudnnForwardBackwardTflops: tflops(record.cudnn) });
  });
  return failure === undefined ? { measurements } : { measurements, failure };
}

export interface LlamaCppForward {
  tokensPerSecond: number;
  seconds: number;
}

/**
 * llama.cpp's prompt evaluation of `tokens` on the CPU with `threads` threads: the mean of `repeats`
 * timed evaluations after one warm-up, each from an empty context (only the last position's logits are
 * computed, as in any prompt evaluation).
 */
export async function llamaCppPromptEvaluation(modelPath: string, tokens: Token[], threads: number, repeats: number): Promise<LlamaCppForward> {
  let llamaCpp: typeof import("node-llama-cpp");
  try {
    llamaCpp = await import("node-llama-cpp");
  } catch (error) {
    throw new BenchPeerError(`node-llama-cpp is not available (${(error as Error).message}); pass --no-llama-cpp`);
  }
  const llama = await llamaCpp.getLlama({ gpu: false, build: "never", logLevel: llamaCpp.LlamaLogLevel.error });
  const model = await llama.loadModel({ modelPath, gpuLayers: 0, useMmap: true });
  try {
    const context = await model.createContext({ contextSize: tokens.length + 64, batchSize: tokens.length, threads, sequences: 1 });
    try {
      const sequence = context.getSequence();
      const once = async (): Promise<number> => {
        await sequence.clearHistory();
        const start = performance.now();
        await sequence.evaluateWithoutGeneratingNewTokens(tokens);
        return (performance.now() - start) / 1000;
      };
      await once();
      let total = 0;
      for (let i = 0; i < repeats; i++) total += await once();
      const seconds = total / repeats;
      return { tokensPerSecond: tokens.length / seconds, seconds };
    } finally {
      await context.dispose();
    }
  } finally {
    await model.dispose();
  }
}
