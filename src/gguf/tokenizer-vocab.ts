// A byte-level BPE vocabulary for synthetic models, in the form llama.cpp's "gpt2" tokenizer loads:
// the 256 GPT-2 byte tokens, merges learned greedily from a built-in multilingual sample, the R1
// special tokens, and "[PAD<id>]" fillers up to the requested size (as convert_hf_to_gguf.py pads).

/** GGUF token types (llama.cpp llama_token_type). */
export const TokenType = { normal: 1, control: 3, userDefined: 4, unused: 5 } as const;

export const R1_BOS = "<｜begin▁of▁sentence｜>";
export const R1_EOS = "<｜end▁of▁sentence｜>";

/**
 * The added tokens of the R1 distills. Those that look special (<｜…｜>) are CONTROL, as llama.cpp's
 * converter types them; <think> and </think> are USER_DEFINED there, so llama.cpp always matches
 * them in text and prints them when detokenizing, and synth models must behave the same.
 */
export const r1AddedTokens: readonly { text: string; type: number }[] = [
  { text: R1_EOS, type: TokenType.control },
  { text: "<｜User｜>", type: TokenType.control },
  { text: "<｜Assistant｜>", type: TokenType.control },
  { text: R1_BOS, type: TokenType.control },
  { text: "<｜▁pad▁｜>", type: TokenType.control },
  { text: "<think>", type: TokenType.userDefined },
  { text: "</think>", type: TokenType.userDefined },
  { text: "<｜tool▁calls▁begin｜>", type: TokenType.control },
  { text: "<｜tool▁calls▁end｜>", type: TokenType.control },
  { text: "<｜tool▁call▁begin｜>", type: TokenType.control },
  { text: "<｜tool▁call▁end｜>", type: TokenType.control },
  { text: "<｜tool▁outputs▁begin｜>", type: TokenType.control },
  { text: "<｜tool▁outputs▁end｜>", type: TokenType.control },
  { text: "<｜tool▁output▁begin｜>", type: TokenType.control },
  { text: "<｜tool▁output▁end｜>", type: TokenType.control },
  { text: "<｜tool▁sep｜>", type: TokenType.control },
];

/** Text the merges are learned from: English, Japanese, Chinese, arithmetic and R1-style reasoning. */
const mergeSampleText = `<think>
Okay, so the user wants to know how many apples are left. Let me think step by step. We start with 12 apples,
then we give away 5, so 12 - 5 = 7. Then we buy 3 more, which means 7 + 3 = 10. Wait, let me double-check that.
Yes, the answer should be 10. I think that is right, but let me verify the first step again: 12 minus 5 is 7.
</think>

The answer is **10** apples. First subtract the apples given away, then add the ones that were bought.

Question: What is the capital of France? The capital of France is Paris. Paris is known for the Eiffel Tower,
the Louvre museum, and the river Seine. Many people visit the city every year to see its art and history.
Question: Solve for x: 2x + 3 = 11. Subtract 3 from both sides to get 2x = 8, then divide by 2, so x = 4.
Let me check: 2 * 4 + 3 = 8 + 3 = 11. That is correct, so the solution is x = 4.
The quick brown fox jumps over the lazy dog. A journey of a thousand miles begins with a single step.
In mathematics, a prime number is a natural number greater than 1 that is not a product of two smaller
natural numbers. The first prime numbers are 2, 3, 5, 7, 11, 13, 17, 19, 23 and 29.
function add(a, b) { return a + b; }
const result = add(2, 3); // result is 5
for (let i = 0; i < 10; i++) { console.log(i * i); }
def fibonacci(n):
    if n < 2:
        return n
    return fibonacci(n - 1) + fibonacci(n - 2)

<think>
まず、問題を理解しましょう。りんごが十二個あります。五個をあげると、残りは七個です。
それから三個を買うので、合計は十個になります。もう一度確認します。はい、答えは十個です。
</think>

答えは十個です。東京は日本の首都です。日本語の文章には、ひらがな、カタカナ、漢字が使われます。
今日はいい天気ですね。私は毎朝コーヒーを飲みます。この問題を一緒に考えてみましょう。

<think>
好的，我们来一步一步地思考这个问题。首先，我们有十二个苹果，给出去五个，剩下七个。
然后又买了三个，所以一共是十个。让我再检查一下，答案是十个。
</think>

答案是十个苹果。北京是中国的首都。学习数学需要耐心和练习。我们应该仔细思考每一个步骤。
今天天气很好，我们一起去公园散步吧。这个问题的答案是正确的。

Let me reason about this carefully. If the train leaves at 3 pm and travels for 2 hours, it arrives at 5 pm.
However, we need to consider the time zone. Therefore, the final answer depends on where the train goes.
Hmm, wait. Actually, the question asks about the total distance, not the time. The speed is 60 km per hour,
so the distance is 60 * 2 = 120 km. So the answer is 120 kilometers.
`;

