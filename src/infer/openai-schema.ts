// The request body of POST /v1/chat/completions, validated with zod. Unknown fields are ignored (clients
// send many optional ones); fields that would change the meaning of the request and are not supported
// (tools, n > 1, logprobs, structured output) are refused rather than silently dropped.
import { z } from "zod";
import type { ChatMessage } from "./prompt.js";

const textPart = z.object({ type: z.literal("text"), text: z.string() });

const messageSchema = z.object({
  role: z.enum(["system", "developer", "user", "assistant"], {
    error: "must be one of system, developer, user, assistant (tool messages are not supported)",
  }),
  content: z.union([z.string(), z.array(textPart, { error: "must be a string or an array of text parts" }), z.null()]).optional(),
  /** DeepSeek-style reasoning of an earlier turn: accepted and dropped, as the R1 template drops it */
  reasoning_content: z.string().nullable().optional(),
  name: z.string().optional(),
});

export const chatCompletionRequestSchema = z
  .object({
    model: z.string({ error: "is required: the id of a model from GET /v1/models" }).min(1),
    messages: z.array(messageSchema, { error: "is required: an array of messages" }).min(1, "must hold at least one message"),
    stream: z.boolean().nullable().optional(),
    stream_options: z.object({ include_usage: z.boolean().optional() }).nullable().optional(),
    max_tokens: z.int().min(1).nullable().optional(),
    max_completion_tokens: z.int().min(1).nullable().optional(),
    /** thinktune's extension: thought tokens at most before the thought is closed */
    max_reasoning_tokens: z.int().min(0).nullable().optional(),
    temperature: z.number().min(0).max(2).nullable().optional(),
    top_p: z.number().gt(0).max(1).nullable().optional(),
    top_k: z.int().min(0).nullable().optional(),
    min_p: z.number().min(0).max(1).nullable().optional(),
    seed: z.int().nullable().optional(),
    frequency_penalty: z.number().min(-2).max(2).nullable().optional(),
    presence_penalty: z.number().min(-2).max(2).nullable().optional(),
    stop: z.union([z.string(), z.array(z.string()).max(4, "takes at most 4 stop sequences")]).nullable().optional(),
    n: z.literal(1, { error: "only 1 choice per request is supported" }).nullable().optional(),
    logprobs: z.literal(false, { error: "logprobs are not supported" }).nullable().optional(),
    tools: z.array(z.unknown()).max(0, "tools are not supported").nullable().optional(),
    response_format: z
      .object({ type: z.literal("text", { error: "only the text response format is supported" }) })
      .nullable()
      .optional(),
  })
  .refine((body) => body.messages.some((message) => message.role === "user"), {
    message: "must hold at least one user message",
    path: ["messages"],
  });

export type ChatCompletionRequest = z.infer<typeof chatCompletionRequestSchema>;

/** Text of a message's content; system and developer messages both become the system prompt. */
export function toChatMessages(request: ChatCompletionRequest): ChatMessage[] {
  return request.messages.map((message) => ({
    role: message.role === "developer" ? "system" : message.role,
    content: typeof message.content === "string" ? message.content : (message.content ?? []).map((part) => part.text).join(""),
  }));
}

/** The first validation issue as OpenAI's `param` (messages[0].role) and a message that names it. */
export function describeIssue(issue: z.core.$ZodIssue): { param: string | null; message: string } {
  let param = "";
  for (const key of issue.path) {
    if (typeof key === "number") param += `[${key}]`;
    else param += param === "" ? String(key) : `.${String(key)}`;
  }
  if (param === "") return { param: null, message: `Invalid request body: ${issue.message}` };
  return { param, message: `Invalid value for '${param}': ${issue.message}` };
}
