// One generation on one context sequence: the prompt's tokens (reusing what the sequence already holds
// of them), then sampled tokens decoded into text and split into thought and answer as they come. The
// thought budget is enforced here: when the thought reaches it, `\n</think>\n\n` is fed in place of the
// next token (the same close the training data uses) and the model goes on with the answer.
import type { LlamaContextSequence, LlamaModel, Token } from "node-llama-cpp";
import { findStop, thinkClose, ThoughtAnswerSplitter, type SplitDelta } from "./r1-stream.js";
import type { RenderedPrompt } from "./prompt.js";

/**
 * Reply limits for chat and serve when none is given: R1 models think until they are done, which on
 * a hard question (or a small or freshly tuned model that loops) is the whole context. Three quarters
 * of the reply may be thought, so the answer always gets room.
 */
export const defaultReplyTokens = 2048;
export const defaultThoughtBudget = (maxTokens: number): number => Math.floor((maxTokens * 3) / 4);

export interface SamplingOptions {
  /** 0 = greedy */
  temperature?: number;
  topP?: number;
  topK?: number;
  minP?: number;
  seed?: number;
  frequencyPenalty?: number;
  presencePenalty?: number;
}

export interface GenerationOptions extends SamplingOptions {
  /** tokens generated at most, thought and answer together; the rest of the context when absent */
  maxTokens?: number;
  /** thought tokens at most before the thought is closed; unlimited when absent */
  thoughtBudget?: number;
  /** answer text that ends the generation (not included) */
  stop?: readonly string[];
  signal?: AbortSignal;
  onDelta?: (delta: SplitDelta) => void;
}

export type FinishReason = "stop" | "length" | "abort";

export interface GenerationResult {
  reasoning: string;
  content: string;
  finishReason: FinishReason;
  promptTokens: number;
  completionTokens: number;
  reasoningTokens: number;
  /** the thought was closed by the budget, not by the model */
  thoughtCut: boolean;
}

export class ContextLengthError extends Error {
  constructor(
    message: string,
    readonly promptTokens: number,
    readonly contextSize: number,
  ) {
    super(message);
    this.name = "ContextLengthError";
  }
}

/** Bytes of a multi-byte character can span tokens: text is decoded once it is whole. */
const incompleteCharacter = "\uFFFD";
const maxPendingTokens = 8;

export async function generateOnSequence(
  model: LlamaModel,
  sequence: LlamaContextSequence,
  prompt: RenderedPrompt,
  options: GenerationOptions = {},
): Promise<GenerationResult> {
  const promptTokens = model.tokenize(prompt.text, true);
  const contextSize = sequence.contextSize;
  if (promptTokens.length >= contextSize) {
    throw new ContextLengthError(
      `the prompt is ${promptTokens.length} tokens, which does not fit the context of ${contextSize} tokens; shorten the conversation or start the model with a larger context size`,
      promptTokens.length,
      contextSize,
    );
  }
  const room = contextSize - promptTokens.length;
  const maxTokens = Math.min(options.maxTokens ?? room, room);

  // Keep the cached prefix the sequence already evaluated; at least one token is evaluated to sample from.
  const reuse = Math.min(sequence.compareContextTokens(promptTokens).firstDifferentIndex, promptTokens.length - 1);
  if (reuse < sequence.nextTokenIndex) await sequence.eraseContextTokenRanges([{ start: reuse, end: sequence.nextTokenIndex }]);

  const splitter = new ThoughtAnswerSplitter(prompt.startsInThought);
  const closeThoughtTokens = model.tokenize(`\n${thinkClose}\n\n`, true);
  const stops = (options.stop ?? []).filter((stop) => stop.length > 0);
  const generated: Token[] = [];
  let pending: Token[] = [];
  let answerHeld = ""; // answer text that could be the start of a stop string
  let completionTokens = 0;
  let reasoningTokens = 0;
  let thoughtCut = false;
  let finishReason: FinishReason = "stop";
  let stopped = false;

  const contentParts: string[] = [];
  const emit = (delta: SplitDelta, final: boolean): void => {
    if (stopped) return;
    let answer = "";
    if (stops.length > 0) {
      answerHeld += delta.answer;
      const { index, partial } = findStop(answerHeld, stops);
      if (index >= 0) {
        answer = answerHeld.slice(0, index);
        answerHeld = "";
        stopped = true;
      } else {
        const keep = final ? 0 : partial;
        answer = answerHeld.slice(0, answerHeld.length - keep);
        answerHeld = answerHeld.slice(answerHeld.length - keep);
      }
    } else answer = delta.answer;
    if (answer !== "") contentParts.push(answer);
    if (delta.thought !== "" || answer !== "") options.onDelta?.({ thought: delta.thought, answer });
  };

  // `tokens` are already appended to `generated`; what precedes them there gives the detokenizer context.
  const decode = (tokens: Token[], force: boolean): void => {
    pending.push(...tokens);
    const before = generated.length - pending.length;
    const text = model.detokenize(pending, true, generated.slice(Math.max(0, before - maxPendingTokens), before));
    if (!force && text.endsWith(incompleteCharacter) && pending.length < maxPendingTokens) return;
    pending = [];
    emit(splitter.push(text), false);
  };

  const repeatPenalty =
    options.frequencyPenalty || options.presencePenalty
      ? { punishTokens: () => generated, frequencyPenalty: options.frequencyPenalty, presencePenalty: options.presencePenalty, penalty: 1 }
      : undefined;
  const iterator = sequence.evaluate(promptTokens.slice(reuse), {
    temperature: options.temperature ?? 0,
    topP: options.topP,
    topK: options.topK,
    minP: options.minP,
    seed: options.seed,
    repeatPenalty,
  });
  try {
    let next = await iterator.next();
    while (!next.done) {
      if (options.signal?.aborted) {
        finishReason = "abort";
        break;
      }
      const token = next.value;
      const inThought = !splitter.inAnswer;
      generated.push(token);
      completionTokens++;
      if (inThought) reasoningTokens++;
      decode([token], false);
      if (stopped) break;
      if (completionTokens >= maxTokens) {
        finishReason = "length";
        break;
      }
      let replacement: Token[] | undefined;
      if (inThought && !splitter.inAnswer) {
        if (options.thoughtBudget !== undefined && reasoningTokens >= options.thoughtBudget && prompt.startsInThought) {
          // Close the thought ourselves: the sampled token is kept, then `\n</think>\n\n`.
          replacement = [token, ...closeThoughtTokens];
          generated.push(...closeThoughtTokens);
          completionTokens += closeThoughtTokens.length;
          thoughtCut = true;
          decode(closeThoughtTokens, true);
        }
      }
      next = await iterator.next(replacement);
    }
  } finally {
    await iterator.return();
  }
  if (pending.length > 0) emit(splitter.push(model.detokenize(pending, true)), false);
  emit(splitter.end(), true);
  return {
    reasoning: splitter.thought,
    content: contentParts.join(""),
    finishReason,
    promptTokens: promptTokens.length,
    completionTokens,
    reasoningTokens,
    thoughtCut,
  };
}
