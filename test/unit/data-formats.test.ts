// Pure TypeScript parts of the data pipeline: reading, formats, <think> splitting, heuristics, templates, packing.
import { gzipSync } from "node:zlib";
import { describe, expect, it } from "vitest";
import { detectFormat, normalizeRecord, splitThink } from "../../src/data/formats.js";
import { lineAndColumn, locateJsonError, topLevelArrayElementOffsets } from "../../src/data/json-locate.js";
import { packExamples, splitValidation, type TokenizedExample } from "../../src/data/pack.js";
import { parseDataFile } from "../../src/data/read.js";
import { builtinTemplates, ChatTemplate, partsToText } from "../../src/data/templates.js";
import { answerOnlyInReasoningReason, dominantScript, languageMismatchReason, loopingReason, outlierThreshold } from "../../src/data/warnings.js";
import { parseDataOptions } from "../../src/data/options.js";

const fileOf = (text: string, name = "d.jsonl") => ({ name, bytes: Buffer.from(text, "utf8") });

describe("JSON reading", () => {
  it("locates syntax errors that JSON.parse does not place", () => {
    for (const [text, offset] of [
      ['{"a":}', 5],
      ['{"a": tru}', 6],
      ['{"a": 1,}', 8],
      ['{"a": "x" "b": 1}', 10],
      ['{"a": "unterminated', 19],
      ["[1, 2,]", 6],
      ['{"a": 1} x', 9],
      ['{a: 1}', 1],
    ] as const) {
      expect(locateJsonError(text)?.offset, text).toBe(offset);
      expect(() => JSON.parse(text)).toThrow();
    }
    for (const valid of ['{"a": [1, -2.5e3, true, false, null, "x\\u00e9\\n"]}', "[]", " 3 "]) expect(locateJsonError(valid)).toBeUndefined();
    expect(lineAndColumn("ab\ncd\nef", 7)).toEqual({ line: 3, column: 2 });
    expect(topLevelArrayElementOffsets('[\n {"a": [1, {"b": "],"}]},\n 2\n]')).toEqual([3, 29]);
  });

  it("reads JSONL with blank lines, CRLF and a BOM, reporting bad lines with line and column", () => {
    const text = '\uFEFF{"query": "q1", "response": "a"}\r\n\n{"query": "q2", "response": }\r\n   \n{"query": "q3", "response": "c"}\n';
    const { records, issues } = parseDataFile(fileOf(text));
    expect(records.map((record) => record.line)).toEqual([1, 5]);
    expect(issues).toEqual([{ file: "d.jsonl", line: 3, column: 29, kind: "invalid-json", message: expect.stringContaining("expected a JSON value") }]);
  });

  it("reads JSON arrays with each element's line, and gzip", () => {
    const text = '[\n  {"query": "q1", "response": "a"},\n\n  {"query": "q2",\n   "response": "b"}\n]\n';
    for (const file of [fileOf(text, "d.json"), { name: "d.json.gz", bytes: gzipSync(Buffer.from(text)) }]) {
      const { records, issues } = parseDataFile(file);
      expect(issues).toEqual([]);
      expect(records.map((record) => [record.line, (record.value as { query: string }).query])).toEqual([
        [2, "q1"],
        [4, "q2"],
      ]);
    }
    const broken = parseDataFile(fileOf('[\n {"query": "q1"},\n {"query" "q2"}\n]', "b.json"));
    expect(broken.issues).toEqual([expect.objectContaining({ line: 3, column: 11, kind: "invalid-json" })]);
  });
});

