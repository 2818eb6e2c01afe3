// Heuristics for uncleaned reasoning. They warn (errors under strict); each returns a reason or undefined.

/** How many times one sentence or one long n-gram may recur before the reasoning counts as looping. */
const loopRepeats = 4;
const minLoopSentenceChars = 16;
const loopWordGram = 12;
const loopCharGram = 30;

/** after . ! ? and a space (not inside 3.5), after CJK full stops, and at line breaks */
const sentenceBreak = /(?<=[.!?])\s+|(?<=[。！？])\s*|\n+/;
const cjkPattern = /[\u3040-\u30ff\u3400-\u9fff\uf900-\ufaff\uac00-\ud7af]/g;

/** Reasoning that repeats itself: one sentence, or one long run of words (characters for CJK), many times. */
export function loopingReason(reasoning: string): string | undefined {
  const sentenceCounts = new Map<string, number>();
  for (const raw of reasoning.split(sentenceBreak)) {
    const sentence = raw.trim().replace(/\s+/g, " ");
    if (sentence.length < minLoopSentenceChars) continue;
    const count = (sentenceCounts.get(sentence) ?? 0) + 1;
    sentenceCounts.set(sentence, count);
    if (count === loopRepeats) return `looping reasoning: the sentence "${clip(sentence)}" appears ${loopRepeats} or more times`;
  }
  const cjkChars = reasoning.match(cjkPattern)?.length ?? 0;
  const mostlyCjk = cjkChars > reasoning.length / 3;
  const units = mostlyCjk ? [...reasoning.replace(/\s+/g, "")] : reasoning.split(/\s+/).filter((word) => word !== "");
  const gram = mostlyCjk ? loopCharGram : loopWordGram;
  const separator = mostlyCjk ? "" : " ";
  const gramCounts = new Map<string, { count: number; lastStart: number }>();
  for (let start = 0; start + gram <= units.length; start++) {
    const key = units.slice(start, start + gram).join(separator);
    const seen = gramCounts.get(key);
    // count only non-overlapping repeats, so a long run of one character is not a "loop" of itself
    if (seen && start - seen.lastStart < gram) continue;
    const count = (seen?.count ?? 0) + 1;
    gramCounts.set(key, { count, lastStart: start });
    if (count === loopRepeats) return `looping reasoning: the passage "${clip(key)}" repeats ${loopRepeats} or more times`;
  }
  return undefined;
}

function clip(text: string, length = 60): string {
  return text.length <= length ? text : `${text.slice(0, length - 1)}…`;
}

export type Script = "ja" | "zh" | "ko" | "latin" | "cyrillic" | "arabic" | "other";

/** The dominant script of a text (Japanese when kana are present among Han characters), or undefined when too short to tell. */
export function dominantScript(text: string): Script | undefined {
  const counts: Record<Script, number> = { ja: 0, zh: 0, ko: 0, latin: 0, cyrillic: 0, arabic: 0, other: 0 };
  let kana = 0;
  let han = 0;
  // formulas, numbers and units say nothing about the language
  const stripped = text.replace(/\\[a-zA-Z]+|\b[a-zA-Z]{1,3}\b/g, " ");
  for (const char of stripped) {
    const code = char.codePointAt(0)!;
    if ((code >= 0x3040 && code <= 0x30ff) || (code >= 0x31f0 && code <= 0x31ff)) kana++;
    else if ((code >= 0x3400 && code <= 0x9fff) || (code >= 0xf900 && code <= 0xfaff)) han++;
    else if (code >= 0xac00 && code <= 0xd7af) counts.ko++;
    else if (/\p{Script=Latin}/u.test(char)) counts.latin++;
    else if (/\p{Script=Cyrillic}/u.test(char)) counts.cyrillic++;
    else if (/\p{Script=Arabic}/u.test(char)) counts.arabic++;
    else if (/\p{L}/u.test(char)) counts.other++;
  }
  // Japanese text mixes kana with Han; Chinese has (almost) no kana
  if (kana > 0 && kana >= (kana + han) * 0.1) counts.ja = kana + han;
  else counts.zh = han + kana;
  // CJK characters carry about as much as a word; weigh them against Latin letters accordingly
  const weighted: [Script, number][] = (Object.entries(counts) as [Script, number][]).map(([script, count]) => [
    script,
    script === "ja" || script === "zh" || script === "ko" ? count * 3 : count,
  ]);
  const total = weighted.reduce((sum, [, count]) => sum + count, 0);
  if (total < 20) return undefined;
  weighted.sort((a, b) => b[1] - a[1]);
  return weighted[0][0];
}

