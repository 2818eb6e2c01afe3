// Reads training data files: JSONL or JSON arrays, gzip or not, or folders of them; every record keeps its line.
import { isUtf8 } from "node:buffer";
import { readdir, readFile, stat } from "node:fs/promises";
import path from "node:path";
import { gunzipSync } from "node:zlib";
import type { DataIssue } from "./errors.js";
import { lineAndColumn, locateJsonError, topLevelArrayElementOffsets } from "./json-locate.js";

const dataFileSuffixes = [".jsonl", ".json", ".jsonl.gz", ".json.gz"];

export interface DataFile {
  /** the path as reported in file:line */
  name: string;
  /** raw bytes as stored (compressed when gzip), part of the cache key */
  bytes: Buffer;
}

export interface DataRecord {
  file: string;
  line: number;
  value: unknown;
}

export class DataPathError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "DataPathError";
  }
}

function isDataFileName(name: string): boolean {
  const lower = name.toLowerCase();
  return dataFileSuffixes.some((suffix) => lower.endsWith(suffix));
}

/** Expands paths (files or folders, folders recursively, dot-entries skipped) into data files in sorted order. */
export async function listDataFiles(paths: string[]): Promise<string[]> {
  const files: string[] = [];
  const visit = async (entry: string, explicit: boolean): Promise<void> => {
    let stats;
    try {
      stats = await stat(entry);
    } catch {
      throw new DataPathError(`training data ${entry} does not exist`);
    }
    if (stats.isDirectory()) {
      const children = (await readdir(entry)).filter((child) => !child.startsWith(".")).sort();
      for (const child of children) {
        const childPath = path.join(entry, child);
        const childStats = await stat(childPath);
        if (childStats.isDirectory() || isDataFileName(child)) await visit(childPath, false);
      }
    } else if (explicit || isDataFileName(entry)) {
      files.push(entry);
    }
  };
  for (const entry of paths) {
    const before = files.length;
    await visit(entry, true);
    if (files.length === before) {
      throw new DataPathError(`${entry} holds no data files (expected ${dataFileSuffixes.join(", ")})`);
    }
  }
  return files;
}

export async function readDataFiles(paths: string[]): Promise<DataFile[]> {
  const names = await listDataFiles(paths);
  return Promise.all(names.map(async (name) => ({ name, bytes: await readFile(name) })));
}

function decompress(file: DataFile): Buffer {
  const isGzip = file.bytes.length >= 2 && file.bytes[0] === 0x1f && file.bytes[1] === 0x8b;
  try {
    return isGzip ? gunzipSync(file.bytes) : file.bytes;
  } catch (error) {
    throw new DataPathError(`${file.name} is not a valid gzip file: ${(error as Error).message}`);
  }
}

/** Byte offset of the first byte that is not part of a well-formed UTF-8 sequence (RFC 3629), or -1. */
export function firstInvalidUtf8(bytes: Uint8Array): number {
  let i = 0;
  while (i < bytes.length) {
    const lead = bytes[i];
    if (lead < 0x80) {
      i++;
      continue;
    }
    // sequence length and the allowed range of the second byte (no overlong forms, surrogates or > U+10FFFF)
    const [length, low, high] =
      lead >= 0xc2 && lead <= 0xdf ? [2, 0x80, 0xbf]
      : lead === 0xe0 ? [3, 0xa0, 0xbf]
      : lead === 0xed ? [3, 0x80, 0x9f]
      : lead >= 0xe1 && lead <= 0xef ? [3, 0x80, 0xbf]
      : lead === 0xf0 ? [4, 0x90, 0xbf]
      : lead >= 0xf1 && lead <= 0xf3 ? [4, 0x80, 0xbf]
      : lead === 0xf4 ? [4, 0x80, 0x8f]
      : [0, 0, 0];
    if (length === 0 || i + length > bytes.length || bytes[i + 1] < low || bytes[i + 1] > high) return i;
    for (let k = 2; k < length; k++) if (bytes[i + k] < 0x80 || bytes[i + k] > 0xbf) return i;
    i += length;
  }
  return -1;
}

function invalidUtf8Issue(file: string, lineBytes: Buffer, line: number, badAt: number): DataIssue {
  // the column counts characters as the other issues do (UTF-16 units of the valid text before the byte)
  const column = lineBytes.subarray(0, badAt).toString("utf8").length + 1;
  const shown = [...lineBytes.subarray(badAt, badAt + 4)].map((byte) => byte.toString(16).padStart(2, "0")).join(" ");
  return { file, line, column, kind: "invalid-utf8", message: `invalid UTF-8 (bytes ${shown}); save the file as UTF-8` };
}

