// `thinktune data check` and `thinktune data show` on the sample data and the embedded tiny R1 model.
import { execFile } from "node:child_process";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

const run = promisify(execFile);
const projectRoot = path.resolve(import.meta.dirname, "..", "..");
const model = path.join("models", "tiny-r1.gguf");
const sampleData = path.join("examples", "data");
const cli = (...args: string[]) =>
  run(process.execPath, ["--import", "tsx", path.join(projectRoot, "src/cli/main.ts"), ...args], { cwd: projectRoot, maxBuffer: 64 << 20 }).then(
    ({ stdout, stderr }) => ({ code: 0, stdout, stderr }),
    (error: { code: number; stdout: string; stderr: string }) => ({ code: error.code, stdout: error.stdout, stderr: error.stderr }),
  );

let dir: string;
let badFile: string;
beforeAll(async () => {
  dir = await mkdtemp(path.join(tmpdir(), "thinktune-data-cli-"));
  badFile = path.join(dir, "bad.jsonl");
  await writeFile(
    badFile,
    [
      JSON.stringify({ query: "What is 2+2?", response: "<think>\n2 plus 2 is 4.\n</think>\n\nIt is 4." }),
      '{"query": "x", "response": ',
      JSON.stringify({ question: "x", answer: "y" }),
      JSON.stringify({ query: "What is 3+3?", response: "It is 6." }),
    ].join("\n"),
  );
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe("thinktune data check", () => {
  it("summarises the sample data, and reads the cache on the second run", async () => {
    const cacheDir = path.join(dir, "cache");
    const first = await cli("data", "check", "--model", model, "--data", sampleData, "--cache-dir", cacheDir);
    expect(first.stderr).toBe("");
    expect(first.code).toBe(0);
    expect(first.stdout).toContain("template: tokenizer.chat_template (opens <think>); reasoning required");
    expect(first.stdout).toMatch(/records: 38 \(38 valid\)/);
    expect(first.stdout).toMatch(/examples: 38 \(train 35, validation 3\), with reasoning: 38/);
    expect(first.stdout).toMatch(/^ {2}reasoning +\d+ +\d+ +\d+$/m);
    expect(first.stdout).toContain("dropped: 0 invalid, 0 longer than max-length");
    expect(first.stdout).toContain("errors: 0");
    expect(first.stdout).toContain("cache: written");
    const second = await cli("data", "check", "--model", model, "--data", sampleData, "--cache-dir", cacheDir, "--json");
    expect(second.code).toBe(0);
    const report = JSON.parse(second.stdout);
    expect(report.cache.hit).toBe(true);
    expect(report.examples).toEqual({ total: 38, train: 35, validation: 3, withReasoning: 38 });
    expect(report.lengths.total.max).toBeGreaterThan(report.lengths.total.p50);
  });

  it("lists every error as file:line and exits 1; with --on-invalid skip it still lists them", async () => {
    const failed = await cli("data", "check", "-m", model, "-d", badFile, "--no-cache");
    expect(failed.code).toBe(1);
    expect(failed.stdout).toContain("errors: 3");
    expect(failed.stdout).toMatch(new RegExp(`${badFile.replaceAll("\\", "\\\\")}:2:28: invalid JSON`));
    expect(failed.stdout).toContain(`${badFile}:3: unknown format (keys: question, answer)`);
    expect(failed.stdout).toContain(`${badFile}:4: missing reasoning`);
    const skipped = await cli("data", "check", "-m", model, "-d", badFile, "--no-cache", "--on-invalid", "skip", "--max-length", "64");
    expect(skipped.code).toBe(0);
    expect(skipped.stdout).toContain("dropped: 3 invalid");
    expect(skipped.stdout).toContain("errors: 3");
  });

  it("explains bad flags and missing paths", async () => {
    const missing = await cli("data", "check", "-m", model, "-d", path.join(dir, "nope.jsonl"));
    expect(missing.code).toBe(1);
    expect(missing.stderr).toContain("nope.jsonl does not exist");
    const badFlag = await cli("data", "check", "-m", model, "-d", sampleData, "--think", "maybe");
    expect(badFlag.code).not.toBe(0);
    expect(badFlag.stderr).toContain("--think");
  });
});

describe("thinktune data show", () => {
  it("marks the trained span in a pipe", async () => {
    const shown = await cli("data", "show", "-m", model, "-d", sampleData, "2");
    expect(shown.code).toBe(0);
    const [header, ...body] = shown.stdout.trim().split("\n");
    expect(header).toMatch(/^=== examples\/data\/en\.jsonl:2: \d+ tokens, loss from token \d+ \(\d+ trained\) ===$/);
    const text = body.join("\n");
    expect(text).toMatch(/^<｜begin▁of▁sentence｜><｜User｜>How many centimeters are in 3\.5 meters\?<｜Assistant｜><think>\n\[\[TRAIN\]\]One meter/);
    expect(text).toMatch(/\n<\/think>\n\n3\.5 meters is \*\*350 centimeters\*\* \(3\.5 × 100\)\.<｜end▁of▁sentence｜>\[\[\/TRAIN\]\]$/);
    const outOfRange = await cli("data", "show", "-m", model, "-d", sampleData, "99");
    expect(outOfRange.code).toBe(1);
    expect(outOfRange.stderr).toContain("pick n from 1 to 38");
  });

  it("prints one JSON line per example with source, prompt, completion, tokens and lossFrom", async () => {
    const shown = await cli("data", "show", "-m", model, "-d", sampleData, "--json");
    expect(shown.code).toBe(0);
    const lines = shown.stdout.trim().split("\n").map((line) => JSON.parse(line));
    expect(lines).toHaveLength(38);
    expect(lines.map((line) => line.source)).toContain("examples/data/zh.jsonl:12");
    for (const line of lines) {
      expect(Object.keys(line)).toEqual(["source", "prompt", "completion", "tokens", "lossFrom"]);
      expect(line.prompt.endsWith("<｜Assistant｜><think>\n")).toBe(true);
      expect(line.completion.endsWith("<｜end▁of▁sentence｜>")).toBe(true);
      expect(line.lossFrom).toBeGreaterThan(0);
      expect(line.lossFrom).toBeLessThan(line.tokens.length);
    }
  });
});
