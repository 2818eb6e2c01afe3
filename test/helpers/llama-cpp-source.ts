// llama.cpp's source as node-llama-cpp ships it (a git bundle): cloned once per test process into a temp
// folder, so tests can compare against its files (official chat templates, test vocabularies).
import { execFile } from "node:child_process";
import { existsSync } from "node:fs";
import { mkdtemp } from "node:fs/promises";
import { createRequire } from "node:module";
import { tmpdir } from "node:os";
import path from "node:path";
import { promisify } from "node:util";

const run = promisify(execFile);
let clone: Promise<string | undefined> | undefined;

function bundlePath(): string {
  // the package's exports hide package.json, so resolve its entry point and walk up to the package root
  const require = createRequire(import.meta.url);
  let dir = path.dirname(require.resolve("node-llama-cpp"));
  while (path.basename(dir) !== "node-llama-cpp" && path.dirname(dir) !== dir) dir = path.dirname(dir);
  return path.join(dir, "llama", "gitRelease.bundle");
}

/** The folder of a bare clone of llama.cpp, or undefined when node-llama-cpp has no bundle. */
export function llamaCppSource(): Promise<string | undefined> {
  clone ??= (async () => {
    const bundle = bundlePath();
    if (!existsSync(bundle)) return undefined;
    const dir = path.join(await mkdtemp(path.join(tmpdir(), "thinktune-llama-cpp-")), "llama.cpp");
    await run("git", ["clone", "-q", "--no-checkout", bundle, dir]);
    return dir;
  })();
  return clone;
}

/** One file of llama.cpp's source at the bundled commit, or undefined when the bundle is missing. */
export async function readLlamaCppFile(file: string): Promise<string | undefined> {
  const dir = await llamaCppSource();
  if (dir === undefined) return undefined;
  const { stdout } = await run("git", ["-C", dir, "show", `HEAD:${file}`], { maxBuffer: 64 << 20 });
  return stdout;
}
