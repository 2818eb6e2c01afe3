// Seeded mutation fuzzing of models/tiny-r1.gguf: every variant given to inspect and Engine.load (in child
// processes) is accepted by both (and then by llama.cpp's vocab-only load, as data check and serve do) or
// refused by both with one line naming what is wrong and where; none crashes the process or stalls it. THINKTUNE_FUZZ_SEED and THINKTUNE_FUZZ_COUNT pick the variants (a
// failure report names the seed and the variant, which reproduces it).
import { fork, type ChildProcess } from "node:child_process";
import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { baseLayout, makeVariant, type BaseLayout } from "../helpers/gguf-fuzz.js";
import type { FuzzOutcome, FuzzReply } from "../helpers/gguf-fuzz-worker.js";

const projectRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..", "..");
const seed = Number(process.env.THINKTUNE_FUZZ_SEED ?? 20261201);
const count = Number(process.env.THINKTUNE_FUZZ_COUNT ?? 500);
const workers = 2;
/** a variant that takes longer than this has hung (one takes well under a second) */
const hangMs = 30_000;

/** A refusal that says what is wrong: one line, naming the file and a byte, tensor, key or the header part. */
function namesWhatIsWrong(message: string, file: string): boolean {
  if (message.includes("\n") || !message.includes(file)) return false;
  if (/undefined|\[object|bad_alloc|Cannot read propert|is not a function|Invalid array length|Maximum call stack/.test(message)) return false;
  return /byte \d+|tensor "|tensor [\w.]+|metadata "?[\w.]+|key "[\w.]+"|GGUF version \d+|not a GGUF file|alignment/.test(message);
}

interface VariantResult {
  index: number;
  mutations: string[];
  reply?: FuzzReply;
  crash?: string;
  hang?: boolean;
}

let dir: string;
let base: BaseLayout;
beforeAll(async () => {
  dir = await mkdtemp(path.join(tmpdir(), "thinktune-gguf-fuzz-"));
  const file = path.join(projectRoot, "models", "tiny-r1.gguf");
  base = await baseLayout(file, await readFile(file));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

/** Runs every variant through a pool of worker processes; a worker that dies or stalls is replaced. */
async function runVariants(): Promise<VariantResult[]> {
  const results: VariantResult[] = [];
  let next = 0;
  const runWorker = async (): Promise<void> => {
    while (next < count) {
      const child: ChildProcess = fork(path.join(projectRoot, "test", "helpers", "gguf-fuzz-worker.ts"), [], {
        execArgv: ["--import", "tsx"],
        cwd: projectRoot,
        stdio: ["ignore", "ignore", "pipe", "ipc"],
      });
      let stderr = "";
      child.stderr!.on("data", (chunk: Buffer) => {
        stderr = (stderr + chunk.toString()).slice(-2000);
      });
      await new Promise<void>((resolve, reject) => {
        child.once("message", () => resolve());
        child.once("exit", (code, signal) => reject(new Error(`fuzz worker exited at start (${signal ?? code}): ${stderr}`)));
      });
      // variants until this worker dies or stalls
      while (next < count) {
        const variant = makeVariant(base, seed, next++);
        const file = path.join(dir, `variant-${variant.index}.gguf`);
        await writeFile(file, variant.bytes);
        const result: VariantResult = { index: variant.index, mutations: variant.mutations };
        results.push(result);
        const ended = await new Promise<boolean>((resolve) => {
          const timer = setTimeout(() => {
            result.hang = true;
            child.kill("SIGKILL");
            resolve(false);
          }, hangMs);
          const onExit = (code: number | null, signal: string | null) => {
            clearTimeout(timer);
            result.crash = `${signal ?? `exit code ${code}`}: ${stderr.trim().split("\n").slice(-3).join(" | ")}`;
            resolve(false);
          };
          child.once("exit", onExit);
          child.once("message", (reply: FuzzReply) => {
            clearTimeout(timer);
            child.off("exit", onExit);
            result.reply = reply;
            resolve(true);
          });
          child.send({ index: variant.index, file });
        });
        await rm(file, { force: true });
        if (!ended) break;
      }
      if (child.exitCode === null && child.signalCode === null) {
        const exited = new Promise((resolve) => child.once("exit", resolve));
        child.kill();
        await exited;
      }
    }
  };
  await Promise.all(Array.from({ length: workers }, runWorker));
  return results.sort((a, b) => a.index - b.index);
}

describe(`GGUF mutation fuzzing (seed ${seed}, ${count} variants)`, () => {
  it("never crashes or stalls, and every refusal names what is wrong; inspect, Engine.load and llama.cpp agree", { timeout: 60_000 + count * 2_000 }, async () => {
    const started = performance.now();
    const results = await runVariants();
    const describe = (result: VariantResult) => `variant ${result.index} (${result.mutations.join("; ")})`;
    const file = (result: VariantResult) => path.join(dir, `variant-${result.index}.gguf`);
    const unclear = (result: VariantResult, outcome: FuzzOutcome | undefined) =>
      outcome !== undefined && !outcome.ok && !namesWhatIsWrong(outcome.message ?? "", file(result));
    const crashes = results.filter((result) => result.crash).map((result) => `${describe(result)}: ${result.crash}`);
    const hangs = results.filter((result) => result.hang).map(describe);
    const unclearRefusals = results
      .filter((result) => unclear(result, result.reply?.inspect) || unclear(result, result.reply?.load))
      .map((result) => `${describe(result)}: inspect: ${result.reply!.inspect.message ?? "ok"} / load: ${result.reply!.load.message ?? "ok"}`);
    const tokenizerFailures = results
      .filter((result) => result.reply?.tokenizer && !result.reply.tokenizer.ok)
      .map((result) => `${describe(result)}: inspect accepts it, llama.cpp's vocab-only load refuses it (${result.reply!.tokenizer!.message})`);
    const disagreements = results
      .filter((result) => result.reply && result.reply.inspect.ok !== result.reply.load.ok)
      .map((result) => `${describe(result)}: inspect ${result.reply!.inspect.ok ? "accepts" : `refuses (${result.reply!.inspect.message})`}, Engine.load ${result.reply!.load.ok ? "accepts" : `refuses (${result.reply!.load.message})`}`);
    const refused = results.filter((result) => result.reply && !result.reply.inspect.ok).length;
    console.log(
      `gguf fuzz: seed ${seed}, ${results.length} variants, ${refused} refused, ${results.length - refused - crashes.length - hangs.length} accepted, ` +
        `${crashes.length} crashes, ${hangs.length} hangs, ${unclearRefusals.length} unclear refusals, ${disagreements.length} disagreements, ` +
        `${tokenizerFailures.length} refused by llama.cpp after inspect, ` +
        `${((performance.now() - started) / 1000).toFixed(1)} s`,
    );
    expect(results).toHaveLength(count);
    expect({ crashes, hangs, unclearRefusals, disagreements, tokenizerFailures }).toEqual({ crashes: [], hangs: [], unclearRefusals: [], disagreements: [], tokenizerFailures: [] });
    // the mutations reach the checks: most variants are refused, and some are not (text changes in tokens)
    expect(refused).toBeGreaterThan(count / 2);
  });
});
