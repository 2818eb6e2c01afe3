// The Hugging Face side of a GGUF model: module names, config.json, and llama's Q/K row order.
import type { NamedTensor, NativeModelConfig } from "../native/addon.js";
import type { GgufModelFile } from "../gguf/read.js";
import { modelConfigFromGguf } from "../gguf/model-config.js";
import { ExportError } from "./errors.js";

/** llama.cpp block tensor → transformers module inside model.layers[i] (LoRA-adaptable linears). */
export const hfModuleOfBlockTensor: Record<string, string> = {
  attn_q: "self_attn.q_proj",
  attn_k: "self_attn.k_proj",
  attn_v: "self_attn.v_proj",
  attn_output: "self_attn.o_proj",
  ffn_gate: "mlp.gate_proj",
  ffn_up: "mlp.up_proj",
  ffn_down: "mlp.down_proj",
};

const blockTensorOfHfModule = new Map(Object.entries(hfModuleOfBlockTensor).map(([gguf, hf]) => [hf, gguf]));

export interface HfModule {
  layer: number;
  /** llama.cpp tensor kind, e.g. attn_q */
  kind: string;
  /** transformers module path inside the layer, e.g. self_attn.q_proj */
  module: string;
}

/** `blk.3.attn_q.weight` → {layer 3, attn_q, self_attn.q_proj}. */
export function hfModuleOfGgufTensor(name: string): HfModule {
  const match = /^blk\.(\d+)\.([a-z_]+)\.weight$/.exec(name);
  const module = match ? hfModuleOfBlockTensor[match[2]] : undefined;
  if (!match || !module) {
    throw new ExportError(`LoRA on "${name}" has no Hugging Face module name; thinktune exports LoRA on ${Object.keys(hfModuleOfBlockTensor).join(", ")}`);
  }
  return { layer: Number(match[1]), kind: match[2], module };
}

/** `model.layers.3.self_attn.q_proj` (any prefix) → `blk.3.attn_q.weight`. */
export function ggufTensorOfHfModule(path: string): string | undefined {
  const match = /(?:^|\.)layers\.(\d+)\.((?:self_attn|mlp)\.[a-z_]+)$/.exec(path);
  const kind = match ? blockTensorOfHfModule.get(match[2]) : undefined;
  return match && kind ? `blk.${match[1]}.${kind}.weight` : undefined;
}

/**
 * Heads whose output rows llama.cpp's converter permuted (convert_hf_to_gguf.py, LlamaModel.permute:
 * llama's HF checkpoints rotate halves, llama.cpp's llama rotates adjacent pairs). Only the output rows
 * of Q and K move, so of a LoRA only B's rows do; A lives in the unpermuted input space. qwen2 uses the
 * NEOX rotation and is stored unpermuted.
 */
export function permutedHeads(config: NativeModelConfig, kind: string): number | undefined {
  if (config.arch !== "llama") return undefined;
  if (kind === "attn_q") return config.nHead;
  if (kind === "attn_k") return config.nHeadKv;
  return undefined;
}

/** Moves rows between HF order and GGUF order for `heads` heads. toGguf: LlamaModel.permute; else its inverse. */
export function permuteRows(tensor: NamedTensor, heads: number, toGguf: boolean): NamedTensor {
  const [rows, columns] = tensor.shape;
  const headDim = rows / heads;
  if (!Number.isInteger(headDim) || headDim % 2 !== 0) {
    throw new ExportError(`"${tensor.name}": ${rows} rows do not split into ${heads} heads of even size`);
  }
  const half = headDim / 2;
  const out = new Float32Array(tensor.data.length);
  for (let head = 0; head < heads; head++) {
    for (let pair = 0; pair < half; pair++) {
      for (let side = 0; side < 2; side++) {
        // HF row (head, side, pair) ↔ GGUF row (head, pair, side)
        const hfRow = head * headDim + side * half + pair;
        const ggufRow = head * headDim + pair * 2 + side;
        const [from, to] = toGguf ? [hfRow, ggufRow] : [ggufRow, hfRow];
        out.set(tensor.data.subarray(from * columns, (from + 1) * columns), to * columns);
      }
    }
  }
  return { name: tensor.name, shape: [...tensor.shape], data: out };
}

function metadataNumber(file: GgufModelFile, key: string): number | undefined {
  const value = file.metadata[key];
  return typeof value === "number" || typeof value === "bigint" ? Number(value) : undefined;
}

/**
 * Llama 3.1 frequency scaling as config.json says it: llama.cpp stores only the resulting per-frequency
 * factors (rope_freqs.weight); the parameters are recovered by checking the llama3 formula
 * (convert_hf_to_gguf.py) against them, so config.json never describes a RoPE the model does not use.
 */
