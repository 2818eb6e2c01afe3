// An OpenAI-compatible HTTP server on node:http: POST /v1/chat/completions (JSON, or SSE when streamed),
// GET /v1/models, and the chat page at GET /. The reasoning is returned as `reasoning_content` beside
// `content`, as DeepSeek's API does, so the official `openai` client and UIs built on it work unchanged.
// Errors have OpenAI's shape {error: {message, type, param, code}} and status.
import { createHash, randomUUID, timingSafeEqual } from "node:crypto";
import http from "node:http";
import type { AddressInfo } from "node:net";
import { chatPageHtml } from "./chat-page.js";
import { ContextLengthError, defaultReplyTokens, defaultThoughtBudget, type GenerationOptions, type GenerationResult } from "./generate.js";
import { ModelHost, QueueAbortedError, UnknownModelError, type ModelHostOptions } from "./models.js";
import { ChatTemplateError } from "./prompt.js";
import { chatCompletionRequestSchema, describeIssue, toChatMessages, type ChatCompletionRequest } from "./openai-schema.js";

export interface ChatServerOptions {
  host: ModelHost;
  /** when set, /v1/* requires `Authorization: Bearer <apiKey>` */
  apiKey?: string;
  /** used when a request does not say; maxTokens defaults to defaultReplyTokens, thoughtBudget to 3/4 of the request's max tokens */
  defaults?: { maxTokens?: number; thoughtBudget?: number; temperature?: number };
  /** request bodies larger than this are refused with 413 */
  maxBodyBytes?: number;
}

type ErrorType = "invalid_request_error" | "authentication_error" | "not_found_error" | "server_error";

export class HttpError extends Error {
  constructor(
    readonly status: number,
    message: string,
    readonly type: ErrorType,
    readonly code: string | null,
    readonly param: string | null = null,
  ) {
    super(message);
    this.name = "HttpError";
  }
}

function sendJson(res: http.ServerResponse, status: number, body: unknown, headers: http.OutgoingHttpHeaders = {}): void {
  const text = JSON.stringify(body);
  res.writeHead(status, { "content-type": "application/json; charset=utf-8", "content-length": Buffer.byteLength(text), ...headers });
  res.end(text);
}

function errorBody(error: HttpError): unknown {
  return { error: { message: error.message, type: error.type, param: error.param, code: error.code } };
}

function digest(text: string): Buffer {
  return createHash("sha256").update(text, "utf8").digest();
}

async function readBody(req: http.IncomingMessage, limit: number): Promise<string> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of req) {
    size += (chunk as Buffer).length;
    if (size > limit) throw new HttpError(413, `The request body is larger than ${limit} bytes`, "invalid_request_error", "request_too_large");
    chunks.push(chunk as Buffer);
  }
  return Buffer.concat(chunks).toString("utf8");
}

function toHttpError(error: unknown): HttpError {
  if (error instanceof HttpError) return error;
  if (error instanceof UnknownModelError) return new HttpError(404, error.message, "invalid_request_error", "model_not_found", "model");
  if (error instanceof ContextLengthError) return new HttpError(400, error.message, "invalid_request_error", "context_length_exceeded", "messages");
  if (error instanceof ChatTemplateError) return new HttpError(400, error.message, "invalid_request_error", "invalid_messages", "messages");
  return new HttpError(500, `The server failed to generate: ${(error as Error).message}`, "server_error", "internal_error");
}

export class ChatServer {
  readonly host: ModelHost;
  readonly server: http.Server;
  readonly #apiKeyDigest: Buffer | undefined;
  readonly #defaults: NonNullable<ChatServerOptions["defaults"]>;
  readonly #maxBodyBytes: number;
  readonly #created = Math.floor(Date.now() / 1000);
  readonly #pageHtml: string;

