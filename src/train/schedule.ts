// Learning rate per optimizer step: linear warmup, then cosine decay (or constant) to the minimum.

export interface LearningRateSchedule {
  peak: number;
  warmupSteps: number;
  totalSteps: number;
  decay: "cosine" | "constant";
  minimum: number;
}

/** `step` counts from 1; warmup reaches the peak on its last step, decay reaches the minimum after the last step. */
export function learningRateAt(schedule: LearningRateSchedule, step: number): number {
  const { peak, warmupSteps, totalSteps, decay, minimum } = schedule;
  if (step <= warmupSteps) return (peak * step) / warmupSteps;
  if (decay === "constant") return peak;
  const decaySteps = Math.max(1, totalSteps - warmupSteps);
  const progress = Math.min(1, (step - warmupSteps - 1) / decaySteps);
  return minimum + (peak - minimum) * 0.5 * (1 + Math.cos(Math.PI * progress));
}

/** 5% of the run, at least one step when the run has more than one. */
export function defaultWarmupSteps(totalSteps: number): number {
  return totalSteps > 1 ? Math.max(1, Math.round(totalSteps * 0.05)) : 0;
}
