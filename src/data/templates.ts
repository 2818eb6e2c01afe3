// Chat templates: the GGUF's own (tokenizer.chat_template) or a built-in, rendered with @huggingface/jinja as
// node-llama-cpp renders them. Message contents go through the template as placeholders, so the result is a
// list of parts: template text (special tokens parsed), message text (never parsed), BOS / EOS tokens.
import { Template } from "@huggingface/jinja";
import type { BuiltinTemplateName } from "./options.js";

/** Built-in templates for models without one (the format each family's own template produces). */
export const builtinTemplates: Record<BuiltinTemplateName, string> = {
  // DeepSeek-R1 distills: system text right after BOS, earlier answers without reasoning, and a
  // generation prompt that opens the reasoning (closed at once when thinking is turned off).
  r1:
    "{{ bos_token }}{% for message in messages %}{% if message.role == 'system' %}{{ message.content }}{% endif %}{% endfor %}" +
    "{% for message in messages %}" +
    "{% if message.role == 'user' %}{{ '<｜User｜>' + message.content }}" +
    "{% elif message.role == 'assistant' %}{% set answer = message.content %}" +
    "{% if '</think>' in answer %}{% set answer = answer.split('</think>')[-1] %}{% endif %}" +
    "{{ '<｜Assistant｜>' + answer + '<｜end▁of▁sentence｜>' }}{% endif %}" +
    "{% endfor %}" +
    "{% if add_generation_prompt %}{{ '<｜Assistant｜><think>\\n' }}{% if enable_thinking is defined and not enable_thinking %}{{ '</think>' }}{% endif %}{% endif %}",
  chatml:
    "{% for message in messages %}{{ '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}{% endfor %}" +
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}",
  llama3:
    "{{ bos_token }}{% for message in messages %}" +
    "{{ '<|start_header_id|>' + message.role + '<|end_header_id|>\\n\\n' + message.content + '<|eot_id|>' }}" +
    "{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}",
};

export type PromptPart =
  | { type: "template"; text: string }
  | { type: "content"; text: string }
  | { type: "bos" }
  | { type: "eos" };

export interface ChatMessage {
  role: "system" | "user" | "assistant";
  content: string;
}

export interface TokenTexts {
  bos: string;
  eos: string;
}

export class DataTemplateError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "DataTemplateError";
  }
}

// Private-use characters: never produced by a template, vanishingly rare in data.
const markerOpen = "\uE000";
const markerClose = "\uE001";
const bosMarker = `${markerOpen}bos${markerClose}`;
const eosMarker = `${markerOpen}eos${markerClose}`;
const contentMarker = (index: number): string => `${markerOpen}${index}${markerClose}`;
const markerPattern = new RegExp(`${markerOpen}(bos|eos|\\d+)${markerClose}`, "g");

export class ChatTemplate {
  readonly #template: Template;
  /** the generation prompt opens a <think> block (R1-style) */
  readonly opensThinking: boolean;
  /** what closes an assistant turn (R1: <｜end▁of▁sentence｜>, ChatML: <|im_end|>, Llama 3: <|eot_id|>) */
  readonly turnEnd: PromptPart[];

  constructor(
    readonly source: string,
    readonly text: string,
  ) {
    try {
      this.#template = new Template(text);
    } catch (error) {
      throw new DataTemplateError(`the chat template (${source}) does not parse: ${(error as Error).message}`);
    }
    const probe = this.render([{ role: "user", content: "?" }], true);
    this.opensThinking = /<think>\s*$/.test(partsToText(probe, { bos: "", eos: "" }));
    this.turnEnd = this.#findTurnEnd();
  }

  /** Renders the messages into parts, contents kept apart from template text. */
  render(messages: ChatMessage[], addGenerationPrompt: boolean): PromptPart[] {
    let rendered: string;
    try {
      rendered = this.#template.render({
        messages: messages.map((message, index) => ({ role: message.role, content: contentMarker(index) })),
        add_generation_prompt: addGenerationPrompt,
        enable_thinking: true,
        bos_token: bosMarker,
        eos_token: eosMarker,
      });
    } catch (error) {
      throw new DataTemplateError(`the chat template (${this.source}) failed to render: ${(error as Error).message}`);
    }
    const parts: PromptPart[] = [];
    let last = 0;
    for (const match of rendered.matchAll(markerPattern)) {
      if (match.index > last) parts.push({ type: "template", text: rendered.slice(last, match.index) });
      const what = match[1];
      if (what === "bos") parts.push({ type: "bos" });
      else if (what === "eos") parts.push({ type: "eos" });
      else parts.push({ type: "content", text: messages[Number(what)].content });
      last = match.index + match[0].length;
    }
    if (last < rendered.length) parts.push({ type: "template", text: rendered.slice(last) });
    return parts.filter((part) => part.type !== "content" || part.text !== "");
  }

  /** The template's own text after an assistant message, up to its trailing whitespace. */
  #findTurnEnd(): PromptPart[] {
    const messages: ChatMessage[] = [
      { role: "user", content: "?" },
      { role: "assistant", content: "!" },
    ];
    const parts = this.render(messages, false);
    const answerIndex = parts.findIndex((part) => part.type === "content" && part.text === "!");
    const after = answerIndex < 0 ? [] : parts.slice(answerIndex + 1);
    const end: PromptPart[] = [];
    for (const part of after) {
      if (part.type === "content") break;
      if (part.type === "template") {
        const text = part.text.trimEnd();
        if (text !== "") end.push({ type: "template", text });
        if (text !== part.text) break;
      } else end.push(part);
    }
    return end.length > 0 ? end : [{ type: "eos" }];
  }
}

export function partsToText(parts: PromptPart[], tokens: TokenTexts): string {
  return parts.map((part) => (part.type === "bos" ? tokens.bos : part.type === "eos" ? tokens.eos : part.text)).join("");
}

/** The GGUF's template, or a built-in one when named; no template at all is an error that says what to do. */
export function resolveChatTemplate(ggufTemplate: string | undefined, builtin: BuiltinTemplateName | undefined, modelPath: string): ChatTemplate {
  if (builtin) return new ChatTemplate(`built-in ${builtin}`, builtinTemplates[builtin]);
  if (ggufTemplate === undefined || ggufTemplate.trim() === "") {
    throw new DataTemplateError(`${modelPath} has no chat template (tokenizer.chat_template); name one with --template r1|chatml|llama3 (template option)`);
  }
  return new ChatTemplate("tokenizer.chat_template", ggufTemplate);
}
