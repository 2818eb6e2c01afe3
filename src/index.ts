// thinktune's public API. Exports only.
export { loadNativeAddon, GgmlType } from "./native/addon.js";
export type { NativeModelConfig, LoraTarget, NamedTensor } from "./native/addon.js";
export { readGgufModel, GgufError } from "./gguf/read.js";
export type { GgufModelFile, GgufTensor } from "./gguf/read.js";
