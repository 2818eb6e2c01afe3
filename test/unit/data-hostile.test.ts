// Hostile training data (issue 15, case 6): invalid UTF-8 is an error at file:line:column (or skipped with
// onInvalid "skip") instead of being trained on as U+FFFD; an empty file is an error naming it; a huge
// record is dropped without being tokenized (a valid 50 MB line took 51 s and 4 GB to be dropped).
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { gzipSync } from "node:zlib";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { DataError, formatIssue, inspectTrainingData, loadTrainingData, NoTrainingDataError } from "../../src/data/index.js";
import { firstInvalidUtf8, parseDataFile } from "../../src/data/read.js";
import { loadPartTokenizer, type PartTokenizer } from "../../src/data/tokenizer.js";
import { runCli } from "../helpers/cli.js";

const projectRoot = path.resolve(import.meta.dirname, "..", "..");
const tinyModel = path.join(projectRoot, "models", "tiny-r1.gguf");
let dir: string;
let tokenizer: PartTokenizer;
beforeAll(async () => {
  dir = await mkdtemp(path.join(tmpdir(), "thinktune-data-hostile-"));
  tokenizer = await loadPartTokenizer(tinyModel);
});
afterAll(async () => {
  await tokenizer?.dispose();
  await rm(dir, { recursive: true, force: true });
});

const record = (query: string, answer = "4") => JSON.stringify({ query, response: `<think>\nthinking about ${query}\n</think>\n\n${answer}` });
const bytesOf = (...parts: (string | number[])[]) => Buffer.concat(parts.map((part) => (typeof part === "string" ? Buffer.from(part) : Buffer.from(part))));

describe("invalid UTF-8", () => {
  it("finds the first byte that is not well-formed UTF-8", () => {
    expect(firstInvalidUtf8(Buffer.from("plain ascii, é, 中文, 😀"))).toBe(-1);
    expect(firstInvalidUtf8(bytesOf("ab", [0xff], "c"))).toBe(2);
    expect(firstInvalidUtf8(bytesOf("ab", [0xc3]))).toBe(2); // cut sequence
    expect(firstInvalidUtf8(bytesOf("a", [0xc0, 0xaf]))).toBe(1); // overlong '/'
    expect(firstInvalidUtf8(bytesOf("a", [0xed, 0xa0, 0x80]))).toBe(1); // a UTF-16 surrogate
    expect(firstInvalidUtf8(bytesOf("a", [0xf4, 0x90, 0x80, 0x80]))).toBe(1); // beyond U+10FFFF
    expect(firstInvalidUtf8(bytesOf("é", [0xe4, 0xb8]))).toBe(2);
  });

  it("reports each broken JSONL line at file:line:column and keeps the others", () => {
    const bytes = bytesOf(record("one"), "\n", '{"query": "tw', [0xe9], 'o", "response": "r"}\n', record("three"), "\n", [0x80], "\n");
    const { records, issues } = parseDataFile({ name: "mixed.jsonl", bytes });
    expect(records.map((r) => r.line)).toEqual([1, 3]);
    expect(issues.map(formatIssue)).toEqual(["mixed.jsonl:2:14: invalid UTF-8 (bytes e9 6f 22 2c); save the file as UTF-8", "mixed.jsonl:4:1: invalid UTF-8 (bytes 80); save the file as UTF-8"]);
    expect(issues.every((issue) => issue.kind === "invalid-utf8")).toBe(true);
  });

  it("reports a broken JSON-array file (or gzip) at the line of the bad byte", () => {
    const array = bytesOf("[\n", record("one"), ",\n", '{"query": "', [0xff, 0xfe], '", "response": "x"}\n]');
    expect(parseDataFile({ name: "a.json", bytes: array }).issues.map(formatIssue)).toEqual(["a.json:3:12: invalid UTF-8 (bytes ff fe 22 2c); save the file as UTF-8"]);
    const gz = gzipSync(bytesOf(record("one"), "\n", [0xc3, 0x28], "\n"));
    expect(parseDataFile({ name: "b.jsonl.gz", bytes: gz }).issues.map(formatIssue)).toEqual(["b.jsonl.gz:2:1: invalid UTF-8 (bytes c3 28); save the file as UTF-8"]);
  });

  it("stops training with the location, or trains on the rest with onInvalid skip", async () => {
    const file = path.join(dir, "latin1.jsonl");
    await writeFile(file, bytesOf(record("what is 2+2?"), "\n", '{"query": "caf', [0xe9], '", "response": "<think>\\nr\\n</think>\\n\\na"}\n'));
    const error = await loadTrainingData(tinyModel, { data: file, cacheDir: false }).catch((reason: unknown) => reason);
    expect(error).toBeInstanceOf(DataError);
    expect((error as DataError).message).toContain(`${file}:2:15: invalid UTF-8 (bytes e9 22 2c 20)`);
    const { train, report } = await inspectTrainingData(tinyModel, { data: file, cacheDir: false, onInvalid: "skip" }, { tokenizer });
    expect(train.map((example) => example.source)).toEqual([`${file}:1`]);
    expect(report.dropped.invalid).toBe(1);
  });
});

