#!/usr/bin/env node
// One query/response training example of about TOKENS tokens, for training at long lengths through the
// CLI (scripts/gpu-session.sh cli-long): the reasoning is numbered arithmetic steps, deterministic and
// varied enough that the data check does not call it looping. The length is counted in tokens of the
// vocabulary synth writes at 152064 entries, the 7B preset's (about 1.7 characters a token for this
// text, where the real Qwen2 vocabulary takes about 4); `thinktune data check` says the exact count.
//   node scripts/long-example.mjs OUT.jsonl TOKENS
import { writeFileSync } from "node:fs";

// measured with `thinktune data check` on a synth model of the 7B preset's vocabulary: 65000 asked for
// gives 64743 tokens in all (the template's included), 2048 gives 2072
const charsPerToken = 1.69;
const nouns = ["apples", "pears", "coins", "stones", "books", "cards", "shells", "marbles", "tickets", "beads"];
const verbs = ["add", "take away", "find", "borrow", "return", "count"];

const [out, tokensArgument] = process.argv.slice(2);
const tokens = Number(tokensArgument);
if (!out || !Number.isInteger(tokens) || tokens < 100) {
  console.error(`usage: node scripts/long-example.mjs OUT.jsonl TOKENS (TOKENS a whole number of at least 100, got "${tokensArgument ?? ""}")`);
  process.exit(2);
}

let state = 0x2545f491;
function pick(items) {
  state = (Math.imul(state, 1664525) + 1013904223) >>> 0;
  // the high bits: an LCG's low bits repeat with a short period
  return items[(state >>> 16) % items.length];
}

const targetChars = tokens * charsPerToken;
const steps = [];
let total = 12;
let chars = 0;
for (let step = 1; chars < targetChars; step++) {
  const amount = 1 + (step * 7919) % 97;
  const verb = pick(verbs);
  total = verb === "take away" || verb === "borrow" ? Math.max(0, total - amount) : total + amount;
  const sentence = `Step ${step}: we ${verb} ${amount} ${pick(nouns)}, so the running total is now ${total}.`;
  steps.push(sentence);
  chars += sentence.length + 1;
}
const record = {
  query: "Start with 12 and follow every step below. What is the running total at the end?",
  response: `<think>\n${steps.join("\n")}\n</think>\n\nThe running total at the end is ${total}.`,
};
writeFileSync(out, `${JSON.stringify(record)}\n`);
console.log(`${out}: one example, ${steps.length} steps, about ${Math.round(chars / charsPerToken)} tokens`);
