// The reference tier's plumbing: finds the reference Python (torch + transformers + peft), unpacks
// llama.cpp's gguf-py from node-llama-cpp's bundle, runs reference_run.py on a request and reads its
// answer back; and asks node-llama-cpp (CPU) for llama.cpp's own logits of the same tokens.
import { execFile, spawn } from "node:child_process";
import { existsSync } from "node:fs";
import { mkdir, mkdtemp, readFile, rename, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import { getLlama, LlamaLogLevel, type ControlledEvaluateInputItem, type Token } from "node-llama-cpp";
import type { LoraTarget, NamedTensor } from "../../src/native/addon.js";
import { llamaCppSource } from "../helpers/llama-cpp-source.js";
import { synthCacheDir } from "../helpers/models.js";

const run = promisify(execFile);
const here = path.dirname(fileURLToPath(import.meta.url));
const projectRoot = path.resolve(here, "..", "..");
/** The reference venv's Python (THINKTUNE_REFERENCE_PYTHON names another one with the same packages). */
export const referencePythonPath = process.env.THINKTUNE_REFERENCE_PYTHON ?? path.join(projectRoot, ".venv-ref", "bin", "python");
export const referenceSetupCommand = "python3 -m venv .venv-ref && .venv-ref/bin/pip install torch transformers peft";

/**
 * Why the reference tier cannot run here, or undefined when it can: the reference Python must import
 * torch, transformers and peft, and node-llama-cpp must ship llama.cpp's source bundle (for gguf-py).
 */
export async function referenceUnavailableReason(): Promise<string | undefined> {
  if (!existsSync(referencePythonPath)) {
    return `${referencePythonPath} is missing; set it up in the project root with \`${referenceSetupCommand}\``;
  }
  try {
    await run(referencePythonPath, ["-c", "import torch, transformers, peft, numpy"], { timeout: 120_000 });
  } catch (error) {
    const stderr = String((error as { stderr?: unknown }).stderr ?? "").trim();
    const reason = stderr === "" ? (error as Error).message : stderr.split("\n").at(-1);
    return `${referencePythonPath} cannot import torch, transformers and peft (${reason}); run \`${referenceSetupCommand}\``;
  }
  if ((await llamaCppSource()) === undefined) return "node-llama-cpp's llama.cpp source bundle (llama/gitRelease.bundle) is missing, so gguf-py is not available";
  return undefined;
}

let ggufPy: Promise<string> | undefined;
/**
 * llama.cpp's gguf-py folder from the bundled source, unpacked once per llama.cpp commit under
 * node_modules/.cache/thinktune-test (temp folder + rename, so concurrent test processes are safe).
 */
export function ggufPyDir(): Promise<string> {
  ggufPy ??= (async () => {
    const source = await llamaCppSource();
    if (source === undefined) throw new Error("node-llama-cpp's llama.cpp source bundle is missing");
    const { stdout } = await run("git", ["-C", source, "rev-parse", "--short=12", "HEAD"]);
    const cached = path.join(synthCacheDir, `gguf-py-${stdout.trim()}`);
    if (!existsSync(cached)) {
      await mkdir(synthCacheDir, { recursive: true });
      const temp = await mkdtemp(path.join(synthCacheDir, "gguf-py-partial-"));
      try {
        const archive = path.join(temp, "gguf-py.tar");
        await run("git", ["-C", source, "archive", "--format=tar", "-o", archive, "HEAD", "gguf-py"]);
        await run("tar", ["-xf", archive, "-C", temp]);
        await rm(archive);
        await rename(temp, cached).catch((error: NodeJS.ErrnoException) => {
          // another process renamed its copy into place first: use that one
          if (!existsSync(cached)) throw error;
        });
      } finally {
        await rm(temp, { recursive: true, force: true });
      }
    }
    return path.join(cached, "gguf-py");
  })();
  return ggufPy;
}

export interface ReferenceRow {
  tokens: Int32Array;
  /** -1 where a position has no loss */
  targets: Int32Array;
  seqStarts: Int32Array;
}

export interface ReferenceLora {
  rank: number;
  alpha: number;
  targets: LoraTarget[];
  /** llama.cpp adapter names: blk.{i}.attn_q.weight.lora_a [rank, in], .lora_b [out, rank] */
  tensors: NamedTensor[];
}

export interface ReferenceRequest {
  gguf: string;
  rows: ReferenceRow[];
  /** return each row's [tokens, vocab] logits */
  logits: boolean;
  lora?: ReferenceLora;
  /** precision of the transformers model (default float64: the oracle's own rounding stays negligible) */
  dtype?: "float32" | "float64";
}

export interface ReferenceTensor {
  shape: number[];
  data: Float64Array;
}

export interface ReferenceResult {
  lossSum: number;
  tokens: number;
  rows: { lossSum: number; tokens: number; logits?: ReferenceTensor }[];
  /** d lossSum / d LoRA tensor, by llama.cpp name */
  gradients: Map<string, ReferenceTensor>;
}

interface ArrayEntry {
  shape: number[];
  offset: number;
}

/** Runs transformers + PEFT (test/reference/reference_run.py) on the request. */
export async function runReference(request: ReferenceRequest): Promise<ReferenceResult> {
  const work = await mkdtemp(path.join(tmpdir(), "thinktune-reference-"));
  try {
    let lora: object | null = null;
    if (request.lora) {
      const file = path.join(work, "lora.f32");
      let offset = 0;
      const entries = request.lora.tensors.map((tensor) => {
        const entry = { name: tensor.name, shape: tensor.shape, offset };
        offset += tensor.data.length;
        return entry;
      });
      const packed = new Float32Array(offset);
      request.lora.tensors.forEach((tensor, index) => packed.set(tensor.data, entries[index].offset));
      await writeFile(file, new Uint8Array(packed.buffer, packed.byteOffset, packed.byteLength));
      lora = { rank: request.lora.rank, alpha: request.lora.alpha, targets: request.lora.targets, file, tensors: entries };
    }
    const requestFile = path.join(work, "request.json");
    await writeFile(
      requestFile,
      JSON.stringify({
        gguf: request.gguf,
        ggufPy: await ggufPyDir(),
        dtype: request.dtype ?? "float64",
        logits: request.logits,
        lora,
        rows: request.rows.map((row) => ({ tokens: Array.from(row.tokens), targets: Array.from(row.targets), seqStarts: Array.from(row.seqStarts) })),
      }),
    );
    const prefix = path.join(work, "result");
    await runPython([path.join(here, "reference_run.py"), requestFile, prefix]);
    const answer = JSON.parse(await readFile(`${prefix}.json`, "utf8")) as {
      lossSum: number;
      tokens: number;
      rows: { lossSum: number; tokens: number; logits: ArrayEntry | null }[];
      gradients: (ArrayEntry & { name: string })[];
    };
    const bytes = await readFile(`${prefix}.f64`);
    const values = new Float64Array(bytes.buffer, bytes.byteOffset, bytes.byteLength / 8);
    const take = (entry: ArrayEntry): ReferenceTensor => ({
      shape: entry.shape,
      data: values.slice(entry.offset, entry.offset + entry.shape.reduce((product, dim) => product * dim, 1)),
    });
    return {
      lossSum: answer.lossSum,
      tokens: answer.tokens,
      rows: answer.rows.map((row) => ({ lossSum: row.lossSum, tokens: row.tokens, logits: row.logits ? take(row.logits) : undefined })),
      gradients: new Map(answer.gradients.map((entry) => [entry.name, take(entry)])),
    };
  } finally {
    await rm(work, { recursive: true, force: true });
  }
}

function runPython(args: string[]): Promise<void> {
  return new Promise((resolve, reject) => {
    // torch's thread pool on the machine's cores; the tests run one file at a time
    const child = spawn(referencePythonPath, args, { stdio: ["ignore", "pipe", "pipe"], env: { ...process.env, PYTHONWARNINGS: "ignore" } });
    let stderr = "";
    child.stdout.resume();
    child.stderr.on("data", (chunk: Buffer) => (stderr += chunk.toString()));
    child.on("error", reject);
    child.on("close", (code) => {
      if (code === 0) resolve();
      else reject(new Error(`reference_run.py exited with ${code}: ${stderr.trim().split("\n").slice(-5).join("\n")}`));
    });
  });
}

/**
 * llama.cpp's own logits ([tokens, vocab] row-major) for one sequence, on the CPU, with an F32 KV cache
 * and without flash attention: llama.cpp's flash-attention path and default F16 cache round K, V and
 * Q·K to half precision, which would hide fp32-level agreement.
 */
export async function llamaCppLogits(modelPath: string, tokens: Int32Array): Promise<{ nVocab: number; logits: Float64Array }> {
  const llama = await getLlama({ gpu: false, build: "never", logLevel: LlamaLogLevel.error });
  const model = await llama.loadModel({ modelPath, gpuLayers: 0 });
  try {
    const context = await model.createContext({
      // room past the last token: a full context would shift (drop tokens) before the last evaluation
      contextSize: tokens.length + 64,
      batchSize: tokens.length + 64,
      flashAttention: false,
      experimentalKvCacheKeyType: "F32",
      experimentalKvCacheValueType: "F32",
    });
    try {
      const nVocab = model.fileInfo.tensorInfo?.find((tensor) => tensor.name === "token_embd.weight")?.dimensions[1];
      if (nVocab === undefined) throw new Error(`${modelPath}: token_embd.weight is missing`);
      // ids below the model's vocabulary: node-llama-cpp brands them as Token
      const input: ControlledEvaluateInputItem[] = Array.from(tokens, (token) => [token as Token, { generateNext: { logits: true } }]);
      const results = await context.getSequence().controlledEvaluate(input);
      const logits = new Float64Array(tokens.length * Number(nVocab));
      for (let position = 0; position < tokens.length; position++) {
        const next = results[position]?.next.logits;
        if (next === undefined) throw new Error(`node-llama-cpp returned no logits for position ${position}`);
        for (const [token, value] of next) logits[position * Number(nVocab) + token] = value;
      }
      return { nVocab: Number(nVocab), logits };
    } finally {
      await context.dispose();
    }
  } finally {
    await model.dispose();
  }
}

/** Largest |a - b| and the largest |b| (the scale it is judged against). */
export function maxDifference(a: ArrayLike<number>, b: ArrayLike<number>): { maxDiff: number; maxRef: number; at: number } {
  if (a.length !== b.length) throw new Error(`cannot compare arrays of ${a.length} and ${b.length} values`);
  let maxDiff = 0;
  let maxRef = 0;
  let at = -1;
  for (let i = 0; i < a.length; i++) {
    const diff = Math.abs(a[i] - b[i]);
    if (!(diff <= maxDiff)) {
      maxDiff = diff;
      at = i;
    }
    maxRef = Math.max(maxRef, Math.abs(b[i]));
  }
  return { maxDiff, maxRef, at };
}

/** Deterministic token ids in [0, nVocab) (a small LCG, so test inputs need no randomness source). */
export function testTokens(count: number, nVocab: number, seed: number): Int32Array {
  const tokens = new Int32Array(count);
  let state = (seed * 2654435761 + 12345) >>> 0;
  for (let i = 0; i < count; i++) {
    state = (Math.imul(state, 1664525) + 1013904223) >>> 0;
    tokens[i] = state % nVocab;
  }
  return tokens;
}
