import { Template } from "@huggingface/jinja";
import { beforeAll, describe, expect, it } from "vitest";
import { isR1ChatTemplate, r1DistillChatTemplate } from "../../src/gguf/r1-template.js";
import { readLlamaCppFile } from "../helpers/llama-cpp-source.js";

const bos = "<｜begin▁of▁sentence｜>";
const eos = "<｜end▁of▁sentence｜>";

type Message = Record<string, unknown>;
const conversations: Record<string, Message[]> = {
  single: [{ role: "user", content: "What is 2+2?" }],
  system: [
    { role: "system", content: "You are terse." },
    { role: "user", content: "Hi" },
  ],
  multiTurnWithReasoning: [
    { role: "system", content: "Be careful." },
    { role: "user", content: "What is 12-5?" },
    { role: "assistant", content: "<think>\n12 minus 5 is 7.\n</think>\n\nIt is 7." },
    { role: "user", content: "And plus 3?" },
    { role: "assistant", content: "<think>a</think>b</think>\n\n10" },
    { role: "user", content: "日本語で?" },
  ],
  endsWithAssistant: [
    { role: "user", content: "Say hi" },
    { role: "assistant", content: "hi" },
  ],
  twoSystems: [
    { role: "system", content: "first" },
    { role: "user", content: "u" },
    { role: "system", content: "second" },
  ],
  tools: [
    { role: "user", content: "Weather in Paris and Tokyo?" },
    {
      role: "assistant",
      content: null,
      tool_calls: [
        { type: "function", function: { name: "weather", arguments: '{"city":"Paris"}' } },
        { type: "function", function: { name: "weather", arguments: '{"city":"Tokyo"}' } },
      ],
    },
    { role: "tool", content: "18C" },
    { role: "tool", content: "22C" },
    { role: "assistant", content: "Paris 18C, Tokyo 22C." },
    { role: "user", content: "thanks" },
  ],
  endsWithTool: [
    { role: "user", content: "q" },
    { role: "assistant", content: null, tool_calls: [{ type: "function", function: { name: "f", arguments: "{}" } }] },
    { role: "tool", content: "out" },
  ],
};

const settings: Record<string, unknown>[] = [
  { add_generation_prompt: true, enable_thinking: true },
  { add_generation_prompt: true, enable_thinking: false },
  { add_generation_prompt: true },
  { add_generation_prompt: false },
  {},
];

function render(template: string, messages: Message[], extra: Record<string, unknown>): string {
  return new Template(template).render({ messages, bos_token: bos, eos_token: eos, ...extra });
}

describe("R1 distill chat template", () => {
  let official: { qwen?: string; llama?: string } = {};
  beforeAll(async () => {
    official = {
      qwen: await readLlamaCppFile("models/templates/deepseek-ai-DeepSeek-R1-Distill-Qwen-32B.jinja"),
      llama: await readLlamaCppFile("models/templates/deepseek-ai-DeepSeek-R1-Distill-Llama-8B.jinja"),
    };
  });

  it("renders every conversation exactly as the official Qwen distill template", (context) => {
    if (official.qwen === undefined) return context.skip("node-llama-cpp's llama.cpp bundle is missing");
    for (const [name, messages] of Object.entries(conversations)) {
      for (const extra of settings) {
        expect(render(r1DistillChatTemplate, messages, extra), `${name} ${JSON.stringify(extra)}`).toBe(render(official.qwen, messages, extra));
      }
    }
  });

  it("renders as the official Llama distill template where that one has no enable_thinking switch", (context) => {
    if (official.llama === undefined) return context.skip("node-llama-cpp's llama.cpp bundle is missing");
    // The Llama distill template writes tool calls differently (no tojson), so compare tool-free turns.
    for (const name of ["single", "system", "multiTurnWithReasoning", "endsWithAssistant", "twoSystems"]) {
      for (const extra of [{ add_generation_prompt: true, enable_thinking: true }, { add_generation_prompt: false }]) {
        expect(render(r1DistillChatTemplate, conversations[name], extra), name).toBe(render(official.llama, conversations[name], extra));
      }
    }
  });

  it("drops earlier reasoning and opens a think block for the next turn", () => {
    const text = render(r1DistillChatTemplate, conversations.multiTurnWithReasoning, { add_generation_prompt: true, enable_thinking: true });
    expect(text).toBe(
      `${bos}Be careful.<｜User｜>What is 12-5?<｜Assistant｜>\n\nIt is 7.${eos}<｜User｜>And plus 3?<｜Assistant｜>\n\n10${eos}<｜User｜>日本語で?<｜Assistant｜><think>\n`,
    );
    expect(render(r1DistillChatTemplate, conversations.single, { add_generation_prompt: true })).toBe(`${bos}<｜User｜>What is 2+2?<｜Assistant｜><think>\n</think>`);
  });

  it("recognizes R1-style templates", async () => {
    expect(isR1ChatTemplate(r1DistillChatTemplate)).toBe(true);
    if (official.qwen !== undefined) expect(isR1ChatTemplate(official.qwen)).toBe(true);
    if (official.llama !== undefined) expect(isR1ChatTemplate(official.llama)).toBe(true);
    const chatml = await readLlamaCppFile("models/templates/Qwen-Qwen2.5-7B-Instruct.jinja");
    if (chatml !== undefined) expect(isR1ChatTemplate(chatml)).toBe(false);
    expect(isR1ChatTemplate("{{ messages }}")).toBe(false);
  });
});
