// Runs everywhere: the addon reports its CUDA support consistently, and where the CUDA engine cannot
// run, asking for it fails with a message that says why instead of crashing.
import { existsSync, readFileSync } from "node:fs";
import path from "node:path";
import { describe, expect, it } from "vitest";
import { loadNativeAddon } from "../../src/native/addon.js";
import { Engine } from "../../src/train/engine.js";
import { synthModel } from "../helpers/models.js";

const addon = loadNativeAddon();

describe("CUDA support of this build", () => {
  it("exports cudaDeviceCount(), 0 unless the CUDA engine is built", () => {
    const count = addon.cudaDeviceCount();
    expect(Number.isInteger(count) && count >= 0).toBe(true);
    if (!addon.backends.includes("cuda")) expect(count).toBe(0);
  });

  it("names the GPU architectures of its CUDA engine, none without one", () => {
    if (addon.backends.includes("cuda")) {
      const names = addon.cudaArchitectures.split(",");
      expect(names.length).toBeGreaterThan(0);
      for (const name of names) expect(name).toMatch(/^(\d+[af]?(-(real|virtual))?|native|all|all-major)$/);
      // the list CMake built it with, where this checkout built it
      const cache = path.resolve("build", "CMakeCache.txt");
      const built = existsSync(cache) ? /^CMAKE_CUDA_ARCHITECTURES:\w+=(.*)$/m.exec(readFileSync(cache, "utf8")) : null;
      if (built) expect(names.join(";")).toBe(built[1]);
    } else {
      expect(addon.cudaArchitectures).toBe("");
    }
  });

  it.skipIf(addon.cudaDeviceCount() > 0)("device cuda without a usable GPU is refused with the reason", async () => {
    const file = await synthModel({ nLayer: 1, nEmbd: 64, nHead: 4, nHeadKv: 2, nFf: 128, nVocab: 320, contextLength: 64, type: "F32", seed: 91 });
    const reason = addon.backends.includes("cuda") ? "no CUDA device is usable here" : "this build of thinktune has no CUDA engine";
    await expect(Engine.load(file, { device: "cuda", maxTokens: 16 })).rejects.toThrow(reason);
  });
});
