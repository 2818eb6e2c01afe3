// Synthetic model GGUFs: random but valid qwen2/llama weights, deterministic from a seed, with an R1
// distill tokenizer and chat template, in the layout llama.cpp loads. Tensors are generated and
// quantized in chunks and streamed to disk, so the 7B preset never sits in memory.
import { availableParallelism } from "node:os";
import { z } from "zod";
import { GgmlType, loadNativeAddon, type GgmlTypeName, type NativeModelConfig } from "../native/addon.js";
import { ggmlTypeLayouts, ggmlTypeNames } from "./ggml-types.js";
import { r1DistillChatTemplate } from "./r1-template.js";
import { buildSynthVocabulary, minimumVocabularySize } from "./tokenizer-vocab.js";
import { GgufWriter, gguf } from "./writer.js";

/**
 * The mixes llama-quantize writes as Q4_K_M / Q5_K_M: the named K type for most matrices, Q6_K for the
 * output and for attn_v and ffn_down in the layers llama.cpp gives more bits (llama-quant.cpp).
 */
export const synthTypeMixes = { Q4_K_M: "Q4_K", Q5_K_M: "Q5_K" } as const satisfies Record<string, GgmlTypeName>;
export type SynthTypeMixName = keyof typeof synthTypeMixes;
/** A ggml type for every matrix, or a llama-quantize style mix. */
export type SynthTypeName = GgmlTypeName | SynthTypeMixName;
export const synthTypeNames: readonly SynthTypeName[] = [...ggmlTypeNames, ...(Object.keys(synthTypeMixes) as SynthTypeMixName[])];

/** The model shape fields mean the same as in NativeModelConfig (headDim is nEmbd / nHead). */
export interface SynthOptions
  extends Pick<
    NativeModelConfig,
    "arch" | "nLayer" | "nEmbd" | "nHead" | "nHeadKv" | "nFf" | "nVocab" | "contextLength" | "ropeBase" | "rmsEps"
  > {
  /** no output.weight: the token embedding doubles as the output projection */
  tiedOutput: boolean;
  /** attn_q/k/v biases, as Qwen2 files carry */
  qkvBias: boolean;
  /** rope_freqs.weight with llama3 frequency scaling (llama only) */
  ropeFreqs: boolean;
  /** type of the weight matrices (or a Q4_K_M / Q5_K_M mix); norms, biases and rope_freqs are always F32 */
  type: SynthTypeName;
  seed: number;
}

export const synthPresetNames = ["tiny", "r1-distill-qwen-7b"] as const;
export type SynthPresetName = (typeof synthPresetNames)[number];

export const synthPresets: Record<SynthPresetName, SynthOptions> = {
  // The embedded default model: small enough to commit (under 4 MB) and to train in seconds on a CPU.
  tiny: {
    arch: "qwen2",
    nLayer: 4,
    nEmbd: 256,
    nHead: 4,
    nHeadKv: 2,
    nFf: 512,
    nVocab: 1280,
    contextLength: 4096,
    ropeBase: 10000,
    rmsEps: 1e-6,
    tiedOutput: false,
    qkvBias: true,
    ropeFreqs: false,
    type: "Q8_0",
    seed: 0,
  },
  // The exact shape of DeepSeek-R1-Distill-Qwen-7B, for benchmarks.
  "r1-distill-qwen-7b": {
    arch: "qwen2",
    nLayer: 28,
    nEmbd: 3584,
    nHead: 28,
    nHeadKv: 4,
    nFf: 18944,
    nVocab: 152064,
    contextLength: 131072,
    ropeBase: 10000,
    rmsEps: 1e-6,
    tiedOutput: false,
    qkvBias: true,
    ropeFreqs: false,
    type: "Q4_K",
    seed: 0,
  },
};

const positiveInteger = z.number().int().positive();

export const synthOptionsSchema = z
  .object({
    arch: z.enum(["qwen2", "llama"]),
    nLayer: positiveInteger,
    nEmbd: positiveInteger,
    nHead: positiveInteger,
    nHeadKv: positiveInteger,
    nFf: positiveInteger,
    nVocab: z.number().int().min(minimumVocabularySize),
    contextLength: positiveInteger,
    ropeBase: z.number().positive(),
    rmsEps: z.number().positive(),
    tiedOutput: z.boolean(),
    qkvBias: z.boolean(),
    ropeFreqs: z.boolean(),
    type: z.enum(synthTypeNames as [SynthTypeName, ...SynthTypeName[]]),
    seed: z.number().int().min(0).max(0xffffffff),
  })
  .strict();

