// Renders a conversation into the prompt text the model was trained on, with the GGUF's own chat
// template (tokenizer.chat_template), as the training data is rendered: add_generation_prompt and
// enable_thinking set. R1 templates end the prompt with `<｜Assistant｜><think>\n`; older R1 templates
// end it with `<｜Assistant｜>` and leave the model to open the thought, which it then sometimes skips,
// so for a thinking template the `<think>\n` is added when missing (DeepSeek's own advice).
import { Template } from "@huggingface/jinja";
import { thinkClose, thinkOpen } from "./r1-stream.js";

export type ChatRole = "system" | "user" | "assistant";

export interface ChatMessage {
  role: ChatRole;
  content: string;
}

export interface RenderedPrompt {
  text: string;
  /** the prompt ends inside an open thought: generation starts with the reasoning */
  startsInThought: boolean;
}

export class ChatTemplateError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "ChatTemplateError";
  }
}

export class ChatPromptRenderer {
  readonly #template: Template;
  readonly #bosToken: string;
  readonly #eosToken: string;
  /** the template knows <think>…</think> (an R1-style reasoning model) */
  readonly thinking: boolean;

  constructor(options: { template: string; bosToken: string; eosToken: string; source: string }) {
    try {
      this.#template = new Template(options.template);
    } catch (error) {
      throw new ChatTemplateError(`the chat template of ${options.source} does not parse: ${(error as Error).message}`);
    }
    this.#bosToken = options.bosToken;
    this.#eosToken = options.eosToken;
    this.thinking = options.template.includes(thinkClose) || options.template.includes(thinkOpen);
  }

  render(messages: readonly ChatMessage[]): RenderedPrompt {
    let text: string;
    try {
      text = this.#template.render({
        messages: messages.map((message) => ({ role: message.role, content: message.content })),
        bos_token: this.#bosToken,
        eos_token: this.#eosToken,
        add_generation_prompt: true,
        enable_thinking: true,
      });
    } catch (error) {
      throw new ChatTemplateError(`the chat template failed to render the conversation: ${(error as Error).message}`);
    }
    if (!this.thinking) return { text, startsInThought: false };
    const tail = text.trimEnd();
    if (!tail.endsWith(thinkOpen)) text += `${thinkOpen}\n`;
    return { text, startsInThought: true };
  }
}
