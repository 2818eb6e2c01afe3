import { describe, expect, it } from "vitest";
import { loadNativeAddon } from "../../src/native/addon.js";

describe("native addon", () => {
  it("loads and reports its backends", () => {
    const addon = loadNativeAddon();
    expect(addon.version).toMatch(/^\d+\.\d+\.\d+$/);
    expect(addon.backends).toContain("cpu");
  });
});
