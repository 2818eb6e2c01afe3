// The whole data pipeline on the embedded tiny R1 model: every check at its line, the length limit, the split,
// and the tokenized cache (hit on the second run, missed when any input changes).
import { execFile } from "node:child_process";
import { mkdir, mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { pathToFileURL } from "node:url";
import { promisify } from "node:util";
import { gzipSync } from "node:zlib";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { DataError, DataTemplateError, inspectTrainingData, loadTrainingData, type DataIssue, type DataOptions } from "../../src/data/index.js";
import { defaultCacheDir } from "../../src/data/cache.js";
import { resolveChatTemplate } from "../../src/data/templates.js";
import { loadPartTokenizer, type PartTokenizer } from "../../src/data/tokenizer.js";
import { formatDataReport } from "../../src/cli/data.js";
import { synthModel } from "../helpers/models.js";

const projectRoot = path.resolve(import.meta.dirname, "..", "..");
const tinyModel = path.join(projectRoot, "models", "tiny-r1.gguf");
let dir: string;
let tokenizer: PartTokenizer;

beforeAll(async () => {
  dir = await mkdtemp(path.join(tmpdir(), "thinktune-data-"));
  tokenizer = await loadPartTokenizer(tinyModel);
});
afterAll(async () => {
  await tokenizer?.dispose();
  await rm(dir, { recursive: true, force: true });
});

const good = (query: string, reasoning: string, answer: string) => JSON.stringify({ query, response: `<think>\n${reasoning}\n</think>\n\n${answer}` });
const steps = (count: number) => Array.from({ length: count }, (_, i) => `Step ${i}: take ${i * 7 + 3} and add ${i * 3 + 1}.`).join(" ");

async function writeLines(name: string, lines: string[]): Promise<string> {
  const file = path.join(dir, name);
  await writeFile(file, `${lines.join("\n")}\n`);
  return file;
}

/** The error a promise rejects with (fails the test when it resolves). */
async function rejection(promise: Promise<unknown>): Promise<DataError> {
  const outcome = await promise.then(
    () => undefined,
    (error: unknown) => error,
  );
  expect(outcome).toBeInstanceOf(DataError);
  return outcome as DataError;
}

const at = (issues: DataIssue[], line: number) => issues.filter((issue) => issue.line === line).map((issue) => issue.kind);

describe("checks", () => {
  let badFile: string;
  beforeAll(async () => {
    badFile = await writeLines("bad.jsonl", [
      good("What is 2+2?", "2 plus 2 is 4.", "The answer is 4."), // 1
      '{"query": "x", "response": "y"', // 2 invalid JSON
      JSON.stringify({ question: "x", answer: "y" }), // 3 unknown format
      JSON.stringify({ messages: [{ role: "assistant", content: "a" }, { role: "user", content: "q" }] }), // 4 role order
      JSON.stringify({ query: "q", response: "<think>\nr\n</think>\n\n" }), // 5 empty answer
      JSON.stringify({ query: ["q"], response: "<think>r</think>a" }), // 6 non-string content
      JSON.stringify({ query: "q" }), // 7 missing field
      JSON.stringify({ query: "q", response: "<think>r a" }), // 8 unpaired
      JSON.stringify({ query: "q", response: "<think>r <think>s</think> t</think>a" }), // 9 nested
      JSON.stringify({ query: "q", response: "<think>\n\n</think>\n\nA" }), // 10 empty reasoning
      JSON.stringify({ query: "q", response: "just an answer" }), // 11 missing reasoning
      JSON.stringify({ query: "q", response: "<think>r</think>a", reasoning_content: "r" }), // 12 reasoning twice
      good("Add them all.", steps(60), "Done: the sum is 4321."), // 13 too long for maxLength 256
      good("What is 3+3?", "3 plus 3 is 6.", "The answer is 6."), // 14
    ]);
  });

  it("reports every invalid line, with its line (and column for JSON), without stopping at the first", async () => {
    const { report, train, validation } = await inspectTrainingData(tinyModel, { data: badFile, maxLength: 256, onInvalid: "skip", cacheDir: false }, { tokenizer });
    const expected: [number, string][] = [
      [2, "invalid-json"],
      [3, "unknown-format"],
      [4, "role-order"],
      [5, "empty-answer"],
      [6, "non-string-content"],
      [7, "missing-field"],
      [8, "think-tags"],
      [9, "think-tags"],
      [10, "empty-reasoning"],
      [11, "missing-reasoning"],
      [12, "reasoning-twice"],
    ];
    for (const [line, kind] of expected) expect(at(report.errors, line), `line ${line}`).toEqual([kind]);
    expect(report.errorCount).toBe(expected.length);
    expect(report.errors.find((issue) => issue.line === 2)).toMatchObject({ file: badFile, column: 31 });
    expect(report.errors.find((issue) => issue.line === 9)?.message).toContain("nested");
    expect(report.errors.find((issue) => issue.line === 8)?.message).toContain("unpaired");
    // too long: dropped, never cut, and the report says what length keeps it
    expect(report.dropped).toMatchObject({ invalid: expected.length, tooLong: 1, truncated: 0, maxLength: 256 });
    expect(report.dropped.longest).toBeGreaterThan(256);
    expect(report.dropped.lengthToKeepAll).toBe(report.dropped.longest);
    expect([...train, ...validation].map((example) => example.source).sort()).toEqual([`${badFile}:1`, `${badFile}:14`]);
    expect(report.records).toBe(14);
  });

  it("stops with a DataError listing every invalid line when onInvalid is error, capped by maxReportedIssues", async () => {
    const error = await rejection(loadTrainingData(tinyModel, { data: badFile, maxLength: 256, cacheDir: false }));
    expect(error.issues.map((issue) => issue.line)).toEqual([2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]);
    expect(error.message).toContain(`${badFile}:2:31: invalid JSON`);
    const capped = await rejection(loadTrainingData(tinyModel, { data: badFile, maxLength: 256, cacheDir: false, maxReportedIssues: 3 }));
    expect(capped.issues).toHaveLength(3);
    expect(capped.total).toBe(11);
    expect(capped.message).toContain("... and 8 more");
  });

  it("truncates instead of dropping only when asked", async () => {
    const { report, train, validation } = await inspectTrainingData(tinyModel, { data: badFile, maxLength: 256, truncate: true, onInvalid: "skip", cacheDir: false }, { tokenizer });
    expect(report.dropped).toMatchObject({ tooLong: 1, truncated: 1 });
    const cut = [...train, ...validation].find((example) => example.source === `${badFile}:13`)!;
    expect(cut.tokens.length).toBe(256);
  });

  it("allows answers without reasoning under think optional", async () => {
    const file = await writeLines("plain.jsonl", [JSON.stringify({ query: "Hi", response: "Hello." })]);
    const { report, train } = await inspectTrainingData(tinyModel, { data: file, think: "optional", cacheDir: false }, { tokenizer });
    expect(report.errorCount).toBe(0);
    expect(report.examples.withReasoning).toBe(0);
    expect(train).toHaveLength(1);
  });

  describe("warnings", () => {
    let warnFile: string;
    const normal = Array.from({ length: 10 }, (_, i) =>
      good(`A box holds ${i + 2} pens. How many pens are in 3 boxes?`, `Each box holds ${i + 2} pens. Three boxes hold 3 × ${i + 2} = ${3 * (i + 2)} pens.`, `There are ${3 * (i + 2)} pens.`),
    );
    beforeAll(async () => {
      warnFile = await writeLines("warn.jsonl", [
        ...normal, // 1-10
        good("Count again.", `${"Let me count the apples in the basket once more. ".repeat(5)}So 7.`, "There are 7 apples."), // 11 looping
        good("How far in total?", steps(25) + " So the total is 900.", "The total is 900 km."), // 12 outlier
        good("How many are left?", "24 × 5 = 120. So 23 muffins are left.", "See the reasoning above."), // 13 answer only in reasoning
        good("りんごが1箱に12個入っています。4箱では何個ですか？", "一箱有12个苹果，四箱一共是12乘以4，等于48个。", "48個です。"), // 14 language mismatch
        normal[0], // 15 duplicate of line 1
      ]);
    });

    it("warns by line with the reason, and counts each kind", async () => {
      const { report } = await inspectTrainingData(tinyModel, { data: warnFile, cacheDir: false }, { tokenizer });
      expect(report.errorCount).toBe(0);
      expect(at(report.warnings, 11)).toEqual(["looping-reasoning"]);
      expect(at(report.warnings, 12)).toEqual(["outlier-length"]);
      expect(at(report.warnings, 13)).toEqual(["answer-only-in-reasoning"]);
      expect(at(report.warnings, 14)).toEqual(["language-mismatch"]);
      expect(at(report.warnings, 15)).toEqual(["duplicate"]);
      expect(report.warnings.find((issue) => issue.line === 15)?.message).toContain(`${warnFile}:1`);
      for (let line = 1; line <= 10; line++) expect(at(report.warnings, line)).toEqual([]);
      expect(report.warningCounts).toEqual({ "looping-reasoning": 1, "outlier-length": 1, "answer-only-in-reasoning": 1, "language-mismatch": 1, duplicate: 1 });
      expect(report.examples.total).toBe(15);
    });

    it("makes them errors under strict", async () => {
      const error = await rejection(loadTrainingData(tinyModel, { data: warnFile, strict: true, cacheDir: false }));
      expect(error.issues.map((issue) => [issue.line, issue.kind])).toEqual([
        [11, "looping-reasoning"],
        [12, "outlier-length"],
        [13, "answer-only-in-reasoning"],
        [14, "language-mismatch"],
        [15, "duplicate"],
      ]);
    });
  });
});

describe("the sample data", () => {
  it("is clean: every example valid, with reasoning, no warnings", async () => {
    const { report } = await inspectTrainingData(tinyModel, { data: path.join(projectRoot, "examples", "data"), cacheDir: false }, { tokenizer });
    expect(report.errors).toEqual([]);
    expect(report.warnings).toEqual([]);
    expect(report.examples.total).toBeGreaterThanOrEqual(36);
    expect(report.examples.withReasoning).toBe(report.examples.total);
    expect(report.files.map((file) => path.basename(file.path))).toEqual(["en.jsonl", "ja.jsonl", "zh.jsonl"]);
    expect(report.think).toBe("required");
    expect(report.examples.validation).toBe(Math.floor(report.examples.total * 0.1));
  });

  it("trains on every assistant turn with train-on all, each with its earlier answers only", async () => {
    const file = await writeLines("multi.jsonl", [
      JSON.stringify({
        messages: [
          { role: "user", content: "What is 2+2?" },
          { role: "assistant", content: "<think>\n2 and 2 make 4.\n</think>\n\nIt is 4." },
          { role: "user", content: "And doubled?" },
          { role: "assistant", content: "<think>\n4 doubled is 8.\n</think>\n\nIt is 8." },
        ],
      }),
    ]);
    const last = await inspectTrainingData(tinyModel, { data: file, cacheDir: false }, { tokenizer, keepTexts: true });
    const all = await inspectTrainingData(tinyModel, { data: file, trainOn: "all", cacheDir: false }, { tokenizer, keepTexts: true });
    expect(last.rendered).toHaveLength(1);
    expect(all.rendered).toHaveLength(2);
    expect(all.rendered![1]).toEqual(last.rendered![0]);
    expect(last.rendered![0].prompt).toBe("<｜begin▁of▁sentence｜><｜User｜>What is 2+2?<｜Assistant｜>It is 4.<｜end▁of▁sentence｜><｜User｜>And doubled?<｜Assistant｜><think>\n");
    expect(last.rendered![0].completion).toBe("4 doubled is 8.\n</think>\n\nIt is 8.<｜end▁of▁sentence｜>");
    expect(all.rendered![0].completion).toBe("2 and 2 make 4.\n</think>\n\nIt is 4.<｜end▁of▁sentence｜>");
  });
});

describe("inputs", () => {
  it("reads folders (gzip and JSON arrays too, dot-folders skipped) and takes validation from --val-data", async () => {
    const folder = path.join(dir, "folder");
    await mkdir(path.join(folder, "nested"), { recursive: true });
    await mkdir(path.join(folder, ".thinktune-cache"), { recursive: true });
    const record = (i: number) => ({ instruction: `What is ${i} + 1?`, output: `<think>\n${i} plus 1 is ${i + 1}.\n</think>\n\nIt is ${i + 1}.` });
    await writeFile(path.join(folder, "a.json"), JSON.stringify([record(1), record(2)], null, 2));
    await writeFile(path.join(folder, "nested", "b.jsonl.gz"), gzipSync(`${JSON.stringify(record(3))}\n${JSON.stringify(record(4))}\n`));
    await writeFile(path.join(folder, ".thinktune-cache", "c.jsonl"), "not data");
    await writeFile(path.join(folder, "notes.txt"), "not data");
    const valFile = await writeLines("val.jsonl", [good("What is 9 + 1?", "9 plus 1 is 10.", "It is 10.")]);
    const { train, validation, report } = await inspectTrainingData(tinyModel, { data: folder, valData: valFile, cacheDir: false }, { tokenizer });
    expect(report.errors).toEqual([]);
    expect(train.map((example) => example.source)).toEqual([`${folder}/a.json:2`, `${folder}/a.json:6`, `${folder}/nested/b.jsonl.gz:1`, `${folder}/nested/b.jsonl.gz:2`]);
    expect(validation.map((example) => example.source)).toEqual([`${valFile}:1`]);
    expect(report.files.map((file) => [path.basename(file.path), file.format, file.role])).toEqual([
      ["a.json", "alpaca", "train"],
      ["b.jsonl.gz", "alpaca", "train"],
      ["val.jsonl", "query-response", "validation"],
    ]);
  });

  it("labels a file that mixes formats as mixed, with the count of each, not by its first record", async () => {
    const alpaca = (i: number) => JSON.stringify({ instruction: `What is ${i} + 2?`, output: `<think>\n${i} plus 2 is ${i + 2}.\n</think>\n\nIt is ${i + 2}.` });
    const file = await writeLines("mixed.jsonl", [good("What is 1 + 1?", "1 plus 1 is 2.", "It is 2."), alpaca(1), alpaca(2), alpaca(3)]);
    const { report } = await inspectTrainingData(tinyModel, { data: file, cacheDir: false }, { tokenizer });
    expect(report.errors).toEqual([]);
    expect(report.files[0]).toMatchObject({ format: undefined, formats: { "query-response": 1, alpaca: 3 } });
    expect(formatDataReport(report)).toContain("mixed.jsonl: 4 records (mixed: alpaca 3, query-response 1)");
  });

  it("counts how many examples each max length keeps whole, up to the model's context length", async () => {
    const file = await writeLines("lengths.jsonl", [60, 400, 700, 1500].map((count, i) => good(`Question ${i}?`, steps(Math.ceil(count / 12)), `Answer ${i}.`)));
    const all = await inspectTrainingData(tinyModel, { data: file, maxLength: 4096, valSplit: 0, cacheDir: false }, { tokenizer });
    const lengths = all.train.map((example) => example.tokens.length);
    expect(lengths).toHaveLength(4);
    const { report } = await inspectTrainingData(tinyModel, { data: file, maxLength: 1000, valSplit: 0, cacheDir: false }, { tokenizer });
    expect(report.contextLength).toBe(4096);
    expect(report.validExamples).toBe(4);
    const expected = [512, 1000, 1024, 2048, 4096].map((maxLength) => ({ maxLength, kept: lengths.filter((length) => length <= maxLength).length }));
    expect(report.keptByLength).toEqual(expected);
    expect(new Set(expected.map((row) => row.kept)).size).toBeGreaterThan(2); // the lengths tell the limits apart
    expect(report.keptByLength.find((row) => row.maxLength === 1000)!.kept).toBe(report.examples.total);
    expect(formatDataReport(report)).toContain(
      `examples kept whole of 4, by max-length (context length 4096): ${expected.map(({ maxLength, kept }) => `${maxLength}${maxLength === 1000 ? " (now)" : ""}: ${kept}`).join(", ")}`,
    );
  });

  it("needs a chat template: the model's, or a named built-in", async () => {
    const file = await writeLines("one.jsonl", [good("What is 1 + 1?", "1 plus 1 is 2.", "It is 2.")]);
    expect(() => resolveChatTemplate(undefined, undefined, "base.gguf")).toThrow(DataTemplateError);
    expect(() => resolveChatTemplate("", undefined, "base.gguf")).toThrow(/base\.gguf has no chat template \(tokenizer\.chat_template\); name one with --template r1\|chatml\|llama3/);
    expect(() => resolveChatTemplate("{% for %}", undefined, "base.gguf")).toThrow(/chat template \(tokenizer\.chat_template\) does not parse/);
    const { report } = await inspectTrainingData(tinyModel, { data: file, template: "chatml", cacheDir: false }, { tokenizer });
    expect(report.template).toEqual({ source: "built-in chatml", opensThinking: false });
    expect(report.think).toBe("optional");
    await expect(inspectTrainingData(tinyModel, { data: path.join(dir, "absent.jsonl"), cacheDir: false })).rejects.toThrow(/absent\.jsonl does not exist/);
  });
});

describe("tokenized cache", () => {
  /** A tokenizer that counts how many texts it tokenizes. */
  function countingTokenizer(): PartTokenizer & { calls: number } {
    const counting = {
      calls: 0,
      tokenizePrompt: (parts: Parameters<PartTokenizer["tokenizePrompt"]>[0]) => (counting.calls++, tokenizer.tokenizePrompt(parts)),
      tokenizeCompletion: (text: string) => (counting.calls++, tokenizer.tokenizeCompletion(text)),
      countTokens: (text: string) => (counting.calls++, tokenizer.countTokens(text)),
      dispose: async () => {},
    };
    return counting;
  }

  it("lives beside the data by default, and in the user's cache folder for data inside node_modules", () => {
    const saved = process.env.XDG_CACHE_HOME;
    process.env.XDG_CACHE_HOME = path.join(dir, "xdg");
    try {
      expect(defaultCacheDir(path.join(dir, "data", "a.jsonl"))).toBe(path.join(dir, "data", ".thinktune-cache"));
      expect(defaultCacheDir(path.join(dir, "app", "node_modules", "thinktune", "examples", "data"))).toBe(path.join(dir, "xdg", "thinktune", "data"));
    } finally {
      if (saved === undefined) delete process.env.XDG_CACHE_HOME;
      else process.env.XDG_CACHE_HOME = saved;
    }
  });

  it("is hit on the second run and missed when the data, template, options or vocabulary change", async () => {
    const cacheDir = path.join(dir, "cache");
    const dataFile = await writeLines("cached.jsonl", Array.from({ length: 12 }, (_, i) => good(`What is ${i} + ${i}?`, `${i} plus ${i} is ${2 * i}.`, `It is ${2 * i}.`)));
    const base: DataOptions = { data: dataFile, cacheDir };
    const run = async (options: DataOptions, model = tinyModel) => {
      const counting = countingTokenizer();
      const result = await inspectTrainingData(model, options, { tokenizer: model === tinyModel ? counting : undefined });
      return { ...result, tokenized: counting.calls };
    };
    const first = await run(base);
    expect(first.report.cache.hit).toBe(false);
    expect(first.tokenized).toBeGreaterThan(0);
    const second = await run(base);
    expect(second.report.cache).toEqual({ ...first.report.cache, hit: true });
    expect(second.tokenized).toBe(0);
    expect(second.train).toEqual(first.train);
    expect(second.validation).toEqual(first.validation);
    expect({ ...second.report, cache: undefined }).toEqual({ ...first.report, cache: undefined });

    // each change prepares its inputs; the first run with them misses, the next one hits
    const changes: [string, () => Promise<{ options: DataOptions; model?: string }>][] = [
      ["options: maxLength", async () => ({ options: { ...base, maxLength: 1000 } })],
      ["options: seed", async () => ({ options: { ...base, seed: 5 } })],
      ["options: think", async () => ({ options: { ...base, think: "optional" } })],
      ["template", async () => ({ options: { ...base, template: "chatml" } })],
      ["vocabulary", async () => ({ options: base, model: await synthModel({ nLayer: 1, nEmbd: 64, nHead: 2, nHeadKv: 1, nFf: 128, nVocab: 1024, type: "F32" }) })],
      [
        "data bytes",
        async () => {
          await writeFile(dataFile, `${good("What is 20 + 20?", "20 plus 20 is 40.", "It is 40.")}\n`, { flag: "a" });
          return { options: base };
        },
      ],
    ];
    const keys = new Set([first.report.cache.key]);
    for (const [what, prepare] of changes) {
      const { options, model } = await prepare();
      const changed = await run(options, model);
      expect(changed.report.cache.hit, what).toBe(false);
      keys.add(changed.report.cache.key);
      expect((await run(options, model)).report.cache.hit, `${what}: second run`).toBe(true);
    }
    expect(keys.size).toBe(changes.length + 1);
  });

  it("lets training start from the cache without loading node-llama-cpp's binary", async () => {
    const cacheDir = path.join(dir, "cache-child");
    const script = path.join(dir, "load-from-cache.mts");
    await writeFile(
      script,
      `import { loadTrainingData } from ${JSON.stringify(pathToFileURL(path.join(projectRoot, "src", "data", "index.ts")).href)};\n` +
        `const { train, report } = await loadTrainingData(${JSON.stringify(tinyModel)}, { data: ${JSON.stringify(path.join(projectRoot, "examples", "data"))}, cacheDir: ${JSON.stringify(cacheDir)} });\n` +
        "const native = process.report.getReport().sharedObjects.filter((file) => file.includes(\"node-llama-cpp\"));\n" +
        "console.log(JSON.stringify({ hit: report.cache.hit, examples: train.length, native: native.length }));\n",
    );
    const load = async () => {
      const { stdout } = await promisify(execFile)(process.execPath, ["--import", "tsx", script], { cwd: projectRoot });
      return JSON.parse(stdout.trim().split("\n").at(-1)!) as { hit: boolean; examples: number; native: number };
    };
    const first = await load();
    expect(first.hit).toBe(false);
    expect(first.native).toBeGreaterThan(0);
    const second = await load();
    expect(second).toEqual({ hit: true, examples: first.examples, native: 0 });
  });
});
