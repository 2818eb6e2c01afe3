// Sums an Nsight Compute CSV (--metrics gpu__time_duration.sum --csv) of profile_step.mjs by kernel
// family over the last step (the kernels after the first step's AdamW update) and prints a Markdown table.
import { readFileSync } from "node:fs";

const file = process.argv[2];
if (!file) {
  console.error("usage: node bench/kernels/ncu_summary.mjs ncu.csv");
  process.exit(2);
}
const lines = readFileSync(file, "utf8").split("\n").filter((line) => line.startsWith('"'));
const parse = (line) => [...line.matchAll(/"((?:[^"]|"")*)"/g)].map((match) => match[1].replaceAll('""', '"'));
const header = parse(lines[0]);
const column = (name) => header.indexOf(name);
const [idColumn, nameColumn, metricColumn, unitColumn, valueColumn] = ["ID", "Kernel Name", "Metric Name", "Metric Unit", "Metric Value"].map(column);
const kernels = new Map();
for (const line of lines.slice(1)) {
  const fields = parse(line);
  if (fields[metricColumn] !== "gpu__time_duration.sum") continue;
  const scale = { ns: 1e-3, us: 1, usecond: 1, msecond: 1e3, ms: 1e3, nsecond: 1e-3 }[fields[unitColumn]] ?? 1;
  kernels.set(Number(fields[idColumn]), { name: fields[nameColumn], us: Number(fields[valueColumn].replaceAll(",", "")) * scale });
}
const ordered = [...kernels.entries()].sort((a, b) => a[0] - b[0]).map(([, kernel]) => kernel);
const firstUpdate = ordered.findIndex((kernel) => kernel.name.includes("adamw"));
const step = ordered.slice(firstUpdate + 1);
const family = (name) => {
  if (/flash_forward/.test(name)) return "attention forward (fused)";
  if (/flash_backward|row_dots/.test(name)) return "attention backward (fused)";
  if (/softmax|group_heads|ungroup/.test(name)) return "attention (tiled, cuBLAS path)";
  if (/dequantize/.test(name)) return "dequantize to bf16";
  if (/gemm|gemv|cutlass|sm90_xmma|sm80_xmma|ampere|hopper|nvjet|Kernel2/i.test(name)) return "cuBLAS matrix products";
  if (/to_bf16|to_f32/.test(name)) return "fp32 ↔ bf16 conversions";
  if (/rmsnorm/.test(name)) return "RMSNorm";
  if (/rope/.test(name)) return "RoPE";
  if (/swiglu/.test(name)) return "SwiGLU";
  if (/cross_entropy/.test(name)) return "cross-entropy";
  if (/adamw|sum_squares/.test(name)) return "AdamW and gradient norm";
  return "other elementwise (residuals, bias, gather, dropout)";
};
const total = step.reduce((sum, kernel) => sum + kernel.us, 0);
const byFamily = new Map();
for (const kernel of step) {
  const key = family(kernel.name);
  const entry = byFamily.get(key) ?? { us: 0, launches: 0, names: new Set() };
  entry.us += kernel.us;
  entry.launches += 1;
  entry.names.add(kernel.name.replace(/\(.*$/, "").slice(0, 60));
  byFamily.set(key, entry);
}
console.log(`| kernel family | ms | share | launches |`);
console.log(`|---|---:|---:|---:|`);
for (const [key, entry] of [...byFamily.entries()].sort((a, b) => b[1].us - a[1].us)) {
  console.log(`| ${key} | ${(entry.us / 1e3).toFixed(2)} | ${((100 * entry.us) / total).toFixed(1)}% | ${entry.launches} |`);
}
console.log(`| **one step** | **${(total / 1e3).toFixed(2)}** | 100% | ${step.length} |`);
