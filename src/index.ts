// thinktune's public API. Exports only.
export { loadNativeAddon, GgmlType, nativeErrorCode } from "./native/addon.js";
export type { NativeModelConfig, LoraTarget, NamedTensor, NativeErrorCode } from "./native/addon.js";
export { readGgufModel, GgufError } from "./gguf/read.js";
export type { GgufModelFile, GgufTensor } from "./gguf/read.js";
export { checkModelFile, readCheckedModel } from "./gguf/model-check.js";
export type { ModelCheck, CheckedModelFile } from "./gguf/model-check.js";
export { GgufWriter, gguf, GGUF_DEFAULT_ALIGNMENT } from "./gguf/writer.js";
export type { GgufValue, GgufScalarType, TensorDataProducer } from "./gguf/writer.js";
export { ggmlTypeLayouts, ggmlTensorBytes } from "./gguf/ggml-types.js";
export type { GgmlTypeLayout } from "./gguf/ggml-types.js";
export { writeSynthModel, resolveSynthOptions, synthPresets, synthPresetNames, synthTypeNames, SynthOptionsError } from "./gguf/synth.js";
export type { SynthOptions, SynthInput, SynthPresetName, SynthTypeName, SynthResult, SynthProgress } from "./gguf/synth.js";
export { inspectGguf } from "./gguf/inspect.js";
export type { GgufInspection, GgufTensorTypeSummary, GgufSpecialToken } from "./gguf/inspect.js";
export { r1DistillChatTemplate, isR1ChatTemplate } from "./gguf/r1-template.js";
export { Engine, EngineError, engineOptionsSchema, loraTargets } from "./train/engine.js";
export type {
  EngineOptions,
  ResolvedEngineOptions,
  EngineRow,
  EngineStepResult,
  EngineLossResult,
  EngineGradients,
  OptimizerState,
  CallOptions as EngineCallOptions,
} from "./train/engine.js";
export {
  loadTrainingData,
  inspectTrainingData,
  packExamples,
  splitValidation,
  DataOptions,
  parseDataOptions,
  DataError,
  NoTrainingDataError,
  DataPathError,
  DataTemplateError,
  PackingError,
  formatIssue,
  builtinTemplates as builtinChatTemplates,
} from "./data/index.js";
export type {
  TokenizedExample,
  PackedRow,
  DataReport,
  DataIssue,
  DataIssueKind,
  LengthStats,
  ResolvedDataOptions,
  DataFormat,
  BuiltinTemplateName,
  RenderedExample,
  TrainingData,
} from "./data/index.js";
export { writeSafetensors, readSafetensors, SafetensorsError } from "./export/safetensors.js";
export { writeGgufAdapter, readGgufAdapter } from "./export/gguf-adapter.js";
export { writePeftAdapter, readPeftAdapter } from "./export/peft.js";
export { writeMergedModel } from "./export/merged.js";
export { writeOllamaFolder } from "./export/ollama.js";
export { loadAdapterSource } from "./export/source.js";
export { exportAdapter, exportFormats } from "./export/export.js";
export { ExportError } from "./export/errors.js";
export type { ExportFormat, ExportOptions, ExportResult } from "./export/export.js";
export type { AdapterSource } from "./export/source.js";
export { Trainer, TrainingError, TrainingDivergedError } from "./train/trainer.js";
export type {
  TrainerEvent,
  TrainerStartEvent,
  TrainerStepEvent,
  TrainerEvalEvent,
  TrainerCheckpointEvent,
  TrainerDoneEvent,
  TrainerOptions,
} from "./train/trainer.js";
export { trainingConfigSchema, resolveConfig as resolveTrainingConfig, TrainingConfigError } from "./train/config.js";
export type { TrainingConfig, TrainingConfigInput } from "./train/config.js";
export { CheckpointError, loadCheckpoint, loadLatestCheckpoint } from "./train/checkpoint.js";
export type { Checkpoint, CheckpointState } from "./train/checkpoint.js";
export type { MetricsRecord, StepRecord, EvalRecord } from "./train/metrics.js";
export { ModelHost, Semaphore, UnknownModelError, QueueAbortedError } from "./infer/models.js";
export type { ModelHostOptions, ServedModel, GenerationRecord } from "./infer/models.js";
export { ChatServer, startServer, HttpError } from "./infer/server.js";
export type { ChatServerOptions, StartServerOptions, RunningServer } from "./infer/server.js";
export { ChatSession } from "./infer/chat-session.js";
export type { ChatTurn } from "./infer/chat-session.js";
export { runRepl } from "./infer/repl.js";
export type { ReplOptions } from "./infer/repl.js";
export { generateOnSequence, ContextLengthError } from "./infer/generate.js";
export type { GenerationOptions, GenerationResult, SamplingOptions, FinishReason } from "./infer/generate.js";
export { ThoughtAnswerSplitter } from "./infer/r1-stream.js";
export type { SplitDelta } from "./infer/r1-stream.js";
export { ChatPromptRenderer, ChatTemplateError } from "./infer/prompt.js";
export type { ChatMessage, ChatRole, RenderedPrompt } from "./infer/prompt.js";
export { resolveAdapter, AdapterResolveError } from "./infer/adapter.js";
export type { ResolvedAdapter } from "./infer/adapter.js";
export { chatPageHtml } from "./infer/chat-page.js";
