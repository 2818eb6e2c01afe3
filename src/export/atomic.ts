// Writes files and folders under a temporary name in the same directory and renames them into place,
// so an interrupted export never leaves a half-written file at the final path.
import { randomBytes } from "node:crypto";
import { mkdir, open, rename, rm, stat } from "node:fs/promises";
import path from "node:path";

export class ExportError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "ExportError";
  }
}

function temporarySibling(target: string): string {
  return path.join(path.dirname(target), `.${path.basename(target)}.partial-${process.pid}-${randomBytes(4).toString("hex")}`);
}

/** Streams `chunks` into `target` through a temporary file that is renamed into place once complete. */
export async function writeFileAtomic(target: string, chunks: Iterable<Uint8Array> | AsyncIterable<Uint8Array>): Promise<void> {
  await mkdir(path.dirname(path.resolve(target)), { recursive: true });
  const temporary = temporarySibling(path.resolve(target));
  const handle = await open(temporary, "w");
  try {
    for await (const chunk of chunks) {
      let written = 0;
      while (written < chunk.byteLength) {
        const { bytesWritten } = await handle.write(chunk, written, chunk.byteLength - written);
        written += bytesWritten;
      }
    }
    await handle.sync();
    await handle.close();
    await rename(temporary, target);
  } catch (error) {
    await handle.close().catch(() => undefined);
    await rm(temporary, { force: true });
    throw error;
  }
}

/** True when `target` exists (file or folder); false on any stat failure. */
export async function pathExists(target: string): Promise<boolean> {
  try {
    await stat(target);
    return true;
  } catch {
    return false;
  }
}

/**
 * Builds a folder under a temporary name with `fill(temporaryDir)` and renames it to `target`.
 * An existing `target` is replaced only when `overwrite` is set, and only after the new folder is complete.
 */
export async function writeFolderAtomic(target: string, overwrite: boolean, fill: (dir: string) => Promise<void>): Promise<void> {
  const resolved = path.resolve(target);
  if (!overwrite && (await pathExists(resolved))) {
    throw new ExportError(`${target} already exists; choose another --out or pass --force to replace it`);
  }
  await mkdir(path.dirname(resolved), { recursive: true });
  const temporary = temporarySibling(resolved);
  await mkdir(temporary);
  try {
    await fill(temporary);
  } catch (error) {
    await rm(temporary, { recursive: true, force: true });
    throw error;
  }
  if (await pathExists(resolved)) {
    const old = temporarySibling(resolved);
    await rename(resolved, old);
    await rename(temporary, resolved);
    await rm(old, { recursive: true, force: true });
  } else {
    await rename(temporary, resolved);
  }
}

/** Refuses to replace an existing file unless asked to. */
export async function checkWritable(target: string, overwrite: boolean): Promise<void> {
  if (!overwrite && (await pathExists(target))) {
    throw new ExportError(`${target} already exists; choose another --out or pass --force to replace it`);
  }
}
