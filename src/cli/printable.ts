// Model output shown on a terminal: an untrained model emits any byte, and raw control bytes (ESC
// above all) would move the cursor or recolor the terminal, and bytes that are no valid UTF-8 come out
// of the detokenizer as U+FFFD. Both are shown as visible marks instead; newlines and tabs stay.
const controlCharacters = /[\u0000-\u0008\u000b-\u001f\u007f]/g;

export function printableText(text: string): string {
  return text
    .replace(controlCharacters, (char) => (char === "\u007f" ? "\u2421" : String.fromCharCode(0x2400 + char.charCodeAt(0))))
    .replace(/\uFFFD+/g, "\u2039?\u203a");
}
