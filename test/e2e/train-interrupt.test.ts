// A second Ctrl-C ends `thinktune train` at once, also in the middle of a long step: process.exit
// would wait for the step on libuv's thread pool (seconds on a real model), so the CLI dies by the
// signal instead. A model large enough for a step to take seconds on the CPU shows the difference.
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { spawnCli } from "../helpers/cli.js";
import { synthModel } from "../helpers/models.js";

let dir: string;
let model: string;

beforeAll(async () => {
  dir = await mkdtemp(path.join(tmpdir(), "thinktune-interrupt-"));
  model = await synthModel({ nLayer: 8, nEmbd: 768, nHead: 12, nHeadKv: 4, nFf: 2048, contextLength: 1024, type: "Q8_0", seed: 3 });
}, 300_000);
afterAll(async () => {
  if (dir) await rm(dir, { recursive: true, force: true });
});

describe("thinktune train: a second Ctrl-C", () => {
  it("ends the process at once, without waiting for the step in progress", async () => {
    const args = ["--model", model, "--out", path.join(dir, "run"), "--max-length", "1024", "--lr", "1e-3", "--max-steps", "50", "--log-every", "1", "--preview-tokens", "0", "--eval-every", "1000"];
    const stepTimes: number[] = [];
    let secondSignalAt = 0;
    const run = spawnCli(["train", ...args], {
      onStdout: (stdout, child) => {
        const steps = stdout.match(/step \d+\/50/g)?.length ?? 0;
        while (stepTimes.length < steps) stepTimes.push(performance.now());
        if (stepTimes.length === 2 && secondSignalAt === 0) {
          // a third of the way into step 3: the first Ctrl-C asks for a checkpoint, the second to leave now
          const stepMs = stepTimes[1] - stepTimes[0];
          secondSignalAt = -1;
          setTimeout(() => {
            child.kill("SIGINT");
            setTimeout(() => {
              secondSignalAt = performance.now();
              child.kill("SIGINT");
            }, 50);
          }, stepMs / 3);
        }
      },
    });
    const { code: status, stdout, stderr } = await run;
    const at = performance.now();
    expect(status, stderr).toBe(130);
    expect(stdout).toContain("SIGINT again: exiting now without a checkpoint.");
    const stepMs = stepTimes[1] - stepTimes[0];
    const exitMs = at - secondSignalAt;
    console.log(`step ${(stepMs / 1000).toFixed(1)} s; exit ${(exitMs / 1000).toFixed(2)} s after the second Ctrl-C`);
    expect(stepMs).toBeGreaterThan(2000); // the step is long enough for waiting on it to show
    expect(exitMs).toBeLessThan(Math.min(1000, stepMs / 2));
  }, 300_000);
});