describe("empty data files", () => {
  it("is an error naming the file, whether empty, blank or an empty array", () => {
    for (const [name, text] of [["empty.jsonl", ""], ["blank.jsonl", "\n  \n\r\n"], ["none.json", " [ ] "]] as const) {
      const { records, issues } = parseDataFile({ name, bytes: Buffer.from(text) });
      expect(records).toEqual([]);
      expect(issues.map(formatIssue)).toEqual([`${name}:1: the file holds no records (it is empty, blank or an empty array); add examples or leave it out`]);
    }
  });

  it("fails loadTrainingData and `data check` (exit code 1) naming the file", async () => {
    const empty = path.join(dir, "empty.jsonl");
    await writeFile(empty, "");
    const error = await loadTrainingData(tinyModel, { data: empty, cacheDir: false }).catch((reason: unknown) => reason);
    expect((error as Error).message).toContain(`${empty}:1: the file holds no records`);
    const skipped = await loadTrainingData(tinyModel, { data: empty, cacheDir: false, onInvalid: "skip" }).catch((reason: unknown) => reason);
    expect(skipped).toBeInstanceOf(NoTrainingDataError);
    const result = await runCli(["data", "check", "--model", tinyModel, "--data", empty, "--no-cache"]);
    expect(result.code, result.stderr).toBe(1);
    expect(result.stdout).toContain(`${empty}:1: the file holds no records`);
  });
});

describe("a huge record", () => {
  it("is dropped as too long without being tokenized or scanned, in memory a small multiple of its size", async () => {
    // 50 MB of varied words in one valid line, then a normal record
    const words = Array.from({ length: 4000 }, (_, i) => `w${(i * 7919) % 10007}`);
    const reasoning = Array.from({ length: Math.ceil(50e6 / 24000) }, (_, i) => words.slice((i * 13) % 3000, ((i * 13) % 3000) + 1000).join(" ")).join("\n");
    const file = path.join(dir, "huge.jsonl");
    await writeFile(file, `${JSON.stringify({ query: "q", response: `<think>\n${reasoning}\n</think>\n\nok` })}\n${record("2+2")}\n`);
    const asked: number[] = [];
    const watching: PartTokenizer = {
      tokenizePrompt: (parts) => tokenizer.tokenizePrompt(parts),
      tokenizeCompletion: (text) => (asked.push(text.length), tokenizer.tokenizeCompletion(text)),
      countTokens: (text) => (asked.push(text.length), tokenizer.countTokens(text)),
      dispose: async () => {},
    };
    const rssBefore = process.memoryUsage().rss;
    const started = performance.now();
    const { train, report } = await inspectTrainingData(tinyModel, { data: file, cacheDir: false }, { tokenizer: watching });
    const seconds = (performance.now() - started) / 1000;
    const grownBytes = process.memoryUsage().rss - rssBefore;
    expect(train.map((example) => example.source)).toEqual([`${file}:2`]);
    expect(report.dropped).toMatchObject({ tooLong: 1, longestIsLowerBound: true, maxLength: 4096 });
    expect(report.dropped.longest).toBeGreaterThan(4096);
    expect(report.warnings.filter((warning) => warning.line === 1)).toEqual([]);
    expect(Math.max(...asked)).toBeLessThan(1000);
    expect(grownBytes, `RSS grew by ${(grownBytes / 1e6).toFixed(0)} MB`).toBeLessThan(10 * 50e6);
    expect(seconds).toBeLessThan(30);
  });
});
