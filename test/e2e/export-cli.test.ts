// `thinktune export` from a run folder, an adapter folder and a checkpoint, in all four formats; the
// Ollama Modelfile against Ollama's grammar; gguf-py reading our adapter; and the errors a wrong base
// or a damaged adapter must give before anything is written.
import { execFile } from "node:child_process";
import { existsSync } from "node:fs";
import { mkdir, mkdtemp, readdir, readFile, rm, stat, truncate, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { readGgufAdapter, writeGgufAdapter } from "../../src/export/gguf-adapter.js";
import { writeSafetensors } from "../../src/export/safetensors.js";
import { readGgufModel } from "../../src/gguf/read.js";
import { minimumVocabularySize } from "../../src/gguf/tokenizer-vocab.js";
import type { NamedTensor } from "../../src/native/addon.js";
import { synthModel } from "../helpers/models.js";

const run = promisify(execFile);
const projectRoot = path.resolve(import.meta.dirname, "..", "..");
const referencePython = path.join(projectRoot, ".venv-ref", "bin", "python");
const bundle = path.join(projectRoot, "node_modules", "node-llama-cpp", "llama", "gitRelease.bundle");

let dir: string;
let qwenBase: string;
let otherQwenBase: string;
let llamaBase: string;
let runDir: string;
let lora: NamedTensor[];
const rank = 4;
const alpha = 16;

// The export command alone on a commander program, in a child process as the CLI runs it; registering
// only it keeps this test independent of the other commands' modules.
const exportEntry = [
  'import { Command } from "commander";',
  'import { registerExportCommand } from "./src/cli/export.ts";',
  'const program = new Command().name("thinktune");',
  "registerExportCommand(program);",
  // with -e there is no script path in argv: the arguments start right after the node binary
  "await program.parseAsync(process.argv.slice(1), { from: \"user\" });",
].join("\n");

async function thinktune(...args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  try {
    const { stdout, stderr } = await run(process.execPath, ["--import", "tsx", "--input-type=module", "-e", exportEntry, "--", ...args], { cwd: projectRoot });
    return { code: 0, stdout, stderr };
  } catch (error) {
    const failure = error as { code: number; stdout: string; stderr: string };
    return { code: failure.code, stdout: failure.stdout, stderr: failure.stderr };
  }
}

function loraFor(baseDims: Map<string, number[]>): NamedTensor[] {
  const tensors: NamedTensor[] = [];
  let seed = 1;
  for (const [name, [inFeatures, outFeatures]] of baseDims) {
    if (!/^blk\.\d+\.(attn_q|attn_v)\.weight$/.test(name)) continue;
    const a = Float32Array.from({ length: rank * inFeatures }, (_, i) => Math.sin(seed * 7 + i) * 0.1);
    const b = Float32Array.from({ length: outFeatures * rank }, (_, i) => Math.cos(seed * 3 + i) * 0.1);
    seed++;
    tensors.push({ name: `${name}.lora_a`, shape: [rank, inFeatures], data: a }, { name: `${name}.lora_b`, shape: [outFeatures, rank], data: b });
  }
  return tensors;
}

beforeAll(async () => {
  dir = await mkdtemp(path.join(tmpdir(), "thinktune-export-cli-"));
  const small = { nLayer: 2, nEmbd: 64, nHead: 4, nHeadKv: 2, nFf: 128, nVocab: minimumVocabularySize + 64, contextLength: 256, type: "Q8_0" as const };
  qwenBase = await synthModel({ arch: "qwen2", ...small, seed: 1 });
  otherQwenBase = await synthModel({ arch: "qwen2", ...small, nEmbd: 96, nHead: 6, nHeadKv: 2, seed: 1 });
  llamaBase = await synthModel({ arch: "llama", ...small, seed: 1 });
  const base = await readGgufModel(qwenBase);
  lora = loraFor(new Map(base.tensors.map((t) => [t.name, t.dims])));

  // a run folder as the trainer leaves it: config.json, a checkpoint, and the final adapter
  runDir = path.join(dir, "run");
  const checkpoint = path.join(runDir, "checkpoints", "step-3");
  await mkdir(checkpoint, { recursive: true });
  await mkdir(path.join(runDir, "adapter"), { recursive: true });
  await writeFile(path.join(runDir, "config.json"), JSON.stringify({ model: qwenBase, lora: { rank, alpha, targets: ["q", "v"] } }));
  await writeSafetensors(path.join(checkpoint, "lora.safetensors"), lora, { format: "thinktune-lora" });
  await writeFile(path.join(checkpoint, "state.json"), JSON.stringify({ version: 1, step: 3 }));
  await writeGgufAdapter(path.join(runDir, "adapter", "adapter.gguf"), { baseModelPath: qwenBase, alpha, tensors: lora });
  await writeFile(
    path.join(runDir, "adapter", "thinktune.json"),
    JSON.stringify({ baseModelPath: qwenBase, arch: "qwen2", rank, alpha, targets: ["q", "v"], step: 4, adapter: "adapter.gguf" }),
  );
}, 120_000);

afterAll(async () => {
  if (dir) await rm(dir, { recursive: true, force: true });
});

/** Ollama's Modelfile grammar (ollama/parser): `COMMAND args` lines; args a bare word, "quoted", or """multi-line""". */
function parseModelfile(text: string): { command: string; args: string }[] {
  const commands = new Set(["from", "adapter", "parameter", "template", "system", "license", "message", "requires"]);
  const out: { command: string; args: string }[] = [];
  let rest = text;
  while (rest.length > 0) {
    rest = rest.replace(/^\s+/, "");
    if (rest === "") break;
    if (rest.startsWith("#")) {
      rest = rest.slice(rest.indexOf("\n") + 1 || rest.length);
      continue;
    }
    const match = /^([A-Za-z]+)[ \t]+/.exec(rest);
    if (!match || !commands.has(match[1].toLowerCase())) throw new Error(`not a Modelfile command: ${rest.slice(0, 40)}`);
    rest = rest.slice(match[0].length);
    let args: string;
    if (rest.startsWith('"""')) {
      const end = rest.indexOf('"""', 3);
      if (end < 0) throw new Error(`unterminated """ after ${match[1]}`);
      args = rest.slice(3, end);
      rest = rest.slice(end + 3);
    } else {
      const lineEnd = rest.indexOf("\n");
      args = lineEnd < 0 ? rest : rest.slice(0, lineEnd);
      rest = lineEnd < 0 ? "" : rest.slice(lineEnd + 1);
    }
    out.push({ command: match[1].toLowerCase(), args: args.trim() });
  }
  return out;
}

describe("thinktune export", () => {
  it("exports a run folder's adapter as GGUF, identical to the run's own", async () => {
    const out = path.join(dir, "from-run.gguf");
    const result = await thinktune("export", runDir, "--format", "gguf", "--out", out);
    expect(result.stderr).toBe("");
    expect(result.code).toBe(0);
    expect(result.stdout).toMatch(/step 4\): rank 4, alpha 16, 4 adapted tensors/);
    const written = await readGgufAdapter(out);
    expect(written.alpha).toBe(alpha);
    for (const tensor of lora) expect(Array.from(written.tensors.find((t) => t.name === tensor.name)!.data)).toEqual(Array.from(tensor.data));
  }, 60_000);

  it("exports a checkpoint folder as PEFT with HF module names and the base's config.json", async () => {
    const out = path.join(dir, "peft");
    const result = await thinktune("export", path.join(runDir, "checkpoints", "step-3"), "--format", "peft", "--out", out);
    expect(result.code, result.stderr).toBe(0);
    expect((await readdir(out)).sort()).toEqual(["adapter_config.json", "adapter_model.safetensors", "config.json"]);
    const adapterConfig = JSON.parse(await readFile(path.join(out, "adapter_config.json"), "utf8"));
    expect(adapterConfig).toMatchObject({ peft_type: "LORA", task_type: "CAUSAL_LM", r: rank, lora_alpha: alpha, target_modules: ["q_proj", "v_proj"] });
    expect(adapterConfig.base_model_name_or_path).toMatch(/thinktune synth qwen2/);
    const config = JSON.parse(await readFile(path.join(out, "config.json"), "utf8"));
    expect(config).toMatchObject({ architectures: ["Qwen2ForCausalLM"], model_type: "qwen2", hidden_size: 64, num_key_value_heads: 2, num_hidden_layers: 2 });
    const header = await readFile(path.join(out, "adapter_model.safetensors"));
    expect(header.toString("utf8", 8, 8 + Number(header.readBigUInt64LE(0)))).toContain('"base_model.model.model.layers.1.self_attn.v_proj.lora_B.weight"');
    // a second export to the same folder is refused without --force, accepted with it
    expect((await thinktune("export", runDir, "--format", "peft", "--out", out)).stderr).toMatch(/already exists; .* --force/);
    expect((await thinktune("export", runDir, "--format", "peft", "--out", out, "--force")).code).toBe(0);
  }, 60_000);

  it("writes an Ollama folder whose Modelfile parses and names files that exist", async () => {
    const out = path.join(dir, "ollama");
    const result = await thinktune("export", runDir, "--format", "ollama", "--out", out);
    expect(result.code, result.stderr).toBe(0);
    expect(result.stdout).toContain("ollama create NAME -f");
    const commands = parseModelfile(await readFile(path.join(out, "Modelfile"), "utf8"));
    const from = commands.filter((c) => c.command === "from");
    const adapter = commands.filter((c) => c.command === "adapter");
    expect(from).toHaveLength(1);
    expect(path.isAbsolute(from[0].args)).toBe(true);
    expect((await stat(from[0].args)).isFile()).toBe(true);
    expect(adapter).toHaveLength(1);
    expect((await readGgufAdapter(path.resolve(out, adapter[0].args))).alpha).toBe(alpha);
    const template = commands.find((c) => c.command === "template")!.args;
    expect(template).toContain("<｜User｜>{{ .Content }}");
    expect(template).toContain("<｜Assistant｜><think>\n");
    const parameters = commands.filter((c) => c.command === "parameter").map((c) => c.args);
    expect(parameters).toEqual(expect.arrayContaining(['stop "<｜end▁of▁sentence｜>"', 'stop "<｜User｜>"', 'stop "<｜Assistant｜>"', "temperature 0.6", "top_p 0.95"]));
  }, 60_000);

  it("writes a merged GGUF with the base's metadata, tokenizer and tensor types (--type base)", async () => {
    const out = path.join(dir, "merged.gguf");
    const result = await thinktune("export", runDir, "--format", "merged", "--type", "base", "--out", out);
    expect(result.code, result.stderr).toBe(0);
    const merged = await readGgufModel(out);
    const base = await readGgufModel(qwenBase);
    expect(merged.tensors.map((t) => [t.name, t.type, t.dims])).toEqual(base.tensors.map((t) => [t.name, t.type, t.dims]));
    for (const key of Object.keys(base.metadata)) expect(merged.metadata[key], key).toEqual(base.metadata[key]);
  }, 60_000);

  it("refuses an adapter whose shapes do not fit the base, naming the tensor and both shapes, and writes nothing", async () => {
    const out = path.join(dir, "mismatch.gguf");
    const result = await thinktune("export", runDir, "--format", "gguf", "--base", otherQwenBase, "--out", out);
    expect(result.code).toBe(1);
    expect(result.stderr).toMatch(/"blk\.0\.attn_q\.weight\.lora_a" has shape \[4, 64\] \(rank, in\) but the base tensor "blk\.0\.attn_q\.weight" in .* is \[96, 96\] \(out, in\)/);
    expect(existsSync(out)).toBe(false);
    expect((await readdir(dir)).filter((name) => name.includes(".tmp") || name.includes("partial"))).toEqual([]);
  }, 60_000);

  it("refuses an adapter of another architecture", async () => {
    const result = await thinktune("export", runDir, "--format", "peft", "--base", llamaBase, "--out", path.join(dir, "arch"));
    expect(result.code).toBe(1);
    expect(result.stderr).toMatch(/is a qwen2 adapter but the base model .* is llama/);
    expect(existsSync(path.join(dir, "arch"))).toBe(false);
  }, 60_000);

  it("names a truncated adapter file", async () => {
    const damaged = path.join(dir, "damaged");
    await mkdir(damaged, { recursive: true });
    const adapterFile = path.join(damaged, "adapter.gguf");
    await writeGgufAdapter(adapterFile, { baseModelPath: qwenBase, alpha, tensors: lora });
    await writeFile(path.join(damaged, "thinktune.json"), JSON.stringify({ baseModelPath: qwenBase, arch: "qwen2", rank, alpha, targets: ["q", "v"], step: 1 }));
    await truncate(adapterFile, (await stat(adapterFile)).size - 100);
    const result = await thinktune("export", damaged, "--format", "ollama", "--out", path.join(dir, "never"));
    expect(result.code).toBe(1);
    expect(result.stderr).toMatch(/adapter\.gguf is truncated: tensor "blk\.1\.attn_v\.weight\.lora_b" needs bytes/);
    expect(existsSync(path.join(dir, "never"))).toBe(false);
  }, 60_000);

  it.skipIf(!existsSync(referencePython) || !existsSync(bundle))("llama.cpp's gguf-py reads our adapter with the keys and shapes llama.cpp checks", async () => {
    const clone = path.join(dir, "llama.cpp");
    await run("git", ["clone", "-q", "--no-checkout", bundle, clone]);
    await run("git", ["-C", clone, "checkout", "-q", "HEAD", "--", "gguf-py"]);
    const script = [
      "import json, sys",
      "sys.path.insert(0, sys.argv[1])",
      "import gguf",
      "adapter = gguf.GGUFReader(sys.argv[2]); base = gguf.GGUFReader(sys.argv[3])",
      "fields = {k: adapter.fields[k].contents() for k in ('general.type', 'general.architecture', 'adapter.type', 'adapter.lora.alpha')}",
      "types = {k: adapter.fields[k].types[0].name for k in fields}",
      "base_dims = {t.name: [int(d) for d in t.shape] for t in base.tensors}",
      "tensors = {t.name: {'dims': [int(d) for d in t.shape], 'type': t.tensor_type.name} for t in adapter.tensors}",
      "print(json.dumps({'fields': fields, 'types': types, 'tensors': tensors, 'base': base_dims}))",
    ].join("\n");
    const { stdout } = await run(referencePython, ["-c", script, path.join(clone, "gguf-py"), path.join(runDir, "adapter", "adapter.gguf"), qwenBase]);
    const read = JSON.parse(stdout);
    expect(read.fields).toEqual({ "general.type": "adapter", "general.architecture": "qwen2", "adapter.type": "lora", "adapter.lora.alpha": alpha });
    expect(read.types["adapter.lora.alpha"]).toBe("FLOAT32");
    const names = Object.keys(read.tensors);
    expect(names.length).toBe(lora.length);
    for (const name of names) {
      const [, baseName, half] = /^(.*)\.lora_([ab])$/.exec(name)!;
      const [inFeatures, outFeatures] = read.base[baseName];
      // llama_adapter_lora_init: W.ne[0] == a.ne[0], W.ne[1] == b.ne[1], a.ne[1] == b.ne[0]
      expect(read.tensors[name].dims).toEqual(half === "a" ? [inFeatures, rank] : [rank, outFeatures]);
      expect(read.tensors[name].type).toBe("F32");
    }
  }, 60_000);
});
