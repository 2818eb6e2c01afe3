// Training data for R1-style reasoning models: read, check, render as inference will, tokenize, split, cache.
//
// R1 rule: prompt = template(history, add_generation_prompt, enable_thinking=true); completion = reasoning +
// "\n</think>\n\n" + answer + the template's end of turn; loss from the first completion token. Earlier
// assistant turns keep only their answers, exactly as inference renders them.
import path from "node:path";
import { checkModelFile, checkVocabulary } from "../gguf/model-check.js";
import { readGgufModel } from "../gguf/read.js";
import { cacheFilePath, cacheKey, hashBytes, readCache, writeCache } from "./cache.js";
import { DataError, type DataIssue, type DataIssueKind } from "./errors.js";
import { detectFileFormat, normalizeRecord, type Conversation, type Turn } from "./formats.js";
import { asPathList, parseDataOptions, type DataOptions, type ResolvedDataOptions } from "./options.js";
import { splitValidation, type TokenizedExample } from "./pack.js";
import { parseDataFile, readDataFiles, type DataFile } from "./read.js";
import { lengthStats, type DataReport } from "./report.js";
import { loadPartTokenizer, type PartTokenizer } from "./tokenizer.js";
import { ChatTemplate, partsToText, resolveChatTemplate, type ChatMessage, type PromptPart, type TokenTexts } from "./templates.js";
import { answerOnlyInReasoningReason, languageMismatchReason, loopingReason, outlierThreshold } from "./warnings.js";

export { DataOptions, parseDataOptions } from "./options.js";
export type { ResolvedDataOptions, DataFormat, BuiltinTemplateName } from "./options.js";
export { DataError, formatIssue } from "./errors.js";
export type { DataIssue, DataIssueKind } from "./errors.js";
export type { DataReport, LengthStats } from "./report.js";
export { packExamples, splitValidation, PackingError } from "./pack.js";
export type { TokenizedExample, PackedRow } from "./pack.js";
export { builtinTemplates, ChatTemplate, DataTemplateError } from "./templates.js";
export { DataPathError } from "./read.js";

/** One example as rendered, before and after tokenization (what `data show` prints). */
export interface RenderedExample extends TokenizedExample {
  prompt: string;
  completion: string;
}

export interface TrainingData {
  train: TokenizedExample[];
  validation: TokenizedExample[];
  report: DataReport;
}

/** Rendered (not yet tokenized) example of one assistant turn. */
interface PendingExample {
  file: string;
  line: number;
  role: "train" | "validation";
  promptParts: PromptPart[];
  reasoningParts: PromptPart[];
  answerParts: PromptPart[];
  question: string;
  reasoning?: string;
  answer: string;
}

/** An example this large (hundreds of thousands of tokens) is not tokenized when it cannot fit maxLength. */
const hugeExampleBytes = 1 << 20;

interface ModelVocabulary {
  chatTemplate?: string;
  tokenTexts: TokenTexts;
  /** UTF-8 bytes of the longest token text: no token covers more of the text than that */
  longestTokenBytes: number;
  /** hash of every tokenizer.* key: tokens, merges, types, special ids, pre-tokenizer, template */
  hash: string;
}

async function readVocabulary(modelPath: string): Promise<ModelVocabulary> {
  const file = await readGgufModel(modelPath);
  // a vocab-only GGUF (no tensors) is enough to prepare data; a model file gets the whole check
  if (file.tensors.length === 0) checkVocabulary(file);
  else await checkModelFile(file);
  const tokenizerEntries = Object.entries(file.metadata)
    .filter(([key]) => key.startsWith("tokenizer."))
    .sort(([a], [b]) => (a < b ? -1 : 1));
  const tokens = file.metadata["tokenizer.ggml.tokens"];
  const tokenText = (key: string): string => {
    const id = file.metadata[key];
    return Array.isArray(tokens) && typeof id === "number" && typeof tokens[id] === "string" ? (tokens[id] as string) : "";
  };
  const template = file.metadata["tokenizer.chat_template"];
  return {
    chatTemplate: typeof template === "string" ? template : undefined,
    tokenTexts: { bos: tokenText("tokenizer.ggml.bos_token_id"), eos: tokenText("tokenizer.ggml.eos_token_id") },
    longestTokenBytes: Array.isArray(tokens) ? tokens.reduce((longest: number, token) => Math.max(longest, Buffer.byteLength(String(token))), 1) : 1,
    hash: hashBytes(JSON.stringify(tokenizerEntries, (_key, value: unknown) => (typeof value === "bigint" ? value.toString() : value))),
  };
}

