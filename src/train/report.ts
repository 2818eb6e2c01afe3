// report.html: one self-contained page (inline SVG and CSS, no scripts or network) plotting a run's
// train and validation loss, learning rate and throughput from its metrics records.
import type { EvalRecord, MetricsRecord, StepRecord } from "./metrics.js";
import type { TrainingConfig } from "./config.js";
import { writeFileAtomic } from "../util/atomic-file.js";

interface Series {
  label: string;
  color: string;
  points: [number, number][];
  markers?: boolean;
}

const width = 640;
const height = 260;
const margin = { left: 64, right: 16, top: 28, bottom: 36 };

function escapeHtml(text: string): string {
  return text.replace(/[&<>"']/g, (char) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[char] ?? char);
}

function formatNumber(value: number): string {
  if (value === 0) return "0";
  const magnitude = Math.abs(value);
  if (magnitude >= 1e5 || magnitude < 1e-3) return value.toExponential(1);
  if (magnitude >= 100) return value.toFixed(0);
  return Number(value.toPrecision(3)).toString();
}

/** Round tick values covering [min, max]. */
function ticks(min: number, max: number, count: number): number[] {
  if (min === max) return [min];
  const rough = (max - min) / count;
  const power = 10 ** Math.floor(Math.log10(rough));
  const step = [1, 2, 5, 10].map((factor) => factor * power).find((candidate) => candidate >= rough) ?? rough;
  const values: number[] = [];
  for (let value = Math.ceil(min / step) * step; value <= max + step * 1e-9; value += step) values.push(Number(value.toPrecision(12)));
  return values;
}

function chart(title: string, series: Series[], yLabel: string): string {
  const all = series.flatMap((entry) => entry.points).filter(([, y]) => Number.isFinite(y));
  if (all.length === 0) return `<figure><figcaption>${escapeHtml(title)}</figcaption><p class="empty">no data yet</p></figure>`;
  // loops, not Math.min(...spread): a long run has more points than a call may take arguments
  let [xMin, xMax, yMin, yMax] = [Infinity, -Infinity, Infinity, -Infinity];
  for (const [x, y] of all) {
    xMin = Math.min(xMin, x);
    xMax = Math.max(xMax, x);
    yMin = Math.min(yMin, y);
    yMax = Math.max(yMax, y);
  }
  if (xMin === xMax) [xMin, xMax] = [xMin - 1, xMax + 1];
  if (yMin === yMax) [yMin, yMax] = [yMin === 0 ? -1 : yMin * 0.9, yMax === 0 ? 1 : yMax * 1.1];
  const pad = (yMax - yMin) * 0.05;
  yMin = yMin >= 0 && yMin - pad < 0 ? 0 : yMin - pad;
  yMax += pad;
  const plotWidth = width - margin.left - margin.right;
  const plotHeight = height - margin.top - margin.bottom;
  const sx = (x: number) => margin.left + ((x - xMin) / (xMax - xMin)) * plotWidth;
  const sy = (y: number) => margin.top + plotHeight - ((y - yMin) / (yMax - yMin)) * plotHeight;
  const parts: string[] = [];
  for (const value of ticks(yMin, yMax, 5)) {
    parts.push(`<line class="grid" x1="${margin.left}" x2="${width - margin.right}" y1="${sy(value).toFixed(1)}" y2="${sy(value).toFixed(1)}"/>`);
    parts.push(`<text class="tick" x="${margin.left - 6}" y="${(sy(value) + 4).toFixed(1)}" text-anchor="end">${formatNumber(value)}</text>`);
  }
  for (const value of ticks(xMin, xMax, 6).filter((x) => Number.isInteger(x))) {
    parts.push(`<text class="tick" x="${sx(value).toFixed(1)}" y="${height - margin.bottom + 16}" text-anchor="middle">${value}</text>`);
  }
  parts.push(`<rect class="frame" x="${margin.left}" y="${margin.top}" width="${plotWidth}" height="${plotHeight}"/>`);
  parts.push(`<text class="axis" x="${margin.left + plotWidth / 2}" y="${height - 4}" text-anchor="middle">step</text>`);
  parts.push(`<text class="axis" transform="translate(14 ${margin.top + plotHeight / 2}) rotate(-90)" text-anchor="middle">${escapeHtml(yLabel)}</text>`);
  series.forEach((entry, index) => {
    const points = entry.points.filter(([, y]) => Number.isFinite(y));
    if (points.length === 0) return;
    const path = points.map(([x, y], i) => `${i === 0 ? "M" : "L"}${sx(x).toFixed(1)} ${sy(y).toFixed(1)}`).join("");
    parts.push(`<path d="${path}" fill="none" stroke="${entry.color}" stroke-width="1.6"/>`);
    if (entry.markers) {
      for (const [x, y] of points) parts.push(`<circle cx="${sx(x).toFixed(1)}" cy="${sy(y).toFixed(1)}" r="3" fill="${entry.color}"/>`);
    }
    const legendX = margin.left + 8 + index * 150;
    parts.push(`<line x1="${legendX}" x2="${legendX + 18}" y1="14" y2="14" stroke="${entry.color}" stroke-width="3"/>`);
    parts.push(`<text class="legend" x="${legendX + 24}" y="18">${escapeHtml(entry.label)}</text>`);
  });
  return `<figure><figcaption>${escapeHtml(title)}</figcaption><svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 ${width} ${height}" width="${width}" height="${height}" role="img" aria-label="${escapeHtml(title)}">${parts.join("")}</svg></figure>`;
}

export interface ReportInput {
  config: TrainingConfig;
  records: MetricsRecord[];
  totalSteps: number;
  status: string;
}

export function renderReport({ config, records, totalSteps, status }: ReportInput): string {
  const steps = records.filter((record): record is StepRecord => record.type === "step");
  const evals = records.filter((record): record is EvalRecord => record.type === "eval");
  const last = steps.at(-1);
  const bestEval = evals.reduce<EvalRecord | undefined>((best, record) => (best === undefined || record.valLoss < best.valLoss ? record : best), undefined);
  const summary: [string, string][] = [
    ["status", status],
    ["model", config.model],
    ["data", config.data],
    ["steps", `${last?.step ?? 0} / ${totalSteps}`],
    ["train loss (first → last)", steps.length > 0 ? `${formatNumber(steps[0].loss)} → ${formatNumber(last!.loss)}` : "–"],
    ["best validation loss", bestEval ? `${formatNumber(bestEval.valLoss)} at step ${bestEval.step}` : "–"],
    ["LoRA", `rank ${config.lora.rank}, alpha ${config.lora.alpha}, targets ${config.lora.targets.join(" ")}`],
    ["learning rate", `${config.learningRate} (${config.lrSchedule})`],
  ];
  const charts = [
    chart("Loss", [
      { label: "train", color: "#1f77b4", points: steps.map((record) => [record.step, record.loss]) },
      { label: "validation", color: "#d62728", points: evals.map((record) => [record.step, record.valLoss]), markers: true },
    ], "cross-entropy"),
    chart("Learning rate", [{ label: "lr", color: "#2ca02c", points: steps.map((record) => [record.step, record.lr]) }], "lr"),
    chart("Throughput", [{ label: "tokens/s", color: "#9467bd", points: steps.map((record) => [record.step, record.tokensPerSecond]) }], "tokens/s"),
  ];
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>thinktune run report</title>
<style>
body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#222;max-width:720px}
table{border-collapse:collapse;margin-bottom:16px}td{padding:2px 12px 2px 0;vertical-align:top}td:first-child{color:#666}
figure{margin:16px 0}figcaption{font-weight:600;margin-bottom:4px}
.grid{stroke:#eee}.frame{fill:none;stroke:#999}.tick,.legend{font-size:11px;fill:#444}.axis{font-size:12px;fill:#666}.empty{color:#888}
</style></head><body>
<h1>thinktune run</h1>
<table>${summary.map(([key, value]) => `<tr><td>${escapeHtml(key)}</td><td>${escapeHtml(value)}</td></tr>`).join("")}</table>
${charts.join("\n")}
</body></html>
`;
}

export async function writeReport(file: string, input: ReportInput): Promise<void> {
  await writeFileAtomic(file, [Buffer.from(renderReport(input))]);
}