describe("formats", () => {
  const record = (value: unknown, line = 1) => ({ file: "f.jsonl", line, value });
  const turnsOf = (value: unknown) => normalizeRecord(record(value), undefined, detectFormat(value)).conversation?.turns;

  it("brings every format to one conversation shape, reasoning apart from the answer", () => {
    const expected = [
      { role: "user", content: "Q" },
      { role: "assistant", content: "A", reasoning: "R", emptyReasoning: false },
    ];
    expect(turnsOf({ query: "Q", response: "<think>\nR\n</think>\n\nA" })).toEqual(expected);
    expect(turnsOf({ prompt: "Q", completion: "A", reasoning_content: "R" })).toEqual(expected);
    expect(turnsOf({ instruction: "Q", output: "<think>R</think>A" })).toEqual(expected);
    expect(turnsOf({ messages: [{ role: "user", content: "Q" }, { role: "assistant", content: "A", reasoning: "R" }] })).toEqual(expected);
    expect(turnsOf({ conversation: [{ role: "user", content: "Q" }, { role: "assistant", content: "A", thinking: "R" }] })).toEqual(expected);
    expect(turnsOf({ conversations: [{ from: "human", value: "Q" }, { from: "gpt", value: "<think>R</think>A" }] })).toEqual(expected);
    expect(turnsOf({ instruction: "Do", input: "this", output: "A", system: "S" })).toEqual([
      { role: "system", content: "S" },
      { role: "user", content: "Do\n\nthis" },
      { role: "assistant", content: "A", reasoning: undefined, emptyReasoning: false },
    ]);
  });

  it("names what is wrong with a record", () => {
    const issue = (value: unknown, fileFormat = detectFormat(value)) => normalizeRecord(record(value, 7), undefined, fileFormat).issue;
    expect(issue({ foo: 1 })).toMatchObject({ line: 7, kind: "unknown-format", message: expect.stringContaining("keys: foo") });
    expect(issue({ query: "q" }, "query-response")).toMatchObject({ kind: "missing-field", message: expect.stringContaining('missing "response"') });
    expect(issue({ query: 3, response: "a" })).toMatchObject({ kind: "non-string-content", message: expect.stringContaining('"query" is a number') });
    expect(issue({ messages: [{ role: "assistant", content: "a" }] })).toMatchObject({ kind: "role-order" });
    expect(issue({ messages: [{ role: "user", content: "q" }, { role: "system", content: "s" }, { role: "assistant", content: "a" }] })).toMatchObject({ kind: "role-order", message: expect.stringContaining("system message may only come first") });
    expect(issue({ messages: [{ role: "user", content: "q" }] })).toMatchObject({ kind: "role-order", message: expect.stringContaining("ends with a user turn") });
    expect(issue({ query: "q", response: "<think>r</think>  " })).toMatchObject({ kind: "empty-answer" });
    expect(issue({ query: "q", response: "<think>r</think>a", reasoning_content: "r" })).toMatchObject({ kind: "reasoning-twice" });
    expect(issue({ messages: [{ role: "user", content: ["q"] }, { role: "assistant", content: "a" }] })).toMatchObject({ kind: "non-string-content", message: expect.stringContaining("messages[0]") });
  });

  it("rejects unpaired, nested, repeated and misplaced <think> tags", () => {
    const problem = (content: string) => {
      try {
        splitThink(content, "response");
        return undefined;
      } catch (error) {
        return (error as Error).message;
      }
    };
    expect(problem("<think>r</think>a")).toBeUndefined();
    expect(problem("r</think>a")).toContain("</think> without <think>");
    expect(problem("<think>r a")).toContain("<think> without </think>");
    expect(problem("<think>r <think>s</think> t</think>a")).toContain("nested");
    expect(problem("<think>r</think>a<think>s</think>b")).toContain("expected one reasoning block");
    expect(problem("hi <think>r</think>a")).toContain("text before <think>");
    expect(splitThink("<think>\n \n</think>\n\nA", "x")).toEqual({ reasoning: undefined, answer: "A", emptyReasoning: true });
  });
});

