// Every file and folder thinktune writes goes through here: written under a temporary name in the same
// directory and renamed into place once complete, so a process killed mid-write never leaves a
// half-written file at the final path (an earlier complete one stays as it was).
import { randomBytes } from "node:crypto";
import { mkdir, open, rename, rm, stat, type FileHandle } from "node:fs/promises";
import path from "node:path";

/** What a writer may hand over: one buffer or string, or chunks produced as the file is written. */
export type FileContent = string | Uint8Array | Iterable<Uint8Array> | AsyncIterable<Uint8Array>;

export interface AtomicWriteOptions {
  /** create the target's folder when missing (default); false makes a missing folder an error */
  createFolder?: boolean;
  /**
   * A fixed temporary name instead of a unique one, for writers whose partial files others look for
   * (a leftover from an earlier killed write is replaced).
   */
  temporaryPath?: string;
}

/** A unique hidden sibling of `target`: `.name.partial-<pid>-<random>`. */
function temporarySibling(target: string): string {
  return path.join(path.dirname(target), `.${path.basename(target)}.partial-${process.pid}-${randomBytes(4).toString("hex")}`);
}

/** True for the names temporarySibling gives, so cleanups can recognize leftovers of killed writes. */
export function isTemporarySiblingName(name: string): boolean {
  return /^\..+\.partial-\d+-[0-9a-f]{8}$/.test(name);
}

function openFailure(target: string, error: unknown): Error {
  const code = (error as NodeJS.ErrnoException).code;
  const reason =
    code === "ENOENT" ? "its folder does not exist" : code === "EACCES" || code === "EPERM" ? "permission denied" : code === "EISDIR" ? "it is a directory" : (error as Error).message;
  return new Error(`cannot write ${target}: ${reason}`);
}

function chunksOf(content: FileContent): Iterable<Uint8Array> | AsyncIterable<Uint8Array> {
  if (typeof content === "string") return [Buffer.from(content, "utf8")];
  if (content instanceof Uint8Array) return [content];
  return content;
}

async function writeAll(handle: FileHandle, chunk: Uint8Array): Promise<void> {
  let written = 0;
  while (written < chunk.byteLength) {
    const { bytesWritten } = await handle.write(chunk, written, chunk.byteLength - written);
    written += bytesWritten;
  }
}

/**
 * Writes `content` to `target` through a temporary file that is flushed to disk and renamed into place
 * once complete. On any error the temporary file is removed and `target` is left as it was.
 * Returns the number of bytes written.
 */
export async function writeFileAtomic(target: string, content: FileContent, options: AtomicWriteOptions = {}): Promise<number> {
  const resolved = path.resolve(target);
  if (options.createFolder ?? true) await mkdir(path.dirname(resolved), { recursive: true });
  const temporary = options.temporaryPath === undefined ? temporarySibling(resolved) : path.resolve(options.temporaryPath);
  let handle: FileHandle;
  try {
    handle = await open(temporary, "w");
  } catch (error) {
    throw openFailure(target, error);
  }
  let size = 0;
  try {
    for await (const chunk of chunksOf(content)) {
      await writeAll(handle, chunk);
      size += chunk.byteLength;
    }
    await handle.sync();
    await handle.close();
    await rename(temporary, resolved);
  } catch (error) {
    await handle.close().catch(() => undefined);
    await rm(temporary, { force: true });
    throw error;
  }
  return size;
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
 * Builds a folder under a temporary name with `fill(temporaryDir)` and renames it to `target`. An
 * existing `target` is replaced only once the new folder is complete; between the two renames the old
 * one waits under a temporary name, so a kill there leaves it recoverable rather than lost.
 */
export async function writeFolderAtomic(target: string, fill: (dir: string) => Promise<void>, options: AtomicWriteOptions = {}): Promise<void> {
  const resolved = path.resolve(target);
  if (options.createFolder ?? true) await mkdir(path.dirname(resolved), { recursive: true });
  const temporary = options.temporaryPath === undefined ? temporarySibling(resolved) : path.resolve(options.temporaryPath);
  if (options.temporaryPath !== undefined) await rm(temporary, { recursive: true, force: true });
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
