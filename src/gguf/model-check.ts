// The one check of a model GGUF that `inspect`, Engine.load and every command run before using a file:
// the tensor table against the file (native checkTensors), then, for the architectures thinktune trains,
// what the numbers mean: hyper-parameters in sane ranges, a vocabulary that its special ids and
// token_embd agree with, every tensor one the architecture has (with the shape its config implies),
// block_count equal to the blocks present, and tensor data laid out as llama.cpp requires.
import { loadNativeAddon, type NativeModelConfig } from "../native/addon.js";
import { ggmlTensorBytes, ggmlTypeLayoutById } from "./ggml-types.js";
import { corruptAdvice, GgufError } from "./header.js";
import { modelConfigFromGguf, supportedArchitectures } from "./model-config.js";
import { readGgufModel, type GgufModelFile, type GgufTensor } from "./read.js";

export interface ModelCheck {
  /** the engine's config, for the architectures thinktune trains */
  config: NativeModelConfig | undefined;
  /** what the file leaves out that llama.cpp (and thinktune) fill in, e.g. a tied output layer */
  notes: string[];
}

export const specialTokenKeys: [string, string][] = [
  ["bos", "tokenizer.ggml.bos_token_id"],
  ["eos", "tokenizer.ggml.eos_token_id"],
  ["eot", "tokenizer.ggml.eot_token_id"],
  ["eom", "tokenizer.ggml.eom_token_id"],
  ["padding", "tokenizer.ggml.padding_token_id"],
  ["unknown", "tokenizer.ggml.unknown_token_id"],
  ["separator", "tokenizer.ggml.seperator_token_id"],
  ["cls", "tokenizer.ggml.cls_token_id"],
  ["mask", "tokenizer.ggml.mask_token_id"],
];

/** Ranges that hold every released model of these architectures by a wide margin; outside them a value is corrupt. */
const contextLengthRange = [16, 1 << 24] as const;
const rmsEpsRange = [1e-12, 0.1] as const;
const ropeBaseRange = [1, 1e10] as const;
const floatTypes = new Set(["F32", "F16", "BF16"]);

interface ExpectedTensor {
  dims: number[];
  /** norms, biases and rope_freqs: read as floats, never quantized */
  float: boolean;
}

/** Shapes compare as ggml does: trailing dimensions of 1 do not count. */
function sameShape(a: readonly number[], b: readonly number[]): boolean {
  const trim = (dims: readonly number[]) => {
    let end = dims.length;
    while (end > 1 && dims[end - 1] === 1) end--;
    return dims.slice(0, end);
  };
  const [x, y] = [trim(a), trim(b)];
  return x.length === y.length && x.every((dim, i) => dim === y[i]);
}

function checkHyperparameters(file: GgufModelFile, config: NativeModelConfig): void {
  const arch = config.arch;
  const fail = (message: string): never => {
    throw new GgufError(`${file.path}: ${message}; ${corruptAdvice}`, file.path);
  };
  const integers: [string, number][] = [
    [`${arch}.block_count`, config.nLayer],
    [`${arch}.embedding_length`, config.nEmbd],
    [`${arch}.attention.head_count`, config.nHead],
    [`${arch}.attention.head_count_kv`, config.nHeadKv],
    [`${arch}.attention.key_length`, config.headDim],
    [`${arch}.feed_forward_length`, config.nFf],
    [`${arch}.context_length`, config.contextLength],
  ];
  for (const [key, value] of integers) {
    if (!Number.isSafeInteger(value) || value < 1) fail(`metadata ${key} is ${value}, not a positive whole number`);
  }
  const valueLength = file.metadata[`${arch}.attention.value_length`];
  if (valueLength !== undefined && Number(valueLength) !== config.headDim) {
    fail(`metadata ${arch}.attention.value_length is ${String(valueLength)} but the key length is ${config.headDim}; thinktune's attention needs them equal`);
  }
  if (config.headDim % 2 !== 0) fail(`metadata ${arch}.embedding_length ${config.nEmbd} and ${arch}.attention.head_count ${config.nHead} give an odd head size ${config.headDim}; RoPE needs an even head size`);
  const ranged: [string, number, readonly [number, number]][] = [
    [`${arch}.context_length`, config.contextLength, contextLengthRange],
    [`${arch}.attention.layer_norm_rms_epsilon`, config.rmsEps, rmsEpsRange],
    [`${arch}.rope.freq_base`, config.ropeBase, ropeBaseRange],
  ];
  for (const [key, value, [low, high]] of ranged) {
    if (!(value >= low && value <= high)) fail(`metadata ${key} is ${value}, outside the sane range [${low}, ${high}]`);
  }
}

/**
 * The tokenizer metadata on its own: what data preparation reads, and all that a vocab-only GGUF (no
 * tensors, as llama.cpp ships for its tokenizer tests) holds. Returns the vocabulary size.
 */
