// `thinktune synth [--preset NAME] [shape and type flags] --seed N --out FILE`
import path from "node:path";
import { InvalidArgumentError, Option, type Command } from "commander";
import { resolveSynthOptions, synthParameterCount, synthPresetNames, synthTypeNames, writeSynthModel, type SynthInput, type SynthOptionLabels, type SynthPresetName } from "../gguf/synth.js";
import { nameArgument } from "./names.js";
import { formatBytes } from "./bytes.js";

function integerArgument(value: string): number {
  if (!/^\d+$/.test(value.trim())) throw new InvalidArgumentError(`expected a whole number, got "${value}"`);
  return Number(value);
}

function numberArgument(value: string): number {
  const number = Number(value);
  if (value.trim() === "" || !Number.isFinite(number)) throw new InvalidArgumentError(`expected a number, got "${value}"`);
  return number;
}

interface SynthFlags {
  preset: SynthPresetName;
  arch?: "qwen2" | "llama";
  layers?: number;
  embd?: number;
  heads?: number;
  kvHeads?: number;
  ffn?: number;
  vocab?: number;
  ctx?: number;
  ropeBase?: number;
  rmsEps?: number;
  tied?: boolean;
  qkvBias?: boolean;
  ropeFreqs?: boolean;
  type?: SynthInput["type"];
  seed: number;
  out: string;
}

const flagNames: SynthOptionLabels = {
  arch: "--arch",
  nLayer: "--layers",
  nEmbd: "--embd",
  nHead: "--heads",
  nHeadKv: "--kv-heads",
  nFf: "--ffn",
  nVocab: "--vocab",
  contextLength: "--ctx",
  ropeBase: "--rope-base",
  rmsEps: "--rms-eps",
  tiedOutput: "--tied",
  qkvBias: "--qkv-bias",
  ropeFreqs: "--rope-freqs",
  type: "--type",
  seed: "--seed",
};

function displayPath(file: string): string {
  const relative = path.relative(process.cwd(), file);
  return relative === "" || relative.startsWith("..") ? path.resolve(file) : relative;
}

export function registerSynthCommand(program: Command): void {
  program
    .command("synth")
    .description("write a random but valid model GGUF (qwen2 or llama, R1 tokenizer and chat template), deterministic from --seed")
    .addOption(new Option("--preset <name>", "starting shape").choices(synthPresetNames).default("tiny"))
    .addOption(new Option("--arch <arch>", "architecture").choices(["qwen2", "llama"]))
    .option("--layers <n>", "transformer blocks", integerArgument)
    .option("--embd <n>", "embedding width", integerArgument)
    .option("--heads <n>", "query heads", integerArgument)
    .option("--kv-heads <n>", "key/value heads", integerArgument)
    .option("--ffn <n>", "feed-forward width", integerArgument)
    .option("--vocab <n>", "vocabulary size", integerArgument)
    .option("--ctx <n>", "context length", integerArgument)
    .option("--rope-base <x>", "RoPE frequency base", numberArgument)
    .option("--rms-eps <x>", "RMS norm epsilon", numberArgument)
    .option("--tied", "no output.weight: the output reuses the token embedding")
    .option("--no-tied", "a separate output.weight")
    .option("--qkv-bias", "Q/K/V biases (the Qwen2 default)")
    .option("--no-qkv-bias", "no Q/K/V biases (the Llama default)")
    .option("--rope-freqs", "rope_freqs.weight with llama3 RoPE scaling (llama only)")
    .option("--no-rope-freqs", "no rope_freqs.weight")
    .option("--type <type>", `type of the weight matrices, or a llama-quantize mix (Q4_K_M, Q5_K_M); norms and biases stay F32: ${synthTypeNames.join(", ")}`, nameArgument(synthTypeNames))
    .option("--seed <n>", "random seed", integerArgument, 0)
    .requiredOption("-o, --out <file>", "the GGUF file to write")
    .action(async (flags: SynthFlags) => {
      const input: SynthInput = {
        preset: flags.preset,
        arch: flags.arch,
        nLayer: flags.layers,
        nEmbd: flags.embd,
        nHead: flags.heads,
        nHeadKv: flags.kvHeads,
        nFf: flags.ffn,
        nVocab: flags.vocab,
        contextLength: flags.ctx,
        ropeBase: flags.ropeBase,
        rmsEps: flags.rmsEps,
        tiedOutput: flags.tied,
        qkvBias: flags.qkvBias,
        ropeFreqs: flags.ropeFreqs,
        type: flags.type,
        seed: flags.seed,
      };
      const options = resolveSynthOptions(input, flagNames);
      const started = performance.now();
      const interactive = process.stderr.isTTY;
      const result = await writeSynthModel(flags.out, options, (progress) => {
        if (interactive) process.stderr.write(`\r\x1b[K[${progress.index}/${progress.count}] ${progress.tensor}`);
      });
      if (interactive) process.stderr.write("\r\x1b[K");
      const seconds = ((performance.now() - started) / 1000).toFixed(1);
      process.stdout.write(
        `wrote ${displayPath(result.path)}: ${options.arch} ${options.nLayer} layers × ${options.nEmbd}, ` +
          `${options.type}, ${(synthParameterCount(options) / 1e6).toFixed(2)}M parameters, ${result.tensorCount} tensors, ` +
          `${formatBytes(result.fileSize)} (${result.fileSize} bytes) in ${seconds} s\n`,
      );
    });
}
