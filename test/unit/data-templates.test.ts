// Train as you infer: the prompts thinktune trains on are the official R1 distill templates' own
// add_generation_prompt rendering, tokenized exactly as node-llama-cpp's chat feeds them to the model, and
// prompt + completion tokenize as the whole text does. References: llama.cpp's source as node-llama-cpp ships
// it (official templates, a real Qwen2 vocabulary), cloned in setup.
import { execFile } from "node:child_process";
import { readFile, mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { promisify } from "node:util";
import { Template } from "@huggingface/jinja";
import { getLlama, JinjaTemplateChatWrapper, LlamaChat, LlamaLogLevel, type ChatHistoryItem, type Llama, type LlamaModel } from "node-llama-cpp";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { inspectTrainingData, type RenderedExample } from "../../src/data/index.js";
import { ChatTemplate, builtinTemplates, partsToText, type ChatMessage } from "../../src/data/templates.js";
import { llamaCppSource, readLlamaCppFile } from "../helpers/llama-cpp-source.js";

const run = promisify(execFile);
const projectRoot = path.resolve(import.meta.dirname, "..", "..");
const tinyModel = path.join(projectRoot, "models", "tiny-r1.gguf");
const sampleData = path.join(projectRoot, "examples", "data");
const bos = "<｜begin▁of▁sentence｜>";
const officialTemplateFiles = ["deepseek-ai-DeepSeek-R1-Distill-Qwen-32B.jinja", "deepseek-ai-DeepSeek-R1-Distill-Llama-8B.jinja"];

let dir: string;
let official: Record<string, string> | undefined;
let qwen2Vocab: string | undefined;
let llama: Llama;
let tiny: LlamaModel;
let multiTurnFile: string;
/** the sample data and a multi-turn conversation with a system prompt, as the pipeline renders them */
let rendered: RenderedExample[];
/** the history (answers only for earlier turns) of each rendered example, read from the same records */
let histories: ChatMessage[][];

const multiTurn = {
  messages: [
    { role: "system", content: "Answer briefly." },
    { role: "user", content: "How many grams are in 2 kg?" },
    { role: "assistant", content: "<think>\n2 × 1000 = 2000.\n</think>\n\n2000 g." },
    { role: "user", content: "And in 3.5 kg?" },
    { role: "assistant", content: "<think>\n3.5 × 1000 = 3500.\n</think>\n\n3500 g." },
  ],
};

beforeAll(async () => {
  dir = await mkdtemp(path.join(tmpdir(), "thinktune-data-templates-"));
  const source = await llamaCppSource();
  if (source !== undefined) {
    official = {};
    for (const file of officialTemplateFiles) official[file] = (await readLlamaCppFile(`models/templates/${file}`))!;
    qwen2Vocab = path.join(dir, "ggml-vocab-qwen2.gguf");
    const { stdout } = await run("git", ["-C", source, "show", "HEAD:models/ggml-vocab-qwen2.gguf"], { encoding: "buffer", maxBuffer: 64 << 20 });
    await writeFile(qwen2Vocab, stdout);
  }
  llama = await getLlama({ gpu: false, build: "never", logLevel: LlamaLogLevel.error });
  tiny = await llama.loadModel({ modelPath: tinyModel, gpuLayers: 0 });
  multiTurnFile = path.join(dir, "multi.jsonl");
  await writeFile(multiTurnFile, `${JSON.stringify(multiTurn)}\n`);
  const inspected = await inspectTrainingData(tinyModel, { data: [sampleData, multiTurnFile], cacheDir: false }, { keepTexts: true });
  rendered = inspected.rendered!;
  histories = [];
  for (const file of ["en.jsonl", "ja.jsonl", "zh.jsonl"]) {
    for (const line of (await readFile(path.join(sampleData, file), "utf8")).split("\n").filter((text) => text.trim() !== "")) {
      histories.push([{ role: "user", content: (JSON.parse(line) as { query: string }).query }]);
    }
  }
  histories.push([
    { role: "system", content: "Answer briefly." },
    { role: "user", content: "How many grams are in 2 kg?" },
    { role: "assistant", content: "2000 g." },
    { role: "user", content: "And in 3.5 kg?" },
  ]);
});
afterAll(async () => {
  await tiny?.dispose();
  await llama?.dispose();
  await rm(dir, { recursive: true, force: true });
});

/** node-llama-cpp's chat history for the same conversation */
const chatHistoryOf = (history: ChatMessage[]): ChatHistoryItem[] =>
  history.map((message) =>
    message.role === "system" ? { type: "system", text: message.content } : message.role === "user" ? { type: "user", text: message.content } : { type: "model", response: [message.content] },
  );

const officialRendering = (templateText: string, history: ChatMessage[]): string =>
  new Template(templateText).render({ messages: history, add_generation_prompt: true, enable_thinking: true, bos_token: bos });

describe("rendering", () => {
  it("covers every sample conversation", () => {
    expect(rendered.length).toBe(histories.length);
    expect(rendered.length).toBeGreaterThanOrEqual(37);
  });

  it("gives the official R1 distill templates' own add_generation_prompt rendering of each history", (context) => {
    if (!official) return context.skip("node-llama-cpp's llama.cpp bundle is missing");
    for (const [file, text] of Object.entries(official)) {
      const template = new ChatTemplate(file, text);
      expect(template.opensThinking, file).toBe(true);
      expect(partsToText(template.turnEnd, { bos, eos: "" }), file).toBe("<｜end▁of▁sentence｜>");
      rendered.forEach((example, index) => {
        const expected = officialRendering(text, histories[index]);
        expect(example.prompt, `${file} ${example.source}`).toBe(expected);
        expect(partsToText(template.render(histories[index], true), { bos, eos: "" }), `${file} ${example.source}`).toBe(expected);
        expect(partsToText(new ChatTemplate("r1", builtinTemplates.r1).render(histories[index], true), { bos, eos: "" }), `built-in r1 ${example.source}`).toBe(expected);
      });
    }
  });

  it("gives the completion as reasoning, </think>, answer and end-of-sentence", () => {
    const last = rendered[rendered.length - 1];
    expect(last.source).toBe(`${multiTurnFile}:1`);
    expect(last.completion).toBe("3.5 × 1000 = 3500.\n</think>\n\n3500 g.<｜end▁of▁sentence｜>");
    for (const example of rendered) expect(example.completion).toMatch(/^\S[\s\S]*\S\n<\/think>\n\n\S[\s\S]*<｜end▁of▁sentence｜>$/);
  });
});

describe("tokens", () => {
  it("prompt + completion tokenize as the whole text does", () => {
    for (const example of rendered) {
      expect(Array.from(example.tokens), example.source).toEqual(Array.from(tiny.tokenize(example.prompt + example.completion, true)));
      expect(Array.from(example.tokens.slice(0, example.lossFrom)), example.source).toEqual(Array.from(tiny.tokenize(example.prompt, true)));
    }
  });

  it("the prompt is what node-llama-cpp's chat feeds the model for the same history, with either R1 wrapper", async (context) => {
    // one thread: the default spins a thread per core, which crawls on a shared 2-core machine
    const context_ = await tiny.createContext({ contextSize: 512, threads: 1 });
    const sequence = context_.getSequence();
    const wrappers: ["auto" | JinjaTemplateChatWrapper, string][] = [["auto", "DeepSeek"]];
    const templates = { "tiny-r1 chat_template": tiny.fileInfo.metadata.tokenizer.chat_template!, ...(official ?? {}) };
    for (const [name, template] of Object.entries(templates)) wrappers.push([new JinjaTemplateChatWrapper({ template, tokenizer: tiny.tokenizer }), name]);
    try {
      for (const [wrapper, name] of wrappers) {
        const chat = new LlamaChat({ contextSequence: sequence, chatWrapper: wrapper, autoDisposeSequence: false });
        if (wrapper === "auto") expect(chat.chatWrapper.wrapperName).toBe("DeepSeek");
        for (const [index, example] of rendered.entries()) {
          const history = chatHistoryOf(histories[index]);
          const prompt = Array.from(example.tokens.slice(0, example.lossFrom));
          // node-llama-cpp opens the response at "<｜Assistant｜>" and lets the model write "<think>\n" itself ...
          await sequence.clearHistory();
          await chat.generateResponse([...history, { type: "model", response: [] }], { maxTokens: 1 });
          const thinkOpening = Array.from(tiny.tokenize("<think>\n", true));
          expect([...sequence.contextTokens, ...thinkOpening], `${name} ${example.source}`).toEqual(prompt);
          // ... and once it has, it feeds exactly the training prompt
          await sequence.clearHistory();
          await chat.generateResponse([...history, { type: "model", response: [{ type: "segment", segmentType: "thought", text: "\n", ended: false }] }], { maxTokens: 1 });
          expect([...sequence.contextTokens], `${name} ${example.source}`).toEqual(prompt);
        }
        chat.dispose();
      }
    } finally {
      sequence.dispose();
      await context_.dispose();
    }
    if (!official) context.skip("node-llama-cpp's llama.cpp bundle is missing: checked the tiny model's own template only");
  });

  it("on a real Qwen2 vocabulary with its own (ChatML) template: prompts match node-llama-cpp's, and whole-text tokenization", async (context) => {
    if (!qwen2Vocab) return context.skip("node-llama-cpp's llama.cpp bundle is missing");
    const vocab = await llama.loadModel({ modelPath: qwen2Vocab, vocabOnly: true });
    try {
      const own = await inspectTrainingData(qwen2Vocab, { data: [sampleData, multiTurnFile], cacheDir: false }, { keepTexts: true });
      expect(own.report.template).toEqual({ source: "tokenizer.chat_template", opensThinking: false });
      expect(own.report.think).toBe("optional");
      const wrapper = new JinjaTemplateChatWrapper({ template: vocab.fileInfo.metadata.tokenizer.chat_template!, tokenizer: vocab.tokenizer });
      own.rendered!.forEach((example, index) => {
        // no <think> in this template's prompt: the completion opens it
        expect(example.completion.startsWith("<think>\n")).toBe(true);
        expect(example.completion.endsWith("<|im_end|>")).toBe(true);
        expect(Array.from(example.tokens), example.source).toEqual(Array.from(vocab.tokenize(example.prompt + example.completion, true)));
        const { contextText } = wrapper.generateContextState({ chatHistory: [...chatHistoryOf(histories[index]), { type: "model", response: [] }] });
        expect(Array.from(example.tokens.slice(0, example.lossFrom)), example.source).toEqual(Array.from(contextText.tokenize(vocab.tokenizer)));
      });
    } finally {
      await vocab.dispose();
    }
  });
});
