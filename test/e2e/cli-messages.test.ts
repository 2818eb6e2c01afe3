// What a new user sees when something is wrong: the file or port named, and what to do, never a bare
// ENOENT / EADDRINUSE or a missing model key for a file that is an adapter.
import http from "node:http";
import type { AddressInfo } from "node:net";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { writeGgufAdapter } from "../../src/export/gguf-adapter.js";
import { runCli } from "../helpers/cli.js";

const projectRoot = path.resolve(import.meta.dirname, "..", "..");
const tinyModel = path.join(projectRoot, "models", "tiny-r1.gguf");
let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(path.join(tmpdir(), "thinktune-messages-"));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe("messages", () => {
  it("chat with a model file that does not exist names it, without a raw ENOENT", async () => {
    const result = await runCli(["chat", "--model", "nope.gguf", "--cpu"]);
    expect(result.code).toBe(1);
    expect(result.stderr).toMatch(/the model nope\.gguf does not exist/);
    expect(result.stderr).not.toContain("ENOENT");
  });

  it("serve on a busy port says so and how to pick another", async () => {
    const blocker = http.createServer();
    await new Promise<void>((resolve) => blocker.listen(0, "127.0.0.1", resolve));
    const port = (blocker.address() as AddressInfo).port;
    try {
      const result = await runCli(["serve", "--model", tinyModel, "--cpu", "--port", String(port)]);
      expect(result.code).toBe(1);
      expect(result.stderr).toContain(`127.0.0.1:${port} is already in use`);
      expect(result.stderr).toContain("--port");
      expect(result.stderr).not.toContain("EADDRINUSE");
    } finally {
      blocker.close();
    }
  });

  it("inspect on an adapter GGUF says it is an adapter and where it goes", async () => {
    const file = path.join(dir, "adapter.gguf");
    const rank = 2;
    const tensors = [0, 1].flatMap((layer) => [
      { name: `blk.${layer}.attn_q.weight.lora_a`, shape: [rank, 256], data: new Float32Array(rank * 256).fill(0.01) },
      { name: `blk.${layer}.attn_q.weight.lora_b`, shape: [256, rank], data: new Float32Array(256 * rank).fill(0.01) },
    ]);
    await writeGgufAdapter(file, { baseModelPath: tinyModel, alpha: 4, tensors });
    const [text, json] = await Promise.all([runCli(["inspect", file]), runCli(["inspect", file, "--json"])]);
    expect(text.code, text.stderr).toBe(0);
    expect(text.stdout).toContain("a LoRA adapter for qwen2, not a model: rank 2, alpha 4, 2 adapted matrices (attn_q)");
    expect(text.stdout).toContain(`--lora ${file}`);
    expect(JSON.parse(json.stdout)).toMatchObject({ type: "lora-adapter", architecture: "qwen2", rank: 2, alpha: 4, matrices: 2, targets: ["attn_q"] });
  });
});
