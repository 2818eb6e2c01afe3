// The chat REPL. On a terminal: the thought streams dimmed (or is hidden), then the answer; commands
// /reset, /system, /save, /exit, /help; Ctrl-C stops a reply, or leaves at the prompt. In a pipe: a line
// in, an answer out on stdout (the thought goes to stderr unless hidden), or with `json` one JSON object
// per line {reasoning_content, content, finish_reason}, so scripts can read replies that span lines.
import readline from "node:readline";
import type { Readable, Writable } from "node:stream";
import type { ChatSession } from "./chat-session.js";
import type { GenerationOptions } from "./generate.js";

export interface ReplOptions {
  input: Readable;
  output: Writable;
  /** where the thought goes in pipe mode */
  errorOutput: Writable;
  /** a terminal: prompts, dimmed thought, Ctrl-C handling */
  interactive: boolean;
  hideThinking?: boolean;
  /** pipe mode: one JSON object per reply */
  json?: boolean;
  generation?: Omit<GenerationOptions, "signal" | "onDelta">;
}

const dim = "\x1b[2m";
const undim = "\x1b[22m";

const helpText = `Commands:
  /reset            forget the conversation
  /system [TEXT]    show the system prompt, or set it (an empty TEXT clears it)
  /save [FILE]      write the conversation as JSON (default chat-<time>.json)
  /exit             leave (also Ctrl-D)
`;

export async function runRepl(session: ChatSession, options: ReplOptions): Promise<void> {
  const { output, interactive } = options;
  const lines = readline.createInterface({ input: options.input, output: interactive ? output : undefined, terminal: interactive });
  let current: AbortController | undefined;
  let closed = false;
  // On a terminal, Ctrl-D stops the reply in progress; a pipe's end only means no more lines will come.
  lines.on("close", () => {
    closed = true;
    if (interactive) current?.abort();
  });
  if (interactive) {
    lines.on("SIGINT", () => {
      if (current) current.abort();
      else lines.close();
    });
    output.write(`Chatting with ${session.modelId}. /help lists the commands.\n`);
    lines.setPrompt("> ");
    lines.prompt();
  }
  try {
    for await (const rawLine of lines) {
      const line = rawLine.trim();
      if (line === "") {
        if (interactive) lines.prompt();
        continue;
      }
      if (line.startsWith("/")) {
        const leave = await runCommand(session, line, options);
        if (leave) break;
        if (interactive) lines.prompt();
        continue;
      }
      current = new AbortController();
      try {
        await reply(session, line, current.signal, options);
      } catch (error) {
        options.errorOutput.write(`error: ${(error as Error).message}\n`);
      } finally {
        current = undefined;
      }
      if (closed && interactive) break;
      if (interactive) lines.prompt();
    }
  } finally {
    lines.close();
  }
}

async function reply(session: ChatSession, text: string, signal: AbortSignal, options: ReplOptions): Promise<void> {
  const { output, interactive } = options;
  const thoughtOutput = interactive ? output : options.errorOutput;
  let thoughtOpen = false;
  let answerStarted = false;
  const result = await session.send(text, {
    ...options.generation,
    signal,
    onDelta: (delta) => {
      if (options.json) return;
      if (delta.thought !== "" && !options.hideThinking) {
        if (!thoughtOpen) thoughtOutput.write(interactive ? `${dim}Thinking: ` : "");
        thoughtOpen = true;
        thoughtOutput.write(delta.thought);
      }
      if (delta.answer !== "") {
        if (thoughtOpen) {
          thoughtOutput.write(interactive ? `${undim}\n\n` : "\n");
          thoughtOpen = false;
        }
        answerStarted = true;
        output.write(delta.answer);
      }
    },
  });
  if (options.json) {
    output.write(`${JSON.stringify({ reasoning_content: result.reasoning, content: result.content, finish_reason: result.finishReason })}\n`);
    return;
  }
  if (thoughtOpen) thoughtOutput.write(interactive ? `${undim}\n` : "\n");
  if (answerStarted || !interactive) output.write("\n");
  if (result.finishReason === "length") {
    const limit = options.generation?.maxTokens;
    const note =
      limit !== undefined && result.completionTokens >= limit
        ? `[the reply stopped at its limit of ${limit} tokens; --max-tokens raises it]`
        : "[the reply stopped: the context is full; /reset starts over, --ctx-size makes it larger]";
    if (interactive) output.write(`${dim}${note}${undim}\n`);
    else options.errorOutput.write(`${note}\n`);
  }
  if (interactive && result.finishReason === "abort") output.write(`${dim}[stopped]${undim}\n`);
}

/** Runs a /command; returns true when the REPL should end. */
async function runCommand(session: ChatSession, line: string, options: ReplOptions): Promise<boolean> {
  const [command, ...rest] = line.split(/\s+/);
  const argument = line.slice(command.length).trim();
  const say = (text: string) => (options.interactive ? options.output : options.errorOutput).write(`${text}\n`);
  switch (command) {
    case "/exit":
    case "/quit":
      return true;
    case "/reset":
      session.reset();
      say("The conversation was reset.");
      return false;
    case "/system":
      if (rest.length === 0) say(session.systemPrompt ? `System prompt: ${session.systemPrompt}` : "No system prompt.");
      else {
        session.systemPrompt = argument === '""' ? undefined : argument;
        say(session.systemPrompt ? "The system prompt was set." : "The system prompt was cleared.");
      }
      return false;
    case "/save": {
      const file = argument || `chat-${new Date().toISOString().replace(/[:.]/g, "-")}.json`;
      try {
        say(`Saved to ${await session.save(file)}`);
      } catch (error) {
        say(`error: the conversation could not be saved to ${file}: ${(error as Error).message}`);
      }
      return false;
    }
    case "/help":
      (options.interactive ? options.output : options.errorOutput).write(helpText);
      return false;
    default:
      say(`Unknown command ${command}. ${helpText}`);
      return false;
  }
}
