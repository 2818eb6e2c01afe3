// --model hf:owner/repo:QUANT, hf:owner/repo/file.gguf and URLs, through node-llama-cpp's resolver,
// against a stand-in for the Hugging Face hub on 127.0.0.1 (HF_ENDPOINT): the manifest API and file
// downloads with ranges, so resuming an interrupted download is tested too, and a closed port stands
// for being offline.
import { mkdtemp, readdir, readFile, rm } from "node:fs/promises";
import http from "node:http";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import path from "node:path";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { resolveModelSource } from "../../src/cli/model-source.js";
import { runCli } from "../helpers/cli.js";

const projectRoot = path.resolve(import.meta.dirname, "..", "..");
const tinyModel = path.join(projectRoot, "models", "tiny-r1.gguf");
const repo = "test-owner/Tiny-R1-GGUF";
const fileName = "Tiny-R1-Q8_0.gguf";

let bytes: Buffer;
/** larger than ipull's 5 MiB chunk, the unit it keeps of an interrupted download */
const bigBytes = Buffer.from(Array.from({ length: 12 << 20 }, (_, i) => (i * 2654435761) >>> 24));
let server: http.Server;
let endpoint: string;
let work: string;
const requests: { method: string; url: string; range?: string }[] = [];
/** bytes per chunk and pause between chunks of a file response (slow enough to interrupt) */
let pacing: { chunk: number; delayMs: number } | undefined;

function serveFile(req: http.IncomingMessage, res: http.ServerResponse, bytes: Buffer): void {
  const match = /^bytes=(\d+)-(\d*)$/.exec(req.headers.range ?? "");
  const start = match ? Number(match[1]) : 0;
  const end = match && match[2] !== "" ? Number(match[2]) + 1 : bytes.length;
  const headers = { "content-type": "application/octet-stream", "accept-ranges": "bytes", "content-length": end - start, etag: '"tiny-r1"' };
  if (match) res.writeHead(206, { ...headers, "content-range": `bytes ${start}-${end - 1}/${bytes.length}` });
  else res.writeHead(200, headers);
  if (req.method === "HEAD") return void res.end();
  if (!pacing) return void res.end(bytes.subarray(start, end));
  let offset = start;
  const { chunk, delayMs } = pacing;
  const timer = setInterval(() => {
    if (res.destroyed) return clearInterval(timer);
    const next = Math.min(end, offset + chunk);
    res.write(bytes.subarray(offset, next));
    offset = next;
    if (offset >= end) {
      clearInterval(timer);
      res.end();
    }
  }, delayMs);
  res.on("close", () => clearInterval(timer));
}

