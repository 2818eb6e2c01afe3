// The tokenized cache: one file per key (vocabulary, template, data bytes, options), written to a temp name and
// renamed. Layout: "TTDC", u32 format version, u32 JSON length, JSON, zero padding to 4 bytes, int32 tokens.
import { createHash } from "node:crypto";
import { readFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { writeFileAtomic } from "../util/atomic-file.js";
import type { TokenizedExample } from "./pack.js";

const magic = "TTDC";
/** bump when what is cached, or how it is made, changes */
export const cacheFormatVersion = 3;

export interface CachedData<Report> {
  train: TokenizedExample[];
  validation: TokenizedExample[];
  report: Report;
}

interface CacheIndex<Report> {
  train: { source: string; lossFrom: number; length: number }[];
  validation: { source: string; lossFrom: number; length: number }[];
  report: Report;
}

export function hashBytes(bytes: Uint8Array | string): string {
  return createHash("sha256").update(bytes).digest("hex");
}

export function cacheKey(parts: unknown): string {
  return hashBytes(JSON.stringify({ cacheFormatVersion, parts })).slice(0, 32);
}

/**
 * Where the cache goes when no folder is given: .thinktune-cache beside the (first) data path, except for data
 * inside node_modules (an installed package's examples), whose folder is not the user's: there it goes to the
 * user's cache folder.
 */
export function defaultCacheDir(dataPath: string): string {
  const resolved = path.resolve(dataPath);
  if (!resolved.split(path.sep).includes("node_modules")) return path.join(path.dirname(resolved), ".thinktune-cache");
  return path.join(userCacheRoot(), "thinktune", "data");
}

function userCacheRoot(): string {
  if (process.env.XDG_CACHE_HOME) return process.env.XDG_CACHE_HOME;
  if (process.platform === "win32" && process.env.LOCALAPPDATA) return process.env.LOCALAPPDATA;
  if (process.platform === "darwin") return path.join(os.homedir(), "Library", "Caches");
  return path.join(os.homedir(), ".cache");
}

export function cacheFilePath(cacheDir: string, key: string): string {
  return path.join(cacheDir, `data-${key}.bin`);
}

/** The cached result, or undefined when there is none or it is unreadable (then it is simply rebuilt). */
export async function readCache<Report>(file: string): Promise<CachedData<Report> | undefined> {
  let bytes: Buffer;
  try {
    bytes = await readFile(file);
  } catch {
    return undefined;
  }
  if (bytes.length < 12 || bytes.toString("latin1", 0, 4) !== magic || bytes.readUInt32LE(4) !== cacheFormatVersion) return undefined;
  const jsonLength = bytes.readUInt32LE(8);
  const tokensAt = 12 + Math.ceil(jsonLength / 4) * 4;
  if (tokensAt > bytes.length) return undefined;
  let index: CacheIndex<Report>;
  try {
    index = JSON.parse(bytes.toString("utf8", 12, 12 + jsonLength)) as CacheIndex<Report>;
  } catch {
    return undefined;
  }
  const totalTokens = [...index.train, ...index.validation].reduce((sum, entry) => sum + entry.length, 0);
  if (bytes.length - tokensAt !== totalTokens * 4) return undefined;
  // copy out of the file buffer: it may not be 4-byte aligned
  const tokens = new Int32Array(totalTokens);
  Buffer.from(tokens.buffer).set(bytes.subarray(tokensAt));
  let offset = 0;
  const take = (entries: CacheIndex<Report>["train"]): TokenizedExample[] =>
    entries.map((entry) => {
      const example = { source: entry.source, lossFrom: entry.lossFrom, tokens: tokens.subarray(offset, offset + entry.length) };
      offset += entry.length;
      return example;
    });
  const train = take(index.train);
  const validation = take(index.validation);
  return { train, validation, report: index.report };
}

export async function writeCache<Report>(file: string, data: CachedData<Report>): Promise<void> {
  const describe = (examples: TokenizedExample[]) => examples.map((example) => ({ source: example.source, lossFrom: example.lossFrom, length: example.tokens.length }));
  const index: CacheIndex<Report> = { train: describe(data.train), validation: describe(data.validation), report: data.report };
  const json = Buffer.from(JSON.stringify(index), "utf8");
  const header = Buffer.alloc(12);
  header.write(magic, 0, "latin1");
  header.writeUInt32LE(cacheFormatVersion, 4);
  header.writeUInt32LE(json.length, 8);
  const padding = Buffer.alloc(Math.ceil(json.length / 4) * 4 - json.length);
  const tokenBuffers = [...data.train, ...data.validation].map((example) => Buffer.from(example.tokens.buffer, example.tokens.byteOffset, example.tokens.byteLength));
  await writeFileAtomic(file, [header, json, padding, ...tokenBuffers]);
}
