// `npm install` on a fresh clone must leave package-lock.json as committed (git clean, bench records
// not "-dirty"), whether npm keeps registry URLs in locks (its default) or omits them
// (omit-lockfile-registry-resolved, common behind mirrors).
import { execFile } from "node:child_process";
import { copyFile, mkdtemp, readFile, rm } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

const run = promisify(execFile);
const projectRoot = path.resolve(import.meta.dirname, "..", "..");
let work: string;

beforeAll(async () => {
  work = await mkdtemp(path.join(os.tmpdir(), "thinktune-lock-"));
});
afterAll(async () => {
  await rm(work, { recursive: true, force: true });
});

describe("package-lock.json", () => {
  for (const omitResolved of [false, true]) {
    it(`is unchanged by npm install with omit-lockfile-registry-resolved=${omitResolved}`, async () => {
      const dir = path.join(work, `omit-${omitResolved}`);
      await run("mkdir", ["-p", dir]);
      for (const file of ["package.json", "package-lock.json"]) await copyFile(path.join(projectRoot, file), path.join(dir, file));
      const committed = await readFile(path.join(dir, "package-lock.json"), "utf8");
      // --package-lock-only: npm settles the lock exactly as a full install would, without node_modules.
      await run(
        "npm",
        ["install", "--package-lock-only", "--ignore-scripts", "--prefer-offline", "--no-audit", "--no-fund", `--omit-lockfile-registry-resolved=${omitResolved}`],
        { cwd: dir, timeout: 120_000 },
      );
      expect(await readFile(path.join(dir, "package-lock.json"), "utf8")).toBe(committed);
    });
  }
});