describe("warnings", () => {
  it("finds looping reasoning, in sentences and in long passages, in English and in CJK", () => {
    const sentence = "Let me add the two numbers again to be sure. ";
    expect(loopingReason(`Start. ${sentence.repeat(4)}Done.`)).toContain("appears 4 or more times");
    expect(loopingReason(`Start. ${sentence.repeat(3)}Done.`)).toBeUndefined();
    const passage = "we carry the one and then we add the tens and then the hundreds column carefully";
    expect(loopingReason(`${passage}, ${passage}; ${passage}, ${passage}`)).toContain("repeats 4 or more times");
    expect(loopingReason("先把两个数相加，得到结果以后再检查一遍是否正确，然后继续计算下一步的数值".repeat(4))).toContain("4 or more");
    expect(loopingReason("The baker makes 24 muffins per batch. Total made: 24 × 5 = 120 muffins. So 23 muffins are left.")).toBeUndefined();
  });

  it("tells languages apart by script, Japanese by its kana", () => {
    expect(dominantScript("りんごが1箱に12個入っています。何個残っていますか？")).toBe("ja");
    expect(dominantScript("一本书有180页，小明每天读15页，他需要多少天才能读完？")).toBe("zh");
    expect(dominantScript("How many centimeters are in 3.5 meters?")).toBe("latin");
    expect(dominantScript("3 × 4 = 12")).toBeUndefined();
    expect(languageMismatchReason("りんごが1箱に12個入っています。何個残っていますか？", "一箱有12个苹果，四箱一共是48个，吃了7个，还剩41个。")).toContain("question is in Japanese but the reasoning is in Chinese");
    expect(languageMismatchReason("How many centimeters are in 3.5 meters?", "One meter is 100 centimeters, so 3.5 meters is 350 centimeters.")).toBeUndefined();
  });

  it("notices a result that only the reasoning states", () => {
    expect(answerOnlyInReasoningReason("24 × 5 = 120. So 23 muffins are left.", "See the reasoning above.")).toContain('"23"');
    expect(answerOnlyInReasoningReason("24 × 5 = 120. So 23 muffins are left.", "**23 muffins** are left.")).toBeUndefined();
    expect(answerOnlyInReasoningReason("The sum is \\boxed{1,250}. Checking: fine.", "It is 1250.")).toBeUndefined();
    expect(answerOnlyInReasoningReason("The sum is \\boxed{42}.", "It is large.")).toContain('"42"');
  });

  it("puts the outlier threshold far above the bulk", () => {
    expect(outlierThreshold([10, 11, 12, 13])).toBeUndefined();
    const threshold = outlierThreshold([40, 42, 45, 50, 52, 55, 60, 61, 65, 70])!;
    expect(threshold).toBeGreaterThan(150);
    expect(threshold).toBeLessThan(300);
  });
});

describe("built-in templates", () => {
  const bos = { bos: "<BOS>", eos: "<EOS>" };
  it("r1 opens <think> and ends a turn with end-of-sentence; chatml and llama3 end turns with their own tokens", () => {
    const r1 = new ChatTemplate("built-in r1", builtinTemplates.r1);
    expect(r1.opensThinking).toBe(true);
    expect(partsToText(r1.turnEnd, bos)).toBe("<｜end▁of▁sentence｜>");
    const history = [
      { role: "system" as const, content: "Be brief." },
      { role: "user" as const, content: "Hi" },
      { role: "assistant" as const, content: "Hello" },
      { role: "user" as const, content: "2+2?" },
    ];
    expect(partsToText(r1.render(history, true), bos)).toBe("<BOS>Be brief.<｜User｜>Hi<｜Assistant｜>Hello<｜end▁of▁sentence｜><｜User｜>2+2?<｜Assistant｜><think>\n");
    const chatml = new ChatTemplate("built-in chatml", builtinTemplates.chatml);
    expect(chatml.opensThinking).toBe(false);
    expect(partsToText(chatml.turnEnd, bos)).toBe("<|im_end|>");
    expect(partsToText(chatml.render(history.slice(1, 2), true), bos)).toBe("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n");
    const llama3 = new ChatTemplate("built-in llama3", builtinTemplates.llama3);
    expect(partsToText(llama3.turnEnd, bos)).toBe("<|eot_id|>");
  });

  it("keeps message text apart from template text, so it is never parsed for special tokens", () => {
    const r1 = new ChatTemplate("built-in r1", builtinTemplates.r1);
    expect(r1.render([{ role: "user", content: "say <｜User｜>" }], true)).toEqual([
      { type: "bos" },
      { type: "template", text: "<｜User｜>" },
      { type: "content", text: "say <｜User｜>" },
      { type: "template", text: "<｜Assistant｜><think>\n" },
    ]);
  });
});