beforeAll(async () => {
  bytes = await readFile(tinyModel);
  work = await mkdtemp(path.join(tmpdir(), "thinktune-download-"));
  server = http.createServer((req, res) => {
    const url = new URL(req.url ?? "/", "http://localhost");
    requests.push({ method: req.method ?? "GET", url: url.pathname, range: req.headers.range });
    if (url.pathname === `/v2/${repo}/manifests/Q8_0`) {
      res.writeHead(200, { "content-type": "application/json" });
      return void res.end(JSON.stringify({ ggufFile: { rfilename: fileName, size: bytes.length } }));
    }
    if (url.pathname === `/${repo}/resolve/main/${fileName}` || url.pathname === "/files/tiny.gguf") return serveFile(req, res, bytes);
    if (url.pathname === "/v2/test-owner/Big-GGUF/manifests/Q8_0") {
      res.writeHead(200, { "content-type": "application/json" });
      return void res.end(JSON.stringify({ ggufFile: { rfilename: "Big-Q8_0.gguf", size: bigBytes.length } }));
    }
    if (url.pathname === "/test-owner/Big-GGUF/resolve/main/Big-Q8_0.gguf") return serveFile(req, res, bigBytes);
    res.writeHead(404, { "content-type": "application/json" });
    res.end(JSON.stringify({ error: "not found" }));
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  endpoint = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
});
afterAll(async () => {
  server?.close();
  if (work) await rm(work, { recursive: true, force: true });
});

let savedEnv: { HF_ENDPOINT?: string; THINKTUNE_MODELS_DIR?: string } = {};
function useHub(modelsDir: string, hub = endpoint): void {
  savedEnv = { HF_ENDPOINT: process.env.HF_ENDPOINT, THINKTUNE_MODELS_DIR: process.env.THINKTUNE_MODELS_DIR };
  process.env.HF_ENDPOINT = hub;
  process.env.THINKTUNE_MODELS_DIR = modelsDir;
}
afterEach(() => {
  for (const [key, value] of Object.entries(savedEnv)) {
    if (value === undefined) delete process.env[key];
    else process.env[key] = value;
  }
  pacing = undefined;
  requests.length = 0;
});

const quiet = { isTTY: false, write: () => true } as unknown as NodeJS.WriteStream;

describe("models by name", () => {
  it("inspect hf:owner/repo:QUANT downloads the repository's file into the models folder, once", async () => {
    const models = path.join(work, "models-cli");
    const env = { ...process.env, HF_ENDPOINT: endpoint, THINKTUNE_MODELS_DIR: models };
    const first = await runCli(["inspect", `hf:${repo}:Q8_0`], { env });
    expect(first.code, first.stderr).toBe(0);
    expect(first.stdout).toMatch(/architecture {2}qwen2\n/);
    expect(first.stderr).toMatch(/Downloading hf:test-owner\/Tiny-R1-GGUF:Q8_0: 100% \(3\.\d MiB of 3\.\d MiB\)/);
    const [downloaded] = await readdir(models);
    expect((await readFile(path.join(models, downloaded))).equals(bytes)).toBe(true); // toEqual on megabytes takes minutes

    requests.length = 0;
    const again = await runCli(["inspect", `hf:${repo}:q8_0`], { env });
    expect(again.code, again.stderr).toBe(0);
    expect(again.stderr).not.toContain("Downloading");
    expect(requests.filter((request) => request.method === "GET" && request.url.endsWith(".gguf"))).toEqual([]);
  });

  it("takes hf:owner/repo/file.gguf and http(s) URLs", async () => {
    const models = path.join(work, "models-forms");
    useHub(models);
    const byFile = await resolveModelSource(`hf:${repo}/${fileName}`, { progress: quiet });
    expect(path.basename(byFile)).toContain(fileName.replace(/\.gguf$/, ""));
    expect((await readFile(byFile)).equals(bytes)).toBe(true);
    // a URL on a server other than the hub's (the hub's own URLs are read as hf: models)
    delete process.env.HF_ENDPOINT;
    const byUrl = await resolveModelSource(`${endpoint}/files/tiny.gguf`, { progress: quiet });
    expect(path.dirname(byUrl)).toBe(models);
    expect((await readFile(byUrl)).equals(bytes)).toBe(true);
  });

  it("resumes an interrupted download where it stopped", async () => {
    const models = path.join(work, "models-resume");
    useHub(models);
    pacing = { chunk: 1 << 20, delayMs: 100 };
    const controller = new AbortController();
    let seen = 0;
    const progress = {
      isTTY: false,
      write: (text: string) => {
        const percent = /: (\d+)%/.exec(text);
        if (percent) seen = Number(percent[1]);
        if (seen >= 60) controller.abort(); // past the first 5 MiB chunk
        return true;
      },
    } as unknown as NodeJS.WriteStream;
    await expect(resolveModelSource("hf:test-owner/Big-GGUF:Q8_0", { signal: controller.signal, progress })).rejects.toThrow(/cannot get the model hf:test-owner\/Big-GGUF:Q8_0/);
    expect((await readdir(models)).filter((name) => name.endsWith(".ipull"))).toHaveLength(1); // the partial file is kept

    pacing = undefined;
    requests.length = 0;
    const file = await resolveModelSource("hf:test-owner/Big-GGUF:Q8_0", { progress: quiet });
    expect((await readFile(file)).equals(bigBytes)).toBe(true);
    const ranged = requests.filter((request) => request.method === "GET" && request.url.endsWith(".gguf") && request.range);
    expect(ranged.length).toBeGreaterThan(0);
    expect(Number(/^bytes=(\d+)-/.exec(ranged[0].range!)![1])).toBeGreaterThan(0);
  });

  it("says the model could not be fetched, why, and what to do, when the hub cannot be reached", async () => {
    useHub(path.join(work, "models-offline"), "http://127.0.0.1:9");
    const error = await resolveModelSource("hf:someone/Some-Model-GGUF:Q4_K_M", { progress: quiet }).catch((reason: Error) => reason);
    expect(error).toBeInstanceOf(Error);
    expect((error as Error).message).toMatch(/^cannot get the model hf:someone\/Some-Model-GGUF:Q4_K_M: http:\/\/127\.0\.0\.1:9 could not be reached .*Check the network connection/);
    expect((error as Error).message).toContain("download the GGUF yourself and pass its path");
  });
});
