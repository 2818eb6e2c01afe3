// What --model (and --base, and inspect's file) accept: a local GGUF path, or a model to download with
// node-llama-cpp's resolver: hf:owner/repo:QUANT (the repository's file of that quantization),
// hf:owner/repo/file.gguf, or an https:// URL. Downloads go to the models folder (./models, or
// THINKTUNE_MODELS_DIR), show their progress on stderr, resume where an interrupted one stopped, and
// are found there the next time without asking the network. HF_ENDPOINT points hf: at a mirror.
import { stat } from "node:fs/promises";
import path from "node:path";
import { resolveModelFile } from "node-llama-cpp";

export const modelSourceHelp = "a GGUF file, hf:OWNER/REPO:QUANT, hf:OWNER/REPO/FILE.gguf or an https:// URL (downloaded into ./models)";

/** hf:, huggingface: and http(s) URLs go through the resolver; anything else is a path. */
export function isRemoteModel(value: string): boolean {
  return /^(hf|huggingface):/i.test(value) || /^https?:\/\//i.test(value);
}

export function modelsFolder(): string {
  return path.resolve(process.env.THINKTUNE_MODELS_DIR || "models");
}

const formatMiB = (bytes: number): string => `${(bytes / (1 << 20)).toFixed(1)} MiB`;

/** One line that rewrites itself on a terminal; elsewhere a line per tenth of the download. */
function progressReporter(label: string, output: NodeJS.WriteStream): (status: { totalSize: number; downloadedSize: number }) => void {
  let lastTenth = -1;
  return ({ totalSize, downloadedSize }) => {
    const fraction = totalSize > 0 ? downloadedSize / totalSize : 0;
    const line = `Downloading ${label}: ${(fraction * 100).toFixed(0)}% (${formatMiB(downloadedSize)} of ${formatMiB(totalSize)})`;
    if (output.isTTY) output.write(`\r${line}\x1b[K`);
    else if (Math.floor(fraction * 10) > lastTenth) {
      lastTenth = Math.floor(fraction * 10);
      output.write(`${line}\n`);
    }
  };
}

/**
 * The local path of `value`: the file itself, or the downloaded (or already downloaded) copy of a
 * remote model. Errors say which model and what to do.
 */
export async function resolveModelSource(value: string, options: { signal?: AbortSignal; progress?: NodeJS.WriteStream } = {}): Promise<string> {
  if (!isRemoteModel(value)) {
    // what else is wrong with a file (a folder, not GGUF) the GGUF reader says best
    if (!(await stat(value).catch(() => undefined))) throw new Error(`the model ${value} does not exist (resolved as ${path.resolve(value)}); give ${modelSourceHelp}`);
    return value;
  }
  const directory = modelsFolder();
  const output = options.progress ?? process.stderr;
  let reported = false;
  const report = progressReporter(value, output);
  try {
    const file = await resolveModelFile(value, {
      directory,
      cli: false,
      // keep a partial download so the next run resumes it
      deleteTempFileOnCancel: false,
      signal: options.signal,
      onProgress: (status) => {
        reported = true;
        report(status);
      },
    });
    // node-llama-cpp's download resolves, rather than rejects, when its signal aborts it
    options.signal?.throwIfAborted();
    if (reported) output.write(`${output.isTTY ? "\n" : ""}Downloaded ${value} to ${path.relative(process.cwd(), file) || file}\n`);
    return file;
  } catch (error) {
    if (reported && output.isTTY) output.write("\n");
    const message = (error as Error).message;
    // fetch's own error says only "fetch failed": name the server it could not reach
    const reason = /fetch failed/i.test(message) ? `${sourceServer(value)} could not be reached (${message})` : message;
    throw new Error(
      `cannot get the model ${value}: ${reason}. Check the network connection (HF_ENDPOINT names a Hugging Face mirror), ` +
        `or download the GGUF yourself and pass its path; a partial download in ${directory} resumes on the next try`,
    );
  }
}

/** Where a model is fetched from: the URL's server, or the Hugging Face endpoint node-llama-cpp uses for hf:. */
function sourceServer(value: string): string {
  if (/^https?:\/\//i.test(value)) return new URL(value).origin;
  return process.env.MODEL_ENDPOINT || process.env.HF_ENDPOINT || "https://huggingface.co";
}
