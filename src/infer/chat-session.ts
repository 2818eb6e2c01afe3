// A conversation with one model (base or adapter): the history as the R1 template wants it (earlier
// turns keep only their answers; the thought is kept beside them for /save), a system prompt, reset.
import path from "node:path";
import { writeFileAtomic } from "../util/atomic-file.js";
import type { GenerationOptions, GenerationResult } from "./generate.js";
import type { ModelHost } from "./models.js";
import type { ChatMessage } from "./prompt.js";

export interface ChatTurn {
  role: "user" | "assistant";
  content: string;
  /** the assistant's thought */
  reasoning?: string;
}

export class ChatSession {
  readonly host: ModelHost;
  readonly modelId: string;
  systemPrompt: string | undefined;
  readonly #turns: ChatTurn[] = [];

  constructor(host: ModelHost, modelId: string, systemPrompt?: string) {
    this.host = host;
    this.modelId = modelId;
    this.systemPrompt = systemPrompt;
  }

  get turns(): readonly ChatTurn[] {
    return this.#turns;
  }

  reset(): void {
    this.#turns.length = 0;
  }

  /** Sends one user message; the reply is added to the history unless the generation was aborted. */
  async send(text: string, options: GenerationOptions = {}): Promise<GenerationResult> {
    const messages: ChatMessage[] = [];
    if (this.systemPrompt) messages.push({ role: "system", content: this.systemPrompt });
    for (const turn of this.#turns) messages.push({ role: turn.role, content: turn.content });
    messages.push({ role: "user", content: text });
    const result = await this.host.generate(this.modelId, messages, options);
    if (result.finishReason !== "abort") {
      this.#turns.push({ role: "user", content: text });
      this.#turns.push({ role: "assistant", content: result.content, reasoning: result.reasoning });
    }
    return result;
  }

  /** Writes the conversation as JSON ({model, system, messages}) under a temporary name, then renames it. */
  async save(file: string): Promise<string> {
    const target = path.resolve(file);
    const record = {
      model: this.host.modelPath,
      served: this.modelId,
      adapter: this.host.models.find((model) => model.id === this.modelId)?.adapter?.input ?? null,
      system: this.systemPrompt ?? null,
      messages: this.#turns.map((turn) => (turn.role === "assistant" ? { role: turn.role, content: turn.content, reasoning_content: turn.reasoning ?? "" } : turn)),
      savedAt: new Date().toISOString(),
    };
    await writeFileAtomic(target, `${JSON.stringify(record, null, 2)}\n`);
    return target;
  }
}
