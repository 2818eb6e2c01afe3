// Reads training data files: JSONL or JSON arrays, gzip or not, or folders of them; every record keeps its line.
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

function decodeText(file: DataFile): string {
  const isGzip = file.bytes.length >= 2 && file.bytes[0] === 0x1f && file.bytes[1] === 0x8b;
  let bytes: Buffer;
  try {
    bytes = isGzip ? gunzipSync(file.bytes) : file.bytes;
  } catch (error) {
    throw new DataPathError(`${file.name} is not a valid gzip file: ${(error as Error).message}`);
  }
  const text = bytes.toString("utf8");
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
  const text = decodeText(file);
  const records: DataRecord[] = [];
  const issues: DataIssue[] = [];
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
  const lines = text.split("\n");
  lines.forEach((rawLine, index) => {
    const lineText = rawLine.endsWith("\r") ? rawLine.slice(0, -1) : rawLine;
    if (lineText.trim() === "") return;
    try {
      records.push({ file: file.name, line: index + 1, value: JSON.parse(lineText) });
    } catch {
      issues.push(jsonIssue(file.name, lineText, index + 1));
    }
  });
  return { records, issues };
}
