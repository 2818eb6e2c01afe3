// The corrupt and semantically wrong model files of issue 15, each made from models/tiny-r1.gguf by
// patching one header field: inspect, Engine.load and the CLI refuse each with one message naming the
// field (and its byte, for the header) instead of crashing, stalling, or training on it.
import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { walkGgufHeader, type GgufHeaderField } from "../../src/gguf/header.js";
import { inspectGguf } from "../../src/gguf/inspect.js";
import { Engine } from "../../src/train/engine.js";
import { runCli } from "../helpers/cli.js";
import { synthModel } from "../helpers/models.js";

const projectRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..", "..");
const tinyModel = path.join(projectRoot, "models", "tiny-r1.gguf");

let dir: string;
let base: Buffer;
let fields: GgufHeaderField[];
beforeAll(async () => {
  dir = await mkdtemp(path.join(tmpdir(), "thinktune-model-check-"));
  base = await readFile(tinyModel);
  fields = [];
  await walkGgufHeader(tinyModel, base.length, { onField: (field) => fields.push(field) });
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

function field(owner: string, kind: GgufHeaderField["kind"], nth = 0): GgufHeaderField {
  const found = fields.filter((f) => f.owner === owner && f.kind === kind)[nth];
  if (!found) throw new Error(`tiny-r1.gguf has no ${kind} field of ${owner}`);
  return found;
}

type Patch = (bytes: Buffer) => void;
const setU32 = (owner: string, kind: GgufHeaderField["kind"], value: number, nth = 0): Patch => (bytes) => bytes.writeUInt32LE(value, field(owner, kind, nth).offset);
const setU64 = (owner: string, kind: GgufHeaderField["kind"], value: bigint, nth = 0): Patch => (bytes) => bytes.writeBigUInt64LE(value, field(owner, kind, nth).offset);
const setF32 = (owner: string, value: number): Patch => (bytes) => bytes.writeFloatLE(value, field(owner, "value").offset);
const meta = (key: string) => `metadata "${key}"`;
const tensor = (name: string) => `tensor "${name}"`;

async function variant(name: string, ...patches: Patch[]): Promise<string> {
  const bytes = Buffer.from(base);
  for (const patch of patches) patch(bytes);
  const file = path.join(dir, name);
  await writeFile(file, bytes);
  return file;
}

async function refusals(file: string): Promise<[string, string]> {
  const message = (reason: unknown) => (reason instanceof Error ? reason.message : `accepted`);
  const inspected = await inspectGguf(file).then(() => "accepted", message);
  const loaded = await Engine.load(file, { threads: 1, maxTokens: 16 }).then((engine) => {
    engine.dispose();
    return "accepted";
  }, message);
  return [inspected, loaded];
}

/** One test per case: the patched file is refused by inspect and Engine.load, each naming the file and the field. */
function refusalTests(cases: [string, () => Patch[], RegExp][]): void {
  for (const [what, patches, pattern] of cases) {
    it(`refuses ${what} in inspect and Engine.load`, async () => {
      const file = await variant(`${what.replace(/\W+/g, "-")}.gguf`, ...patches());
      const [inspected, loaded] = await refusals(file);
      expect(inspected).toMatch(pattern);
      expect(loaded).toMatch(pattern);
      expect(inspected).toContain(file);
    });
  }
}

describe("corrupt GGUF headers (issue 15, case 1)", () => {
  const cases: [string, () => Patch[], RegExp][] = [
    // 2^31 reached node-llama-cpp's fs.read and aborted the process
    ["a string length in [2^31, 2^32)", () => [setU64("the value of metadata \"general.name\"", "length", 0x80000000n)], /the value of metadata "general\.name" at byte 93 declares a length of 2147483648 bytes, more than thinktune reads in one metadata string \(67108864\)/],
    ["token_type's element type set to array", () => [setU32(`${meta("tokenizer.ggml.token_type")} elements`, "type", 9)], /metadata "tokenizer\.ggml\.token_type" at byte \d+ is an array of arrays/],
    ["token_type's length 2^31", () => [setU64(meta("tokenizer.ggml.token_type"), "count", 1n << 31n)], /metadata "tokenizer\.ggml\.token_type" at byte \d+ declares 2147483648 i32 elements, more than any model metadata holds/],
    ["a tensor-name length of 10^6", () => [setU64("the name of tensor info 3", "length", 1_000_000n)], /the name of tensor info 3 at byte \d+ declares a length of 1000000 bytes, more than a ggml tensor name may have \(63\)/],
    ["n_dims 0", () => [setU32(tensor("blk.0.attn_q.weight"), "n_dims", 0)], /tensor "blk\.0\.attn_q\.weight" at byte \d+ has n_dims 0; a ggml tensor has 1 to 4 dimensions/],
    ["block_count 2^31", () => [setU32(meta("qwen2.block_count"), "value", 2 ** 31)], /metadata qwen2\.block_count is 2147483648 but the file holds blocks 0 to 3/],
    ["embedding_length 2^31", () => [setU32(meta("qwen2.embedding_length"), "value", 2 ** 31)], /tensor token_embd\.weight has dims \[256, 1280\] but the model's config needs \[2147483648, 1280\]/],
    // found by the long fuzz run: each aborted llama.cpp's vocabulary load (data check, serve)
    ["a metadata key starting with a NUL byte", () => [(bytes) => (bytes[field("the key of metadata entry 1", "length").offset + 8] = 0)], /metadata entry 1 at byte \d+ has a key with a NUL byte/],
    ["a token listed twice", () => [(bytes) => (bytes[field(`${meta("tokenizer.ggml.tokens")}[1]`, "length").offset + 9] = 0x80)], /metadata tokenizer\.ggml\.tokens holds the token "Ā" twice \(ids 0 and 1\)/],
    ["a BPE vocabulary without its merges", () => [(bytes) => (bytes[bytes.indexOf("tokenizer.ggml.merges")] = 0x78)], /metadata tokenizer\.ggml\.merges is missing; a gpt2 \(BPE\) vocabulary needs its merges/],
  ];
  refusalTests(cases);

  it("refuses them in the CLI too (inspect, data check) with exit code 1 and one line", async () => {
    const file = await variant("cli-string-length.gguf", setU64("the value of metadata \"general.name\"", "length", 0xfffffff0n));
    // a string length past the end of the file, but within the limit: reported as a truncation
    const pastEnd = await variant("cli-past-end.gguf", setU64("the value of metadata \"general.name\"", "length", 40_000_000n));
    const data = path.join(dir, "one.jsonl");
    await writeFile(data, `${JSON.stringify({ prompt: "2+2?", completion: "<think>4</think>4" })}\n`);
    const [inspected, ...results] = await Promise.all([["inspect", pastEnd], ["inspect", file], ["data", "check", "--model", file, "--data", data, "--no-cache"]].map((args) => runCli(args)));
    expect(inspected.code).toBe(1);
    expect(inspected.stderr).toMatch(/is truncated: its header needs \d+ bytes but the file has 3274048 \(the value of metadata "general\.name", 40000000 bytes long, at byte 93\)/);
    for (const result of results) {
      expect(result.code, result.stderr).toBe(1);
      expect(result.stderr.trim().split("\n"), result.stderr).toHaveLength(1);
      expect(result.stderr).toMatch(/^thinktune: \S+cli-string-length\.gguf: the value of metadata "general\.name" at byte 93 declares a length of 4294967280 bytes, more than/);
    }
  });
});

describe("semantically wrong model files (issue 15, case 2)", () => {
  const cases: [string, () => Patch[], RegExp][] = [
    ["a bos id outside the vocabulary", () => [setU32(meta("tokenizer.ggml.bos_token_id"), "value", 1280)], /metadata tokenizer\.ggml\.bos_token_id \(the bos token\) is 1280, outside the vocabulary \[0, 1280\)/],
    ["an eos id outside the vocabulary", () => [setU32(meta("tokenizer.ggml.eos_token_id"), "value", 70000)], /tokenizer\.ggml\.eos_token_id \(the eos token\) is 70000, outside the vocabulary/],
    ["a padding id outside the vocabulary", () => [setU32(meta("tokenizer.ggml.padding_token_id"), "value", 4294967295)], /tokenizer\.ggml\.padding_token_id \(the padding token\) is 4294967295, outside/],
    ["block_count lower than the blocks present", () => [setU32(meta("qwen2.block_count"), "value", 3)], /metadata qwen2\.block_count is 3 but the file holds blocks 0 to 3 \(the last, blk\.3\.\w+\.\w+\); block_count must equal the blocks present/],
    ["block_count higher than the blocks present", () => [setU32(meta("qwen2.block_count"), "value", 5)], /metadata qwen2\.block_count is 5 but the file holds blocks 0 to 3/],
    [
      "two tensors at the same offset",
      () => [(bytes) => bytes.writeBigUInt64LE(bytes.readBigUInt64LE(field(tensor("blk.0.attn_q.weight"), "offset").offset), field(tensor("blk.0.attn_k.weight"), "offset").offset)],
      /tensor blk\.0\.attn_k\.weight's data starts at offset 349184 of the data section, inside tensor blk\.0\.attn_q\.weight before it \(which ends at offset 418816\); tensor data must follow in table order/,
    ],
    ["an F32 norm retyped as Q8_0", () => [setU32(tensor("blk.1.attn_norm.weight"), "type", 8)], /tensor blk\.1\.attn_norm\.weight is Q8_0; norms, biases and rope_freqs must be F32, F16 or BF16/],
    ["an F32 bias retyped as Q4_K", () => [setU32(tensor("blk.0.attn_q.bias"), "type", 12)], /tensor blk\.0\.attn_q\.bias is Q4_K; norms, biases/],
    ["context length 3", () => [setU32(meta("qwen2.context_length"), "value", 3)], /metadata qwen2\.context_length is 3, outside the sane range \[16, 16777216\]/],
    ["context length 2^32-1", () => [setU32(meta("qwen2.context_length"), "value", 2 ** 32 - 1)], /metadata qwen2\.context_length is 4294967295, outside the sane range/],
    ["rms epsilon 0", () => [setF32(meta("qwen2.attention.layer_norm_rms_epsilon"), 0)], /metadata qwen2\.attention\.layer_norm_rms_epsilon is 0, outside the sane range \[1e-12, 0\.1\]/],
    ["rms epsilon 1e38", () => [setF32(meta("qwen2.attention.layer_norm_rms_epsilon"), 1e38)], /layer_norm_rms_epsilon is 9\.99999\d+e\+37, outside the sane range/],
    ["RoPE base 1e38", () => [setF32(meta("qwen2.rope.freq_base"), 1e38)], /metadata qwen2\.rope\.freq_base is 9\.99999\d+e\+37, outside the sane range \[1, 10000000000\]/],
    ["an unknown tensor name", () => [(bytes) => bytes.write("X", field("the name of tensor info 4", "length").offset + 8 + "blk.0.attn_".length, "latin1")], /tensor "blk\.0\.attn_X\.weight" is not part of a qwen2 model; llama\.cpp refuses files with tensors it does not know/],
  ];
  refusalTests(cases);

  it("accepts what llama.cpp accepts and says so: a missing output.weight is a tied output", async () => {
    const tied = await synthModel({ arch: "llama", nLayer: 1, nEmbd: 64, nHead: 2, nHeadKv: 1, nFf: 128, nVocab: 320, tiedOutput: true, ropeFreqs: true, type: "F32", seed: 15 });
    const info = await inspectGguf(tied);
    expect(info.shape).toMatchObject({ tiedOutput: true, hasRopeFreqs: true });
    expect(info.notes).toEqual(["no output.weight: the output layer is tied to token_embd.weight, as llama.cpp does for such files"]);
    const result = await runCli(["inspect", tied]);
    expect(result.stdout).toMatch(/^note +no output\.weight: the output layer is tied to token_embd\.weight/m);
    const engine = await Engine.load(tied, { threads: 1, maxTokens: 16 });
    expect(engine.config.tiedOutput).toBe(true);
    engine.dispose();
    expect((await inspectGguf(tinyModel)).notes).toEqual([]);
  });
});
