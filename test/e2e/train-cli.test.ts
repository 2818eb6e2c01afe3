// `thinktune train` as a user runs it: a child process, its output and exit code, its run folder.
import { spawn } from "node:child_process";
import { existsSync } from "node:fs";
import { mkdtemp, readdir, readFile, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { describe, expect, it } from "vitest";

const projectRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..", "..");

interface CliRun {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Runs the CLI from source; `onStdout` sees the output as it arrives (and may signal the child). */
function runCli(args: string[], onStdout?: (text: string, child: ReturnType<typeof spawn>) => void): Promise<CliRun> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ["--import", "tsx", path.join(projectRoot, "src/cli/main.ts"), "train", ...args], {
      cwd: projectRoot,
      stdio: ["ignore", "pipe", "pipe"],
    });
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (chunk: Buffer) => {
      stdout += chunk.toString();
      onStdout?.(stdout, child);
    });
    child.stderr.on("data", (chunk: Buffer) => (stderr += chunk.toString()));
    child.once("error", reject);
    child.once("close", (code) => resolve({ code, stdout, stderr }));
  });
}

async function tempDir(): Promise<string> {
  return mkdtemp(path.join(tmpdir(), "thinktune-train-cli-"));
}

describe("thinktune train: configuration errors", () => {
  it("names an unknown key in the config file", async () => {
    const dir = await tempDir();
    const config = path.join(dir, "bad.json");
    await writeFile(config, JSON.stringify({ learningrate: 1e-4, lora: { rank: 8 } }));
    const result = await runCli(["--config", config, "--out", path.join(dir, "run")]);
    expect(result.code).toBe(1);
    expect(result.stderr).toContain(`${config}: Unknown key "learningrate"; did you mean "learningRate"?`);
    expect(existsSync(path.join(dir, "run"))).toBe(false);
  });

  it("names the flag, the expected type and the value of a wrong type", async () => {
    const dir = await tempDir();
    const result = await runCli(["--lr", "fast", "--out", path.join(dir, "run")]);
    expect(result.code).toBe(1);
    expect(result.stderr).toContain('Expected number for learningRate (--lr), got string "fast"');
    const config = path.join(dir, "typed.json");
    await writeFile(config, JSON.stringify({ lora: { rank: "eight" } }));
    const fromFile = await runCli(["--config", config]);
    expect(fromFile.code).toBe(1);
    expect(fromFile.stderr).toContain(`${config}: Expected integer for lora.rank, got string "eight"`);
  });

  it("refuses a data file that does not exist before loading anything", async () => {
    const dir = await tempDir();
    const missing = path.join(dir, "no-such-data.jsonl");
    const result = await runCli(["--data", missing, "--out", path.join(dir, "run")]);
    expect(result.code).toBe(1);
    expect(result.stderr).toContain(`data: ${missing} does not exist`);
    expect(result.stdout).not.toMatch(/step 1\//);
  });
});
