// Whether the CUDA engine can run here, and the CPU/CUDA engine pairs the GPU tests compare.
import { loadNativeAddon } from "../../src/native/addon.js";
import { Engine, type EngineOptions } from "../../src/train/engine.js";

const addon = loadNativeAddon();
const devices = typeof addon.cudaDeviceCount === "function" ? addon.cudaDeviceCount() : 0;

/** Why the GPU tests skip, or undefined when a CUDA engine and a GPU are both here. */
export const cudaSkipReason: string | undefined = !addon.backends.includes("cuda")
  ? "skipped: this addon was built without the CUDA engine (THINKTUNE_CUDA=on npm install to build it)"
  : devices === 0
    ? "skipped: no CUDA device (cudaDeviceCount() is 0)"
    : undefined;

/** The same model and LoRA options on the CPU and on the GPU. */
export async function enginePair(path: string, options: EngineOptions): Promise<{ cpu: Engine; gpu: Engine }> {
  const cpu = await Engine.load(path, { ...options, device: "cpu", threads: 0 });
  const gpu = await Engine.load(path, { ...options, device: "cuda" });
  return { cpu, gpu };
}

/**
 * What the CUDA plan (native/engine/cuda_plan.cu) sets aside of gpuMemoryBytes before it keeps layers:
 * 768 MiB for the CUDA context (kContextReserveBytes) and 256 MiB of headroom (kKeptHeadroomBytes).
 */
export const planReserveBytes = (768 + 256) * 2 ** 20;

/** ‖a − b‖ / ‖b‖ */
export function relativeError(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let difference = 0;
  let norm = 0;
  for (let i = 0; i < b.length; i++) {
    difference += (a[i]! - b[i]!) ** 2;
    norm += b[i]! ** 2;
  }
  return Math.sqrt(difference) / Math.max(Math.sqrt(norm), 1e-30);
}
