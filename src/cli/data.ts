// `thinktune data check|show --model M --data D`: what the trainer would see, before training.
import { Command, InvalidArgumentError, Option } from "commander";
import { formatIssue, inspectTrainingData, type DataOptions, type DataReport, type LengthStats } from "../data/index.js";
import { builtinTemplateNames, dataFormats } from "../data/options.js";
import { modelSourceHelp, resolveModelSource } from "./model-source.js";
import { userCommand } from "./user-command.js";

/** Flags shared by every command that reads training data (data check/show, train). */
export interface DataFlags {
  data: string[];
  valData?: string[];
  valSplit?: number;
  format?: DataOptions["format"];
  template?: DataOptions["template"];
  trainOn?: "last" | "all";
  think?: "required" | "optional" | "auto";
  onInvalid?: "error" | "skip";
  maxLength?: number;
  truncate?: boolean;
  strict?: boolean;
  seed?: number;
  cacheDir?: string;
  cache?: boolean;
  maxReportedIssues?: number;
}

const integer = (name: string) => (value: string): number => {
  if (!/^-?\d+$/.test(value)) throw new InvalidArgumentError(`${name} must be an integer, got "${value}"`);
  return Number(value);
};
const fraction = (value: string): number => {
  const number = Number(value);
  if (value.trim() === "" || !Number.isFinite(number) || number < 0 || number > 0.9) throw new InvalidArgumentError(`expected a fraction from 0 to 0.9, got "${value}"`);
  return number;
};

// Repeatable rather than variadic, so a positional argument may follow (`data show --data D 3`).
const collect = (value: string, previous: string[] | undefined): string[] => [...(previous ?? []), value];

/** Adds the training data flags to a command (the trainer's command uses them too). */
export function addDataFlags(command: Command): Command {
  return command
    .requiredOption("-d, --data <path>", "training data: a JSONL or JSON-array file (.gz too) or a folder of them; repeat for more", collect)
    .option("--val-data <path>", "validation data (instead of --val-split); repeat for more", collect)
    .option("--val-split <fraction>", "fraction held out for validation (default 0.1; 0 with fewer than 10 examples)", fraction)
    .addOption(new Option("--format <format>", "record format (default: detected per file)").choices([...dataFormats]))
    .addOption(new Option("--template <name>", "built-in chat template, for models without one (overrides the GGUF's)").choices([...builtinTemplateNames]))
    .addOption(new Option("--train-on <turns>", "last: the last assistant turn; all: every assistant turn with its history").choices(["last", "all"]))
    .addOption(new Option("--think <mode>", "reasoning per example (auto: required when the template opens <think>, as R1's does)").choices(["required", "optional", "auto"]))
    .addOption(new Option("--on-invalid <action>", "error: stop and list invalid examples; skip: drop them, still reported").choices(["error", "skip"]))
    .option("--max-length <tokens>", "longest example in tokens; longer ones are dropped (default 4096)", integer("--max-length"))
    .option("--truncate", "cut examples longer than --max-length instead of dropping them")
    .option("--strict", "treat warnings (looping reasoning, outliers, duplicates, ...) as errors")
    .option("--seed <n>", "seed of the validation split", integer("--seed"))
    .option("--cache-dir <dir>", "tokenized cache folder (default: .thinktune-cache next to the data; ~/.cache/thinktune/data for data inside node_modules)")
    .option("--no-cache", "neither read nor write the tokenized cache")
    .option("--max-reported-issues <n>", "list at most this many errors and warnings (default 100)", integer("--max-reported-issues"));
}

/** DataOptions from the parsed flags; flags not given keep the option defaults. */
export function dataOptionsFromFlags(flags: DataFlags): DataOptions {
  const options: DataOptions = { data: flags.data };
  if (flags.valData) options.valData = flags.valData;
  if (flags.valSplit !== undefined) options.valSplit = flags.valSplit;
  if (flags.format) options.format = flags.format;
  if (flags.template) options.template = flags.template;
  if (flags.trainOn) options.trainOn = flags.trainOn;
  if (flags.think) options.think = flags.think;
  if (flags.onInvalid) options.onInvalid = flags.onInvalid;
  if (flags.maxLength !== undefined) options.maxLength = flags.maxLength;
  if (flags.truncate) options.truncate = true;
  if (flags.strict) options.strict = true;
  if (flags.seed !== undefined) options.seed = flags.seed;
  if (flags.cache === false) options.cacheDir = false;
  else if (flags.cacheDir) options.cacheDir = flags.cacheDir;
  if (flags.maxReportedIssues !== undefined) options.maxReportedIssues = flags.maxReportedIssues;
  return options;
}

function lengthRow(name: string, stats: LengthStats): string {
  return `  ${name.padEnd(10)}${String(stats.p50).padStart(8)}${String(stats.p95).padStart(8)}${String(stats.max).padStart(8)}`;
}

