// Record formats → one conversation shape (system?, user, assistant, ...), with <think> split from answers.
import type { DataIssue } from "./errors.js";
import type { DataFormat } from "./options.js";
import type { DataRecord } from "./read.js";

export type Role = "system" | "user" | "assistant";

export interface Turn {
  role: Role;
  /** for assistant turns: the answer only, <think> removed */
  content: string;
  /** assistant turns: the reasoning (inline <think> or a reasoning field), trimmed; undefined when none */
  reasoning?: string;
  /** assistant turns: there was a <think> block or reasoning field, but it was blank */
  emptyReasoning?: boolean;
}

export interface Conversation {
  file: string;
  line: number;
  format: DataFormat;
  turns: Turn[];
}

/** Fields where reasoning may come apart from the answer (reasoning_content is what DeepSeek's API returns). */
const reasoningFields = ["reasoning_content", "reasoning", "thinking"] as const;

const isObject = (value: unknown): value is Record<string, unknown> =>
  typeof value === "object" && value !== null && !Array.isArray(value);

/** The format a record looks like, from its keys. */
export function detectFormat(value: unknown): DataFormat | undefined {
  if (!isObject(value)) return undefined;
  if (Array.isArray(value.messages)) return "messages";
  if (Array.isArray(value.conversation)) return "conversation";
  if (Array.isArray(value.conversations)) return "sharegpt";
  if ("query" in value && "response" in value) return "query-response";
  if ("prompt" in value && "completion" in value) return "prompt-completion";
  if ("instruction" in value && "output" in value) return "alpaca";
  return undefined;
}

/** The format of a file: the first record whose format can be told. */
export function detectFileFormat(records: DataRecord[]): DataFormat | undefined {
  for (const record of records) {
    const format = detectFormat(record.value);
    if (format) return format;
  }
  return undefined;
}

class RecordProblem extends Error {
  constructor(
    readonly kind: DataIssue["kind"],
    message: string,
  ) {
    super(message);
  }
}

export interface ThinkSplit {
  reasoning?: string;
  answer: string;
  /** a <think></think> block with nothing but whitespace inside */
  emptyReasoning: boolean;
}

/** Splits "<think>\n...\n</think>\n\nanswer" into reasoning and answer; throws on unpaired, nested or repeated tags. */
export function splitThink(content: string, where: string): ThinkSplit {
  const opens = [...content.matchAll(/<think>/g)].map((match) => match.index);
  const closes = [...content.matchAll(/<\/think>/g)].map((match) => match.index);
  if (opens.length === 0 && closes.length === 0) return { answer: content.trim(), emptyReasoning: false };
  if (opens.length === 0) {
    throw new RecordProblem("think-tags", `${where} has </think> without <think> (unpaired tag; start the reasoning with <think>)`);
  }
  if (closes.length === 0) throw new RecordProblem("think-tags", `${where} has <think> without </think> (unpaired tag)`);
  if (opens.length > 1 && opens[1] < closes[0]) throw new RecordProblem("think-tags", `${where} has a <think> nested inside another`);
  if (opens.length > 1 || closes.length > 1) {
    throw new RecordProblem("think-tags", `${where} has ${opens.length} <think> and ${closes.length} </think> tags; expected one reasoning block`);
  }
  if (closes[0] < opens[0]) throw new RecordProblem("think-tags", `${where} has </think> before <think>`);
  if (content.slice(0, opens[0]).trim() !== "") {
    throw new RecordProblem("think-tags", `${where} has text before <think>; the reasoning must come first`);
  }
  const reasoning = content.slice(opens[0] + "<think>".length, closes[0]).trim();
  return { reasoning: reasoning === "" ? undefined : reasoning, answer: content.slice(closes[0] + "</think>".length).trim(), emptyReasoning: reasoning === "" };
}

function requireString(value: Record<string, unknown>, key: string, where: string): string {
  if (!(key in value) || value[key] === undefined || value[key] === null) throw new RecordProblem("missing-field", `${where}: missing "${key}"`);
  const field = value[key];
  if (typeof field !== "string") throw new RecordProblem("non-string-content", `${where}: "${key}" is ${describeType(field)}, expected a string`);
  return field;
}

function optionalString(value: Record<string, unknown>, key: string, where: string): string | undefined {
  if (value[key] === undefined || value[key] === null) return undefined;
  return requireString(value, key, where);
}

function describeType(value: unknown): string {
  if (value === null) return "null";
  if (Array.isArray(value)) return "an array";
  return typeof value === "object" ? "an object" : `a ${typeof value}`;
}

/** The assistant turn from its content and an optional reasoning field. */
function assistantTurn(content: string, reasoningField: string | undefined, where: string): Turn {
  const split = splitThink(content, where);
  if (reasoningField !== undefined && (split.reasoning !== undefined || split.emptyReasoning)) {
    throw new RecordProblem("reasoning-twice", `${where} has reasoning both inline (<think>) and in a reasoning field; keep one`);
  }
  if (reasoningField !== undefined) {
    const reasoning = splitThink(reasoningField, `${where} reasoning field`).answer;
    return { role: "assistant", content: split.answer, reasoning: reasoning === "" ? undefined : reasoning, emptyReasoning: reasoning === "" };
  }
  return { role: "assistant", content: split.answer, reasoning: split.reasoning, emptyReasoning: split.emptyReasoning };
}

function reasoningFieldOf(value: Record<string, unknown>, where: string): string | undefined {
  for (const key of reasoningFields) {
    const field = optionalString(value, key, where);
    if (field !== undefined) return field;
  }
  return undefined;
}

