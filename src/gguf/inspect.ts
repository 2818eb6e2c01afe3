// What a model GGUF holds, as a plain record: architecture and shape, parameters, tensor types,
// tokenizer and chat template. The file passes the same check as Engine.load first (model-check.ts).
import type { NativeModelConfig } from "../native/addon.js";
import { ggmlTypeLayoutById } from "./ggml-types.js";
import { checkModelFile, specialTokenKeys } from "./model-check.js";
import { isR1ChatTemplate } from "./r1-template.js";
import { readGgufModel } from "./read.js";

export interface GgufTensorTypeSummary {
  type: string;
  count: number;
  bytes: number;
  parameters: number;
}

export interface GgufSpecialToken {
  role: string;
  id: number;
  text: string | undefined;
}

export interface GgufInspection {
  path: string;
  fileSize: number;
  version: number;
  alignment: number;
  architecture: string;
  name: string | undefined;
  /** whether thinktune can train this architecture (qwen2, llama) */
  trainable: boolean;
  /** hyper-parameters, for the architectures thinktune trains */
  shape: NativeModelConfig | undefined;
  parameterCount: number;
  tensorCount: number;
  tensorBytes: number;
  /** per ggml type, most bytes first */
  tensorTypes: GgufTensorTypeSummary[];
  tokenizer: {
    model: string | undefined;
    pre: string | undefined;
    vocabularySize: number;
    mergeCount: number;
    specialTokens: GgufSpecialToken[];
    addBosToken: boolean | undefined;
  };
  chatTemplate: { present: boolean; r1Style: boolean; length: number };
  /** what the file leaves out that llama.cpp and thinktune fill in (a tied output layer, ...) */
  notes: string[];
}

// the R1 chat tokens, found by text (they have no id keys of their own)
const chatTokens: [string, string][] = [
  ["user", "<｜User｜>"],
  ["assistant", "<｜Assistant｜>"],
  ["think", "<think>"],
  ["end of think", "</think>"],
];

export async function inspectGguf(file: string): Promise<GgufInspection> {
  const gguf = await readGgufModel(file);
  const { config: shape, notes } = await checkModelFile(gguf);
  const architecture = gguf.metadata["general.architecture"] as string;
  const trainable = shape !== undefined;
  const byType = new Map<string, GgufTensorTypeSummary>();
  let parameterCount = 0;
  let tensorBytes = 0;
  for (const tensor of gguf.tensors) {
    // checkTensors accepted the tensor, so its type is one thinktune knows
    const layout = ggmlTypeLayoutById(tensor.type)!;
    const elements = tensor.dims.reduce((product, dim) => product * dim, 1);
    const bytes = (elements / layout.blockSize) * layout.blockBytes;
    const summary = byType.get(layout.name) ?? { type: layout.name, count: 0, bytes: 0, parameters: 0 };
    summary.count += 1;
    summary.bytes += bytes;
    summary.parameters += elements;
    byType.set(layout.name, summary);
    parameterCount += elements;
    tensorBytes += bytes;
  }

  const tokens = gguf.metadata["tokenizer.ggml.tokens"];
  const tokenTexts = Array.isArray(tokens) ? (tokens as unknown[]) : [];
  const specialTokens: GgufSpecialToken[] = [];
  for (const [role, key] of specialTokenKeys) {
    const id = gguf.metadata[key];
    if (typeof id !== "number") continue;
    const text = tokenTexts[id];
    specialTokens.push({ role, id, text: typeof text === "string" ? text : undefined });
  }
  for (const [role, text] of chatTokens) {
    const id = tokenTexts.indexOf(text);
    if (id >= 0) specialTokens.push({ role, id, text });
  }
  const merges = gguf.metadata["tokenizer.ggml.merges"];
  const template = gguf.metadata["tokenizer.chat_template"];
  const stringOrUndefined = (value: unknown) => (typeof value === "string" ? value : undefined);
  return {
    path: file,
    fileSize: gguf.fileSize,
    version: gguf.version,
    alignment: gguf.alignment,
    architecture,
    name: stringOrUndefined(gguf.metadata["general.name"]),
    trainable,
    shape,
    parameterCount,
    tensorCount: gguf.tensors.length,
    tensorBytes,
    tensorTypes: [...byType.values()].sort((a, b) => b.bytes - a.bytes),
    tokenizer: {
      model: stringOrUndefined(gguf.metadata["tokenizer.ggml.model"]),
      pre: stringOrUndefined(gguf.metadata["tokenizer.ggml.pre"]),
      vocabularySize: tokenTexts.length,
      mergeCount: Array.isArray(merges) ? merges.length : 0,
      specialTokens,
      addBosToken: typeof gguf.metadata["tokenizer.ggml.add_bos_token"] === "boolean" ? (gguf.metadata["tokenizer.ggml.add_bos_token"] as boolean) : undefined,
    },
    chatTemplate: {
      present: typeof template === "string" && template.length > 0,
      r1Style: typeof template === "string" && isR1ChatTemplate(template),
      length: typeof template === "string" ? template.length : 0,
    },
    notes,
  };
}
