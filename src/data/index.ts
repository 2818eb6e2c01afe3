// Training data for R1-style reasoning models: read, check, render as inference will, tokenize, split, cache.
//
// R1 rule: prompt = template(history, add_generation_prompt, enable_thinking=true); completion = reasoning +
// "\n</think>\n\n" + answer + the template's end of turn; loss from the first completion token. Earlier
// assistant turns keep only their answers, exactly as inference renders them.
import path from "node:path";
import { checkModelFile, checkVocabulary } from "../gguf/model-check.js";
import { readGgufModel, type GgufModelFile } from "../gguf/read.js";
import { cacheFilePath, cacheKey, defaultCacheDir, hashBytes, readCache, writeCache } from "./cache.js";
import { DataError, type DataIssue, type DataIssueKind } from "./errors.js";
import { detectFileFormat, normalizeRecord, type Conversation, type Turn } from "./formats.js";
import { asPathList, parseDataOptions, type DataFormat, type DataOptions, type ResolvedDataOptions } from "./options.js";
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
  role: Role;
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

/** The tokenizer facts of an already-read GGUF, after checking it: its template, the BOS/EOS texts and a hash of every tokenizer key. */
async function readVocabulary(file: GgufModelFile): Promise<ModelVocabulary> {
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

type Role = "train" | "validation";

/** Errors and warnings as they are found; an error makes its whole record invalid. */
class IssueLog {
  readonly errors: DataIssue[] = [];
  readonly warnings: DataIssue[] = [];
  readonly invalidRecords = new Set<string>();

  error(issue: DataIssue): void {
    this.errors.push(issue);
    this.invalidRecords.add(`${issue.file}:${issue.line}`);
  }

  warn(example: { file: string; line: number }, kind: DataIssueKind, message: string): void {
    this.warnings.push(issueAt(example, kind, message));
  }

  isInvalid(example: { file: string; line: number }): boolean {
    return this.invalidRecords.has(`${example.file}:${example.line}`);
  }

  /** Both lists in reading order (files as listed, then by line); under strict, warnings become errors too. */
  finish(fileReports: DataReport["files"], strict: boolean): void {
    const fileOrder = new Map(fileReports.map((file, index) => [file.path, index]));
    const readingOrder = (a: DataIssue, b: DataIssue): number => fileOrder.get(a.file)! - fileOrder.get(b.file)! || a.line - b.line;
    this.warnings.sort(readingOrder);
    if (strict) {
      for (const warning of this.warnings) this.error({ ...warning, message: `${warning.message} (an error under strict)` });
    }
    this.errors.sort(readingOrder);
  }
}

interface DataInputs {
  dataPaths: string[];
  trainFiles: DataFile[];
  validationFiles: DataFile[];
}

async function readInputs(options: ResolvedDataOptions): Promise<DataInputs> {
  const dataPaths = asPathList(options.data);
  const trainFiles = await readDataFiles(dataPaths);
  const validationFiles = options.valData === undefined ? [] : await readDataFiles(asPathList(options.valData));
  return { dataPaths, trainFiles, validationFiles };
}

/** The cache key of these inputs (vocabulary, template, data bytes, options) and where its file lives. */
function locateCache(options: ResolvedDataOptions, vocabulary: ModelVocabulary, template: ChatTemplate, inputs: DataInputs): { key: string; file?: string } {
  const describeFiles = (files: DataFile[]) => files.map((file) => ({ name: file.name, sha256: hashBytes(file.bytes) }));
  // data paths enter the key through the files' names and bytes; where the cache lives does not matter
  const { cacheDir, data: _dataPaths, valData: _valDataPaths, ...keyedOptions } = options;
  const key = cacheKey({
    vocabulary: vocabulary.hash,
    template: { source: template.source, text: template.text },
    train: describeFiles(inputs.trainFiles),
    validation: describeFiles(inputs.validationFiles),
    options: keyedOptions,
  });
  const file = cacheDir === false ? undefined : cacheFilePath(cacheDir ?? defaultCacheDir(inputs.dataPaths[0]), key);
  return { key, file };
}

interface RenderedData {
  fileReports: DataReport["files"];
  pending: PendingExample[];
  /** JSON records read, valid or not */
  records: number;
  /** turns of each record that rendered; strict mode may still invalidate some */
  renderedTurns: Map<string, number>;
}

/** Parses every file, normalizes each record to a conversation and renders its trained turns. */
function renderInputs(inputs: DataInputs, options: ResolvedDataOptions, template: ChatTemplate, thinkRequired: boolean, issues: IssueLog): RenderedData {
  const rendered: RenderedData = { fileReports: [], pending: [], records: 0, renderedTurns: new Map() };
  for (const [role, files] of [["train", inputs.trainFiles], ["validation", inputs.validationFiles]] as const) {
    for (const file of files) {
      const parsed = parseDataFile(file);
      parsed.issues.forEach((issue) => issues.error(issue));
      rendered.records += parsed.records.length + parsed.issues.length;
      const fileFormat = options.format ?? detectFileFormat(parsed.records);
      const formats: Partial<Record<DataFormat, number>> = {};
      for (const record of parsed.records) {
        const { conversation, issue } = normalizeRecord(record, options.format, fileFormat);
        if (issue) {
          issues.error(issue);
          continue;
        }
        formats[conversation!.format] = (formats[conversation!.format] ?? 0) + 1;
        const turns = renderConversation(conversation!, template, options, thinkRequired, role);
        if (turns.issue) {
          issues.error(turns.issue);
          continue;
        }
        rendered.renderedTurns.set(`${record.file}:${record.line}`, conversation!.turns.length);
        rendered.pending.push(...turns.examples);
      }
      const found = Object.keys(formats) as DataFormat[];
      const format = found.length === 1 ? found[0] : found.length === 0 ? fileFormat : undefined;
      rendered.fileReports.push({ path: file.name, format, formats, records: parsed.records.length + parsed.issues.length, role });
    }
  }
  return rendered;
}

/**
 * Huge examples with more bytes than maxLength of the longest tokens, each with the fewest tokens it can
 * have: too long whatever their tokens are, so they are dropped without tokenizing or checking them (a
 * 50 MB record took a minute and gigabytes to tokenize). Smaller ones are tokenized, so the report's
 * longest length stays exact for real data.
 */
function findCertainlyTooLong(pending: PendingExample[], options: ResolvedDataOptions, vocabulary: ModelVocabulary): Map<PendingExample, number> {
  const certainlyTooLong = new Map<PendingExample, number>();
  if (options.truncate) return certainlyTooLong;
  for (const example of pending) {
    const bytes = Buffer.byteLength(partsToText([...example.promptParts, ...example.reasoningParts, ...example.answerParts], vocabulary.tokenTexts));
    const atLeastTokens = Math.ceil(bytes / vocabulary.longestTokenBytes);
    if (bytes >= hugeExampleBytes && atLeastTokens > options.maxLength) certainlyTooLong.set(example, atLeastTokens);
  }
  return certainlyTooLong;
}

/** Warnings from the texts alone: looping reasoning, language mismatch, an answer only in the reasoning, duplicates. */
function warnAboutTexts(pending: PendingExample[], certainlyTooLong: Map<PendingExample, number>, issues: IssueLog): void {
  const seen = new Map<string, string>();
  for (const example of pending) {
    if (certainlyTooLong.has(example)) continue;
    if (example.reasoning !== undefined) {
      const loop = loopingReason(example.reasoning);
      if (loop) issues.warn(example, "looping-reasoning", loop);
      const language = languageMismatchReason(example.question, example.reasoning);
      if (language) issues.warn(example, "language-mismatch", language);
      const onlyInReasoning = answerOnlyInReasoningReason(example.reasoning, example.answer);
      if (onlyInReasoning) issues.warn(example, "answer-only-in-reasoning", onlyInReasoning);
    }
    const identity = hashBytes(JSON.stringify([example.promptParts, example.reasoningParts, example.answerParts]));
    const first = seen.get(identity);
    if (first !== undefined) issues.warn(example, "duplicate", `duplicate example: the same as ${first}`);
    else seen.set(identity, `${example.file}:${example.line}`);
  }
}

interface TokenizedPending {
  example: PendingExample;
  prompt: number[];
  completion: number[];
  reasoningTokens: number;
  answerTokens: number;
}

/** Tokenizes prompts and completions (only here is node-llama-cpp's binary needed). */
async function tokenizePending(pending: PendingExample[], modelPath: string, tokenTexts: TokenTexts, given: PartTokenizer | undefined): Promise<TokenizedPending[]> {
  const tokenizer = given ?? (pending.length > 0 ? await loadPartTokenizer(modelPath) : undefined);
  try {
    return pending.map((example) => {
      const prompt = tokenizer!.tokenizePrompt(example.promptParts);
      const completion = tokenizer!.tokenizeCompletion(partsToText([...example.reasoningParts, ...example.answerParts], tokenTexts));
      const reasoningTokens = example.reasoning === undefined ? 0 : tokenizer!.countTokens(example.reasoning);
      const answerTokens = tokenizer!.countTokens(example.answer);
      return { example, prompt, completion, reasoningTokens, answerTokens };
    });
  } finally {
    if (tokenizer && !given) await tokenizer.dispose();
  }
}

/** Warns about reasoning far longer than the rest of its file. */
function warnAboutOutlierLengths(tokenized: TokenizedPending[], issues: IssueLog): void {
  const byFile = new Map<string, TokenizedPending[]>();
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
        issues.warn(entry.example, "outlier-length", `outlier length: the reasoning has ${entry.reasoningTokens} tokens, far more than the rest of the file (over ${Math.round(threshold)})`);
      }
    }
  }
}

