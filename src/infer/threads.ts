// How many CPU threads llama.cpp should evaluate with, measured rather than assumed. ggml's threads
// wait for each other at every operation, so one thread that has to share its core with another
// process stalls all of them: on 2 cores with another process busy, 2 threads generated 25x slower
// than 1, and node-llama-cpp's default (at least 4) 600x slower. So the default is the cores that
// are free now: every core, less what other processes kept busy over the last interval (this
// process's own use is not counted against it), at least 1.
import os from "node:os";

export interface CpuSample {
  /** when, in milliseconds (performance.now()) */
  at: number;
  /** busy and idle CPU time summed over all cores, in milliseconds */
  busyMs: number;
  idleMs: number;
  /** this process's CPU time (user + system), in milliseconds */
  ownMs: number;
}

export function sampleCpu(): CpuSample {
  let busyMs = 0;
  let idleMs = 0;
  for (const cpu of os.cpus()) {
    const { user, nice, sys, irq, idle } = cpu.times;
    busyMs += user + nice + sys + irq;
    idleMs += idle;
  }
  const own = process.cpuUsage();
  return { at: performance.now(), busyMs, idleMs, ownMs: (own.user + own.system) / 1000 };
}

/**
 * Cores left free by other processes between two samples, from 1 to `cores`. Busy time is counted
 * in whole cores (rounded) so that background noise does not take a core away.
 */
export function freeCoresBetween(earlier: CpuSample, later: CpuSample, cores: number): number {
  const total = later.busyMs + later.idleMs - (earlier.busyMs + earlier.idleMs);
  if (total <= 0) return cores;
  const othersBusy = Math.max(0, later.busyMs - earlier.busyMs - (later.ownMs - earlier.ownMs));
  const othersCores = Math.round((othersBusy / total) * cores);
  return Math.min(cores, Math.max(1, cores - othersCores));
}

const minimumIntervalMs = 200;
/** an older sample says little about the load now */
const maximumIntervalMs = 10_000;
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/**
 * Measures the free cores since the last call when that was 0.2-10 s ago (a conversation's turns),
 * otherwise over the next 200 ms.
 */
export class FreeCoreMeter {
  #last: CpuSample | undefined;

  constructor(readonly cores: number) {}

  async measure(): Promise<number> {
    let last = this.#last;
    const age = last ? performance.now() - last.at : Infinity;
    if (!last || age < minimumIntervalMs || age > maximumIntervalMs) {
      last = sampleCpu();
      await sleep(minimumIntervalMs);
    }
    const now = sampleCpu();
    this.#last = now;
    return freeCoresBetween(last, now, this.cores);
  }
}