export function checkVocabulary(file: GgufModelFile): number {
  const fail = (message: string): never => {
    throw new GgufError(`${file.path}: ${message}; ${corruptAdvice}`, file.path);
  };
  const tokens = file.metadata["tokenizer.ggml.tokens"];
  if (!Array.isArray(tokens)) fail(`metadata tokenizer.ggml.tokens is ${tokens === undefined ? "missing" : "not an array"}; thinktune tokenizes with the model's own vocabulary`);
  const tokenList = tokens as unknown[];
  if (!tokenList.every((token) => typeof token === "string")) fail("metadata tokenizer.ggml.tokens holds values that are not strings");
  const nVocab = tokenList.length;
  // llama.cpp aborts on a vocabulary with a token twice (GGML_ASSERT in llama-vocab.cpp)
  const firstId = new Map<unknown, number>();
  tokenList.forEach((token, id) => {
    const earlier = firstId.get(token);
    if (earlier !== undefined) fail(`metadata tokenizer.ggml.tokens holds the token ${JSON.stringify(token)} twice (ids ${earlier} and ${id})`);
    firstId.set(token, id);
  });
  const tokenizerModel = file.metadata["tokenizer.ggml.model"];
  if (tokenizerModel !== "gpt2" && tokenizerModel !== "llama") {
    fail(`metadata tokenizer.ggml.model is ${tokenizerModel === undefined ? "missing" : JSON.stringify(tokenizerModel)}; thinktune reads "gpt2" (BPE) and "llama" (SentencePiece) vocabularies, as the Qwen and Llama distills have`);
  }
  // llama.cpp cannot load a BPE vocabulary without its merges
  if (tokenizerModel === "gpt2" && file.metadata["tokenizer.ggml.merges"] === undefined) fail("metadata tokenizer.ggml.merges is missing; a gpt2 (BPE) vocabulary needs its merges");
  for (const [key, elementKind] of [
    ["tokenizer.ggml.token_type", "number"],
    ["tokenizer.ggml.scores", "number"],
  ] as const) {
    const values = file.metadata[key];
    if (values === undefined) continue;
    if (!Array.isArray(values) || values.length !== tokenList.length || !values.every((value) => typeof value === elementKind)) {
      fail(`metadata ${key} must be an array of ${tokenList.length} ${elementKind}s, one per token`);
    }
  }
  const merges = file.metadata["tokenizer.ggml.merges"];
  if (merges !== undefined && (!Array.isArray(merges) || !merges.every((merge) => typeof merge === "string"))) fail("metadata tokenizer.ggml.merges must be an array of strings");
  for (const [role, key] of specialTokenKeys) {
    const id = file.metadata[key];
    if (id === undefined) continue;
    if (typeof id !== "number" || !Number.isInteger(id) || id < 0 || id >= nVocab) {
      fail(`metadata ${key} (the ${role} token) is ${String(id)}, outside the vocabulary [0, ${nVocab})`);
    }
  }
  return nVocab;
}

/** Every tensor the architecture has, by name, with the shape the config implies (ggml order). */
function expectedTensors(config: NativeModelConfig, present: ReadonlySet<string>): Map<string, ExpectedTensor> {
  const { nEmbd, nVocab, nFf, headDim } = config;
  const qDim = config.nHead * headDim;
  const kvDim = config.nHeadKv * headDim;
  const expected = new Map<string, ExpectedTensor>([
    ["token_embd.weight", { dims: [nEmbd, nVocab], float: false }],
    ["output_norm.weight", { dims: [nEmbd], float: true }],
  ]);
  if (present.has("output.weight")) expected.set("output.weight", { dims: [nEmbd, nVocab], float: false });
  if (config.hasRopeFreqs) expected.set("rope_freqs.weight", { dims: [headDim / 2], float: true });
  for (let layer = 0; layer < config.nLayer; layer++) {
    const block = (name: string, dims: number[], float = false) => expected.set(`blk.${layer}.${name}`, { dims, float });
    block("attn_norm.weight", [nEmbd], true);
    block("attn_q.weight", [nEmbd, qDim]);
    block("attn_k.weight", [nEmbd, kvDim]);
    block("attn_v.weight", [nEmbd, kvDim]);
    block("attn_output.weight", [qDim, nEmbd]);
    block("ffn_norm.weight", [nEmbd], true);
    block("ffn_gate.weight", [nEmbd, nFf]);
    block("ffn_up.weight", [nEmbd, nFf]);
    block("ffn_down.weight", [nFf, nEmbd]);
    if (config.hasQkvBias) {
      block("attn_q.bias", [qDim], true);
      block("attn_k.bias", [kvDim], true);
      block("attn_v.bias", [kvDim], true);
    }
  }
  return expected;
}