/** Whether the first character after a BOM and whitespace is '[' (a JSON-array file rather than JSONL). */
function isJsonArray(bytes: Buffer): boolean {
  let at = bytes[0] === 0xef && bytes[1] === 0xbb && bytes[2] === 0xbf ? 3 : 0;
  while (at < bytes.length && (bytes[at] === 0x20 || bytes[at] === 0x09 || bytes[at] === 0x0a || bytes[at] === 0x0d)) at++;
  return bytes[at] === 0x5b;
}

function withoutBom(text: string): string {
  return text.charCodeAt(0) === 0xfeff ? text.slice(1) : text;
}

function jsonIssue(file: string, text: string, firstLine: number): DataIssue {
  const located = locateJsonError(text) ?? { offset: 0, message: "invalid JSON" };
  const { line, column } = lineAndColumn(text, located.offset, firstLine);
  return { file, line, column, kind: "invalid-json", message: `invalid JSON: ${located.message}` };
}

/**
 * Parses one file into records. A file whose first non-blank character is '[' is a JSON array;
 * anything else is JSONL (one JSON value per line, blank lines ignored).
 */
export function parseDataFile(file: DataFile): { records: DataRecord[]; issues: DataIssue[] } {
  const parsed = parseRecords(file);
  if (parsed.records.length === 0 && parsed.issues.length === 0) {
    parsed.issues.push({ file: file.name, line: 1, kind: "empty-file", message: "the file holds no records (it is empty, blank or an empty array); add examples or leave it out" });
  }
  return parsed;
}

function parseRecords(file: DataFile): { records: DataRecord[]; issues: DataIssue[] } {
  const bytes = decompress(file);
  const records: DataRecord[] = [];
  const issues: DataIssue[] = [];
  const badAt = isUtf8(bytes) ? -1 : firstInvalidUtf8(bytes);
  if (badAt >= 0 && isJsonArray(bytes)) {
    // one JSON value: none of it can be read
    const lineStart = badAt === 0 ? 0 : bytes.lastIndexOf(0x0a, badAt - 1) + 1;
    const lineEnd = bytes.indexOf(0x0a, badAt);
    const line = bytes.subarray(0, lineStart).reduce((count, byte) => count + (byte === 0x0a ? 1 : 0), 1);
    issues.push(invalidUtf8Issue(file.name, bytes.subarray(lineStart, lineEnd === -1 ? bytes.length : lineEnd), line, badAt - lineStart));
    return { records, issues };
  }
  if (badAt >= 0) {
    // JSONL with invalid bytes: each line decoded on its own, the broken ones reported
    let start = 0;
    for (let line = 1; start <= bytes.length; line++) {
      const newline = bytes.indexOf(0x0a, start);
      const end = newline === -1 ? bytes.length : newline;
      const lineBytes = bytes.subarray(start, end);
      const lineBad = start > badAt ? firstInvalidUtf8(lineBytes) : end > badAt ? badAt - start : -1;
      if (lineBad >= 0) issues.push(invalidUtf8Issue(file.name, lineBytes, line, lineBad));
      else parseJsonLine(file.name, line === 1 ? withoutBom(lineBytes.toString("utf8")) : lineBytes.toString("utf8"), line, records, issues);
      start = end + 1;
    }
    return { records, issues };
  }
  const text = withoutBom(bytes.toString("utf8"));
  if (text.trimStart().startsWith("[")) {
    let array: unknown[];
    try {
      array = JSON.parse(text) as unknown[];
    } catch {
      issues.push(jsonIssue(file.name, text, 1));
      return { records, issues };
    }
    const offsets = topLevelArrayElementOffsets(text);
    array.forEach((value, index) => {
      records.push({ file: file.name, line: lineAndColumn(text, offsets[index] ?? 0).line, value });
    });
    return { records, issues };
  }
  text.split("\n").forEach((rawLine, index) => parseJsonLine(file.name, rawLine, index + 1, records, issues));
  return { records, issues };
}

function parseJsonLine(file: string, rawLine: string, line: number, records: DataRecord[], issues: DataIssue[]): void {
  const lineText = rawLine.endsWith("\r") ? rawLine.slice(0, -1) : rawLine;
  if (lineText.trim() === "") return;
  try {
    records.push({ file, line, value: JSON.parse(lineText) });
  } catch {
    issues.push(jsonIssue(file, lineText, line));
  }
}