function issueAt(conversation: { file: string; line: number }, kind: DataIssueKind, message: string): DataIssue {
  return { file: conversation.file, line: conversation.line, kind, message };
}

/** Renders the trained assistant turns of one conversation; returns an error instead when reasoning is missing. */
function renderConversation(
  conversation: Conversation,
  template: ChatTemplate,
  options: ResolvedDataOptions,
  thinkRequired: boolean,
  role: "train" | "validation",
): { examples: PendingExample[]; issue?: DataIssue } {
  const assistantIndexes = conversation.turns.flatMap((turn, index) => (turn.role === "assistant" ? [index] : []));
  const trained = options.trainOn === "all" ? assistantIndexes : assistantIndexes.slice(-1);
  const examples: PendingExample[] = [];
  for (const turnIndex of trained) {
    const turn = conversation.turns[turnIndex];
    const position = `turn ${turnIndex}`;
    if (thinkRequired && turn.reasoning === undefined) {
      const issue = turn.emptyReasoning
        ? issueAt(conversation, "empty-reasoning", `empty reasoning in ${position}: <think></think> holds nothing (think is required)`)
        : issueAt(conversation, "missing-reasoning", `missing reasoning in ${position}: no <think>…</think> and no reasoning field (think is required; pass --think optional to allow it)`);
      return { examples: [], issue };
    }
    const history: ChatMessage[] = conversation.turns.slice(0, turnIndex).map((earlier: Turn) => ({ role: earlier.role, content: earlier.content }));
    const promptParts = template.render(history, true);
    const reasoningParts: PromptPart[] = [];
    if (template.opensThinking) {
      // the prompt already holds "<think>\n"; without reasoning the block closes at once, as DeepSeek's no-think form
      const promptText = partsToText(promptParts, { bos: "", eos: "" });
      if (!/\n$/.test(promptText)) reasoningParts.push({ type: "template", text: "\n" });
      if (turn.reasoning !== undefined) reasoningParts.push({ type: "content", text: turn.reasoning });
      reasoningParts.push({ type: "template", text: "\n</think>\n\n" });
    } else if (turn.reasoning !== undefined) {
      reasoningParts.push({ type: "template", text: "<think>\n" }, { type: "content", text: turn.reasoning }, { type: "template", text: "\n</think>\n\n" });
    }
    const question = [...history].reverse().find((message) => message.role === "user")?.content ?? "";
    examples.push({
      file: conversation.file,
      line: conversation.line,
      role,
      promptParts,
      reasoningParts,
      answerParts: [{ type: "content", text: turn.content }, ...template.turnEnd],
      question,
      reasoning: turn.reasoning,
      answer: turn.content,
    });
  }
  return { examples };
}

interface Inspection extends TrainingData {
  /** every kept example in file order, with its texts (only when asked for) */
  rendered?: RenderedExample[];
}

interface InspectOptions {
  /** keep prompt and completion texts (for `data show`); skips the cache */
  keepTexts?: boolean;
  /** a tokenizer already loaded (tests); otherwise node-llama-cpp loads the model's vocabulary */
  tokenizer?: PartTokenizer;
}

/**
 * Reads, checks, renders and tokenizes training data without throwing on invalid examples: the report lists
 * them. loadTrainingData is this plus "stop when there are errors".
 */
