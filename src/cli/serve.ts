// `thinktune serve --model BASE [--lora ADAPTER ...]`: the OpenAI-compatible server and the chat page.
import { Command } from "commander";
import { startServer } from "../infer/server.js";
import { addInferenceFlags, wholeNumber, type InferenceFlags } from "./chat.js";
import { resolveModelSource } from "./model-source.js";

interface ServeFlags extends InferenceFlags {
  lora: string[];
  port: number;
  host: string;
  apiKey?: string;
  parallel: number;
}

export function registerServeCommand(program: Command): void {
  addInferenceFlags(
    program
      .command("serve")
      .description("serve a model and its adapters: OpenAI-compatible /v1/chat/completions (reasoning in reasoning_content), /v1/models, and a chat page at /")
      .option("-l, --lora <adapters...>", "adapters served on the base, chosen by `model`: .gguf files, run folders, checkpoint folders; NAME=PATH names one", []),
  )
    .option("-p, --port <port>", "port (0 picks a free one)", wholeNumber("--port", 0), 8080)
    .option("--host <address>", "address to bind; anything but 127.0.0.1/::1 exposes the server to the network", "127.0.0.1")
    .option("--api-key <key>", "require 'Authorization: Bearer <key>' on /v1 (default: the THINKTUNE_API_KEY environment variable)")
    .option("--parallel <n>", "generations at once; more requests queue", wholeNumber("--parallel", 1), 1)
    .action(async (flags: ServeFlags) => {
      const apiKey = flags.apiKey ?? (process.env.THINKTUNE_API_KEY || undefined);
      const running = await startServer({
        modelPath: await resolveModelSource(flags.model),
        adapters: flags.lora,
        gpu: flags.cpu ? false : "auto",
        contextSize: flags.ctxSize,
        threads: flags.threads,
        parallel: flags.parallel,
        port: flags.port,
        hostname: flags.host,
        apiKey,
        defaults: { temperature: flags.temperature, maxTokens: flags.maxTokens, thoughtBudget: flags.thoughtBudget },
      }).catch((error: NodeJS.ErrnoException) => {
        if (error.code === "EADDRINUSE") throw new Error(`${flags.host}:${flags.port} is already in use (another server is running there); pick another port with --port N, or --port 0 for a free one`);
        if (error.code === "EACCES") throw new Error(`${flags.host}:${flags.port} may not be bound by this user (ports below 1024 need privileges); pick another with --port N`);
        throw error;
      });
      const names = running.host.models.map((model) => (model.adapter ? `${model.id} (${model.adapter.input})` : `${model.id} (base)`));
      process.stdout.write(`thinktune serve: listening on ${running.url}\n  models: ${names.join(", ")}\n  chat page: ${running.url}/\n`);
      if (!apiKey && flags.host !== "127.0.0.1" && flags.host !== "::1" && flags.host !== "localhost") {
        process.stderr.write("thinktune serve: warning: bound to a network address without --api-key; anyone who can reach it can use it\n");
      }
      running.host.on("generation", ({ model, result, durationMs }) => {
        const speed = result.completionTokens / Math.max(durationMs / 1000, 1e-3);
        process.stdout.write(
          `${new Date().toISOString()} ${model}: ${result.promptTokens} prompt + ${result.completionTokens} completion tokens (${result.reasoningTokens} thought), ${result.finishReason}, ${speed.toFixed(1)} tokens/s\n`,
        );
      });
      const stop = () => {
        process.stdout.write("thinktune serve: stopping\n");
        void running.close().then(() => process.exit(0));
      };
      process.once("SIGINT", stop);
      process.once("SIGTERM", stop);
    });
}
