// DataOptions: how training data is read, rendered, checked, tokenized and split (validated with zod at the edge).
import { z } from "zod";

export const dataFormats = ["query-response", "prompt-completion", "alpaca", "messages", "conversation", "sharegpt"] as const;
export type DataFormat = (typeof dataFormats)[number];
export const builtinTemplateNames = ["r1", "chatml", "llama3"] as const;
export type BuiltinTemplateName = (typeof builtinTemplateNames)[number];

const pathList = z.union([z.string().min(1), z.array(z.string().min(1)).min(1)]);

export const DataOptions = z
  .object({
    /** a JSONL / JSON-array file (optionally .gz) or a folder of them; or several */
    data: pathList,
    /** held-out validation data; when given, --val-split is not used */
    valData: pathList.optional(),
    /**
     * Fraction of the examples held out for validation. When not given: 0.1, or 0 with fewer than
     * 10 valid examples (too few to spare). A conversation's examples always land in the same split.
     */
    valSplit: z.number().min(0).max(0.9).optional(),
    /** the record format; detected per file when not given */
    format: z.enum(dataFormats).optional(),
    /** a built-in chat template; overrides the GGUF's tokenizer.chat_template */
    template: z.enum(builtinTemplateNames).optional(),
    /** "last": the last assistant turn of each conversation is trained; "all": every assistant turn */
    trainOn: z.enum(["last", "all"]).default("last"),
    /** "auto": required when the template opens <think> in its generation prompt (R1 models), else optional */
    think: z.enum(["required", "optional", "auto"]).default("auto"),
    /** "error": stop and list every invalid example; "skip": drop them (still counted and reported) */
    onInvalid: z.enum(["error", "skip"]).default("error"),
    /** longest example in tokens; longer ones are dropped (never cut) unless truncate is set */
    maxLength: z.number().int().min(8).default(4096),
    truncate: z.boolean().default(false),
    /** warnings (looping reasoning, outliers, ...) count as errors */
    strict: z.boolean().default(false),
    /** seed of the validation split */
    seed: z.number().int().default(0),
    /** folder of the tokenized cache; default .thinktune-cache next to the (first) data path; false disables it */
    cacheDir: z.union([z.string().min(1), z.literal(false)]).optional(),
    /** at most this many errors and this many warnings are listed (all are counted) */
    maxReportedIssues: z.number().int().min(1).default(100),
  })
  .strict();

export type DataOptions = z.input<typeof DataOptions>;
export type ResolvedDataOptions = z.output<typeof DataOptions>;

/** Validates options, naming the field and what was expected. */
export function parseDataOptions(options: DataOptions): ResolvedDataOptions {
  const result = DataOptions.safeParse(options);
  if (!result.success) {
    const problems = result.error.issues.map((issue) => `${issue.path.join(".") || "options"}: ${issue.message}`);
    throw new TypeError(`Invalid data options: ${problems.join("; ")}`);
  }
  return result.data;
}

export function asPathList(value: string | string[]): string[] {
  return Array.isArray(value) ? value : [value];
}