export function formatDataReport(report: DataReport): string {
  const lines: string[] = [];
  lines.push(`template: ${report.template.source}${report.template.opensThinking ? " (opens <think>)" : ""}; reasoning ${report.think}`);
  for (const file of report.files) lines.push(`${file.role === "validation" ? "validation " : ""}file ${file.path}: ${file.records} records (${describeFileFormat(file)})`);
  lines.push(`records: ${report.records} (${report.validRecords} valid), turns: ${report.turns}`);
  lines.push(`examples: ${report.examples.total} (train ${report.examples.train}, validation ${report.examples.validation}), with reasoning: ${report.examples.withReasoning}`);
  lines.push(`tokens: train ${report.tokens.train} (${report.tokens.trainedTrain} with loss), validation ${report.tokens.validation}`);
  lines.push(`  ${"length".padEnd(10)}${"p50".padStart(8)}${"p95".padStart(8)}${"max".padStart(8)}`);
  lines.push(lengthRow("prompt", report.lengths.prompt), lengthRow("reasoning", report.lengths.reasoning), lengthRow("answer", report.lengths.answer), lengthRow("total", report.lengths.total));
  const dropped = report.dropped;
  const long =
    dropped.tooLong === 0
      ? "0 longer than max-length"
      : `${dropped.tooLong} longer than max-length ${dropped.maxLength} (${dropped.truncated > 0 ? `${dropped.truncated} truncated` : "dropped"}; the longest has ${dropped.longestIsLowerBound ? `at least ${dropped.longest} tokens, too many to count)` : `${dropped.longest} tokens: --max-length ${dropped.lengthToKeepAll} keeps them all)`}`;
  lines.push(`dropped: ${dropped.invalid} invalid, ${long}`);
  const keeps = report.keptByLength.map(({ maxLength, kept }) => `${maxLength}${maxLength === dropped.maxLength ? " (now)" : ""}: ${kept}`);
  lines.push(`examples kept whole of ${report.validExamples}, by max-length${report.contextLength === undefined ? "" : ` (context length ${report.contextLength})`}: ${keeps.join(", ")}`);
  const kinds = Object.entries(report.warningCounts).map(([kind, count]) => `${kind} ${count}`);
  lines.push(`warnings: ${report.warningCount}${kinds.length > 0 ? ` (${kinds.join(", ")})` : ""}`);
  for (const warning of report.warnings) lines.push(`  ${formatIssue(warning)}`);
  if (report.warningCount > report.warnings.length) lines.push(`  ... and ${report.warningCount - report.warnings.length} more`);
  lines.push(`errors: ${report.errorCount}`);
  for (const error of report.errors) lines.push(`  ${formatIssue(error)}`);
  if (report.errorCount > report.errors.length) lines.push(`  ... and ${report.errorCount - report.errors.length} more`);
  lines.push(`cache: ${report.cache.hit ? "hit" : report.cache.file ? "written" : "off"}${report.cache.file ? ` (${report.cache.file})` : ""}`);
  return `${lines.join("\n")}\n`;
}

const colors = { dim: "\x1b[2m", trained: "\x1b[32m", reset: "\x1b[0m" };

export function registerDataCommand(program: Command): void {
  const data = program.command("data").description("check and inspect training data as the trainer will see it");

  addDataFlags(
    data
      .command("check")
      .description("counts, token lengths, what is dropped and why, every error and warning (exit code 1 when there are errors)")
      .requiredOption("-m, --model <model>", `the base model (its vocabulary and chat template): ${modelSourceHelp}`)
      .option("--json", "print the report as JSON"),
  ).action(async (flags: DataFlags & { model: string; json?: boolean }) => {
    const options = dataOptionsFromFlags(flags);
    const { report } = await inspectTrainingData(await resolveModelSource(flags.model), options);
    process.stdout.write(flags.json ? `${JSON.stringify(report, null, 2)}\n` : formatDataReport(report));
    if (report.errorCount > 0 && (options.onInvalid ?? "error") === "error") process.exitCode = 1;
  });

  addDataFlags(
    data
      .command("show")
      .description("the rendered examples with the trained span marked (colour in a terminal, [[TRAIN]] markers in a pipe)")
      .argument("[n]", "show only example n (1-based, in file order)", integer("n"))
      .requiredOption("-m, --model <model>", `the base model (its vocabulary and chat template): ${modelSourceHelp}`)
      .option("--json", "one JSON line per example: source, prompt, completion, tokens, lossFrom"),
  ).action(async (n: number | undefined, flags: DataFlags & { model: string; json?: boolean }) => {
    const options = dataOptionsFromFlags(flags);
    const { rendered, report } = await inspectTrainingData(await resolveModelSource(flags.model), options, { keepTexts: true });
    const examples = rendered ?? [];
    if (n !== undefined && (n < 1 || n > examples.length)) {
      throw new InvalidArgumentError(`there ${examples.length === 1 ? "is 1 example" : `are ${examples.length} examples`}; pick n from 1 to ${examples.length}, got ${n}`);
    }
    const chosen = n === undefined ? examples : [examples[n - 1]];
    if (report.errorCount > 0) process.stderr.write(`note: ${report.errorCount} invalid record(s) not shown; run \`${userCommand("data", "check", "--model", flags.model, ...flags.data.flatMap((data) => ["--data", data]))}\` for the list\n`);
    const color = process.stdout.isTTY === true && !flags.json;
    for (const example of chosen) {
      if (flags.json) {
        const line = { source: example.source, prompt: example.prompt, completion: example.completion, tokens: Array.from(example.tokens), lossFrom: example.lossFrom };
        process.stdout.write(`${JSON.stringify(line)}\n`);
        continue;
      }
      const header = `=== ${example.source}: ${example.tokens.length} tokens, loss from token ${example.lossFrom} (${example.tokens.length - example.lossFrom} trained) ===`;
      const body = color
        ? `${colors.dim}${example.prompt}${colors.reset}${colors.trained}${example.completion}${colors.reset}`
        : `${example.prompt}[[TRAIN]]${example.completion}[[/TRAIN]]`;
      process.stdout.write(`${header}\n${body}\n\n`);
    }
  });
}

/** "messages", or "mixed: messages 30, alpaca 8" for a file whose records come in several formats. */
function describeFileFormat(file: DataReport["files"][number]): string {
  const counts = Object.entries(file.formats);
  if (counts.length > 1) return `mixed: ${counts.sort((a, b) => b[1] - a[1]).map(([format, count]) => `${format} ${count}`).join(", ")}`;
  return file.format ?? "format unknown";
}
