// "24GiB", "512MiB", "10GB" or a plain byte count → bytes, for --gpu-memory.
const units: Record<string, number> = {
  "": 1,
  b: 1,
  kb: 1e3,
  mb: 1e6,
  gb: 1e9,
  tb: 1e12,
  kib: 2 ** 10,
  mib: 2 ** 20,
  gib: 2 ** 30,
  tib: 2 ** 40,
};

/** Returns the byte count, or undefined when the text is not a size. */
export function parseByteSize(text: string): number | undefined {
  const match = /^\s*(\d+(?:\.\d+)?)\s*([kmgt]i?b|b)?\s*$/i.exec(text);
  if (!match) return undefined;
  const bytes = Number(match[1]) * units[(match[2] ?? "").toLowerCase()];
  return Number.isFinite(bytes) && bytes > 0 ? Math.floor(bytes) : undefined;
}