/** GPT-2's byte-to-unicode table: printable bytes map to themselves, the rest to code points from 256 up. */
export function byteToUnicode(): string[] {
  const table: string[] = new Array(256);
  const printable = (byte: number) => (byte >= 0x21 && byte <= 0x7e) || (byte >= 0xa1 && byte <= 0xac) || (byte >= 0xae && byte <= 0xff);
  let next = 256;
  for (let byte = 0; byte < 256; byte++) table[byte] = String.fromCodePoint(printable(byte) ? byte : next++);
  return table;
}

// Qwen2's pre-tokenizer split (llama-vocab.cpp), without the inline (?i:) group JS lacks.
const preTokenizerPattern = /'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD]|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+/gu;

/**
 * Learns up to `maxMerges` merges from the sample text, most frequent pair first (ties broken by the
 * pair's text), until every sample word is one token. Deterministic: the same count gives the same merges.
 */
export function learnMerges(maxMerges: number): { merges: string[]; tokens: string[] } {
  const byteChars = byteToUnicode();
  const encoder = new TextEncoder();
  const wordCounts = new Map<string, number>();
  for (const match of mergeSampleText.matchAll(preTokenizerPattern)) {
    const word = Array.from(encoder.encode(match[0]), (byte) => byteChars[byte]).join("\u0000");
    wordCounts.set(word, (wordCounts.get(word) ?? 0) + 1);
  }
  const words = [...wordCounts].map(([word, count]) => ({ symbols: word.split("\u0000"), count }));
  const merges: string[] = [];
  const tokens: string[] = [];
  const known = new Set(byteChars);
  while (merges.length < maxMerges) {
    const pairCounts = new Map<string, number>();
    for (const { symbols, count } of words) {
      for (let i = 0; i + 1 < symbols.length; i++) {
        const pair = `${symbols[i]} ${symbols[i + 1]}`;
        pairCounts.set(pair, (pairCounts.get(pair) ?? 0) + count);
      }
    }
    let best: string | undefined;
    let bestCount = 0;
    for (const [pair, count] of pairCounts) {
      if (count > bestCount || (count === bestCount && best !== undefined && pair < best)) {
        best = pair;
        bestCount = count;
      }
    }
    if (best === undefined) break;
    const [left, right] = best.split(" ");
    const merged = left + right;
    merges.push(best);
    if (!known.has(merged)) {
      known.add(merged);
      tokens.push(merged);
    }
    for (const word of words) {
      const out: string[] = [];
      for (let i = 0; i < word.symbols.length; i++) {
        if (i + 1 < word.symbols.length && word.symbols[i] === left && word.symbols[i + 1] === right) {
          out.push(merged);
          i++;
        } else {
          out.push(word.symbols[i]);
        }
      }
      word.symbols = out;
    }
  }
  return { merges, tokens };
}

export interface SynthVocabulary {
  tokens: string[];
  tokenTypes: number[];
  merges: string[];
  bosId: number;
  eosId: number;
  padId: number;
}

/** The smallest vocabulary synth can build: bytes, the R1 added tokens and no merges. */
export const minimumVocabularySize = 256 + r1AddedTokens.length;

/**
 * A vocabulary of exactly `size` tokens: 256 byte tokens, learned merges, then the R1 added tokens,
 * then "[PAD<id>]" fillers (UNUSED) when the sample text runs out of merges.
 */
export function buildSynthVocabulary(size: number): SynthVocabulary {
  if (size < minimumVocabularySize) throw new RangeError(`a synth vocabulary needs at least ${minimumVocabularySize} tokens, got ${size}`);
  const byteTokens = byteToUnicode();
  const { merges, tokens: mergedTokens } = learnMerges(size - minimumVocabularySize);
  const tokens = [...byteTokens, ...mergedTokens];
  const tokenTypes: number[] = tokens.map(() => TokenType.normal);
  const addedStart = tokens.length;
  for (const added of r1AddedTokens) {
    tokens.push(added.text);
    tokenTypes.push(added.type);
  }
  while (tokens.length < size) {
    tokens.push(`[PAD${tokens.length}]`);
    tokenTypes.push(TokenType.unused);
  }
  const idOf = (text: string) => addedStart + r1AddedTokens.findIndex((added) => added.text === text);
  return { tokens, tokenTypes, merges, bosId: idOf(R1_BOS), eosId: idOf(R1_EOS), padId: idOf(R1_EOS) };
}
