// Problems found in training data, each located as file:line(:column).

export type DataIssueKind =
  | "invalid-json"
  | "invalid-utf8"
  | "empty-file"
  | "unknown-format"
  | "missing-field"
  | "non-string-content"
  | "role-order"
  | "empty-answer"
  | "think-tags"
  | "empty-reasoning"
  | "missing-reasoning"
  | "reasoning-twice"
  | "too-long"
  | "read-error"
  // warnings (errors under --strict)
  | "looping-reasoning"
  | "outlier-length"
  | "answer-only-in-reasoning"
  | "language-mismatch"
  | "duplicate";

export interface DataIssue {
  file: string;
  line: number;
  column?: number;
  kind: DataIssueKind;
  message: string;
}

export function formatIssue(issue: DataIssue): string {
  const where = issue.column === undefined ? `${issue.file}:${issue.line}` : `${issue.file}:${issue.line}:${issue.column}`;
  return `${where}: ${issue.message}`;
}

/** Thrown when training data has invalid examples and onInvalid is "error"; lists every one (up to a cap). */
export class DataError extends Error {
  constructor(
    readonly issues: DataIssue[],
    /** how many there were in all (issues holds at most maxReportedIssues) */
    readonly total: number = issues.length,
  ) {
    const shown = issues.map((issue) => `  ${formatIssue(issue)}`).join("\n");
    const more = total > issues.length ? `\n  ... and ${total - issues.length} more` : "";
    super(
      `${total} invalid training example${total === 1 ? "" : "s"}:\n${shown}${more}\n` +
        `Fix them, or pass onInvalid "skip" (--on-invalid skip) to train without them.`,
    );
    this.name = "DataError";
  }
}
