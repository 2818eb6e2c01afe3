// What the before/after preview prints of an untrained model's bytes: nothing a terminal would act on.
import { describe, expect, it } from "vitest";
import { printableText } from "../../src/cli/printable.js";

describe("printableText", () => {
  it("shows control bytes and invalid UTF-8 as visible marks, and keeps text, newlines and tabs", () => {
    expect(printableText("a\u001b[31mred\u0007\u0000\u007f")).toBe("a\u241b[31mred\u2407\u2400\u2421");
    expect(printableText("x\uFFFD\uFFFDy")).toBe("x\u2039?\u203ay");
    expect(printableText("The baker makes 24 muffins.\n\tDone: 日本語")).toBe("The baker makes 24 muffins.\n\tDone: 日本語");
    expect(printableText("a\u001bb\uFFFD")).not.toMatch(/[\u0000-\u0008\u000b-\u001f\u007f\uFFFD]/);
  });
});
