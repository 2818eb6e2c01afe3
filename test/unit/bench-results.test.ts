// bench/RESULTS.md from the records: training rows with the measured peak, the kept layers, the host
// memory and the copy wait, the attention table beside torch SDPA, and the goals of the GPU speed issue
// judged per record.
import { describe, expect, it } from "vitest";
import { renderResultsMarkdown, type AttentionRecord, type BenchRecord } from "../../src/bench/results.js";

const training = (seq: number, tokensPerSecond: number, peft: number, extra: Partial<BenchRecord> = {}): BenchRecord => ({
  date: "2026-12-01",
  machine: "16-core host",
  gpu: "NVIDIA H200",
  commit: "abc1234",
  device: "cuda",
  model: "synth qwen2 28x3584",
  type: "Q4_K",
  seq,
  threads: null,
  rank: 16,
  tokensPerSecond,
  stepSeconds: seq / tokensPerSecond,
  forwardTokensPerSecond: null,
  llamaCppForwardTokensPerSecond: null,
  peftTokensPerSecond: peft,
  peakGiB: 20,
  measuredPeakGiB: 21.5,
  gpuMemoryGiB: 24,
  keptLayers: 12,
  ...extra,
});

const attention = (seq: number, ours: number, flash: number | null, cudnn: number | null): AttentionRecord => ({
  kind: "attention",
  date: "2026-12-01",
  machine: "16-core host",
  gpu: "NVIDIA H200",
  commit: "abc1234",
  seq,
  heads: 28,
  kvHeads: 4,
  headDim: 128,
  forwardTflops: ours * 1.2,
  forwardBackwardTflops: ours,
  sdpaFlashTflops: flash,
  sdpaCudnnTflops: cudnn,
});

describe("bench results", () => {
  it("judges the GPU goals by length and by the lean budget", () => {
    const markdown = renderResultsMarkdown([
      training(4096, 12_000, 8_000),
      training(16384, 7_000, 7_400),
      training(4096, 8_500, 8_000, { gpuMemoryGiB: 10, measuredPeakGiB: 9.6, keptLayers: 0 }),
    ]);
    expect(markdown).toContain("seq 4096 (2026-12-01, 16-core host, abc1234): training at 1.50x PEFT's tokens/s (goal ≥ 1.5x, aiming at 2x: met); peak 21.50 GiB measured (goal ≤ 24 GiB: met)");
    expect(markdown).toContain("training at 0.95x PEFT's tokens/s (goal ≥ 1x, aiming at 1.3x: not met)");
    expect(markdown).toContain("training at 1.06x PEFT's tokens/s (goal ≥ 1x: met); peak 9.60 GiB measured (goal ≤ 10 GiB: met)");
    expect(markdown).toContain("| 21.50 | 24 | 12 |");
  });

  it("shows the host memory and the copy wait of a long length, and dashes for records without them", () => {
    const markdown = renderResultsMarkdown([
      training(65536, 2_500, 0, { peftTokensPerSecond: null, measuredPeakGiB: 23.1, keptLayers: 0, hostGiB: 12.25, copyWaitShare: 0.0412, mfu: 0.18 }),
      training(4096, 12_000, 8_000),
      training(16384, 7_000, 7_400, { hostGiB: 0, copyWaitShare: 0 }),
      training(16384, 7_100, 7_400, { keptLayers: 27, keptWholeLayers: 3, hostGiB: 6.1, copyWaitShare: 0.001 }),
    ]);
    expect(markdown).toContain("| kept | host GiB | copy wait | PEFT peak GiB | MFU |");
    expect(markdown).toContain("| 23.10 | 24 | 0 | 12.25 | 4.1% | – | 18.0% |");
    expect(markdown).toContain("seq 65536 (2026-12-01, 16-core host, abc1234): peak 23.10 GiB measured (goal ≤ 24 GiB: met); 12.25 GiB of checkpoints in host memory, 4.1% of the step time waiting on checkpoint copies.");
    // a record from before the fields shows dashes; neither it nor one with the checkpoints on the GPU speaks of host memory
    expect(markdown).toContain("| 21.50 | 24 | 12 | – | – | – | – |");
    expect(markdown).toContain("| 21.50 | 24 | 12 | 0.00 | 0.0% | – | – |");
    // kept layers with how many of them kept their feed-forward products too
    expect(markdown).toContain("| 21.50 | 24 | 27 (3) | 6.10 | 0.1% | – | – |");
    expect(markdown.match(/in host memory/g)?.length).toBe(2);
  });

  it("renders the attention table and its goal against SDPA flash, aiming at cuDNN", () => {
    const markdown = renderResultsMarkdown([training(4096, 12_000, 8_000), attention(4096, 240, 234.1, 431.4), attention(16384, 200, 313.5, null)]);
    expect(markdown).toContain("## Attention kernels");
    expect(markdown).toContain("| 2026-12-01 | 16-core host (NVIDIA H200) | abc1234 | 4096 | 28/4 | 128 | 288.0 | 240.0 | 234.1 | 431.4 |");
    expect(markdown).toContain("attention seq 4096 (2026-12-01, 16-core host, abc1234): forward + backward 240.0 TFLOP/s against SDPA flash's 234.1 (goal ≥: met); cuDNN's 431.4 (aimed at: not met).");
    expect(markdown).toContain("attention seq 16384 (2026-12-01, 16-core host, abc1234): forward + backward 200.0 TFLOP/s against SDPA flash's 313.5 (goal ≥: not met).");
    // attention records are not training rows
    expect(markdown.match(/\| cuda \|/g)?.length).toBe(1);
  });
});