interface KeptExample extends RenderedExample {
  role: Role;
  reasoningTokens: number;
  answerTokens: number;
  promptTokens: number;
  hasReasoning: boolean;
}

interface LengthLimited {
  kept: KeptExample[];
  /** the token length of every valid example that was tokenized, kept or not */
  validLengths: number[];
  /** valid examples dropped untokenized (certainly too long) */
  untokenized: number;
  tooLong: number;
  truncated: number;
  longest: number;
  /** longest is the lower bound of an example dropped untokenized (findCertainlyTooLong) */
  longestIsLowerBound: boolean;
}

/** Drops invalid records and examples over maxLength (or cuts them, under truncate, when the prompt fits). */
function applyLengthLimit(
  tokenized: TokenizedPending[],
  certainlyTooLong: Map<PendingExample, number>,
  options: ResolvedDataOptions,
  issues: IssueLog,
  tokenTexts: TokenTexts,
  keepTexts: boolean,
): LengthLimited {
  const result: LengthLimited = { kept: [], validLengths: [], untokenized: 0, tooLong: 0, truncated: 0, longest: 0, longestIsLowerBound: false };
  for (const [example, atLeastTokens] of certainlyTooLong) {
    if (issues.isInvalid(example)) continue;
    result.untokenized++;
    result.tooLong++;
    if (atLeastTokens > result.longest) [result.longest, result.longestIsLowerBound] = [atLeastTokens, true];
  }
  for (const { example, prompt, completion, reasoningTokens, answerTokens } of tokenized) {
    if (issues.isInvalid(example)) continue;
    let tokens = [...prompt, ...completion];
    result.validLengths.push(tokens.length);
    if (tokens.length > result.longest) [result.longest, result.longestIsLowerBound] = [tokens.length, false];
    if (tokens.length > options.maxLength) {
      result.tooLong++;
      if (!options.truncate || prompt.length >= options.maxLength) continue;
      tokens = tokens.slice(0, options.maxLength);
      result.truncated++;
    }
    result.kept.push({
      source: `${example.file}:${example.line}`,
      tokens: Int32Array.from(tokens),
      lossFrom: prompt.length,
      prompt: keepTexts ? partsToText(example.promptParts, tokenTexts) : "",
      completion: keepTexts ? partsToText([...example.reasoningParts, ...example.answerParts], tokenTexts) : "",
      role: example.role,
      promptTokens: prompt.length,
      reasoningTokens,
      answerTokens,
      hasReasoning: example.reasoning !== undefined,
    });
  }
  return result;
}