export type SynthInput = Partial<SynthOptions> & { preset?: SynthPresetName };

/** What to call each option in messages: the CLI passes its flag names ("--embd"). */
export type SynthOptionLabels = Partial<Record<keyof SynthOptions, string>>;

/** The shape rules llama.cpp and the block formats impose, as messages (empty when the shape is fine). */
function shapeProblems(options: SynthOptions, label: (key: keyof SynthOptions) => string): string[] {
  const problems: string[] = [];
  const { nEmbd, nHead, nHeadKv } = options;
  if (nEmbd % nHead !== 0) problems.push(`${label("nEmbd")} ${nEmbd} must be a multiple of ${label("nHead")} ${nHead}`);
  else if ((nEmbd / nHead) % 2 !== 0) problems.push(`the head size ${label("nEmbd")}/${label("nHead")} = ${nEmbd / nHead} must be even for RoPE`);
  if (nHead % nHeadKv !== 0) problems.push(`${label("nHead")} ${nHead} must be a multiple of ${label("nHeadKv")} ${nHeadKv}`);
  const blockSize = ggmlTypeLayouts[baseMatrixType(options.type)].blockSize;
  for (const key of ["nEmbd", "nFf"] as const) {
    if (options[key] % blockSize !== 0) {
      problems.push(`${label(key)} ${options[key]} must be a multiple of ${blockSize} for ${options.type} weights (rows are whole ${blockSize}-element blocks)`);
    }
  }
  if (options.ropeFreqs && options.arch !== "llama") problems.push(`${label("ropeFreqs")} (llama3 RoPE scaling) exists only for arch llama, not ${options.arch}`);
  return problems;
}

/**
 * Preset (default "tiny"), then the options given, validated. An explicit arch also sets qkvBias to
 * that architecture's convention (Qwen2 has Q/K/V biases, Llama has none) unless qkvBias is given too.
 */
export function resolveSynthOptions(input: SynthInput, labels: SynthOptionLabels = {}): SynthOptions {
  const { preset = "tiny", ...overrides } = input;
  if (!Object.hasOwn(synthPresets, preset)) throw new SynthOptionsError(`unknown synth preset "${preset}"; use one of ${synthPresetNames.join(", ")}`);
  const defined = Object.fromEntries(Object.entries(overrides).filter(([, value]) => value !== undefined)) as Partial<SynthOptions>;
  const merged = { ...synthPresets[preset], ...defined };
  if (defined.arch !== undefined && defined.qkvBias === undefined) merged.qkvBias = defined.arch === "qwen2";
  const label = (key: keyof SynthOptions) => labels[key] ?? key;
  const parsed = synthOptionsSchema.safeParse(merged);
  const problems = parsed.success
    ? shapeProblems(parsed.data, label)
    : parsed.error.issues.map((issue) => (issue.path.length > 0 ? `${label(issue.path[0] as keyof SynthOptions)}: ${issue.message}` : issue.message));
  if (problems.length > 0) throw new SynthOptionsError(`invalid synth options: ${problems.join("; ")}`);
  return merged;
}

export class SynthOptionsError extends Error {
  override name = "SynthOptionsError";
}

/** How a tensor's values are drawn: mean + std · (approximately normal noise). */
interface ValueInit {
  mean: number;
  std: number;
}

export interface SynthTensor {
  name: string;
  type: GgmlTypeName;
  /** ggml order: dims[0] is the row (input) length */
  dims: number[];
  init: ValueInit | { ropeFreqs: number[] };
}

// llama.cpp's ftype ids (llama_ftype) for a file whose matrices are all of one type.
export const fileTypeIds: Record<SynthTypeName, number> = { F32: 0, F16: 1, Q4_0: 2, Q8_0: 7, Q4_K: 14, Q5_K: 16, Q6_K: 18, BF16: 32, Q4_K_M: 15, Q5_K_M: 17 };

/** The type most matrices get: the type itself, or a mix's base K type. */
function baseMatrixType(type: SynthTypeName): GgmlTypeName {
  return Object.hasOwn(synthTypeMixes, type) ? synthTypeMixes[type as SynthTypeMixName] : (type as GgmlTypeName);
}