  constructor(options: ChatServerOptions) {
    this.host = options.host;
    this.#apiKeyDigest = options.apiKey ? digest(options.apiKey) : undefined;
    this.#defaults = options.defaults ?? {};
    this.#maxBodyBytes = options.maxBodyBytes ?? 8 * 1024 * 1024;
    this.#pageHtml = chatPageHtml({
      defaultModel: this.host.models.find((model) => model.adapter)?.id ?? this.host.baseId,
      maxTokens: this.#defaults.maxTokens ?? defaultReplyTokens,
      thoughtBudget: this.#defaults.thoughtBudget,
    });
    this.server = http.createServer((req, res) => {
      this.#handle(req, res).catch((error: unknown) => {
        const httpError = toHttpError(error);
        if (!res.headersSent) sendJson(res, httpError.status, errorBody(httpError));
        else res.end();
      });
    });
  }

  /** Listens on host:port (port 0 picks a free one) and returns the base URL. */
  async listen(port: number, hostname = "127.0.0.1"): Promise<string> {
    await new Promise<void>((resolve, reject) => {
      this.server.once("error", reject);
      this.server.listen(port, hostname, () => {
        this.server.off("error", reject);
        resolve();
      });
    });
    const address = this.server.address() as AddressInfo;
    const shownHost = address.family === "IPv6" ? `[${address.address}]` : address.address;
    return `http://${shownHost}:${address.port}`;
  }

  async close(): Promise<void> {
    this.server.closeAllConnections();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }

  async #handle(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    let url: URL;
    try {
      url = new URL(req.url ?? "/", "http://localhost");
      decodeURIComponent(url.pathname); // the route decodes parts of it: a malformed escape is the client's error
    } catch {
      throw new HttpError(400, `The request path ${JSON.stringify(req.url)} is not a valid URL path (a malformed URL or percent-escape)`, "invalid_request_error", "invalid_url");
    }
    const method = req.method ?? "GET";
    res.setHeader("access-control-allow-origin", "*");
    if (method === "OPTIONS") {
      res.writeHead(204, {
        "access-control-allow-methods": "GET, POST, OPTIONS",
        "access-control-allow-headers": "authorization, content-type",
        "access-control-max-age": "86400",
      });
      res.end();
      return;
    }
    const route = this.#route(url.pathname);
    if (!route) throw new HttpError(404, `Unknown path ${method} ${url.pathname}; the API is under /v1 (models, chat/completions)`, "invalid_request_error", "unknown_url");
    if (!route.methods.includes(method)) {
      res.setHeader("allow", route.methods.join(", "));
      throw new HttpError(405, `Method ${method} is not allowed on ${url.pathname}; use ${route.methods.join(" or ")}`, "invalid_request_error", "method_not_allowed");
    }
    if (route.api) this.#authorize(req);
    await route.run(req, res);
  }

  #route(pathname: string): { methods: string[]; api: boolean; run: (req: http.IncomingMessage, res: http.ServerResponse) => Promise<void> } | undefined {
    if (pathname === "/" || pathname === "/index.html") {
      return {
        methods: ["GET", "HEAD"],
        api: false,
        run: async (_req, res) => {
          res.writeHead(200, { "content-type": "text/html; charset=utf-8", "cache-control": "no-cache", "content-length": Buffer.byteLength(this.#pageHtml) });
          res.end(_req.method === "HEAD" ? undefined : this.#pageHtml);
        },
      };
    }
    if (pathname === "/v1/models") return { methods: ["GET"], api: true, run: async (_req, res) => sendJson(res, 200, { object: "list", data: this.#modelList() }) };
    const modelMatch = /^\/v1\/models\/(.+)$/.exec(pathname);
    if (modelMatch) {
      return {
        methods: ["GET"],
        api: true,
        run: async (_req, res) => {
          const id = decodeURIComponent(modelMatch[1]);
          const model = this.#modelList().find((entry) => entry.id === id);
          if (!model) throw toHttpError(new UnknownModelError(id, this.host.models.map((entry) => entry.id)));
          sendJson(res, 200, model);
        },
      };
    }
    if (pathname === "/v1/chat/completions") return { methods: ["POST"], api: true, run: (req, res) => this.#chatCompletions(req, res) };
    return undefined;
  }

  #authorize(req: http.IncomingMessage): void {
    if (!this.#apiKeyDigest) return;
    const header = req.headers.authorization ?? "";
    const match = /^Bearer\s+(.+)$/i.exec(header.trim());
    // Hashes have equal length, so timingSafeEqual compares in time independent of the key given.
    if (!match || !timingSafeEqual(digest(match[1]), this.#apiKeyDigest)) {
      throw new HttpError(
        401,
        match ? "Incorrect API key provided" : "Missing API key: send it as 'Authorization: Bearer <key>'",
        "authentication_error",
        "invalid_api_key",
      );
    }
  }

  #modelList(): { id: string; object: "model"; created: number; owned_by: string; adapter: string | null }[] {
    return this.host.models.map((model) => ({
      id: model.id,
      object: "model" as const,
      created: this.#created,
      owned_by: "thinktune",
      adapter: model.adapter ? model.adapter.input : null,
    }));
  }

  async #chatCompletions(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    const text = await readBody(req, this.#maxBodyBytes);
    let json: unknown;
    try {
      json = JSON.parse(text);
    } catch (error) {
      throw new HttpError(400, `The request body is not valid JSON: ${(error as Error).message}`, "invalid_request_error", "invalid_json");
    }
    if (json === null || typeof json !== "object" || Array.isArray(json)) {
      throw new HttpError(400, "The request body must be a JSON object", "invalid_request_error", "invalid_json");
    }
    const parsed = chatCompletionRequestSchema.safeParse(json);
    if (!parsed.success) {
      const { param, message } = describeIssue(parsed.error.issues[0]);
      throw new HttpError(400, message, "invalid_request_error", "invalid_value", param);
    }
    const request = parsed.data;
    if (!this.host.has(request.model)) throw toHttpError(new UnknownModelError(request.model, this.host.models.map((model) => model.id)));
    const messages = toChatMessages(request);

    // A client that goes away stops its generation (or leaves the queue), freeing the slot.
    const abort = new AbortController();
    res.on("close", () => {
      if (!res.writableFinished) abort.abort();
    });
    const id = `chatcmpl-${randomUUID().replaceAll("-", "")}`;
    const created = Math.floor(Date.now() / 1000);
    const maxTokens = request.max_completion_tokens ?? request.max_tokens ?? this.#defaults.maxTokens ?? defaultReplyTokens;
    const options: GenerationOptions = {
      maxTokens,
      thoughtBudget: request.max_reasoning_tokens ?? this.#defaults.thoughtBudget ?? defaultThoughtBudget(maxTokens),
      temperature: request.temperature ?? this.#defaults.temperature ?? 0.6,
      topP: request.top_p ?? undefined,
      topK: request.top_k ?? undefined,
      minP: request.min_p ?? undefined,
      seed: request.seed ?? undefined,
      frequencyPenalty: request.frequency_penalty ?? undefined,
      presencePenalty: request.presence_penalty ?? undefined,
      stop: request.stop == null ? undefined : typeof request.stop === "string" ? [request.stop] : request.stop,
      signal: abort.signal,
    };
    if (request.stream) await this.#stream(res, request, messages, options, id, created);
    else {
      let result: GenerationResult;
      try {
        result = await this.host.generate(request.model, messages, options);
      } catch (error) {
        if (error instanceof QueueAbortedError) return;
        throw error;
      }
      if (abort.signal.aborted) return;
      sendJson(res, 200, {
        id,
        object: "chat.completion",
        created,
        model: request.model,
        choices: [
          {
            index: 0,
            message: { role: "assistant", content: result.content, reasoning_content: result.reasoning },
            logprobs: null,
            finish_reason: result.finishReason === "length" ? "length" : "stop",
          },
        ],
        usage: usage(result),
      });
    }
  }

  async #stream(
    res: http.ServerResponse,
    request: ChatCompletionRequest,
    messages: ReturnType<typeof toChatMessages>,
    options: GenerationOptions,
    id: string,
    created: number,
  ): Promise<void> {
    const chunk = (delta: Record<string, unknown>, finishReason: string | null = null, extra: Record<string, unknown> = {}) =>
      `data: ${JSON.stringify({ id, object: "chat.completion.chunk", created, model: request.model, choices: [{ index: 0, delta, logprobs: null, finish_reason: finishReason }], ...extra })}\n\n`;
    const open = () => {
      if (res.headersSent) return;
      res.writeHead(200, { "content-type": "text/event-stream; charset=utf-8", "cache-control": "no-cache", connection: "keep-alive", "x-accel-buffering": "no" });
      res.write(chunk({ role: "assistant", content: "" }));
    };
    let result: GenerationResult;
    try {
      result = await this.host.generate(request.model, messages, {
        ...options,
        onDelta: (delta) => {
          open();
          if (delta.thought !== "") res.write(chunk({ reasoning_content: delta.thought }));
          if (delta.answer !== "") res.write(chunk({ content: delta.answer }));
        },
      });
    } catch (error) {
      if (error instanceof QueueAbortedError || options.signal?.aborted) {
        res.end();
        return;
      }
      if (!res.headersSent) throw error;
      // The status is already sent: the error travels as an SSE event, as OpenAI's API does.
      res.end(`data: ${JSON.stringify(errorBody(toHttpError(error)))}\n\n`);
      return;
    }
    if (options.signal?.aborted) {
      res.end();
      return;
    }
    open();
    res.write(chunk({}, result.finishReason === "length" ? "length" : "stop"));
    if (request.stream_options?.include_usage) {
      res.write(`data: ${JSON.stringify({ id, object: "chat.completion.chunk", created, model: request.model, choices: [], usage: usage(result) })}\n\n`);
    }
    res.end("data: [DONE]\n\n");
  }
}

function usage(result: GenerationResult) {
  return {
    prompt_tokens: result.promptTokens,
    completion_tokens: result.completionTokens,
    total_tokens: result.promptTokens + result.completionTokens,
    completion_tokens_details: { reasoning_tokens: result.reasoningTokens },
  };
}

export interface StartServerOptions extends ModelHostOptions {
  port?: number;
  hostname?: string;
  apiKey?: string;
  defaults?: ChatServerOptions["defaults"];
}

export interface RunningServer {
  url: string;
  server: ChatServer;
  host: ModelHost;
  close(): Promise<void>;
}

/** Loads the model and its adapters and serves them; 127.0.0.1:8080 unless told otherwise. */
export async function startServer(options: StartServerOptions): Promise<RunningServer> {
  const host = await ModelHost.load(options);
  const server = new ChatServer({ host, apiKey: options.apiKey, defaults: options.defaults });
  let url: string;
  try {
    url = await server.listen(options.port ?? 8080, options.hostname ?? "127.0.0.1");
  } catch (error) {
    await host.dispose();
    throw error;
  }
  return {
    url,
    server,
    host,
    close: async () => {
      await server.close();
      await host.dispose();
    },
  };
}
