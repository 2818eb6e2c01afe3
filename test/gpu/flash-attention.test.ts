// The fused attention kernels against an fp64 reference, every kernel variant, on packed rows with
// grouped-query heads (the checks of bench/kernels/flash_attention_check.cu, built with the CUDA engine).
import { execFile } from "node:child_process";
import { existsSync } from "node:fs";
import path from "node:path";
import { promisify } from "node:util";
import { describe, expect, it } from "vitest";
import { cudaSkipReason } from "./cuda-support.js";

const run = promisify(execFile);
const program = path.resolve("build", "Release", "thinktune_attention_check");

describe.skipIf(cudaSkipReason !== undefined)(`fused attention kernels ${cudaSkipReason ?? ""}`, () => {
  it("match the fp64 reference (out, log-sum-exp, dQ, dK, dV) in every variant", async () => {
    expect(existsSync(program), `${program} is built with the CUDA engine`).toBe(true);
    const { stdout } = await run(program, ["--seqs", ""], { timeout: 120_000 });
    expect(stdout).not.toContain("FAIL");
    expect(stdout).toContain("correctness: all variants pass");
  }, 150_000);
});