/** llama-quant.cpp's use_more_bits: the first and last eighth of the layers and every third between. */
function usesMoreBits(layer: number, nLayer: number): boolean {
  const eighth = Math.trunc(nLayer / 8);
  return layer < eighth || layer >= Math.trunc((7 * nLayer) / 8) || (layer - eighth) % 3 === 2;
}

/**
 * The type a weight matrix gets in a file of `type` (a ggml type, or a mix): in a mix, Q6_K for the
 * output projection (the token embedding when tied) and for attn_v / ffn_down in the layers that use
 * more bits; the type itself (or the mix's K type) everywhere else. Vectors are not matrices: F32.
 */
export function matrixTypeIn(type: SynthTypeName, tensorName: string, nLayer: number, tiedOutput: boolean): GgmlTypeName {
  if (!Object.hasOwn(synthTypeMixes, type)) return type as GgmlTypeName;
  const isOutput = tensorName === "output.weight" || (tiedOutput && tensorName === "token_embd.weight");
  const layer = /^blk\.(\d+)\.(attn_v|ffn_down)\.weight$/.exec(tensorName);
  if (isOutput || (layer && usesMoreBits(Number(layer[1]), nLayer))) return "Q6_K";
  return synthTypeMixes[type as SynthTypeMixName];
}

/** Llama 3.1's RoPE frequency divisors (factor 8, low 1, high 4, original context 8192). */
export function llama3RopeFreqs(headDim: number, ropeBase: number): number[] {
  const factor = 8;
  const lowFreqFactor = 1;
  const highFreqFactor = 4;
  const originalContext = 8192;
  const lowFreqWavelength = originalContext / lowFreqFactor;
  const highFreqWavelength = originalContext / highFreqFactor;
  const divisors: number[] = [];
  for (let i = 0; i < headDim; i += 2) {
    const wavelength = (2 * Math.PI) / ropeBase ** (-i / headDim);
    if (wavelength < highFreqWavelength) divisors.push(1);
    else if (wavelength > lowFreqWavelength) divisors.push(factor);
    else {
      const smooth = (originalContext / wavelength - lowFreqFactor) / (highFreqFactor - lowFreqFactor);
      divisors.push(1 / ((1 - smooth) / factor + smooth));
    }
  }
  return divisors;
}

/** The tensors of a synth model, in file order, with their shapes and value distributions. */
export function planSynthTensors(options: SynthOptions): SynthTensor[] {
  const { nEmbd, nFf, nVocab, nLayer } = options;
  const headDim = nEmbd / options.nHead;
  const nEmbdKv = headDim * options.nHeadKv;
  // 1/sqrt(fan-in) keeps activations at unit scale; residual outputs shrink with depth (GPT-2 style).
  const matrix = (name: string, input: number, output: number, extraScale = 1): SynthTensor => ({
    name,
    type: matrixTypeIn(options.type, name, nLayer, options.tiedOutput),
    dims: [input, output],
    init: { mean: 0, std: extraScale / Math.sqrt(input) },
  });
  const vector = (name: string, length: number, init: ValueInit): SynthTensor => ({ name, type: "F32", dims: [length], init });
  const residualScale = 1 / Math.sqrt(2 * nLayer);
  const norm: ValueInit = { mean: 1, std: 0.02 };
  const bias: ValueInit = { mean: 0, std: 0.1 };

  // logits get a standard deviation of about 2: a peaked but not degenerate next-token distribution
  const tensors: SynthTensor[] = [matrix("token_embd.weight", nEmbd, nVocab, 2)];
  if (options.ropeFreqs) {
    tensors.push({ name: "rope_freqs.weight", type: "F32", dims: [headDim / 2], init: { ropeFreqs: llama3RopeFreqs(headDim, options.ropeBase) } });
  }
  for (let layer = 0; layer < nLayer; layer++) {
    const block = `blk.${layer}`;
    tensors.push(vector(`${block}.attn_norm.weight`, nEmbd, norm));
    tensors.push(matrix(`${block}.attn_q.weight`, nEmbd, nEmbd));
    tensors.push(matrix(`${block}.attn_k.weight`, nEmbd, nEmbdKv));
    tensors.push(matrix(`${block}.attn_v.weight`, nEmbd, nEmbdKv));
    if (options.qkvBias) {
      tensors.push(vector(`${block}.attn_q.bias`, nEmbd, bias));
      tensors.push(vector(`${block}.attn_k.bias`, nEmbdKv, bias));
      tensors.push(vector(`${block}.attn_v.bias`, nEmbdKv, bias));
    }
    tensors.push(matrix(`${block}.attn_output.weight`, nEmbd, nEmbd, residualScale));
    tensors.push(vector(`${block}.ffn_norm.weight`, nEmbd, norm));
    tensors.push(matrix(`${block}.ffn_gate.weight`, nEmbd, nFf));
    tensors.push(matrix(`${block}.ffn_up.weight`, nEmbd, nFf));
    tensors.push(matrix(`${block}.ffn_down.weight`, nFf, nEmbd, residualScale));
  }
  tensors.push(vector("output_norm.weight", nEmbd, norm));
  if (!options.tiedOutput) tensors.push(matrix("output.weight", nEmbd, nVocab, 2));
  return tensors;
}

