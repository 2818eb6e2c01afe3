// Sizes on the terminal, in binary units (the memory plans and file sizes are powers of two).
export function formatBytes(bytes: number): string {
  if (bytes >= 2 ** 30) return `${(bytes / 2 ** 30).toFixed(2)} GiB`;
  if (bytes >= 2 ** 20) return `${(bytes / 2 ** 20).toFixed(2)} MiB`;
  return `${(bytes / 1024).toFixed(1)} KiB`;
}
