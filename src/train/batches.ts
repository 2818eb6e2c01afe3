// Which rows go into which optimizer step. Each epoch shuffles the packed rows with the run's
// generator, groups them into micro-batches by token budget, and accumulates `gradAccum`
// micro-batches per step. A step is identified by where it starts in the epoch's shuffled order.
import { Rng, type RngState } from "./rng.js";

export interface BatchingOptions {
  /** token budget of one micro-batch (a row longer than it still forms a micro-batch alone) */
  batchTokens: number;
  /** micro-batches per optimizer step */
  gradAccum: number;
}

export interface PlannedStep {
  /** index into the epoch's shuffled order where this step's rows begin */
  start: number;
  /** row indices, in order */
  rows: number[];
}

export interface EpochPlan {
  /** generator state before this epoch's shuffle was drawn: restoring it reproduces the epoch */
  rngState: RngState;
  order: number[];
  steps: PlannedStep[];
}

/** Draws the epoch's shuffle from `rng` (advancing it) and splits the order into steps. */
export function planEpoch(rowLengths: readonly number[], rng: Rng, options: BatchingOptions): EpochPlan {
  const rngState = rng.state();
  const order = rng.permutation(rowLengths.length);
  const steps: PlannedStep[] = [];
  let position = 0;
  while (position < order.length) {
    const start = position;
    for (let micro = 0; micro < options.gradAccum && position < order.length; micro++) {
      let budget = 0;
      do {
        budget += rowLengths[order[position]];
        position++;
      } while (position < order.length && budget + rowLengths[order[position]] <= options.batchTokens);
    }
    steps.push({ start, rows: order.slice(start, position) });
  }
  return { rngState, order, steps };
}

/** Optimizer steps in `epochs` epochs, counted by planning them with a generator of the same seed. */
export function countSteps(rowLengths: readonly number[], seed: number, epochs: number, options: BatchingOptions): number {
  const rng = Rng.fromSeed(seed);
  let total = 0;
  for (let epoch = 0; epoch < epochs; epoch++) total += planEpoch(rowLengths, rng, options).steps.length;
  return total;
}
