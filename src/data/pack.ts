// Packs tokenized examples into rows of at most maxLength tokens (first-fit decreasing), with loss targets.
import { createHash } from "node:crypto";
import path from "node:path";
import type { NativeRow } from "../native/addon.js";

export interface TokenizedExample {
  /** "file:line" of the record it came from */
  source: string;
  tokens: Int32Array;
  /** index of the first token that carries loss (the first completion token) */
  lossFrom: number;
}

export interface PackedRow extends NativeRow {
  /** the source of each packed sequence, in seqStarts order */
  sources: string[];
}

export class PackingError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "PackingError";
  }
}

/**
 * First-fit decreasing: longest examples first, each into the first row with room. Within a sequence,
 * targets[i] = tokens[i + 1] when position i + 1 is at or past lossFrom, else -1; the last position of every
 * sequence is -1, so no loss crosses a sequence boundary.
 */
export function packExamples(examples: readonly TokenizedExample[], maxLength: number): PackedRow[] {
  if (!Number.isInteger(maxLength) || maxLength < 1) throw new PackingError(`maxLength must be a positive integer, got ${maxLength}`);
  const order = examples.map((example, index) => ({ example, index }));
  for (const { example } of order) {
    if (example.tokens.length > maxLength) {
      throw new PackingError(`${example.source} has ${example.tokens.length} tokens, more than the row length ${maxLength}`);
    }
    if (example.tokens.length === 0) throw new PackingError(`${example.source} has no tokens`);
  }
  order.sort((a, b) => b.example.tokens.length - a.example.tokens.length || a.index - b.index);
  const bins: { used: number; members: TokenizedExample[] }[] = [];
  for (const { example } of order) {
    const bin = bins.find((candidate) => candidate.used + example.tokens.length <= maxLength);
    if (bin) {
      bin.used += example.tokens.length;
      bin.members.push(example);
    } else bins.push({ used: example.tokens.length, members: [example] });
  }
  return bins.map(({ used, members }) => {
    const tokens = new Int32Array(used);
    const targets = new Int32Array(used).fill(-1);
    const seqStarts = new Int32Array(members.length);
    let offset = 0;
    members.forEach((member, sequence) => {
      seqStarts[sequence] = offset;
      tokens.set(member.tokens, offset);
      for (let i = Math.max(0, member.lossFrom - 1); i < member.tokens.length - 1; i++) targets[offset + i] = member.tokens[i + 1];
      offset += member.tokens.length;
    });
    return { tokens, targets, seqStarts, sources: members.map((member) => member.source) };
  });
}

/**
 * Splits examples into train and validation by a seeded hash of their source, so a record's examples stay
 * together and the split does not move when other records are added, nor when the data moves: sources
 * ("file:line") are hashed by their path below the folder all the files share.
 */
export function splitValidation<T extends { source: string }>(examples: T[], fraction: number, seed: number): { train: T[]; validation: T[] } {
  const sources = [...new Set(examples.map((example) => example.source))];
  const count = Math.min(Math.floor(sources.length * fraction), sources.length - 1);
  if (count <= 0) return { train: examples, validation: [] };
  const locate = (source: string) => {
    const colon = source.lastIndexOf(":");
    return colon < 0 ? { file: source, line: "" } : { file: source.slice(0, colon), line: source.slice(colon) };
  };
  const root = commonFolder(sources.map((source) => locate(source).file));
  const rank = (source: string): string => {
    const { file, line } = locate(source);
    return createHash("sha256").update(`${seed}\0${path.relative(root, file).split(path.sep).join("/")}${line}`).digest("hex");
  };
  const held = new Set(
    sources
      .map((source) => ({ source, key: rank(source) }))
      .sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0))
      .slice(0, count)
      .map((entry) => entry.source),
  );
  return { train: examples.filter((example) => !held.has(example.source)), validation: examples.filter((example) => held.has(example.source)) };
}

/** The deepest folder that holds every one of these files. */
function commonFolder(files: string[]): string {
  const folders = files.map((file) => path.dirname(path.resolve(file)).split(path.sep));
  const shared = folders[0]!.slice();
  for (const parts of folders.slice(1)) {
    let same = 0;
    while (same < shared.length && same < parts.length && shared[same] === parts[same]) same++;
    shared.length = same;
  }
  return shared.join(path.sep) || path.sep;
}
