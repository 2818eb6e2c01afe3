// LoRA gradients against central finite differences of the loss, for A and B of every target type,
// on tiny F32 models of both architectures (with Q/K/V bias and tied output variants).
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { NamedTensor } from "../../src/native/addon.js";
import { Engine } from "../../src/train/engine.js";
import { synthModel } from "../helpers/models.js";
import { packedRow, random, randomTokens, randomizeLora, smallModel } from "./engine-fixtures.js";

const cases = [
  { name: "qwen2 (NEOX RoPE, QKV bias)", synth: { ...smallModel, arch: "qwen2", type: "F32", seed: 11 } },
  { name: "llama (normal RoPE, rope_freqs, tied output)", synth: { ...smallModel, arch: "llama", type: "F32", ropeFreqs: true, tiedOutput: true, seed: 12 } },
] as const;

describe.each(cases)("LoRA gradients match finite differences: $name", ({ synth }) => {
  let engine: Engine;
  let lora: NamedTensor[];
  // two packed sequences with a prompt part without loss: exercises masking and sequence boundaries;
  // 89 positions span two 64-position attention blocks, the second sequence starting inside the second
  const row = packedRow([randomTokens(70, smallModel.nVocab, 1), randomTokens(19, smallModel.nVocab, 2)], 3);

  beforeAll(async () => {
    engine = await Engine.load(await synthModel(synth), { threads: 2, maxTokens: 96, lora: { rank: 4, alpha: 8 } });
    lora = await randomizeLora(engine, 5, 0.2);
  });
  afterAll(() => engine?.dispose());

  async function lossWith(name: string, index: number, value: number): Promise<number> {
    await engine.setLora(lora.map((tensor) => (tensor.name === name ? { ...tensor, data: Float32Array.from(tensor.data, (x, i) => (i === index ? value : x)) } : tensor)));
    const result = await engine.evaluate([row]);
    return result.lossSum;
  }

  it("for A and B of q k v o gate up down in the first and last layer", async () => {
    await engine.setLora(lora);
    const { tensors, tokens } = await engine.gradients([row]);
    expect(tokens).toBe(row.targets.filter((target) => target >= 0).length);
    const pick = random(9);
    const checked: string[] = [];
    for (const layer of [0, smallModel.nLayer - 1]) {
      for (const stem of ["attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"]) {
        for (const part of ["lora_a", "lora_b"]) {
          const name = `blk.${layer}.${stem}.weight.${part}`;
          const gradient = tensors.find((tensor) => tensor.name === name);
          const parameter = lora.find((tensor) => tensor.name === name);
          expect(gradient, name).toBeDefined();
          // the element with the largest gradient and one random element
          let largest = 0;
          gradient!.data.forEach((value, i) => {
            if (Math.abs(value) > Math.abs(gradient!.data[largest]!)) largest = i;
          });
          expect(Math.abs(gradient!.data[largest]!), `${name} has a non-zero gradient`).toBeGreaterThan(1e-2);
          for (const index of [largest, Math.floor(pick() * gradient!.data.length)]) {
            const h = 1e-2;
            const original = parameter!.data[index]!;
            const plus = await lossWith(name, index, original + h);
            const minus = await lossWith(name, index, original - h);
            const numeric = (plus - minus) / (2 * h);
            const analytic = gradient!.data[index]!;
            // fp32 forward: the loss sum (~600) carries ~1e-4 rounding noise, i.e. ~5e-3 in a difference over 2h
            expect(Math.abs(numeric - analytic), `${name}[${index}] analytic ${analytic} numeric ${numeric}`).toBeLessThanOrEqual(
              5e-3 + 1e-2 * Math.abs(analytic),
            );
            checked.push(name);
          }
        }
      }
    }
    await engine.setLora(lora);
    expect(checked.length).toBe(2 * 7 * 2 * 2);
  });
});