export function synthParameterCount(options: SynthOptions): number {
  return planSynthTensors(options).reduce((sum, tensor) => sum + tensor.dims.reduce((product, dim) => product * dim, 1), 0);
}

function hash32(value: number): number {
  let h = value >>> 0;
  h = Math.imul(h ^ (h >>> 16), 0x7feb352d);
  h = Math.imul(h ^ (h >>> 15), 0x846ca68b);
  return (h ^ (h >>> 16)) >>> 0;
}

/** A per-tensor stream key from the seed and the tensor's name, so tensors never share values. */
function tensorKey(seed: number, name: string): number {
  let h = hash32(seed ^ 0x5bd1e995);
  for (let i = 0; i < name.length; i++) h = hash32(h ^ name.charCodeAt(i));
  return h;
}

/**
 * Fills `out` with values start..start+out.length of a tensor's stream: counter-based (each value a hash
 * of its index), so any chunking gives the same tensor. Irwin–Hall(4) of 16-bit uniforms: close to
 * normal, bounded at ±3.5 std, and several times faster than Box–Muller in JS.
 */
export function fillSynthValues(out: Float32Array, key: number, start: number, init: ValueInit): void {
  const scale = (init.std * Math.sqrt(3)) / 65536;
  const key2 = hash32(key ^ 0x9e3779b9);
  for (let i = 0; i < out.length; i++) {
    const index = start + i;
    let h = (index ^ key) >>> 0;
    h = Math.imul(h ^ (h >>> 16), 0x7feb352d);
    h = Math.imul(h ^ (h >>> 15), 0x846ca68b);
    h ^= h >>> 16;
    let g = (index ^ key2) >>> 0;
    g = Math.imul(g ^ (g >>> 16), 0x7feb352d);
    g = Math.imul(g ^ (g >>> 15), 0x846ca68b);
    g ^= g >>> 16;
    out[i] = init.mean + ((h & 0xffff) + (h >>> 16) + (g & 0xffff) + (g >>> 16) - 131070) * scale;
  }
}

/** Elements generated and quantized per step; a whole number of rows is taken, at least one. */
const CHUNK_ELEMENTS = 1 << 20;

async function encodeValues(type: GgmlTypeName, values: Float32Array): Promise<Uint8Array> {
  if (type === "F32") return new Uint8Array(values.buffer, values.byteOffset, values.byteLength);
  return loadNativeAddon().quantize(GgmlType[type], values);
}

/** The bytes of one tensor, chunk by chunk, with up to `inFlight` chunks quantizing at once. */
async function* synthTensorBytes(tensor: SynthTensor, seed: number, inFlight: number): AsyncIterable<Uint8Array> {
  if ("ropeFreqs" in tensor.init) {
    yield await encodeValues(tensor.type, Float32Array.from(tensor.init.ropeFreqs));
    return;
  }
  const rowLength = tensor.dims[0];
  const rows = tensor.dims.slice(1).reduce((product, dim) => product * dim, 1);
  if (rowLength * rows > 0xffffffff) throw new RangeError(`synth tensor ${tensor.name} has more than 2^32 elements`);
  const rowsPerChunk = Math.max(1, Math.floor(CHUNK_ELEMENTS / rowLength));
  const key = tensorKey(seed, tensor.name);
  const pending: Promise<Uint8Array>[] = [];
  for (let row = 0; row < rows; row += rowsPerChunk) {
    const values = new Float32Array(Math.min(rowsPerChunk, rows - row) * rowLength);
    fillSynthValues(values, key, row * rowLength, tensor.init);
    pending.push(encodeValues(tensor.type, values));
    // a rejected chunk is awaited (and thrown) in order; keep the others from being unhandled meanwhile
    pending[pending.length - 1].catch(() => undefined);
    if (pending.length >= inFlight) yield await pending.shift()!;
  }
  while (pending.length > 0) yield await pending.shift()!;
}