/** Separate validation files decide the split; otherwise valSplit (0.1, or 0 under 10 records) by seed. */
function splitKept(kept: KeptExample[], hasValidationFiles: boolean, options: ResolvedDataOptions): { train: TokenizedExample[]; validation: TokenizedExample[] } {
  const strip = (example: KeptExample): TokenizedExample => ({ source: example.source, tokens: example.tokens, lossFrom: example.lossFrom });
  if (hasValidationFiles) {
    return { train: kept.filter((example) => example.role === "train").map(strip), validation: kept.filter((example) => example.role === "validation").map(strip) };
  }
  const sources = new Set(kept.map((example) => example.source)).size;
  const fraction = options.valSplit ?? (sources >= 10 ? 0.1 : 0);
  return splitValidation(kept.map(strip), fraction, options.seed);
}

interface ReportInputs {
  options: ResolvedDataOptions;
  template: ChatTemplate;
  thinkRequired: boolean;
  rendered: RenderedData;
  limited: LengthLimited;
  contextLength: number | undefined;
  split: { train: TokenizedExample[]; validation: TokenizedExample[] };
  issues: IssueLog;
  cache: { key: string; file?: string };
}

/** Examples each candidate length keeps whole: powers of two from 512 to the context length (or to the longest example), and maxLength. */
function keptByLength(lengths: number[], maxLength: number, contextLength: number | undefined): DataReport["keptByLength"] {
  const upTo = contextLength ?? lengths.reduce((longest, tokens) => Math.max(longest, tokens), maxLength);
  const candidates = new Set([maxLength]);
  for (let length = 512; length <= upTo; length *= 2) candidates.add(length);
  if (contextLength !== undefined) candidates.add(contextLength);
  return [...candidates].sort((a, b) => a - b).map((length) => ({ maxLength: length, kept: lengths.filter((tokens) => tokens <= length).length }));
}