const scriptNames: Record<Script, string> = { ja: "Japanese", zh: "Chinese", ko: "Korean", latin: "a Latin-script language", cyrillic: "a Cyrillic-script language", arabic: "Arabic", other: "another script" };

export function languageMismatchReason(question: string, reasoning: string): string | undefined {
  const asked = dominantScript(question);
  const reasoned = dominantScript(reasoning);
  if (!asked || !reasoned || asked === reasoned) return undefined;
  return `language mismatch: the question is in ${scriptNames[asked]} but the reasoning is in ${scriptNames[reasoned]}`;
}

/** A number as written: digits with optional thousands separators and decimals; a trailing comma is punctuation. */
const numberPattern = /[-\u2212]?\d+(?:,\d{3})*(?:\.\d+)?/g;
const numberWords = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen", "twenty"];

/** The values of the numbers in a text (1,250 and 1250.0 are both 1250; "three" is 3). */
function numberValues(text: string): Set<number> {
  const values = new Set<number>();
  for (const match of text.matchAll(numberPattern)) values.add(Number(match[0].replace(/,/g, "").replace("\u2212", "-")));
  for (const [value, word] of numberWords.entries()) if (new RegExp(`\\b${word}\\b`, "i").test(text)) values.add(value);
  return values;
}

const normalizeMath = (text: string): string => text.replace(/\\left|\\right|\\,|\$|\s+/g, "").replace(/\\dfrac/g, "\\frac");

/**
 * What the reasoning concludes: its last \boxed{...}, else the numbers of its last sentence (the
 * result is often one of several there: "boys = 32 - 18 = 14", or a check such as "14 + 18 = 32").
 */
function reasoningConclusion(reasoning: string): { shown: string; boxed?: string; values: Set<number> } | undefined {
  const boxed = [...reasoning.matchAll(/\\boxed\{((?:[^{}]|\{[^{}]*\})+)\}/g)];
  if (boxed.length > 0) {
    const value = boxed[boxed.length - 1][1].trim();
    return { shown: value, boxed: value, values: numberValues(value) };
  }
  const sentences = reasoning.trim().split(sentenceBreak).filter((sentence) => sentence.trim() !== "");
  const last = sentences[sentences.length - 1] ?? "";
  const numbers = [...last.matchAll(numberPattern)].map((match) => match[0]);
  if (numbers.length === 0) return undefined;
  return { shown: numbers.join(", "), values: numberValues(numbers.join(" ")) };
}

/** The reasoning reaches a result that the answer never states (the answer was left inside the reasoning). */
export function answerOnlyInReasoningReason(reasoning: string, answer: string): string | undefined {
  const conclusion = reasoningConclusion(reasoning);
  if (conclusion === undefined) return undefined;
  if (conclusion.boxed !== undefined && normalizeMath(answer).includes(normalizeMath(conclusion.boxed))) return undefined;
  const stated = numberValues(answer);
  const values = [...conclusion.values];
  // a boxed expression needs all of its numbers in the answer (3/4 is not 3); a sentence's result is one of them
  const found = conclusion.boxed !== undefined ? values.length > 0 && values.every((value) => stated.has(value)) : values.some((value) => stated.has(value));
  if (found) return undefined;
  const what = conclusion.boxed !== undefined || values.length === 1 ? `"${clip(conclusion.shown, 40)}"` : `one of ${clip(conclusion.shown, 40)}`;
  return `answer only inside the reasoning: the reasoning concludes ${what} but the answer does not state it`;
}

/** Token counts far above the rest of the file: beyond Q3 + 3·IQR and beyond three times the median. */
export function outlierThreshold(lengths: number[]): number | undefined {
  if (lengths.length < 8) return undefined;
  const sorted = [...lengths].sort((a, b) => a - b);
  const quantile = (q: number): number => sorted[Math.min(sorted.length - 1, Math.floor(q * (sorted.length - 1)))];
  const q1 = quantile(0.25);
  const q3 = quantile(0.75);
  return Math.max(q3 + 3 * (q3 - q1), 3 * quantile(0.5));
}
