#!/usr/bin/env node
// The thinktune command line: one command per file, registered here.
import { Command } from "commander";
import { loadNativeAddon } from "../native/addon.js";
import { registerExportCommand } from "./export.js";
import { registerSynthCommand } from "./synth.js";
import { registerInspectCommand } from "./inspect.js";
import { registerTrainCommand } from "./train.js";
import { registerDataCommand } from "./data.js";
import { registerChatCommand } from "./chat.js";
import { registerServeCommand } from "./serve.js";
import { registerBenchCommand } from "./bench.js";

const program = new Command();
program
  .name("thinktune")
  .description("LoRA fine-tuning of reasoning models in Node.js: GGUF in, adapter out")
  .version(versionLine(), "-V, --version", "print the version and the backends the native addon was built with");

function versionLine(): string {
  try {
    const addon = loadNativeAddon();
    const backends = addon.backends.map((name) =>
      name === "cuda" && addon.cudaArchitectures ? `cuda for ${addon.cudaArchitectures.replaceAll(",", ", ")}` : name,
    );
    return `thinktune ${addon.version} (backends: ${backends.join(", ")})`;
  } catch (error) {
    return `thinktune (native addon unavailable: ${(error as Error).message})`;
  }
}

// Commands register themselves on `program` (one file each in src/cli/).
registerExportCommand(program);
registerSynthCommand(program);
registerInspectCommand(program);
registerTrainCommand(program);
registerDataCommand(program);
registerChatCommand(program);
registerServeCommand(program);
registerBenchCommand(program);

// Errors thrown by a command end here: one line, no stack trace, exit code 1.
try {
  await program.parseAsync(process.argv);
} catch (error) {
  process.stderr.write(`thinktune: ${error instanceof Error ? error.message : String(error)}\n`);
  process.exit(1);
}