function buildReport({ options, template, thinkRequired, rendered, limited, split, issues, cache, contextLength }: ReportInputs): DataReport {
  const { kept } = limited;
  const { train, validation } = split;
  const warningCounts: DataReport["warningCounts"] = {};
  for (const warning of issues.warnings) warningCounts[warning.kind] = (warningCounts[warning.kind] ?? 0) + 1;
  const countTokens = (examples: TokenizedExample[]) => examples.reduce((sum, example) => sum + example.tokens.length, 0);
  const validTurns = [...rendered.renderedTurns].filter(([source]) => !issues.invalidRecords.has(source)).map(([, turns]) => turns);
  return {
    files: rendered.fileReports,
    template: { source: template.source, opensThinking: template.opensThinking },
    think: thinkRequired ? "required" : "optional",
    records: rendered.records,
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
    dropped: {
      invalid: issues.invalidRecords.size,
      tooLong: limited.tooLong,
      truncated: limited.truncated,
      longest: limited.longest,
      longestIsLowerBound: limited.longestIsLowerBound,
      lengthToKeepAll: limited.longest,
      maxLength: options.maxLength,
    },
    keptByLength: keptByLength(limited.validLengths, options.maxLength, contextLength),
    validExamples: limited.validLengths.length + limited.untokenized,
    ...(contextLength === undefined ? {} : { contextLength }),
    errorCount: issues.errors.length,
    errors: issues.errors.slice(0, options.maxReportedIssues),
    warningCount: issues.warnings.length,
    warningCounts,
    warnings: issues.warnings.slice(0, options.maxReportedIssues),
    cache: { key: cache.key, file: cache.file, hit: false },
  };
}

/** The model's context length from its GGUF metadata; undefined for a vocabulary-only file. */
function contextLengthOf(modelFile: GgufModelFile): number | undefined {
  const value = modelFile.metadata[`${String(modelFile.metadata["general.architecture"])}.context_length`];
  return typeof value === "number" || typeof value === "bigint" ? Number(value) : undefined;
}

/**
 * Reads, checks, renders and tokenizes training data without throwing on invalid examples: the report lists
 * them. loadTrainingData is this plus "stop when there are errors". `model` is a GGUF path, or the file
 * already read (a training run reads it once).
 */
export async function inspectTrainingData(model: string | GgufModelFile, dataOptions: DataOptions | ResolvedDataOptions, inspect: InspectOptions = {}): Promise<Inspection> {
  const options = parseDataOptions(dataOptions);
  const modelFile = typeof model === "string" ? await readGgufModel(model) : model;
  const vocabulary = await readVocabulary(modelFile);
  const template = resolveChatTemplate(vocabulary.chatTemplate, options.template, modelFile.path);
  const thinkRequired = options.think === "required" || (options.think === "auto" && template.opensThinking);
  const inputs = await readInputs(options);
  const cache = locateCache(options, vocabulary, template, inputs);
  if (cache.file && !inspect.keepTexts) {
    const cached = await readCache<DataReport>(cache.file);
    if (cached) return { ...cached, report: { ...cached.report, cache: { key: cache.key, file: cache.file, hit: true } } };
  }

  const issues = new IssueLog();
  const rendered = renderInputs(inputs, options, template, thinkRequired, issues);
  const certainlyTooLong = findCertainlyTooLong(rendered.pending, options, vocabulary);
  warnAboutTexts(rendered.pending, certainlyTooLong, issues);
  const toTokenize = rendered.pending.filter((example) => !certainlyTooLong.has(example));
  const tokenized = await tokenizePending(toTokenize, modelFile.path, vocabulary.tokenTexts, inspect.tokenizer);
  warnAboutOutlierLengths(tokenized, issues);
  issues.finish(rendered.fileReports, options.strict);
  const limited = applyLengthLimit(tokenized, certainlyTooLong, options, issues, vocabulary.tokenTexts, inspect.keepTexts ?? false);
  const split = splitKept(limited.kept, inputs.validationFiles.length > 0, options);
  const report = buildReport({ options, template, thinkRequired, rendered, limited, split, issues, cache, contextLength: contextLengthOf(modelFile) });

  const result: Inspection = { ...split, report };
  if (inspect.keepTexts) result.rendered = limited.kept.map(({ source, tokens, lossFrom, prompt, completion }) => ({ source, tokens, lossFrom, prompt, completion }));
  const failing = issues.errors.length > 0 && options.onInvalid === "error";
  if (cache.file && !inspect.keepTexts && !failing && limited.kept.length > 0) await writeCache(cache.file, { ...split, report });
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
export async function loadTrainingData(model: string | GgufModelFile, dataOptions: DataOptions | ResolvedDataOptions): Promise<TrainingData> {
  const options = parseDataOptions(dataOptions);
  const { train, validation, report } = await inspectTrainingData(model, options);
  if (report.errorCount > 0 && options.onInvalid === "error") throw new DataError(report.errors, report.errorCount);
  if (train.length === 0) throw new NoTrainingDataError(report);
  return { train, validation, report };
}
