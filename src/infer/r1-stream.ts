// Splits an R1 model's streamed output into the thought (between <think> and </think>) and the answer.
// R1 distills are prompted with `<｜Assistant｜><think>\n`, so generation starts inside the thought; the
// model closes it with `\n</think>\n\n` and then answers. Markers can arrive split across chunks, so text
// that might be the start of a marker (or whitespace that trims away at a boundary) is held back until
// the next chunk decides it.

export const thinkOpen = "<think>";
export const thinkClose = "</think>";

export interface SplitDelta {
  thought: string;
  answer: string;
}

type Phase = "beforeThought" | "thought" | "answer";

export class ThoughtAnswerSplitter {
  #phase: Phase;
  /** text received but not yet emitted because the next chunk decides what it is */
  #pending = "";
  /** no thought text emitted yet: leading whitespace of the thought is dropped */
  #thoughtStarted = false;
  /** no answer text emitted yet: leading whitespace of the answer is dropped */
  #answerStarted = false;
  #thought = "";
  #answer = "";

  /**
   * @param startsInThought true when the prompt already opened the thought (`<think>\n` at its end);
   *   otherwise a `<think>` at the very start of the output opens one, and anything else is the answer.
   */
  constructor(startsInThought: boolean) {
    this.#phase = startsInThought ? "thought" : "beforeThought";
  }

  get thought(): string {
    return this.#thought;
  }

  get answer(): string {
    return this.#answer;
  }

  /** true once the thought has been closed (or there never was one) */
  get inAnswer(): boolean {
    return this.#phase === "answer";
  }

  push(text: string): SplitDelta {
    this.#pending += text;
    return this.#drain(false);
  }

  /** Flushes what was held back; call once when generation ends. */
  end(): SplitDelta {
    return this.#drain(true);
  }

  #drain(final: boolean): SplitDelta {
    const delta: SplitDelta = { thought: "", answer: "" };
    for (;;) {
      if (this.#phase === "beforeThought") {
        const trimmed = this.#pending.trimStart();
        if (trimmed.startsWith(thinkOpen)) {
          this.#pending = trimmed.slice(thinkOpen.length);
          this.#phase = "thought";
          continue;
        }
        if (!final && thinkOpen.startsWith(trimmed)) return delta; // could still become <think>
        this.#phase = "answer";
        continue;
      }
      if (this.#phase === "thought") {
        const close = this.#pending.indexOf(thinkClose);
        if (close >= 0) {
          this.#emitThought(this.#pending.slice(0, close).trimEnd(), delta);
          this.#pending = this.#pending.slice(close + thinkClose.length);
          this.#phase = "answer";
          continue;
        }
        // Hold back a possible partial `</think>` and trailing whitespace (trimmed if the thought ends here).
        const keep = final ? 0 : heldBackLength(this.#pending, thinkClose);
        this.#emitThought(this.#pending.slice(0, this.#pending.length - keep), delta);
        this.#pending = this.#pending.slice(this.#pending.length - keep);
        return delta;
      }
      let text = this.#pending;
      this.#pending = "";
      if (!this.#answerStarted) {
        text = text.trimStart();
        if (text.length > 0) this.#answerStarted = true;
      }
      if (final) text = text.trimEnd();
      else {
        // Trailing whitespace waits: the answer's end is trimmed.
        const body = text.trimEnd();
        this.#pending = text.slice(body.length);
        text = body;
      }
      this.#answer += text;
      delta.answer += text;
      return delta;
    }
  }

  #emitThought(text: string, delta: SplitDelta): void {
    if (!this.#thoughtStarted) {
      text = text.trimStart();
      if (text.length > 0) this.#thoughtStarted = true;
    }
    this.#thought += text;
    delta.thought += text;
  }
}

/** How many trailing characters of `text` must wait: a prefix of `marker`, plus whitespace before it. */
function heldBackLength(text: string, marker: string): number {
  let partial = 0;
  for (let length = Math.min(marker.length - 1, text.length); length > 0; length--) {
    if (text.endsWith(marker.slice(0, length))) {
      partial = length;
      break;
    }
  }
  const before = text.slice(0, text.length - partial);
  return partial + (before.length - before.trimEnd().length);
}

/**
 * Finds the earliest stop string in `text`. Returns the index where it starts, or -1; with `partial`,
 * also how many trailing characters might be the start of a stop string (to hold back while streaming).
 */
export function findStop(text: string, stops: readonly string[]): { index: number; partial: number } {
  let index = -1;
  for (const stop of stops) {
    const at = text.indexOf(stop);
    if (at >= 0 && (index < 0 || at < index)) index = at;
  }
  let partial = 0;
  for (const stop of stops) {
    for (let length = Math.min(stop.length - 1, text.length); length > partial; length--) {
      if (text.endsWith(stop.slice(0, length))) {
        partial = length;
        break;
      }
    }
  }
  return { index, partial };
}
