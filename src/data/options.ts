// How training data is read, rendered, checked, tokenized and split: one zod schema (validated at the edge).
// `dataSettingsSchema` holds the settings a training config shares with it (train/config.ts composes
// them in), so each default and bound is stated here once.
import { z } from "zod";

export const dataFormats = ["query-response", "prompt-completion", "alpaca", "messages", "conversation", "sharegpt"] as const;
export type DataFormat = (typeof dataFormats)[number];
export const builtinTemplateNames = ["r1", "chatml", "llama3"] as const;
export type BuiltinTemplateName = (typeof builtinTemplateNames)[number];

export const dataSettingsSchema = z.strictObject({
  /**
   * Fraction of the examples held out for validation. When not given: 0.1, or 0 with fewer than
   * 10 valid examples (too few to spare). A conversation's examples always land in the same split.
   */
  valSplit: z.number().min(0).max(0.9).optional(),
  /** the record format; detected per file when not given */
  format: z.enum(dataFormats).optional(),
  /** a built-in chat template; overrides the GGUF's tokenizer.chat_template */
  template: z.enum(builtinTemplateNames).optional(),
  /** "auto": required when the template opens <think> in its generation prompt (R1 models), else optional */
  think: z.enum(["required", "optional", "auto"]).default("auto"),
  /** "error": stop and list every invalid example; "skip": drop them (still counted and reported) */
  onInvalid: z.enum(["error", "skip"]).default("error"),
  /** "last": the last assistant turn of each conversation is trained; "all": every assistant turn */
  trainOn: z.enum(["last", "all"]).default("last"),
  /** cut examples longer than maxLength instead of dropping them */
  truncate: z.boolean().default(false),
  /** warnings (looping reasoning, outliers, ...) count as errors */
  strict: z.boolean().default(false),
  /** longest example in tokens; longer ones are dropped (never cut) unless truncate is set */
  maxLength: z.int().min(1).default(4096),
  /** seed of the validation split (and, in training, of data order and LoRA init) */
  seed: z.int().min(0).default(0),
});

const pathList = z.union([z.string().min(1), z.array(z.string().min(1)).min(1)]);

export const DataOptions = dataSettingsSchema.extend({
  /** a JSONL / JSON-array file (optionally .gz) or a folder of them; or several */
  data: pathList,
  /** held-out validation data; when given, valSplit is not used */
  valData: pathList.optional(),
  /** folder of the tokenized cache; default .thinktune-cache next to the (first) data path (the user's cache folder for data inside node_modules); false disables it */
  cacheDir: z.union([z.string().min(1), z.literal(false)]).optional(),
  /** at most this many errors and this many warnings are listed (all are counted) */
  maxReportedIssues: z.int().min(1).default(100),
});

export type DataOptions = z.input<typeof DataOptions>;
export type ResolvedDataOptions = z.output<typeof DataOptions>;

// options this module resolved: handed back in, they are used as they are rather than parsed again
const resolvedOptions = new WeakSet<object>();

/** Validates options, naming the field and what was expected; resolved options pass through unchanged. */
export function parseDataOptions(options: DataOptions | ResolvedDataOptions): ResolvedDataOptions {
  if (resolvedOptions.has(options)) return options as ResolvedDataOptions;
  const result = DataOptions.safeParse(options);
  if (!result.success) {
    const problems = result.error.issues.map((issue) => `${issue.path.join(".") || "options"}: ${issue.message}`);
    throw new TypeError(`Invalid data options: ${problems.join("; ")}`);
  }
  resolvedOptions.add(result.data);
  return result.data;
}

export function asPathList(value: string | string[]): string[] {
  return Array.isArray(value) ? value : [value];
}
