// Broken GGUF files given to `thinktune inspect`: each ends with exit code 1 and one clear line, never
// a crash, a stack trace or a hang.
import { mkdir, mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { inspectGguf } from "../../src/gguf/inspect.js";
import { readGgufModel } from "../../src/gguf/read.js";
import { GgufWriter, gguf } from "../../src/gguf/writer.js";
import { runCli, type CliResult } from "../helpers/cli.js";
import { synthModel } from "../helpers/models.js";

let dir: string;
let model: Buffer;
beforeAll(async () => {
  dir = await mkdtemp(path.join(tmpdir(), "thinktune-bad-gguf-"));
  model = await readFile(await synthModel({ nLayer: 1, nEmbd: 64, nHead: 2, nHeadKv: 1, nFf: 128, nVocab: 512, type: "F16", seed: 5 }));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

async function write(name: string, bytes: Uint8Array): Promise<string> {
  const file = path.join(dir, name);
  await writeFile(file, bytes);
  return file;
}

/** A small model-like GGUF with one tensor "probe.weight" F32 [8, 2], for patching its tensor info. */
async function probeFile(name: string, metadata: [string, ReturnType<typeof gguf.u32>][] = [["general.architecture", gguf.string("qwen2")]]): Promise<Buffer> {
  const writer = new GgufWriter();
  for (const [key, value] of metadata) writer.set(key, value);
  writer.addTensor("probe.weight", "F32", [8, 2], () => new Uint8Array(64));
  const file = path.join(dir, name);
  await writer.write(file);
  return readFile(file);
}

/** Rewrites the tensor info of "probe.weight": its dims, type id and relative offset. */
function patchProbe(bytes: Buffer, patch: { dims?: bigint[]; type?: number; offset?: bigint }): Buffer {
  const name = Buffer.from("probe.weight");
  const at = bytes.indexOf(name) + name.length;
  const nDims = bytes.readUInt32LE(at);
  const dims = patch.dims ?? [];
  if (patch.dims) {
    expect(dims.length).toBe(nDims);
    dims.forEach((dim, i) => bytes.writeBigUInt64LE(dim, at + 4 + 8 * i));
  }
  const typeAt = at + 4 + 8 * nDims;
  if (patch.type !== undefined) bytes.writeUInt32LE(patch.type, typeAt);
  if (patch.offset !== undefined) bytes.writeBigUInt64LE(patch.offset, typeAt + 4);
  return bytes;
}

function expectOneLineFailure(result: CliResult, pattern: RegExp): void {
  expect(result.stderr).not.toMatch(/\n\s+at |node:internal/);
  expect(result.code, result.stderr).toBe(1);
  const message = result.stderr.trim();
  expect(message.split("\n"), message).toHaveLength(1);
  expect(message).toMatch(/^thinktune: /);
  expect(message).toMatch(pattern);
  expect(result.stdout).toBe("");
}

describe("bad GGUF input to thinktune inspect", () => {
  it("rejects each kind of broken file with one clear message", async () => {
    const tensorDataStart = (await readGgufModel(await write("whole.gguf", model))).tensors[0].offset;
    const overflowing = patchProbe(await probeFile("overflow-src.gguf"), { dims: [1n << 40n, 1n << 40n] });
    const unknownType = patchProbe(await probeFile("unknown-src.gguf"), { type: 99 });
    const pastEnd = patchProbe(await probeFile("past-end-src.gguf"), { offset: 1n << 20n });
    const hugeDim = patchProbe(await probeFile("huge-dim-src.gguf"), { dims: [1n << 60n, 2n] });
    const noArchitecture = await probeFile("no-arch.gguf", [["general.name", gguf.string("x")]]);
    const missingKey = await probeFile("missing-key.gguf");
    const wrongVersion = Buffer.from(model);
    wrongVersion.writeUInt32LE(7, 4);
    const subdir = path.join(dir, "a-directory.gguf");
    await mkdir(subdir);

    const cases: [string, string, RegExp][] = [
      ["truncated in the tensor data", await write("truncated-data.gguf", model.subarray(0, model.length - 1000)), /tensor \S+ in .*truncated-data\.gguf .* ends at byte \d+ but the file has \d+ bytes/],
      ["truncated in the header", await write("truncated-header.gguf", model.subarray(0, Math.floor(tensorDataStart / 2))), /truncated-header\.gguf is truncated: its header needs \d+ bytes but the file has \d+/],
      ["cut after the preamble", await write("preamble-only.gguf", model.subarray(0, 24)), /preamble-only\.gguf declares \d+ tensors and \d+ metadata entries, more than its 24 bytes can hold/],
      ["too short for a header", await write("tiny.gguf", model.subarray(0, 10)), /tiny\.gguf is not a GGUF file: it has only 10 bytes/],
      ["empty", await write("empty.gguf", new Uint8Array()), /empty\.gguf is not a GGUF file: it has only 0 bytes/],
      ["wrong magic", await write("magic.gguf", Buffer.concat([Buffer.from("GGML"), model.subarray(4)])), /magic\.gguf is not a GGUF file: it starts with bytes 47474d4c instead of "GGUF"/],
      ["a safetensors file", await write("model.safetensors", Buffer.from('\x10\x00\x00\x00\x00\x00\x00\x00{"__metadata__":{}}')), /is not a GGUF file/],
      ["unsupported version", await write("version.gguf", wrongVersion), /version\.gguf is GGUF version 7, which thinktune cannot read \(it reads versions 2 and 3\)/],
      ["a tensor past the end of the file", await write("past-end.gguf", pastEnd), /tensor probe\.weight in .*past-end\.gguf \(F32, dims \[8, 2\], 64 bytes at offset \d+\) ends at byte \d+ but the file has \d+ bytes/],
      ["dimensions whose product overflows", await write("overflow.gguf", overflowing), /tensor probe\.weight .* has dimensions \[1099511627776, 1099511627776\] whose product overflows/],
      ["a dimension beyond 2^53", await write("huge-dim.gguf", hugeDim), /tensor probe\.weight has dimensions \[1152921504606846976, 2\] .* beyond 2\^53/],
      ["an unknown tensor type", await write("unknown-type.gguf", unknownType), /tensor probe\.weight .* has type .*\(99\), which thinktune cannot read/],
      ["no general.architecture", await write("no-arch.gguf", noArchitecture), /no-arch\.gguf: required metadata key "general\.architecture" is missing/],
      ["missing required metadata", await write("missing-key.gguf", missingKey), /missing-key\.gguf: required metadata key "qwen2\.embedding_length" is missing/],
      ["a directory", subdir, /a-directory\.gguf is a directory, not a GGUF file/],
      ["a missing path", path.join(dir, "does-not-exist.gguf"), /cannot read .*does-not-exist\.gguf: no such file/],
      ["a path through a file", path.join(dir, "empty.gguf", "child.gguf"), /cannot read .*empty\.gguf\/child\.gguf: /],
    ];
    for (const [what, file, pattern] of cases) {
      const error = await inspectGguf(file).then(
        () => undefined,
        (reason: unknown) => reason,
      );
      expect(error, what).toBeInstanceOf(Error);
      const message = (error as Error).message;
      expect(message, what).toMatch(pattern);
      expect(message.split("\n"), what).toHaveLength(1);
    }
    // through the CLI, a few kinds (each is a process): exit code 1, one line, no stack trace
    const viaCli = ["wrong magic", "a tensor past the end of the file", "missing required metadata", "a directory"];
    const results = await Promise.all(
      viaCli.map((what) => {
        const [, file] = cases.find(([name]) => name === what)!;
        return runCli(["inspect", file]);
      }),
    );
    viaCli.forEach((what, index) => {
      const [, , pattern] = cases.find(([name]) => name === what)!;
      expectOneLineFailure(results[index], pattern);
    });
  });

  it("rejects an unreadable file", async (context) => {
    if (process.getuid?.() === 0) return context.skip("running as root, which can read any file");
    const file = await write("unreadable.gguf", model);
    const { chmod } = await import("node:fs/promises");
    await chmod(file, 0o000);
    expectOneLineFailure(await runCli(["inspect", file]), /cannot read .*unreadable\.gguf: permission denied/);
  });

  it("refuses at once a header whose array length runs far past the end of the file", async () => {
    // 2^40 one-byte items declared in a 56-byte file: node-llama-cpp would read zeros for ages
    const key = Buffer.from("test.array");
    const header = Buffer.alloc(24 + 8 + key.length + 4 + 4 + 8);
    header.write("GGUF", 0, "latin1");
    header.writeUInt32LE(3, 4);
    header.writeBigUInt64LE(0n, 8);
    header.writeBigUInt64LE(1n, 16);
    header.writeBigUInt64LE(BigInt(key.length), 24);
    key.copy(header, 32);
    header.writeUInt32LE(9, 32 + key.length); // array
    header.writeUInt32LE(0, 36 + key.length); // of u8
    header.writeBigUInt64LE(1n << 40n, 40 + key.length);
    const file = await write("huge-array.gguf", header);
    const started = performance.now();
    await expect(readGgufModel(file)).rejects.toThrow(/huge-array\.gguf: metadata "test\.array" at byte 50 declares 1099511627776 u8 elements, more than any model metadata holds/);
    expect(performance.now() - started).toBeLessThan(1000);
  });
});