export interface SynthProgress {
  tensor: string;
  /** 1-based index of the tensor being written */
  index: number;
  count: number;
}

export interface SynthResult {
  path: string;
  fileSize: number;
  tensorCount: number;
  parameterCount: number;
}

/** The GGUF writer for a synth model: metadata set, tensors queued; nothing is generated until write. */
export function synthModelWriter(options: SynthOptions, onProgress?: (progress: SynthProgress) => void): { writer: GgufWriter; tensors: SynthTensor[] } {
  const { arch } = options;
  const headDim = options.nEmbd / options.nHead;
  const vocabulary = buildSynthVocabulary(options.nVocab);
  const writer = new GgufWriter();
  writer.set("general.architecture", gguf.string(arch));
  writer.set("general.name", gguf.string(`thinktune synth ${arch} ${options.nLayer}x${options.nEmbd} ${options.type} seed ${options.seed}`));
  writer.set("general.file_type", gguf.u32(fileTypeIds[options.type]));
  writer.set("general.quantization_version", gguf.u32(2));
  writer.set(`${arch}.context_length`, gguf.u32(options.contextLength));
  writer.set(`${arch}.embedding_length`, gguf.u32(options.nEmbd));
  writer.set(`${arch}.block_count`, gguf.u32(options.nLayer));
  writer.set(`${arch}.feed_forward_length`, gguf.u32(options.nFf));
  writer.set(`${arch}.attention.head_count`, gguf.u32(options.nHead));
  writer.set(`${arch}.attention.head_count_kv`, gguf.u32(options.nHeadKv));
  writer.set(`${arch}.rope.freq_base`, gguf.f32(options.ropeBase));
  writer.set(`${arch}.attention.layer_norm_rms_epsilon`, gguf.f32(options.rmsEps));
  if (arch === "llama") {
    writer.set("llama.rope.dimension_count", gguf.u32(headDim));
    writer.set("llama.vocab_size", gguf.u32(options.nVocab));
  }
  writer.set("tokenizer.ggml.model", gguf.string("gpt2"));
  // the pre-tokenizer names real R1 distill files carry (Qwen: deepseek-r1-qwen, Llama 3: llama-bpe)
  writer.set("tokenizer.ggml.pre", gguf.string(arch === "qwen2" ? "deepseek-r1-qwen" : "llama-bpe"));
  writer.set("tokenizer.ggml.tokens", gguf.array("string", vocabulary.tokens));
  writer.set("tokenizer.ggml.token_type", gguf.array("i32", vocabulary.tokenTypes));
  writer.set("tokenizer.ggml.merges", gguf.array("string", vocabulary.merges));
  writer.set("tokenizer.ggml.bos_token_id", gguf.u32(vocabulary.bosId));
  writer.set("tokenizer.ggml.eos_token_id", gguf.u32(vocabulary.eosId));
  writer.set("tokenizer.ggml.padding_token_id", gguf.u32(vocabulary.padId));
  writer.set("tokenizer.ggml.add_bos_token", gguf.bool(true));
  writer.set("tokenizer.ggml.add_eos_token", gguf.bool(false));
  writer.set("tokenizer.chat_template", gguf.string(r1DistillChatTemplate));

  const tensors = planSynthTensors(options);
  // quantize parallelizes inside each call (OpenMP); a few calls in flight keep it busy while JS generates
  const inFlight = Math.min(4, Math.max(2, availableParallelism()));
  tensors.forEach((tensor, index) => {
    writer.addTensor(tensor.name, tensor.type, tensor.dims, () => {
      onProgress?.({ tensor: tensor.name, index: index + 1, count: tensors.length });
      return synthTensorBytes(tensor, options.seed, inFlight);
    });
  });
  return { writer, tensors };
}

/** Writes a synth model GGUF to `path` (via `<path>.tmp`). */
export async function writeSynthModel(path: string, options: SynthOptions, onProgress?: (progress: SynthProgress) => void): Promise<SynthResult> {
  const { writer, tensors } = synthModelWriter(options, onProgress);
  const fileSize = await writer.write(path);
  return { path, fileSize, tensorCount: tensors.length, parameterCount: synthParameterCount(options) };
}
