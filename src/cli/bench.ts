// `thinktune bench --device cpu|cuda`: throughput of the engine beside llama.cpp and transformers + PEFT,
// measured in one command; appends bench/results.jsonl and rewrites bench/RESULTS.md.
import os from "node:os";
import path from "node:path";
import { InvalidArgumentError, Option, type Command } from "commander";
import { appendBenchRecords, readBenchRecords, renderResultsMarkdown, writeResultsMarkdown, type AnyBenchRecord } from "../bench/results.js";
import { projectRoot, runCpuBench, runCudaBench } from "../bench/run.js";
import { ggmlTypeNames } from "../gguf/ggml-types.js";
import type { GgmlTypeName } from "../native/addon.js";
import { parseByteSize } from "../train/byte-size.js";
import { nameArgument } from "./names.js";

interface BenchFlags {
  device: "cpu" | "cuda";
  type?: GgmlTypeName[];
  seq?: number[];
  threads: number;
  steps?: number;
  forwardRepeats: number;
  peft: boolean;
  llamaCpp: boolean;
  python?: string;
  peftScript?: string;
  date: string;
  machine?: string;
  commit?: string;
  peakTflops?: number;
  gpuMemory?: number;
  attention: boolean;
  results: string;
  record: boolean;
}

function positiveIntegerArgument(value: string): number {
  if (!/^\d+$/.test(value.trim()) || Number(value) <= 0) throw new InvalidArgumentError(`expected a positive whole number, got "${value}"`);
  return Number(value);
}

function listOf<T>(parse: (item: string) => T) {
  return (value: string, previous: T[] | undefined): T[] => [...(previous ?? []), ...value.split(",").map((item) => parse(item.trim()))];
}

const typeArgument = nameArgument(ggmlTypeNames);

function positiveNumberArgument(value: string): number {
  const number = Number(value);
  if (value.trim() === "" || !Number.isFinite(number) || number <= 0) throw new InvalidArgumentError(`expected a positive number, got "${value}"`);
  return number;
}

function byteSizeArgument(value: string): number {
  const bytes = parseByteSize(value);
  if (bytes === undefined) throw new InvalidArgumentError(`expected a size like 24GiB or 512MiB, got "${value}"`);
  return bytes;
}

function dateArgument(value: string): string {
  if (!/^\d{4}-\d{2}-\d{2}$/.test(value)) throw new InvalidArgumentError(`expected a date as YYYY-MM-DD, got "${value}"`);
  return value;
}

const defaults = {
  cpu: { types: ["Q8_0"] as GgmlTypeName[], seqs: [512], steps: 3 },
  cuda: { types: ["Q4_K", "Q8_0", "F16"] as GgmlTypeName[], seqs: [1024, 4096, 16384], steps: 5 },
};

export function registerBenchCommand(program: Command): void {
  program
    .command("bench")
    .description(
      "measure LoRA training and forward tokens/s on a synth model (cached) beside llama.cpp's prompt evaluation and transformers + PEFT, " +
        "append bench/results.jsonl and rewrite bench/RESULTS.md",
    )
    .addOption(new Option("--device <device>", "cpu: 8x1024 qwen2 (156M); cuda: the R1-Distill-Qwen-7B shape").choices(["cpu", "cuda"]).default("cpu"))
    .option("--type <types>", `base weight types, comma-separated (cpu default ${defaults.cpu.types.join(",")}; cuda ${defaults.cuda.types.join(",")})`, listOf(typeArgument))
    .option("--seq <lengths>", `tokens per sequence, comma-separated (cpu default ${defaults.cpu.seqs.join(",")}; cuda ${defaults.cuda.seqs.join(",")})`, listOf(positiveIntegerArgument))
    .option("--threads <n>", "CPU threads for thinktune and llama.cpp alike", positiveIntegerArgument, os.availableParallelism())
    .option("--steps <n>", `timed training steps after the warm-up (cpu default ${defaults.cpu.steps}; cuda ${defaults.cuda.steps})`, positiveIntegerArgument)
    .option("--forward-repeats <n>", "timed forward passes after the warm-up", positiveIntegerArgument, 3)
    .option("--no-peft", "skip transformers + PEFT")
    .option("--no-llama-cpp", "skip llama.cpp's prompt evaluation (CPU)")
    .option("--python <path>", "Python with torch, transformers and peft (default .venv-ref/bin/python, else python3)")
    .option("--peft-script <path>", "the peer script (default ../shared/bench/peft_lora.py, else .device/bench/peft_lora.py)")
    .option("--date <YYYY-MM-DD>", "date of the record", dateArgument, new Date().toISOString().slice(0, 10))
    .option("--machine <words>", "machine of the record (default: cores and CPU model)")
    .option("--commit <id>", "commit of the record (default: git rev-parse --short HEAD, -dirty with local changes)")
    .option("--peak-tflops <x>", "dense bf16 peak of the GPU, for MFU (default known for H100, H200, A100)", positiveNumberArgument)
    .option("--gpu-memory <size>", "cuda: plan as if the GPU had this much memory (e.g. 24GiB); a plan that does not fit is refused", byteSizeArgument)
    .option("--no-attention", "cuda: skip timing the fused attention alone beside torch SDPA")
    .option("--results <dir>", "folder of results.jsonl and RESULTS.md", path.join(projectRoot, "bench"))
    .option("--no-record", "print the measurements without writing the results files")
    .action(async (flags: BenchFlags) => {
      const chosen = defaults[flags.device];
      const common = {
        types: flags.type ?? chosen.types,
        seqs: flags.seq ?? chosen.seqs,
        steps: flags.steps ?? chosen.steps,
        peft: flags.peft,
        python: flags.python,
        peftScript: flags.peftScript,
        date: flags.date,
        machine: flags.machine,
        commit: flags.commit,
        progress: (message: string) => {
          process.stderr.write(`${message}\n`);
        },
      };
      const records: AnyBenchRecord[] =
        flags.device === "cpu"
          ? await runCpuBench({ ...common, threads: flags.threads, llamaCpp: flags.llamaCpp, forwardRepeats: flags.forwardRepeats })
          : await runCudaBench({ ...common, peakTflops: flags.peakTflops, gpuMemoryBytes: flags.gpuMemory, attention: flags.attention });
      if (flags.record) {
        const jsonl = path.join(flags.results, "results.jsonl");
        await appendBenchRecords(jsonl, records);
        const markdown = path.join(flags.results, "RESULTS.md");
        await writeResultsMarkdown(markdown, await readBenchRecords(jsonl));
        process.stderr.write(`appended ${records.length} record(s) to ${path.relative(process.cwd(), jsonl)}; rewrote ${path.relative(process.cwd(), markdown)}\n`);
      }
      // the table of this run's records on stdout
      process.stdout.write(renderResultsMarkdown(records));
    });
}
