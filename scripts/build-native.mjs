#!/usr/bin/env node
// Builds the native addon: cmake-js when cmake is present (CPU always, CUDA when found),
// node-gyp with binding.gyp (CPU only) when it is not. Runs as the package's install script.
import { spawnSync } from "node:child_process";
import { existsSync } from "node:fs";
import { createRequire } from "node:module";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
const require = createRequire(import.meta.url);
const cudaMode = (process.env.THINKTUNE_CUDA ?? "auto").toLowerCase();
if (!["auto", "on", "off"].includes(cudaMode)) {
  console.error(`thinktune: THINKTUNE_CUDA must be auto, on or off, got "${process.env.THINKTUNE_CUDA}"`);
  process.exit(1);
}

function run(command, args) {
  const result = spawnSync(command, args, { cwd: root, stdio: "inherit" });
  if (result.error) throw result.error;
  return result.status ?? 1;
}

/** `command` may carry arguments of its own ("ccache g++", as CXX can). */
function hasCommand(command) {
  const [program, ...args] = command.trim().split(/\s+/);
  const result = spawnSync(program, [...args, "--version"], { stdio: "ignore" });
  return !result.error && result.status === 0;
}

// Say what is missing before a build system fails on it with pages of output.
const compilers = process.env.CXX ? [process.env.CXX] : ["c++", "g++", "clang++"];
if (!compilers.some(hasCommand)) {
  console.error(
    `thinktune: no C++ compiler found (tried ${compilers.join(", ")}${process.env.CXX ? " from CXX" : ""}); the native addon is built from source on install.\n` +
      "  Debian/Ubuntu: sudo apt-get install build-essential cmake; Fedora: sudo dnf install gcc-c++ cmake; macOS: xcode-select --install && brew install cmake\n" +
      "  then run npm install again.",
  );
  process.exit(1);
}

if (hasCommand("cmake")) {
  const cmakeJs = require.resolve("cmake-js/bin/cmake-js");
  const args = [cmakeJs, "compile", "--parallel", String(os.availableParallelism()), `--CDTHINKTUNE_CUDA=${cudaMode}`];
  if (process.env.CMAKE_CUDA_ARCHITECTURES) args.push(`--CDCMAKE_CUDA_ARCHITECTURES=${process.env.CMAKE_CUDA_ARCHITECTURES}`);
  const status = run(process.execPath, args);
  if (status !== 0) {
    console.error("thinktune: the native build failed (see the compiler output above).");
    process.exit(status);
  }
} else {
  if (cudaMode === "on") {
    console.error("thinktune: THINKTUNE_CUDA=on needs cmake, which was not found on PATH.");
    process.exit(1);
  }
  console.warn("thinktune: cmake not found; building the CPU-only addon with node-gyp (binding.gyp). Install cmake for the CUDA engine.");
  const nodeGyp = process.env.npm_config_node_gyp ?? path.join(path.dirname(process.execPath), "../lib/node_modules/npm/node_modules/node-gyp/bin/node-gyp.js");
  if (!existsSync(nodeGyp)) {
    console.error(`thinktune: neither cmake nor node-gyp (${nodeGyp}) was found; install cmake (Debian/Ubuntu: sudo apt-get install cmake) and run npm install again.`);
    process.exit(1);
  }
  const status = run(process.execPath, [nodeGyp, "rebuild"]);
  if (status !== 0) process.exit(status);
}