describe("options", () => {
  it("fills defaults and names the bad field", () => {
    expect(parseDataOptions({ data: "x.jsonl" })).toMatchObject({ trainOn: "last", think: "auto", onInvalid: "error", maxLength: 4096, truncate: false, strict: false, seed: 0, maxReportedIssues: 100 });
    expect(() => parseDataOptions({ data: "x.jsonl", maxLength: 2.5 })).toThrow(/maxLength/);
    expect(() => parseDataOptions({ data: "x.jsonl", think: "maybe" as never })).toThrow(/think/);
    expect(() => parseDataOptions({ data: "x.jsonl", bogus: 1 } as never)).toThrow(/bogus/);
  });
});

describe("packing", () => {
  const example = (source: string, tokens: number[], lossFrom: number): TokenizedExample => ({ source, tokens: Int32Array.from(tokens), lossFrom });

  it("packs first-fit decreasing, with targets only from lossFrom and never across sequences", () => {
    const examples = [example("a:1", [1, 2, 3], 1), example("b:1", [4, 5, 6, 7, 8, 9], 4), example("c:1", [10, 11], 0), example("d:1", [12, 13, 14, 15], 2)];
    const rows = packExamples(examples, 8);
    expect(rows.map((row) => row.sources)).toEqual([["b:1", "c:1"], ["d:1", "a:1"]]);
    expect(Array.from(rows[0].tokens)).toEqual([4, 5, 6, 7, 8, 9, 10, 11]);
    expect(Array.from(rows[0].seqStarts)).toEqual([0, 6]);
    // b: loss on positions 4.. (predicted from 3..4); c: lossFrom 0 → every next token
    expect(Array.from(rows[0].targets)).toEqual([-1, -1, -1, 8, 9, -1, 11, -1]);
    expect(Array.from(rows[1].tokens)).toEqual([12, 13, 14, 15, 1, 2, 3]);
    expect(Array.from(rows[1].targets)).toEqual([-1, 14, 15, -1, 2, 3, -1]);
    expect(() => packExamples([example("x:1", [1, 2, 3], 1)], 2)).toThrow(/x:1 has 3 tokens/);
  });

  it("splits deterministically by seed, a record's examples together", () => {
    const examples = Array.from({ length: 40 }, (_, i) => example(`f:${Math.floor(i / 2)}`, [i], 0));
    const first = splitValidation(examples, 0.25, 7);
    expect(first.validation).toHaveLength(10);
    expect(splitValidation(examples, 0.25, 7)).toEqual(first);
    expect(splitValidation(examples, 0.25, 8).validation).not.toEqual(first.validation);
    const held = new Set(first.validation.map((item) => item.source));
    expect(first.train.every((item) => !held.has(item.source))).toBe(true);
    expect(splitValidation(examples.slice(0, 4), 0.1, 7).validation).toEqual([]);
  });

  it("splits the same data the same way wherever its folder is", () => {
    const at = (root: string) =>
      Array.from({ length: 30 }, (_, i) => example(`${root}/${i % 2 ? "a.jsonl" : "sub/b.jsonl"}:${i + 1}`, [i], 0));
    const here = splitValidation(at("/home/me/data"), 0.2, 3).validation.map((item) => item.source.replace("/home/me/data/", ""));
    const there = splitValidation(at("/tmp/copy/of/it"), 0.2, 3).validation.map((item) => item.source.replace("/tmp/copy/of/it/", ""));
    expect(here).toHaveLength(6);
    expect(there).toEqual(here);
  });
});