function checkTensorSet(file: GgufModelFile, config: NativeModelConfig): void {
  const fail = (message: string): never => {
    throw new GgufError(`${file.path}: ${message}`, file.path);
  };
  const present = new Map(file.tensors.map((tensor) => [tensor.name, tensor]));
  const blockCountKey = `${config.arch}.block_count`;
  // block_count first: it sizes the expected set, and a corrupt one can be 2^31 or more
  let lastBlock: GgufTensor | undefined;
  let blocksPresent = 0;
  for (const tensor of file.tensors) {
    const block = /^blk\.(\d+)\./.exec(tensor.name);
    if (block && Number(block[1]) + 1 > blocksPresent) {
      blocksPresent = Number(block[1]) + 1;
      lastBlock = tensor;
    }
  }
  if (blocksPresent !== config.nLayer) {
    const held = lastBlock === undefined ? "no block tensors" : `blocks 0 to ${blocksPresent - 1} (the last, ${lastBlock.name})`;
    fail(`metadata ${blockCountKey} is ${config.nLayer} but the file holds ${held}; block_count must equal the blocks present (${corruptAdvice})`);
  }
  const expected = expectedTensors(config, new Set(present.keys()));
  for (const tensor of file.tensors) {
    if (expected.has(tensor.name)) continue;
    const why = !config.hasQkvBias && /\.attn_[qkv]\.bias$/.test(tensor.name) ? " (blk.0 has no Q/K/V biases, so no block may have them)" : "";
    // the name is quoted: it may hold any bytes
    fail(`tensor ${JSON.stringify(tensor.name)} is not part of a ${config.arch} model${why}; llama.cpp refuses files with tensors it does not know, and so does thinktune (${corruptAdvice})`);
  }
  for (const [name, want] of expected) {
    const tensor = present.get(name);
    if (!tensor) fail(`tensor ${name} is missing; the file is not a complete ${config.arch} model (${corruptAdvice})`);
    if (!sameShape(tensor!.dims, want.dims)) {
      fail(`tensor ${name} has dims [${tensor!.dims.join(", ")}] but the model's config needs [${want.dims.join(", ")}] (${corruptAdvice})`);
    }
    // checkTensors accepted every type, so each has a layout
    const typeName = ggmlTypeLayoutById(tensor!.type)!.name;
    if (want.float && !floatTypes.has(typeName)) {
      fail(`tensor ${name} is ${typeName}; norms, biases and rope_freqs must be F32, F16 or BF16 (${corruptAdvice})`);
    }
  }
}

/**
 * Tensor data must follow the tensor infos in order, each starting where the previous one ends (padded to
 * the alignment), as llama.cpp's GGUF reader requires: this rules out overlapping and out-of-order data.
 */
function checkDataLayout(file: GgufModelFile): void {
  let expectedOffset = 0;
  let previous: GgufTensor | undefined;
  for (const tensor of file.tensors) {
    if (tensor.relativeOffset !== expectedOffset) {
      const where =
        previous === undefined
          ? "instead of 0"
          : `${tensor.relativeOffset < expectedOffset ? "inside" : "leaving a gap after"} tensor ${previous.name} before it (which ends at offset ${expectedOffset})`;
      throw new GgufError(
        `${file.path}: tensor ${tensor.name}'s data starts at offset ${tensor.relativeOffset} of the data section, ${where}; ` +
          `tensor data must follow in table order, as llama.cpp requires (${corruptAdvice})`,
        file.path,
      );
    }
    const layout = ggmlTypeLayoutById(tensor.type)!;
    const bytes = ggmlTensorBytes(layout.name, tensor.dims, tensor.name);
    expectedOffset = Math.ceil((expectedOffset + bytes) / file.alignment) * file.alignment;
    previous = tensor;
  }
}

/** Checks a GGUF already read (structure, then meaning); throws GgufError naming the first problem. */
export async function checkModelFile(file: GgufModelFile): Promise<ModelCheck> {
  const architecture = file.metadata["general.architecture"];
  if (typeof architecture !== "string") {
    throw new GgufError(`${file.path}: required metadata key "general.architecture" is missing; this is not a model GGUF`, file.path);
  }
  // type, shape, overflow and bounds of every tensor, with the tensor named on failure
  await loadNativeAddon().checkTensors(file.path, file.tensors, file.alignment);
  const notes: string[] = [];
  if (!(supportedArchitectures as readonly string[]).includes(architecture)) return { config: undefined, notes };
  const config = modelConfigFromGguf(file);
  checkHyperparameters(file, config);
  const nTokens = checkVocabulary(file);
  if (nTokens !== config.nVocab) {
    throw new GgufError(`${file.path}: metadata tokenizer.ggml.tokens has ${nTokens} tokens but token_embd.weight has rows for ${config.nVocab}; ${corruptAdvice}`, file.path);
  }
  checkTensorSet(file, config);
  checkDataLayout(file);
  if (config.tiedOutput) notes.push("no output.weight: the output layer is tied to token_embd.weight, as llama.cpp does for such files");
  return { config, notes };
}

export interface CheckedModelFile extends ModelCheck {
  file: GgufModelFile;
  config: NativeModelConfig;
}

/** Checks a model GGUF already read, of an architecture thinktune trains, and gives its config. */
export async function checkedModel(file: GgufModelFile): Promise<CheckedModelFile> {
  const check = await checkModelFile(file);
  // other architectures pass the structural check; modelConfigFromGguf names why they cannot be used
  return { file, config: check.config ?? modelConfigFromGguf(file), notes: check.notes };
}

/** Reads and checks a model GGUF of an architecture thinktune trains (what training, export and serving use). */
export async function readCheckedModel(path: string): Promise<CheckedModelFile> {
  return checkedModel(await readGgufModel(path));
}
