// `thinktune chat --model BASE [--lora ADAPTER]`: the R1-aware REPL (and `npm run chat`, whose default
// model is the embedded tiny one). In a pipe it answers line by line for scripts.
import { Command, InvalidArgumentError } from "commander";
import { ChatSession } from "../infer/chat-session.js";
import { defaultReplyTokens, defaultThoughtBudget } from "../infer/generate.js";
import { ModelHost } from "../infer/models.js";
import { runRepl } from "../infer/repl.js";
import { embeddedModelPath } from "../train/config.js";
import { modelSourceHelp, resolveModelSource } from "./model-source.js";

export const wholeNumber = (name: string, min: number) => (value: string): number => {
  if (!/^\d+$/.test(value) || Number(value) < min) throw new InvalidArgumentError(`${name} must be a whole number of at least ${min}, got "${value}"`);
  return Number(value);
};

export const temperatureValue = (value: string): number => {
  const number = Number(value);
  if (value.trim() === "" || !Number.isFinite(number) || number < 0 || number > 2) throw new InvalidArgumentError(`--temperature must be from 0 to 2, got "${value}"`);
  return number;
};

/** Flags shared by chat and serve: the model, how it runs, and generation defaults. */
export interface InferenceFlags {
  model: string;
  ctxSize?: number;
  threads?: number;
  cpu?: boolean;
  temperature: number;
  maxTokens: number;
  thoughtBudget?: number;
}

export function addInferenceFlags(command: Command): Command {
  return command
    .option("-m, --model <model>", `base model: ${modelSourceHelp}`, embeddedModelPath)
    .option("--ctx-size <tokens>", "context size per conversation (default: up to 8192, within the model's)", wholeNumber("--ctx-size", 16))
    .option("--threads <n>", "CPU threads (default: the cores not busy with other processes, measured before each reply)", wholeNumber("--threads", 1))
    .option("--cpu", "do not use a GPU even when one is found")
    .option("-t, --temperature <t>", "sampling temperature, 0 = greedy", temperatureValue, 0.6)
    .option("--max-tokens <n>", "tokens per reply at most, thought and answer together", wholeNumber("--max-tokens", 1), defaultReplyTokens)
    .option(
      "--thought-budget <n>",
      `thought tokens at most; then the thought is closed and the model answers (default: 3/4 of --max-tokens, ${defaultThoughtBudget(defaultReplyTokens)})`,
      wholeNumber("--thought-budget", 0),
    );
}

interface ChatFlags extends InferenceFlags {
  lora?: string;
  system?: string;
  hideThinking?: boolean;
  json?: boolean;
  seed?: number;
}

export function registerChatCommand(program: Command): void {
  addInferenceFlags(
    program
      .command("chat")
      .description("chat with a model (and a LoRA adapter): the thought streams dimmed, then the answer; in a pipe, a line in and an answer out")
      .option("-l, --lora <adapter>", "adapter: an adapter .gguf, a run folder, or a checkpoint folder (checkpoints/step-N)"),
  )
    .option("-s, --system <text>", "system prompt")
    .option("--hide-thinking", "do not show the thought")
    .option("--json", "in a pipe: one JSON object per reply {reasoning_content, content, finish_reason}")
    .option("--seed <n>", "sampling seed", wholeNumber("--seed", 0))
    .action(async (flags: ChatFlags) => {
      const host = await ModelHost.load({
        modelPath: await resolveModelSource(flags.model),
        adapters: flags.lora ? [flags.lora] : [],
        gpu: flags.cpu ? false : "auto",
        contextSize: flags.ctxSize,
        threads: flags.threads,
        parallel: 1,
      });
      try {
        const modelId = host.models[host.models.length - 1].id; // the adapter when one was given
        const session = new ChatSession(host, modelId, flags.system);
        await runRepl(session, {
          input: process.stdin,
          output: process.stdout,
          errorOutput: process.stderr,
          interactive: Boolean(process.stdin.isTTY && process.stdout.isTTY),
          hideThinking: flags.hideThinking,
          json: flags.json,
          generation: {
            temperature: flags.temperature,
            maxTokens: flags.maxTokens,
            thoughtBudget: flags.thoughtBudget ?? defaultThoughtBudget(flags.maxTokens),
            seed: flags.seed,
          },
        });
      } finally {
        await host.dispose();
      }
    });
}
