// The export's own error, and the rule every export writer follows before it writes: an existing
// output is replaced only when asked to (the write itself goes through util/atomic-file).
import { pathExists } from "../util/atomic-file.js";

export class ExportError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "ExportError";
  }
}

/** Refuses to replace an existing file or folder unless asked to. */
export async function checkWritable(target: string, overwrite: boolean): Promise<void> {
  if (!overwrite && (await pathExists(target))) {
    throw new ExportError(`${target} already exists; choose another --out or pass --force to replace it`);
  }
}