export async function inspectTrainingData(modelPath: string, dataOptions: DataOptions, inspect: InspectOptions = {}): Promise<Inspection> {
  const options = parseDataOptions(dataOptions);
  const vocabulary = await readVocabulary(modelPath);
  const template = resolveChatTemplate(vocabulary.chatTemplate, options.template, modelPath);
  const thinkRequired = options.think === "required" || (options.think === "auto" && template.opensThinking);
  const dataPaths = asPathList(options.data);
  const trainFiles = await readDataFiles(dataPaths);
  const validationFiles = options.valData === undefined ? [] : await readDataFiles(asPathList(options.valData));
  const describeFiles = (files: DataFile[]) => files.map((file) => ({ name: file.name, sha256: hashBytes(file.bytes) }));
  // data paths enter the key through the files' names and bytes; where the cache lives does not matter
  const { cacheDir, data: _dataPaths, valData: _valDataPaths, ...keyedOptions } = options;
  const key = cacheKey({
    vocabulary: vocabulary.hash,
    template: { source: template.source, text: template.text },
    train: describeFiles(trainFiles),
    validation: describeFiles(validationFiles),
    options: keyedOptions,
  });
  const cacheFile = cacheDir === false ? undefined : cacheFilePath(cacheDir ?? path.join(path.dirname(path.resolve(dataPaths[0])), ".thinktune-cache"), key);
  if (cacheFile && !inspect.keepTexts) {
    const cached = await readCache<DataReport>(cacheFile);
    if (cached) return { ...cached, report: { ...cached.report, cache: { key, file: cacheFile, hit: true } } };
  }

  const errors: DataIssue[] = [];
  const warnings: DataIssue[] = [];
  const invalidRecords = new Set<string>();
  const addError = (issue: DataIssue): void => {
    errors.push(issue);
    invalidRecords.add(`${issue.file}:${issue.line}`);
  };
  const fileReports: DataReport["files"] = [];
  const pending: PendingExample[] = [];
  let records = 0;
  /** turns of each record that rendered; strict mode may still invalidate some */
  const renderedTurns = new Map<string, number>();
  for (const [role, files] of [["train", trainFiles], ["validation", validationFiles]] as const) {
    for (const file of files) {
      const parsed = parseDataFile(file);
      parsed.issues.forEach(addError);
      records += parsed.records.length + parsed.issues.length;
      const fileFormat = options.format ?? detectFileFormat(parsed.records);
      fileReports.push({ path: file.name, format: fileFormat, records: parsed.records.length + parsed.issues.length, role });
      for (const record of parsed.records) {
        const { conversation, issue } = normalizeRecord(record, options.format, fileFormat);
        if (issue) {
          addError(issue);
          continue;
        }
        const rendered = renderConversation(conversation!, template, options, thinkRequired, role);
        if (rendered.issue) {
          addError(rendered.issue);
          continue;
        }
        renderedTurns.set(`${record.file}:${record.line}`, conversation!.turns.length);
        pending.push(...rendered.examples);
      }
    }
  }

  // A huge example with more bytes than maxLength of the longest tokens is too long whatever its tokens are:
  // dropped without tokenizing or checking it (a 50 MB record took a minute and gigabytes to tokenize).
  // Smaller ones are tokenized, so the report's longest length stays exact for real data.
  const certainlyTooLong = new Map<PendingExample, number>();
  if (!options.truncate) {
    for (const example of pending) {
      const bytes = Buffer.byteLength(partsToText([...example.promptParts, ...example.reasoningParts, ...example.answerParts], vocabulary.tokenTexts));
      const atLeastTokens = Math.ceil(bytes / vocabulary.longestTokenBytes);
      if (bytes >= hugeExampleBytes && atLeastTokens > options.maxLength) certainlyTooLong.set(example, atLeastTokens);
    }
  }
  // text-level warnings
  const seen = new Map<string, string>();
  const warn = (example: PendingExample, kind: DataIssueKind, message: string): void => {
    warnings.push(issueAt(example, kind, message));
  };
  for (const example of pending) {
    if (certainlyTooLong.has(example)) continue;
    if (example.reasoning !== undefined) {
      const loop = loopingReason(example.reasoning);
      if (loop) warn(example, "looping-reasoning", loop);
      const language = languageMismatchReason(example.question, example.reasoning);
      if (language) warn(example, "language-mismatch", language);
      const onlyInReasoning = answerOnlyInReasoningReason(example.reasoning, example.answer);
      if (onlyInReasoning) warn(example, "answer-only-in-reasoning", onlyInReasoning);
    }
    const identity = hashBytes(JSON.stringify([example.promptParts, example.reasoningParts, example.answerParts]));
    const first = seen.get(identity);
    if (first !== undefined) warn(example, "duplicate", `duplicate example: the same as ${first}`);
    else seen.set(identity, `${example.file}:${example.line}`);
  }

  // tokenize (only here is node-llama-cpp's binary needed)
  const tokenizer = inspect.tokenizer ?? (pending.length > 0 ? await loadPartTokenizer(modelPath) : undefined);
  let tokenized;
  try {
    tokenized = pending.filter((example) => !certainlyTooLong.has(example)).map((example) => {
      const prompt = tokenizer!.tokenizePrompt(example.promptParts);
      const completion = tokenizer!.tokenizeCompletion(partsToText([...example.reasoningParts, ...example.answerParts], vocabulary.tokenTexts));
      const reasoningTokens = example.reasoning === undefined ? 0 : tokenizer!.countTokens(example.reasoning);
      const answerTokens = tokenizer!.countTokens(example.answer);
      return { example, prompt, completion, reasoningTokens, answerTokens };
    });
  } finally {
    if (tokenizer && !inspect.tokenizer) await tokenizer.dispose();
  }

  // reasoning far longer than the rest of its file
  const byFile = new Map<string, typeof tokenized>();
  for (const entry of tokenized) {
    if (entry.example.reasoning === undefined) continue;
    const entries = byFile.get(entry.example.file);
    if (entries) entries.push(entry);
    else byFile.set(entry.example.file, [entry]);
  }
  for (const entries of byFile.values()) {
    const threshold = outlierThreshold(entries.map((entry) => entry.reasoningTokens));
    if (threshold === undefined) continue;
    for (const entry of entries) {
      if (entry.reasoningTokens > threshold) {
        warn(entry.example, "outlier-length", `outlier length: the reasoning has ${entry.reasoningTokens} tokens, far more than the rest of the file (over ${Math.round(threshold)})`);
      }
    }
  }
  // issues in reading order: files as listed, then by line
  const fileOrder = new Map(fileReports.map((file, index) => [file.path, index]));
  const readingOrder = (a: DataIssue, b: DataIssue): number => fileOrder.get(a.file)! - fileOrder.get(b.file)! || a.line - b.line;
  warnings.sort(readingOrder);
  if (options.strict) {
    for (const warning of warnings) addError({ ...warning, message: `${warning.message} (an error under strict)` });
  }
  errors.sort(readingOrder);

  // length limit, then the split
  const kept: (RenderedExample & { role: "train" | "validation"; reasoningTokens: number; answerTokens: number; promptTokens: number; hasReasoning: boolean })[] = [];
  let tooLong = 0;
  let truncated = 0;
  let longest = 0;
  let longestIsLowerBound = false;
  for (const [example, atLeastTokens] of certainlyTooLong) {
    if (invalidRecords.has(`${example.file}:${example.line}`)) continue;
    tooLong++;
    if (atLeastTokens > longest) [longest, longestIsLowerBound] = [atLeastTokens, true];
  }
  for (const { example, prompt, completion, reasoningTokens, answerTokens } of tokenized) {
    if (invalidRecords.has(`${example.file}:${example.line}`)) continue;
    let tokens = [...prompt, ...completion];
    if (tokens.length > longest) [longest, longestIsLowerBound] = [tokens.length, false];
    if (tokens.length > options.maxLength) {
      tooLong++;
      if (!options.truncate || prompt.length >= options.maxLength) continue;
      tokens = tokens.slice(0, options.maxLength);
      truncated++;
    }
    kept.push({
      source: `${example.file}:${example.line}`,
      tokens: Int32Array.from(tokens),
      lossFrom: prompt.length,
      prompt: inspect.keepTexts ? partsToText(example.promptParts, vocabulary.tokenTexts) : "",
      completion: inspect.keepTexts ? partsToText([...example.reasoningParts, ...example.answerParts], vocabulary.tokenTexts) : "",
      role: example.role,
      promptTokens: prompt.length,
      reasoningTokens,
      answerTokens,
      hasReasoning: example.reasoning !== undefined,
    });
  }
  const strip = (example: (typeof kept)[number]): TokenizedExample => ({ source: example.source, tokens: example.tokens, lossFrom: example.lossFrom });
  let train: TokenizedExample[];
  let validation: TokenizedExample[];
  if (validationFiles.length > 0) {
    train = kept.filter((example) => example.role === "train").map(strip);
    validation = kept.filter((example) => example.role === "validation").map(strip);
  } else {
    const sources = new Set(kept.map((example) => example.source)).size;
    const fraction = options.valSplit ?? (sources >= 10 ? 0.1 : 0);
    ({ train, validation } = splitValidation(kept.map(strip), fraction, options.seed));
  }

  const warningCounts: DataReport["warningCounts"] = {};
  for (const warning of warnings) warningCounts[warning.kind] = (warningCounts[warning.kind] ?? 0) + 1;
  const countTokens = (examples: TokenizedExample[]) => examples.reduce((sum, example) => sum + example.tokens.length, 0);
  const validTurns = [...renderedTurns].filter(([source]) => !invalidRecords.has(source)).map(([, turns]) => turns);
  const report: DataReport = {
    files: fileReports,
    template: { source: template.source, opensThinking: template.opensThinking },
    think: thinkRequired ? "required" : "optional",
    records,
    validRecords: validTurns.length,
    turns: validTurns.reduce((sum, turns) => sum + turns, 0),
    examples: { total: kept.length, train: train.length, validation: validation.length, withReasoning: kept.filter((example) => example.hasReasoning).length },
    lengths: {
      prompt: lengthStats(kept.map((example) => example.promptTokens)),
      reasoning: lengthStats(kept.filter((example) => example.hasReasoning).map((example) => example.reasoningTokens)),
      answer: lengthStats(kept.map((example) => example.answerTokens)),
      total: lengthStats(kept.map((example) => example.tokens.length)),
    },
    tokens: {
      train: countTokens(train),
      validation: countTokens(validation),
      trainedTrain: train.reduce((sum, example) => sum + example.tokens.length - example.lossFrom, 0),
    },
    dropped: { invalid: invalidRecords.size, tooLong, truncated, longest, longestIsLowerBound, lengthToKeepAll: longest, maxLength: options.maxLength },
    errorCount: errors.length,
    errors: errors.slice(0, options.maxReportedIssues),
    warningCount: warnings.length,
    warningCounts,
    warnings: warnings.slice(0, options.maxReportedIssues),
    cache: { key, file: cacheFile, hit: false },
  };
  const result: Inspection = { train, validation, report };
  if (inspect.keepTexts) result.rendered = kept.map(({ source, tokens, lossFrom, prompt, completion }) => ({ source, tokens, lossFrom, prompt, completion }));
  const failing = errors.length > 0 && options.onInvalid === "error";
  if (cacheFile && !inspect.keepTexts && !failing && kept.length > 0) await writeCache(cacheFile, { train, validation, report });
  return result;
}