export function llama3RopeScaling(factors: Float32Array, config: NativeModelConfig, file: string): Record<string, unknown> {
  const factor = Math.max(...factors);
  const candidates = [
    { low: 1, high: 4, original: 8192 },
    { low: 1, high: 4, original: 4096 },
    { low: 1, high: 4, original: 2048 },
  ];
  for (const { low, high, original } of candidates) {
    let matches = true;
    for (let i = 0; i < factors.length && matches; i++) {
      const frequency = 1 / config.ropeBase ** ((2 * i) / config.headDim);
      const wavelength = (2 * Math.PI) / frequency;
      let expected: number;
      if (wavelength < original / high) expected = 1;
      else if (wavelength > original / low) expected = factor;
      else {
        const smooth = (original / wavelength - low) / (high - low);
        expected = 1 / ((1 - smooth) / factor + smooth);
      }
      matches = Math.abs(expected - factors[i]) <= 1e-4 * Math.max(1, Math.abs(expected));
    }
    if (matches) {
      return { rope_type: "llama3", factor, low_freq_factor: low, high_freq_factor: high, original_max_position_embeddings: original };
    }
  }
  throw new ExportError(
    `${file}: rope_freqs.weight does not follow the Llama 3 scaling formula for any known set of parameters, so config.json cannot describe this model's RoPE`,
  );
}

/** transformers' config.json for the base model (Qwen2Config / LlamaConfig fields), from GGUF metadata. */
export function hfConfigFromGguf(file: GgufModelFile, ropeFreqs?: Float32Array): Record<string, unknown> {
  const config = modelConfigFromGguf(file);
  const bos = metadataNumber(file, "tokenizer.ggml.bos_token_id");
  const eos = metadataNumber(file, "tokenizer.ggml.eos_token_id");
  const common: Record<string, unknown> = {
    vocab_size: config.nVocab,
    hidden_size: config.nEmbd,
    intermediate_size: config.nFf,
    num_hidden_layers: config.nLayer,
    num_attention_heads: config.nHead,
    num_key_value_heads: config.nHeadKv,
    head_dim: config.headDim,
    hidden_act: "silu",
    max_position_embeddings: config.contextLength,
    rms_norm_eps: config.rmsEps,
    rope_theta: config.ropeBase,
    tie_word_embeddings: config.tiedOutput,
    attention_dropout: 0,
    initializer_range: 0.02,
    use_cache: true,
    torch_dtype: "bfloat16",
    ...(bos === undefined ? {} : { bos_token_id: bos }),
    ...(eos === undefined ? {} : { eos_token_id: eos }),
  };
  if (config.arch === "qwen2") {
    // transformers' Qwen2 always has Q/K/V biases; a file without them loads as zero biases, the same model
    return {
      architectures: ["Qwen2ForCausalLM"],
      model_type: "qwen2",
      ...common,
      use_sliding_window: false,
      sliding_window: null,
      max_window_layers: config.nLayer,
    };
  }
  let ropeScaling: Record<string, unknown> | null = null;
  if (config.hasRopeFreqs) {
    if (!ropeFreqs) throw new ExportError(`${file.path}: rope_freqs.weight must be read to describe its RoPE in config.json`);
    ropeScaling = llama3RopeScaling(ropeFreqs, config, file.path);
  }
  return {
    architectures: ["LlamaForCausalLM"],
    model_type: "llama",
    ...common,
    attention_bias: config.hasQkvBias,
    mlp_bias: false,
    pretraining_tp: 1,
    rope_scaling: ropeScaling,
  };
}

/** "owner/repo" of a Hugging Face model URL (https://huggingface.co/owner/repo[/...]), else undefined. */
function huggingFaceRepoOf(url: string): string | undefined {
  const match = /^https?:\/\/(?:huggingface\.co|hf\.co)\/([\w.-]+\/[\w.-]+)\/?(?:$|[/?#])/.exec(url.trim());
  return match?.[1];
}

/**
 * The name PEFT's base_model_name_or_path should carry, so transformers can fetch the base: the
 * model's own source repository when the GGUF names it (convert_hf_to_gguf's general.source.* keys,
 * or general.repo_url when it is a model's URL; general.base_model.* is the model it was tuned from,
 * not this one), else its name, else the file name.
 */
export function hfBaseModelName(file: GgufModelFile): string {
  const text = (key: string) => (typeof file.metadata[key] === "string" ? (file.metadata[key] as string).trim() : "");
  const repository = text("general.source.huggingface.repository");
  if (repository !== "") return repository.replace(/^https:\/\/huggingface\.co\//, "");
  for (const key of ["general.source.repo_url", "general.source.url", "general.repo_url", "general.url"]) {
    const repo = huggingFaceRepoOf(text(key));
    if (repo) return repo;
  }
  const sourceRepoUrl = text("general.source.repo_url");
  if (sourceRepoUrl !== "") return sourceRepoUrl;
  for (const key of ["general.name", "general.basename"]) if (text(key) !== "") return text(key);
  return file.path.replace(/^.*[\\/]/, "").replace(/\.gguf$/i, "");
}
