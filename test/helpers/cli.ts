// Runs the thinktune CLI from source (tsx) as a child process and collects its exit code and output.
import { execFile, spawn, type ChildProcess } from "node:child_process";
import os from "node:os";
import path from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";

const projectRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..", "..");

export interface CliResult {
  code: number;
  stdout: string;
  stderr: string;
}

export function runCli(args: string[], options: { timeoutMs?: number; env?: NodeJS.ProcessEnv; cwd?: string } = {}): Promise<CliResult> {
  return new Promise((resolve) => {
    execFile(
      process.execPath,
      ["--import", "tsx", path.join(projectRoot, "src", "cli", "main.ts"), ...args],
      { cwd: options.cwd ?? projectRoot, env: options.env ?? process.env, timeout: options.timeoutMs ?? 60_000, maxBuffer: 16 << 20 },
      (error, stdout, stderr) => {
        const code = error === null ? 0 : typeof error.code === "number" ? error.code : -1;
        resolve({ code, stdout, stderr });
      },
    );
  });
}

export interface StreamedRun {
  /** as a shell reports it: 128 + the signal's number for a process a signal ended */
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Collects a child's output until it closes; onStdout sees the output so far as it arrives. */
export function collectOutput(child: ChildProcess, onStdout?: (stdout: string) => void): Promise<StreamedRun> {
  return new Promise((resolve, reject) => {
    let stdout = "";
    let stderr = "";
    child.stdout?.on("data", (chunk: Buffer) => {
      stdout += chunk.toString();
      onStdout?.(stdout);
    });
    child.stderr?.on("data", (chunk: Buffer) => (stderr += chunk.toString()));
    child.once("error", reject);
    child.once("close", (code, signal) => resolve({ code: code ?? (signal ? 128 + os.constants.signals[signal] : null), stdout, stderr }));
  });
}

const tsxLoader = pathToFileURL(path.join(projectRoot, "node_modules", "tsx", "dist", "loader.mjs")).href;

/** The CLI from source, streamed: onStdout sees the output so far and may signal the child. */
export function spawnCli(args: string[], options: { cwd?: string; onStdout?: (stdout: string, child: ChildProcess) => void } = {}): Promise<StreamedRun> {
  const child = spawn(process.execPath, ["--import", tsxLoader, path.join(projectRoot, "src", "cli", "main.ts"), ...args], {
    cwd: options.cwd ?? projectRoot,
    stdio: ["ignore", "pipe", "pipe"],
  });
  return collectOutput(child, (stdout) => options.onStdout?.(stdout, child));
}
