// Synth model GGUFs for tests, generated once and cached in node_modules/.cache/thinktune-test under a
// hash of the resolved options and of the synth sources, so a change to synth invalidates the cache.
import { createHash } from "node:crypto";
import { existsSync } from "node:fs";
import { mkdir, readFile, rename } from "node:fs/promises";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { resolveSynthOptions, writeSynthModel, type SynthInput } from "../../src/gguf/synth.js";

const projectRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..", "..");
export const synthCacheDir = path.join(projectRoot, "node_modules", ".cache", "thinktune-test");

/** Files whose content decides the bytes synth writes (the native quantizer is covered by its own tests). */
const synthSources = ["src/gguf/synth.ts", "src/gguf/tokenizer-vocab.ts", "src/gguf/r1-template.ts", "src/gguf/writer.ts", "src/gguf/ggml-types.ts"];

let sourcesDigest: Promise<string> | undefined;
function synthSourcesDigest(): Promise<string> {
  sourcesDigest ??= (async () => {
    const hash = createHash("sha256");
    for (const file of synthSources) hash.update(await readFile(path.join(projectRoot, file)));
    return hash.digest("hex");
  })();
  return sourcesDigest;
}

const inProgress = new Map<string, Promise<string>>();

/**
 * The path of a synth model GGUF with these options (preset "tiny" unless given), written on first use.
 * Safe when several test files (or processes) ask for the same model: each writes its own temp file and
 * renames it into place; identical options give identical bytes.
 */
export async function synthModel(options: SynthInput = {}): Promise<string> {
  const resolved = resolveSynthOptions(options);
  const key = createHash("sha256")
    .update(JSON.stringify(resolved))
    .update(await synthSourcesDigest())
    .digest("hex")
    .slice(0, 16);
  const file = path.join(synthCacheDir, `synth-${resolved.arch}-${resolved.type}-${key}.gguf`);
  const existing = inProgress.get(file);
  if (existing) return existing;
  const made = (async () => {
    if (existsSync(file)) return file;
    await mkdir(synthCacheDir, { recursive: true });
    const unique = `${file}.${process.pid}-${Math.random().toString(36).slice(2)}`;
    await writeSynthModel(unique, resolved);
    await rename(unique, file);
    return file;
  })();
  inProgress.set(file, made);
  try {
    return await made;
  } finally {
    inProgress.delete(file);
  }
}
