import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { inspectGguf, type GgufInspection } from "../../src/gguf/inspect.js";
import { resolveSynthOptions, synthModelWriter, synthParameterCount } from "../../src/gguf/synth.js";
import { gguf } from "../../src/gguf/writer.js";
import { runCli } from "../helpers/cli.js";
import { synthModel } from "../helpers/models.js";

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(path.join(tmpdir(), "thinktune-inspect-"));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe("thinktune inspect", () => {
  it("reports shape, parameters, tensor types, tokenizer and the R1 template of a synth model", async () => {
    const options = { arch: "llama", nLayer: 2, nEmbd: 256, nHead: 4, nHeadKv: 1, nFf: 512, nVocab: 1024, ropeFreqs: true, tiedOutput: true, type: "Q4_K", seed: 4 } as const;
    const file = await synthModel(options);
    const info = await inspectGguf(file);
    expect(info).toMatchObject({
      architecture: "llama",
      trainable: true,
      version: 3,
      shape: { arch: "llama", nLayer: 2, nEmbd: 256, nHead: 4, nHeadKv: 1, headDim: 64, nFf: 512, nVocab: 1024, tiedOutput: true, hasQkvBias: false, hasRopeFreqs: true },
      parameterCount: synthParameterCount(resolveSynthOptions(options)),
      tokenizer: { model: "gpt2", pre: "llama-bpe", vocabularySize: 1024, addBosToken: true },
      chatTemplate: { present: true, r1Style: true },
    });
    // 2 layers × 7 matrices + token_embd are Q4_K; norms and rope_freqs F32
    const types = Object.fromEntries(info.tensorTypes.map((type) => [type.type, type]));
    expect(types.Q4_K).toMatchObject({ count: 15 });
    expect(types.F32).toMatchObject({ count: 2 * 2 + 1 + 1, bytes: (2 * 2 * 256 + 256 + 32) * 4 });
    expect(types.Q4_K.bytes).toBe((types.Q4_K.parameters / 256) * 144);
    expect(info.tensorBytes).toBe(types.Q4_K.bytes + types.F32.bytes);
    const roles = Object.fromEntries(info.tokenizer.specialTokens.map((token) => [token.role, token.text]));
    expect(roles).toMatchObject({
      bos: "<｜begin▁of▁sentence｜>",
      eos: "<｜end▁of▁sentence｜>",
      user: "<｜User｜>",
      assistant: "<｜Assistant｜>",
      think: "<think>",
      "end of think": "</think>",
    });
  });

  it("tells a non-R1 chat template apart", async () => {
    const { writer } = synthModelWriter(resolveSynthOptions({ nLayer: 1, nEmbd: 64, nHead: 2, nHeadKv: 2, nFf: 64, nVocab: 300, type: "F32" }));
    writer.set("tokenizer.chat_template", gguf.string("{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"));
    const file = path.join(dir, "chatml.gguf");
    await writer.write(file);
    const info = await inspectGguf(file);
    expect(info.chatTemplate).toMatchObject({ present: true, r1Style: false });
  });

  it("prints a summary, or the same record as JSON", async () => {
    const file = path.join(import.meta.dirname, "..", "..", "models", "tiny-r1.gguf");
    const [text, json] = await Promise.all([runCli(["inspect", file]), runCli(["inspect", file, "--json"])]);
    expect(text.code, text.stderr).toBe(0);
    expect(text.stdout).toMatch(/architecture {2}qwen2\n/);
    expect(text.stdout).toMatch(/shape {9}4 layers, embedding 256, 4 heads \/ 2 KV heads \(head size 64\), FFN 512, vocabulary 1280/);
    expect(text.stdout).toMatch(/parameters {4}3\.02M in 51 tensors/);
    expect(text.stdout).toMatch(/ {2}Q8_0 +30 tensors/);
    expect(text.stdout).toMatch(/tokenizer {5}gpt2 \(pre deepseek-r1-qwen\), 1280 tokens/);
    expect(text.stdout).toMatch(/think +\d+ {2}"<think>"/);
    expect(text.stdout).toMatch(/chat template present \(\d+ characters\), R1-style/);
    expect(json.code, json.stderr).toBe(0);
    const record = JSON.parse(json.stdout) as GgufInspection;
    expect(record).toEqual(JSON.parse(JSON.stringify(await inspectGguf(file))));
  });
});
