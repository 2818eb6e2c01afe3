// Two LoRA training steps of a model, to run under Nsight Compute for the per-kernel time breakdown
// in bench/profile.md (ncu_summary.mjs keeps the second step: the kernels after the first AdamW
// update). Usage, on the GPU machine after npm run build:native:
//   node dist/cli/main.js synth --preset r1-distill-qwen-7b --layers 4 --type Q4_K --seed 0 --out /tmp/cut.gguf
//   ncu --clock-control none --metrics gpu__time_duration.sum --csv \
//     node bench/kernels/profile_step.mjs /tmp/cut.gguf 4096 > ncu.csv
//   node bench/kernels/ncu_summary.mjs ncu.csv
import { Engine } from "../../dist/index.js";

const [file, seqText = "4096"] = process.argv.slice(2);
if (!file) {
  console.error("usage: node bench/kernels/profile_step.mjs MODEL.gguf [tokens]");
  process.exit(2);
}
const seq = Number(seqText);
const engine = await Engine.load(file, {
  device: "cuda",
  maxTokens: seq,
  lora: { rank: 16, alpha: 32, targets: ["q", "k", "v", "o", "gate", "up", "down"], dropout: 0, seed: 0 },
});
const vocab = engine.config.nVocab;
const tokens = Int32Array.from({ length: seq }, (_, i) => (i * 2654435761) % vocab);
const targets = Int32Array.from({ length: seq }, (_, i) => (i + 1 < seq ? tokens[i + 1] : -1));
const row = { tokens, targets, seqStarts: Int32Array.of(0) };
// the wall time of a step (run without ncu) against the kernels' sum ncu measures: the rest is launch
// gaps, host work and synchronization
for (let step = 0; step < 2; step++) {
  const start = performance.now();
  const result = await engine.step([row], 1e-4);
  console.error(`step ${step}: loss ${(result.lossSum / result.tokens).toFixed(4)}, ${(performance.now() - start).toFixed(2)} ms wall`);
}
console.error(JSON.stringify(engine.memoryPlan()));
engine.dispose();
