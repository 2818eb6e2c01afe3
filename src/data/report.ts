// DataReport: what `data check` prints and the trainer records — plain data, JSON-serialisable.
import type { DataIssue, DataIssueKind } from "./errors.js";
import type { DataFormat } from "./options.js";

export interface LengthStats {
  count: number;
  p50: number;
  p95: number;
  max: number;
}

export interface DataReport {
  files: {
    path: string;
    /** the format of every record in the file; undefined when none could be told or the file mixes formats */
    format?: DataFormat;
    /** records read in each format (a file may mix them) */
    formats: Partial<Record<DataFormat, number>>;
    records: number;
    role: "train" | "validation";
  }[];
  template: { source: string; opensThinking: boolean };
  /** the resolved --think mode */
  think: "required" | "optional";
  /** JSON records read (lines of JSONL, elements of arrays), valid or not */
  records: number;
  /** records that passed every check */
  validRecords: number;
  /** conversation turns (system, user, assistant) in valid records */
  turns: number;
  examples: { total: number; train: number; validation: number; withReasoning: number };
  /** token lengths of the kept examples: prompt and total as trained; reasoning and answer each tokenized on its own */
  lengths: { prompt: LengthStats; reasoning: LengthStats; answer: LengthStats; total: LengthStats };
  tokens: { train: number; validation: number; trainedTrain: number };
  dropped: {
    /** records dropped by onInvalid "skip" */
    invalid: number;
    /** examples longer than maxLength (dropped, or cut when truncate) */
    tooLong: number;
    truncated: number;
    /** token length of the longest example (0 when none) */
    longest: number;
    /**
     * longest (and lengthToKeepAll) is a lower bound: a huge example (1 MiB or more) that is certainly longer
     * than maxLength (more bytes than maxLength of the vocabulary's longest token) is dropped untokenized
     */
    longestIsLowerBound: boolean;
    /** the maxLength that would keep every example */
    lengthToKeepAll: number;
    maxLength: number;
  };
  /**
   * How many valid examples each maxLength keeps whole: powers of two from 512 up to the model's context length,
   * and maxLength itself. Huge examples dropped untokenized count as kept by no length.
   */
  keptByLength: { maxLength: number; kept: number }[];
  /** valid examples, kept or not: what keptByLength counts out of */
  validExamples: number;
  /** the model's context length (its GGUF's context_length), when the file has one */
  contextLength?: number;
  errorCount: number;
  /** the first maxReportedIssues errors */
  errors: DataIssue[];
  warningCount: number;
  warningCounts: Partial<Record<DataIssueKind, number>>;
  warnings: DataIssue[];
  cache: { key: string; file?: string; hit: boolean };
}

export function lengthStats(values: number[]): LengthStats {
  if (values.length === 0) return { count: 0, p50: 0, p95: 0, max: 0 };
  const sorted = [...values].sort((a, b) => a - b);
  const at = (q: number): number => sorted[Math.min(sorted.length - 1, Math.ceil(q * sorted.length) - 1)];
  return { count: sorted.length, p50: at(0.5), p95: at(0.95), max: sorted[sorted.length - 1] };
}
