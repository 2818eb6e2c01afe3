// Model hyper-parameters from GGUF metadata, for the architectures the engine implements.
import type { NativeModelConfig } from "../native/addon.js";
import { GgufError, type GgufModelFile } from "./read.js";

export const supportedArchitectures = ["qwen2", "llama"] as const;

function requireNumber(file: GgufModelFile, key: string): number {
  const value = file.metadata[key];
  if (typeof value !== "number" && typeof value !== "bigint") {
    throw new GgufError(
      `${file.path}: required metadata key "${key}" is ${value === undefined ? "missing" : `not a number (${typeof value})`}; the file is incomplete or not a ${String(file.metadata["general.architecture"])} model`,
      file.path,
    );
  }
  return Number(value);
}

function tokenCount(file: GgufModelFile): number {
  const tokens = file.metadata["tokenizer.ggml.tokens"];
  return Array.isArray(tokens) ? tokens.length : 0;
}

export function modelConfigFromGguf(file: GgufModelFile): NativeModelConfig {
  const arch = file.metadata["general.architecture"];
  if (typeof arch !== "string") {
    throw new GgufError(`${file.path}: required metadata key "general.architecture" is missing`, file.path);
  }
  if (!(supportedArchitectures as readonly string[]).includes(arch)) {
    throw new GgufError(
      `${file.path}: architecture "${arch}" is not supported; thinktune trains ${supportedArchitectures.join(" and ")} models (the DeepSeek-R1 Qwen and Llama distills)`,
      file.path,
    );
  }
  const nEmbd = requireNumber(file, `${arch}.embedding_length`);
  const nHead = requireNumber(file, `${arch}.attention.head_count`);
  const nHeadKvValue = file.metadata[`${arch}.attention.head_count_kv`];
  const nHeadKv = nHeadKvValue === undefined ? nHead : Number(nHeadKvValue);
  const keyLength = file.metadata[`${arch}.attention.key_length`];
  const tensorNames = new Set(file.tensors.map((tensor) => tensor.name));
  const embedding = file.tensors.find((tensor) => tensor.name === "token_embd.weight");
  if (!embedding) throw new GgufError(`${file.path}: tensor "token_embd.weight" is missing`, file.path);
  const nVocab = embedding.dims[1] ?? tokenCount(file);
  if (nHead <= 0 || nEmbd % nHead !== 0) {
    throw new GgufError(`${file.path}: metadata ${arch}.embedding_length ${nEmbd} is not a multiple of ${arch}.attention.head_count ${nHead}`, file.path);
  }
  if (nHeadKv <= 0 || nHead % nHeadKv !== 0) {
    throw new GgufError(`${file.path}: metadata ${arch}.attention.head_count ${nHead} is not a multiple of ${arch}.attention.head_count_kv ${nHeadKv}`, file.path);
  }
  return {
    arch: arch as NativeModelConfig["arch"],
    nLayer: requireNumber(file, `${arch}.block_count`),
    nEmbd,
    nHead,
    nHeadKv,
    headDim: keyLength === undefined ? nEmbd / nHead : Number(keyLength),
    nFf: requireNumber(file, `${arch}.feed_forward_length`),
    nVocab,
    contextLength: requireNumber(file, `${arch}.context_length`),
    ropeBase: Number(file.metadata[`${arch}.rope.freq_base`] ?? 10000),
    rmsEps: requireNumber(file, `${arch}.attention.layer_norm_rms_epsilon`),
    tiedOutput: !tensorNames.has("output.weight"),
    hasQkvBias: tensorNames.has("blk.0.attn_q.bias"),
    hasRopeFreqs: tensorNames.has("rope_freqs.weight"),
  };
}
