// Finds where a JSON text is broken (V8's JSON.parse does not always say where).

export interface JsonSyntaxError {
  /** 0-based offset into the text */
  offset: number;
  message: string;
}

/** Returns the first syntax error of `text`, or undefined when it is valid JSON. */
export function locateJsonError(text: string): JsonSyntaxError | undefined {
  let at = 0;
  const fail = (message: string): never => {
    throw { offset: at, message } satisfies JsonSyntaxError;
  };
  const describe = (): string => (at >= text.length ? "end of text" : `'${text[at]}'`);
  const skipSpace = (): void => {
    while (at < text.length && (text[at] === " " || text[at] === "\t" || text[at] === "\n" || text[at] === "\r")) at++;
  };
  const literal = (word: string): void => {
    if (text.startsWith(word, at)) at += word.length;
    else fail(`unexpected ${describe()}, expected a JSON value`);
  };
  const string = (): void => {
    at++; // opening quote
    while (at < text.length) {
      const char = text[at];
      if (char === '"') {
        at++;
        return;
      }
      if (char === "\\") {
        const escape = text[at + 1];
        if (escape === "u") {
          if (!/^[0-9a-fA-F]{4}$/.test(text.slice(at + 2, at + 6))) {
            at++;
            fail("invalid \\u escape in string");
          }
          at += 6;
        } else if (escape !== undefined && '"\\/bfnrt'.includes(escape)) {
          at += 2;
        } else {
          at++;
          fail(`invalid escape '\\${escape ?? ""}' in string`);
        }
      } else if (char.charCodeAt(0) < 0x20) {
        fail("unescaped control character in string");
      } else {
        at++;
      }
    }
    fail("unterminated string");
  };
  const number = (): void => {
    const match = /^-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?/.exec(text.slice(at, at + 400));
    if (!match || match[0] === "-") fail(`unexpected ${describe()}, expected a JSON value`);
    at += match![0].length;
  };
  const value = (depth: number): void => {
    if (depth > 512) fail("nested too deeply");
    skipSpace();
    const char = text[at];
    if (char === "{") {
      at++;
      skipSpace();
      if (text[at] === "}") {
        at++;
        return;
      }
      for (;;) {
        skipSpace();
        if (text[at] !== '"') fail(`unexpected ${describe()}, expected a property name in double quotes`);
        string();
        skipSpace();
        if (text[at] !== ":") fail(`unexpected ${describe()}, expected ':' after the property name`);
        at++;
        value(depth + 1);
        skipSpace();
        if (text[at] === ",") {
          at++;
          continue;
        }
        if (text[at] === "}") {
          at++;
          return;
        }
        fail(`unexpected ${describe()}, expected ',' or '}' in object`);
      }
    } else if (char === "[") {
      at++;
      skipSpace();
      if (text[at] === "]") {
        at++;
        return;
      }
      for (;;) {
        value(depth + 1);
        skipSpace();
        if (text[at] === ",") {
          at++;
          continue;
        }
        if (text[at] === "]") {
          at++;
          return;
        }
        fail(`unexpected ${describe()}, expected ',' or ']' in array`);
      }
    } else if (char === '"') string();
    else if (char === "t") literal("true");
    else if (char === "f") literal("false");
    else if (char === "n") literal("null");
    else if (char === "-" || (char !== undefined && char >= "0" && char <= "9")) number();
    else fail(`unexpected ${describe()}, expected a JSON value`);
  };
  try {
    value(0);
    skipSpace();
    if (at < text.length) fail(`unexpected ${describe()} after the JSON value`);
    return undefined;
  } catch (error) {
    if (typeof error === "object" && error !== null && "offset" in error) return error as JsonSyntaxError;
    throw error;
  }
}

/** 1-based line and column (in UTF-16 units) of `offset` within `text`, starting from `firstLine`. */
export function lineAndColumn(text: string, offset: number, firstLine = 1): { line: number; column: number } {
  let line = firstLine;
  let lineStart = 0;
  for (let i = 0; i < offset && i < text.length; i++) {
    if (text.charCodeAt(i) === 10) {
      line++;
      lineStart = i + 1;
    }
  }
  return { line, column: offset - lineStart + 1 };
}

/**
 * Start offsets of the elements of a top-level JSON array (the text must be valid JSON),
 * so each record of a JSON-array file can be reported by its line.
 */
export function topLevelArrayElementOffsets(text: string): number[] {
  const offsets: number[] = [];
  let depth = 0;
  let inString = false;
  let expectingElement = false;
  for (let i = 0; i < text.length; i++) {
    const char = text[i];
    if (inString) {
      if (char === "\\") i++;
      else if (char === '"') inString = false;
      continue;
    }
    if (char === " " || char === "\n" || char === "\r" || char === "\t") continue;
    if (depth === 1 && expectingElement && char !== "]") {
      offsets.push(i);
      expectingElement = false;
    }
    if (char === '"') inString = true;
    else if (char === "[" || char === "{") {
      depth++;
      if (depth === 1) expectingElement = true;
    } else if (char === "]" || char === "}") depth--;
    else if (char === "," && depth === 1) expectingElement = true;
  }
  return offsets;
}
