// Commands the CLI prints for the user ("Resume with: ...") are written the way the CLI was started,
// so each works as printed: thinktune on the PATH, npx, npm run, or node with the script's path.
import { mkdtemp, rm, symlink, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { userCommand } from "../../src/cli/user-command.js";

let dir: string;
let script: string;
const saved = { argv1: process.argv[1], PATH: process.env.PATH, npm_command: process.env.npm_command, npm_lifecycle_event: process.env.npm_lifecycle_event };

beforeAll(async () => {
  dir = await mkdtemp(path.join(tmpdir(), "thinktune-user-command-"));
  script = path.join(dir, "main.js");
  await writeFile(script, "");
  await symlink(script, path.join(dir, "thinktune"));
});
afterEach(() => {
  process.argv[1] = saved.argv1;
  for (const key of ["PATH", "npm_command", "npm_lifecycle_event"] as const) {
    if (saved[key] === undefined) delete process.env[key];
    else process.env[key] = saved[key];
  }
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe("userCommand", () => {
  it("is `thinktune ...` when the thinktune on the PATH is this CLI", () => {
    process.argv[1] = script;
    process.env.PATH = `/nonexistent${path.delimiter}${dir}`;
    delete process.env.npm_command;
    expect(userCommand("train", "--resume", "runs/my run")).toBe("thinktune train --resume 'runs/my run'");
  });

  it("is `npx thinktune ...` under npx, and `npm run train -- ...` under npm run train", () => {
    process.argv[1] = script;
    process.env.PATH = "/nonexistent";
    process.env.npm_command = "exec";
    expect(userCommand("train", "--resume", "runs/a")).toBe("npx thinktune train --resume runs/a");
    process.env.npm_command = "run-script";
    process.env.npm_lifecycle_event = "train";
    expect(userCommand("train", "--resume", "runs/a")).toBe("npm run train -- --resume runs/a");
  });

  it("is node with the script's path otherwise", () => {
    process.argv[1] = script;
    process.env.PATH = "/nonexistent";
    delete process.env.npm_command;
    expect(userCommand("data", "check")).toMatch(new RegExp(`^node( \\S+)* ${path.relative(process.cwd(), script).replace(/[.]/g, "\\.")} data check$`));
  });
});