export class NoTrainingDataError extends Error {
  constructor(readonly report: DataReport) {
    const dropped = report.dropped;
    const why: string[] = [];
    if (dropped.invalid > 0) why.push(`${dropped.invalid} invalid`);
    if (dropped.tooLong > 0) why.push(`${dropped.tooLong} longer than maxLength ${dropped.maxLength} (the longest has ${dropped.longest} tokens; raise maxLength or pass truncate)`);
    super(`no training examples left from ${report.records} records${why.length > 0 ? `: ${why.join(", ")}` : ""}`);
    this.name = "NoTrainingDataError";
  }
}

/**
 * The training and validation examples of `options.data`, tokenized for `modelPath`'s vocabulary. Throws
 * DataError listing every invalid example (up to maxReportedIssues) when onInvalid is "error". A second call
 * with the same inputs reads the tokenized cache and does not load node-llama-cpp.
 */
export async function loadTrainingData(modelPath: string, options: DataOptions): Promise<TrainingData> {
  const { train, validation, report } = await inspectTrainingData(modelPath, options);
  const onInvalid = parseDataOptions(options).onInvalid;
  if (report.errorCount > 0 && onInvalid === "error") throw new DataError(report.errors, report.errorCount);
  if (train.length === 0) throw new NoTrainingDataError(report);
  return { train, validation, report };
}
