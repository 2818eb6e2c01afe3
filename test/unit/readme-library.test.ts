// The README's library snippet, run as written against a stand-in Trainer that yields what a real run
// yields (its event types come from the trainer's module): a step, then a "done" that is completed or
// stopped. A snippet that reads a field the event lacks prints "undefined" to its first user.
import { readFile } from "node:fs/promises";
import path from "node:path";
import { describe, expect, it } from "vitest";
import type { TrainerEvent } from "../../src/train/trainer.js";

const projectRoot = path.resolve(import.meta.dirname, "..", "..");

async function librarySnippet(): Promise<string> {
  const readme = await readFile(path.join(projectRoot, "README.md"), "utf8");
  const block = [...readme.matchAll(/```ts\n([\s\S]*?)```/g)].map((match) => match[1]).find((code) => code.includes('import { Trainer } from "thinktune"'));
  if (!block) throw new Error("README.md has no ts block importing Trainer");
  return block.replace('import { Trainer } from "thinktune";', "");
}

async function runSnippet(events: TrainerEvent[]): Promise<string[]> {
  const printed: string[] = [];
  class Trainer {
    async *run(): AsyncGenerator<TrainerEvent> {
      yield* events;
    }
  }
  const console = { log: (...values: unknown[]) => printed.push(values.map(String).join(" ")) };
  const AsyncFunction = Object.getPrototypeOf(async () => {}).constructor as new (...args: string[]) => (...values: unknown[]) => Promise<void>;
  await new AsyncFunction("Trainer", "console", await librarySnippet())(Trainer, console);
  return printed;
}

const step = { type: "step", step: 1, loss: 2.5, tokensPerSecond: 100 } as TrainerEvent;
const done = { type: "done", step: 1, totalSteps: 500, runDir: "runs/a", elapsedMs: 10 };

describe("the README's library snippet", () => {
  it("prints the adapter of a completed run", async () => {
    const printed = await runSnippet([step, { ...done, reason: "completed", adapterPath: "runs/a/adapter/adapter.gguf" } as TrainerEvent]);
    expect(printed).toEqual(["1 2.5 100", "runs/a/adapter/adapter.gguf"]);
  });

  it("says where to resume a stopped run, never undefined", async () => {
    const printed = await runSnippet([step, { ...done, reason: "stopped", checkpointDir: "runs/a/checkpoints/step-1" } as TrainerEvent]);
    expect(printed.join("\n")).not.toContain("undefined");
    expect(printed[1]).toContain("runs/a");
  });
});
