// The "answer only inside the reasoning" warning against a small labelled set: records whose answer
// states the reasoning's result (which --strict must keep) and records whose answer leaves it inside
// the reasoning (which it must flag). The first two correct records are the ones the issue found
// flagged: a final check sentence ("14 + 18 = 32") and a trailing comma kept by the number pattern.
import { describe, expect, it } from "vitest";
import { answerOnlyInReasoningReason } from "../../src/data/warnings.js";

const correct: { note: string; reasoning: string; answer: string }[] = [
  {
    note: "the last sentence checks the result",
    reasoning: "There are 32 students and 18 are girls. So the boys are 32 - 18 = 14. Check: 14 + 18 = 32.",
    answer: "There are **14 boys** in the class.",
  },
  {
    note: "a comma right after the number",
    reasoning: "221 is odd and not divisible by 3, 7 or 11. Trying 13: 13 times 17 gives 221, so it has a factor.",
    answer: "No. 221 = 13 × 17, so it is composite.",
  },
  { note: "boxed fraction", reasoning: "Three of the four outcomes win, so the probability is \\boxed{\\frac{3}{4}}.", answer: "The probability is $\\frac{3}{4}$." },
  { note: "boxed with separators, answer without", reasoning: "The sum is \\boxed{1,250}. Checking: fine.", answer: "It is 1250." },
  { note: "decimals written differently", reasoning: "Two apples at 1.75 each cost 3.50 dollars.", answer: "They cost $3.5." },
  { note: "thousands separator in the answer only", reasoning: "The total is 12500 people.", answer: "The total is 12,500." },
  { note: "a number word in the answer", reasoning: "Each box holds 4 cups, and 12 cups need 3 boxes.", answer: "She needs three boxes." },
  { note: "no number in the conclusion", reasoning: "France's capital has been Paris since the Middle Ages. So the capital is Paris.", answer: "Paris." },
  { note: "Japanese", reasoning: "6に7を掛けると42になります。したがって、答えは42です。", answer: "答えは **42** です。" },
  { note: "Chinese", reasoning: "每排有5个座位，共3排。所以一共有15个座位。", answer: "一共有15个座位。" },
  { note: "a negative result with a Unicode minus in the answer", reasoning: "Solving 2x + 8 = 0 gives x = -4.", answer: "x = \u22124" },
  { note: "a percentage", reasoning: "Out of 80 pupils 20 walk, which is 25% of them.", answer: "25 percent of the pupils walk." },
  { note: "units spelled out", reasoning: "3.5 m is 350 cm.", answer: "**350 centimeters**" },
];

const incorrect: { note: string; reasoning: string; answer: string }[] = [
  { note: "the answer points at the reasoning", reasoning: "12 * 7 = 84. So the answer is 84.", answer: "I worked it out above." },
  { note: "boxed result never stated", reasoning: "So the length is \\boxed{350} centimeters.", answer: "The length is as computed." },
  { note: "boxed fraction, only its numerator stated", reasoning: "The chance is \\boxed{\\frac{3}{4}}.", answer: "It is 3 in some sense." },
  { note: "a total with a separator", reasoning: "Therefore the total is 1,250 dollars.", answer: "She pays the total shown in my reasoning." },
  { note: "Japanese", reasoning: "6に7を掛けると42になります。したがって、答えは42です。", answer: "以上です。" },
  { note: "Chinese", reasoning: "每排有5个座位，共3排。所以一共有15个座位。", answer: "见上文。" },
  { note: "the answer states another number", reasoning: "Solving gives x = 7.", answer: "x equals 5." },
];

describe("answer only inside the reasoning", () => {
  it.each(correct)("keeps a correct record: $note", ({ reasoning, answer }) => {
    expect(answerOnlyInReasoningReason(reasoning, answer)).toBeUndefined();
  });

  it.each(incorrect)("flags an incorrect record: $note", ({ reasoning, answer }) => {
    expect(answerOnlyInReasoningReason(reasoning, answer)).toMatch(/^answer only inside the reasoning: the reasoning concludes /);
  });

  it("names what the reasoning concluded, without the punctuation after it", () => {
    expect(answerOnlyInReasoningReason("Therefore the total is 1,250, in dollars.", "See above.")).toContain('concludes "1,250" but');
    expect(answerOnlyInReasoningReason("So 32 - 18 = 14.", "See above.")).toContain("concludes one of 32, 18, 14 but");
  });
});
