// Shared fixtures of the engine tests: small synth models, rows, deterministic LoRA values.
import type { NamedTensor, NativeRow } from "../../src/native/addon.js";
import type { Engine } from "../../src/train/engine.js";

/** A model small enough for finite differences on 2 cores in well under a second per evaluation. */
export const smallModel = { nLayer: 2, nEmbd: 64, nHead: 4, nHeadKv: 2, nFf: 128, nVocab: 320, contextLength: 256 } as const;

/** Deterministic pseudo-random numbers in [0, 1) (mulberry32). */
export function random(seed: number): () => number {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

export function randomTokens(count: number, nVocab: number, seed: number): Int32Array {
  const next = random(seed);
  return Int32Array.from({ length: count }, () => Math.floor(next() * nVocab));
}

/** targets[i] = tokens[i+1] inside each sequence, -1 at each sequence's last position and before lossFrom. */
export function packedRow(sequences: Int32Array[], lossFrom = 0): NativeRow {
  const length = sequences.reduce((sum, sequence) => sum + sequence.length, 0);
  const tokens = new Int32Array(length);
  const targets = new Int32Array(length).fill(-1);
  const seqStarts: number[] = [];
  let offset = 0;
  for (const sequence of sequences) {
    seqStarts.push(offset);
    tokens.set(sequence, offset);
    for (let i = Math.max(0, lossFrom - 1); i + 1 < sequence.length; i++) targets[offset + i] = sequence[i + 1]!;
    offset += sequence.length;
  }
  return { tokens, targets, seqStarts: Int32Array.from(seqStarts) };
}

/** Gives every LoRA tensor (B included, which starts at zero) deterministic values of the given scale. */
export async function randomizeLora(engine: Engine, seed: number, scale = 0.05): Promise<NamedTensor[]> {
  const next = random(seed);
  const tensors = (await engine.getLora()).map((tensor) => ({
    ...tensor,
    data: Float32Array.from(tensor.data, () => (next() * 2 - 1) * scale),
  }));
  await engine.setLora(tensors);
  return tensors;
}

export function maxAbsDifference(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let max = 0;
  for (let i = 0; i < a.length; i++) max = Math.max(max, Math.abs(a[i]! - b[i]!));
  return max;
}
