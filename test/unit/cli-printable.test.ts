// What the before/after preview prints of an untrained model's bytes: nothing a terminal would act on.
import { describe, expect, it } from "vitest";
import { printableText } from "../../src/cli/printable.js";
import { verbatimLeadingWords } from "../../src/train/preview.js";

describe("printableText", () => {
  it("shows control bytes and invalid UTF-8 as visible marks, and keeps text, newlines and tabs", () => {
    expect(printableText("a\u001b[31mred\u0007\u0000\u007f")).toBe("a\u241b[31mred\u2407\u2400\u2421");
    expect(printableText("x\uFFFD\uFFFDy")).toBe("x\u2039?\u203ay");
    expect(printableText("The baker makes 24 muffins.\n\tDone: 日本語")).toBe("The baker makes 24 muffins.\n\tDone: 日本語");
    expect(printableText("a\u001bb\uFFFD")).not.toMatch(/[\u0000-\u0008\u000b-\u001f\u007f\uFFFD]/);
  });
});

describe("verbatimLeadingWords", () => {
  it("counts the reference's leading words the answer repeats, a word cut short by the token limit not among them", () => {
    const reference = "The baker makes 24 muffins per batch.\nTotal made: 120 muffins.";
    expect(verbatimLeadingWords(reference, "The baker makes 24 muffins per batch.\nTotal made: 12")).toEqual({ words: 9, of: 11 });
    expect(verbatimLeadingWords(reference, "The baker makes 24 mufffins")).toEqual({ words: 4, of: 11 });
    expect(verbatimLeadingWords(reference, reference)).toEqual({ words: 11, of: 11 });
    expect(verbatimLeadingWords(reference, "")).toEqual({ words: 0, of: 11 });
  });
});
