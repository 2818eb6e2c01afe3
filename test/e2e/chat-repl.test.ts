// `thinktune chat` in a pipe: a line in, an answer out. The thought goes to stderr (stdout carries only
// answers), or with --json each reply is one JSON line with reasoning_content apart from content.
import { spawn } from "node:child_process";
import { mkdtemp, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

const projectRoot = path.resolve(import.meta.dirname, "..", "..");
const model = path.join(projectRoot, "models", "tiny-r1.gguf");
// a fixed seed makes the plain run and the JSON run generate the same text
const flags = ["--model", model, "--cpu", "--threads", "1", "--ctx-size", "1024", "--max-tokens", "24", "--thought-budget", "6", "--seed", "5"];

function chat(args: string[], input: string): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ["--import", "tsx", path.join(projectRoot, "src/cli/main.ts"), "chat", ...args], {
      cwd: projectRoot,
      stdio: ["pipe", "pipe", "pipe"],
    });
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (chunk: Buffer) => (stdout += chunk.toString("utf8")));
    child.stderr.on("data", (chunk: Buffer) => (stderr += chunk.toString("utf8")));
    child.on("error", reject);
    child.on("close", (code) => resolve({ code, stdout, stderr }));
    child.stdin.end(input);
  });
}

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(path.join(tmpdir(), "thinktune-chat-"));
});
afterAll(async () => {
  if (dir) await rm(dir, { recursive: true, force: true });
});

describe("thinktune chat in a pipe", () => {
  it("answers each line, the thought apart from the answer, and /system, /save work between turns", async () => {
    const saved = path.join(dir, "conversation.json");
    const input = ["Why is the sky blue?", "/system Answer briefly.", "", "And at sunset?", `/save ${saved}`, "/exit", "never sent"].join("\n");

    const json = await chat([...flags, "--json"], `${input}\n`);
    expect(json.code, json.stderr).toBe(0);
    const replies = json.stdout.trim().split("\n").map((line) => JSON.parse(line) as { reasoning_content: string; content: string; finish_reason: string });
    expect(replies).toHaveLength(2); // the line after /exit is not answered
    for (const reply of replies) {
      expect(reply.reasoning_content.length).toBeGreaterThan(0);
      expect(reply.content.length).toBeGreaterThan(0);
      expect(reply.finish_reason).toBe("length");
    }

    const record = JSON.parse(await readFile(saved, "utf8"));
    expect(record.system).toBe("Answer briefly.");
    expect(record.messages.map((message: { role: string }) => message.role)).toEqual(["user", "assistant", "user", "assistant"]);
    expect(record.messages[1]).toMatchObject({ content: replies[0].content, reasoning_content: replies[0].reasoning_content });

    // The plain run prints the same answers on stdout, one per line-in, and the thoughts on stderr only.
    const plain = await chat(flags, `${input}\n`);
    expect(plain.code, plain.stderr).toBe(0);
    expect(plain.stdout).toBe(`${replies[0].content}\n${replies[1].content}\n`);
    expect(plain.stderr).toContain(replies[0].reasoning_content);
    expect(plain.stderr).toContain(replies[1].reasoning_content);
    expect(plain.stdout).not.toContain(replies[0].reasoning_content);
  });

  it("hides the thought with --hide-thinking", async () => {
    const hidden = await chat([...flags, "--hide-thinking"], "Why is the sky blue?\n");
    const json = await chat([...flags, "--json"], "Why is the sky blue?\n");
    const reply = JSON.parse(json.stdout) as { reasoning_content: string; content: string };
    expect(hidden.code, hidden.stderr).toBe(0);
    expect(hidden.stdout).toBe(`${reply.content}\n`);
    expect(hidden.stderr).not.toContain(reply.reasoning_content);
  });

  it("names a missing model in its error", async () => {
    const result = await chat(["--model", path.join(dir, "missing.gguf"), "--cpu"], "hi\n");
    expect(result.code).toBe(1);
    expect(result.stderr).toContain("missing.gguf");
  });
});
