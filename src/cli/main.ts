#!/usr/bin/env node
// The thinktune command line: one command per file, registered here.
import { Command } from "commander";
import { loadNativeAddon } from "../native/addon.js";

const program = new Command();
program
  .name("thinktune")
  .description("LoRA fine-tuning of reasoning models in Node.js: GGUF in, adapter out")
  .version(versionLine(), "-V, --version", "print the version and the backends the native addon was built with");

function versionLine(): string {
  try {
    const addon = loadNativeAddon();
    return `thinktune ${addon.version} (backends: ${addon.backends.join(", ")})`;
  } catch (error) {
    return `thinktune (native addon unavailable: ${(error as Error).message})`;
  }
}

// Commands register themselves on `program` (one file each in src/cli/).

await program.parseAsync(process.argv);
