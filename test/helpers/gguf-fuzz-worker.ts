// Child process of the GGUF fuzz test: for each file the parent sends, runs inspectGguf and Engine.load,
// and on a file they accept, llama.cpp's own vocab-only load (what `data check`, `train` and `serve` do
// next), and answers with what each did. A crash or a hang here is what the test looks for, so the parent, not
// this process, decides what counts as one.
import { loadPartTokenizer } from "../../src/data/tokenizer.js";
import { inspectGguf } from "../../src/gguf/inspect.js";
import { Engine } from "../../src/train/engine.js";

export interface FuzzOutcome {
  ok: boolean;
  /** the error's name and message when refused */
  name?: string;
  message?: string;
}

export interface FuzzReply {
  index: number;
  inspect: FuzzOutcome;
  load: FuzzOutcome;
  /** llama.cpp's vocab-only load, when inspect accepted the file */
  tokenizer?: FuzzOutcome;
}

async function outcome(run: () => Promise<void>): Promise<FuzzOutcome> {
  try {
    await run();
    return { ok: true };
  } catch (error) {
    return { ok: false, name: (error as Error).name, message: (error as Error).message };
  }
}

process.on("message", (request: { index: number; file: string }) => {
  void (async () => {
    const inspect = await outcome(async () => {
      await inspectGguf(request.file);
    });
    const load = await outcome(async () => {
      const engine = await Engine.load(request.file, { threads: 1, maxTokens: 16 });
      engine.dispose();
    });
    const tokenizer = inspect.ok
      ? await outcome(async () => {
          const loaded = await loadPartTokenizer(request.file);
          loaded.countTokens("2 + 2 = 4");
          await loaded.dispose();
        })
      : undefined;
    process.send!({ index: request.index, inspect, load, ...(tokenizer ? { tokenizer } : {}) } satisfies FuzzReply);
  })();
});
process.send!({ ready: true });
