// Tokenization by llama.cpp itself (node-llama-cpp, vocab-only load). node-llama-cpp's native binary is only
// loaded here, and only when the tokenized cache misses.
// - The prompt is tokenized part by part exactly as node-llama-cpp's chat does (its LlamaText): template text
//   with special tokens parsed, message text without, BOS/EOS as their token ids.
// - The completion is what the model will generate: tokenized as llama.cpp tokenizes text with special tokens
//   parsed, so prompt + completion tokenize as the whole text does.
import type { Llama, LlamaModel } from "node-llama-cpp";
import type { PromptPart } from "./templates.js";

export interface PartTokenizer {
  /** tokens of a prompt, as node-llama-cpp feeds them to the model */
  tokenizePrompt(parts: PromptPart[]): number[];
  /** tokens of a completion that follows a prompt (special tokens parsed) */
  tokenizeCompletion(text: string): number[];
  /** how many tokens a text has on its own (for length statistics) */
  countTokens(text: string): number;
  dispose(): Promise<void>;
}

let llamaInstance: Promise<Llama> | undefined;

async function getCpuLlama(): Promise<Llama> {
  const { getLlama, LlamaLogLevel } = await import("node-llama-cpp");
  // Quiet: a vocab-only load logs llama.cpp's complaints about absent weights; real failures still throw.
  llamaInstance ??= getLlama({ gpu: false, build: "never", logLevel: LlamaLogLevel.disabled, progressLogs: false });
  return llamaInstance;
}

export async function loadPartTokenizer(modelPath: string): Promise<PartTokenizer> {
  const { LlamaText, SpecialToken, SpecialTokensText } = await import("node-llama-cpp");
  const llama = await getCpuLlama();
  const model: LlamaModel = await llama.loadModel({ modelPath, vocabOnly: true });
  return {
    tokenizePrompt(parts) {
      const text = LlamaText(
        parts.map((part) => {
          if (part.type === "bos") return new SpecialToken("BOS");
          if (part.type === "eos") return new SpecialToken("EOS");
          if (part.type === "template") return new SpecialTokensText(part.text);
          return part.text;
        }),
      );
      return Array.from(text.tokenize(model.tokenizer));
    },
    tokenizeCompletion(text) {
      // "trimLeadingSpace": the text continues the prompt, so no leading space is added (SentencePiece vocabularies)
      return Array.from(LlamaText(new SpecialTokensText(text)).tokenize(model.tokenizer, "trimLeadingSpace"));
    },
    countTokens(text) {
      return text === "" ? 0 : model.tokenize(text, false).length;
    },
    async dispose() {
      await model.dispose();
    },
  };
}