const shareGptRoles: Record<string, Role> = { human: "user", user: "user", gpt: "assistant", assistant: "assistant", model: "assistant", system: "system" };

function messageTurns(list: unknown[], key: string, sharegpt: boolean): Turn[] {
  return list.map((message, index) => {
    const where = `${key}[${index}]`;
    if (!isObject(message)) throw new RecordProblem("non-string-content", `${where} is ${describeType(message)}, expected an object`);
    const roleKey = sharegpt && "from" in message ? "from" : "role";
    const contentKey = sharegpt && "value" in message ? "value" : "content";
    const rawRole = requireString(message, roleKey, where);
    const role = sharegpt ? shareGptRoles[rawRole] : (["system", "user", "assistant"] as const).find((name) => name === rawRole);
    if (!role) throw new RecordProblem("role-order", `${where}: unknown role "${rawRole}" (expected system, user or assistant)`);
    const content = requireString(message, contentKey, where);
    if (role === "assistant") return assistantTurn(content, reasoningFieldOf(message, where), where);
    return { role, content };
  });
}

function turnsOf(value: unknown, format: DataFormat): Turn[] {
  if (!isObject(value)) throw new RecordProblem("unknown-format", `the record is ${describeType(value)}, expected a JSON object`);
  const system = (): Turn[] => {
    const text = optionalString(value, "system", "record");
    return text === undefined ? [] : [{ role: "system", content: text }];
  };
  switch (format) {
    case "query-response":
      return [...system(), { role: "user", content: requireString(value, "query", "record") }, assistantTurn(requireString(value, "response", "record"), reasoningFieldOf(value, "record"), '"response"')];
    case "prompt-completion":
      return [...system(), { role: "user", content: requireString(value, "prompt", "record") }, assistantTurn(requireString(value, "completion", "record"), reasoningFieldOf(value, "record"), '"completion"')];
    case "alpaca": {
      const instruction = requireString(value, "instruction", "record");
      const input = optionalString(value, "input", "record");
      const user = input === undefined || input.trim() === "" ? instruction : `${instruction}\n\n${input}`;
      return [...system(), { role: "user", content: user }, assistantTurn(requireString(value, "output", "record"), reasoningFieldOf(value, "record"), '"output"')];
    }
    case "messages":
    case "conversation":
    case "sharegpt": {
      const key = format === "sharegpt" ? "conversations" : format;
      const list = value[key];
      if (!Array.isArray(list)) {
        if (list === undefined) throw new RecordProblem("missing-field", `record: missing "${key}"`);
        throw new RecordProblem("non-string-content", `record: "${key}" is ${describeType(list)}, expected an array`);
      }
      return [...system(), ...messageTurns(list, key, format === "sharegpt")];
    }
  }
}

/** system first (at most one), then user and assistant alternating, ending with an assistant turn. */
function checkRoleOrder(turns: Turn[]): void {
  const body = turns[0]?.role === "system" ? turns.slice(1) : turns;
  if (body.length === 0) throw new RecordProblem("role-order", "wrong role order: the conversation has no user and assistant turns");
  body.forEach((turn, index) => {
    const expected: Role = index % 2 === 0 ? "user" : "assistant";
    if (turn.role !== expected) {
      const position = turns[0]?.role === "system" ? index + 1 : index;
      const why = turn.role === "system" ? "a system message may only come first" : `expected ${expected}`;
      throw new RecordProblem("role-order", `wrong role order: turn ${position} is ${turn.role}, ${why}`);
    }
  });
  if (body[body.length - 1].role !== "assistant") throw new RecordProblem("role-order", "wrong role order: the conversation ends with a user turn, expected an assistant answer last");
}

const formatKeys: Record<DataFormat, string[]> = {
  "query-response": ["query", "response"],
  "prompt-completion": ["prompt", "completion"],
  alpaca: ["instruction", "output"],
  messages: ["messages"],
  conversation: ["conversation"],
  sharegpt: ["conversations"],
};

/**
 * One record as a conversation. The format is the one named in the options, else the record's own,
 * else the file's when the record has some of its keys (so a missing key is reported as missing).
 */
export function normalizeRecord(
  record: DataRecord,
  explicitFormat: DataFormat | undefined,
  fileFormat: DataFormat | undefined,
): { conversation?: Conversation; issue?: DataIssue } {
  const issueOf = (kind: DataIssue["kind"], message: string): { issue: DataIssue } => ({ issue: { file: record.file, line: record.line, kind, message } });
  const value = record.value;
  const sharesFileKeys = fileFormat !== undefined && isObject(value) && formatKeys[fileFormat].some((key) => key in value);
  const useFormat = explicitFormat ?? detectFormat(value) ?? (sharesFileKeys ? fileFormat : undefined);
  if (!useFormat) {
    const keys = isObject(value) ? Object.keys(value) : [];
    const what = isObject(value) ? (keys.length > 0 ? `keys: ${keys.join(", ")}` : "an empty object") : describeType(value);
    return issueOf("unknown-format", `unknown format (${what}); expected query/response, prompt/completion, instruction/output, messages, conversation or conversations`);
  }
  try {
    const turns = turnsOf(record.value, useFormat);
    checkRoleOrder(turns);
    for (const turn of turns) {
      if (turn.role === "assistant" && turn.content === "") {
        throw new RecordProblem("empty-answer", turn.reasoning !== undefined ? "empty answer: nothing follows </think>" : "empty answer");
      }
    }
    return { conversation: { file: record.file, line: record.line, format: useFormat, turns } };
  } catch (error) {
    if (error instanceof RecordProblem) return issueOf(error.kind, error.message);
    throw error;
  }
}
