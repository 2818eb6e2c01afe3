// `thinktune serve` spoken to by the official `openai` npm client, on the embedded tiny R1 model (random
// weights: the text is noise, so the tests check structure: reasoning_content apart from content, SSE
// framing, error shapes, and that the slot of a client that went away is freed).
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import OpenAI, { APIError } from "openai";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { writeGgufAdapter } from "../../src/export/gguf-adapter.js";
import { readGgufModel } from "../../src/gguf/read.js";
import type { GenerationRecord } from "../../src/infer/models.js";
import { startServer, type RunningServer } from "../../src/infer/server.js";
import type { NamedTensor } from "../../src/native/addon.js";

const projectRoot = path.resolve(import.meta.dirname, "..", "..");
const baseModel = path.join(projectRoot, "models", "tiny-r1.gguf");
const apiKey = "test-key-0123456789";

/** An adapter on q and v of every layer with random non-zero A and B, so it visibly changes the logits. */
async function writeRandomAdapter(file: string, rank = 4): Promise<void> {
  const base = await readGgufModel(baseModel);
  let state = 12345;
  const random = () => {
    state = (state * 1103515245 + 12345) % 2147483648;
    return state / 2147483648 - 0.5;
  };
  const tensors: NamedTensor[] = [];
  for (const tensor of base.tensors) {
    if (!/^blk\.\d+\.attn_(q|v)\.weight$/.test(tensor.name)) continue;
    const [input, output] = tensor.dims; // ggml order: dims[0] is the input width
    const a = new Float32Array(rank * input).map(() => random() * 0.5);
    const b = new Float32Array(output * rank).map(() => random() * 0.5);
    tensors.push({ name: `${tensor.name}.lora_a`, shape: [rank, input], data: a });
    tensors.push({ name: `${tensor.name}.lora_b`, shape: [output, rank], data: b });
  }
  await writeGgufAdapter(file, { baseModelPath: baseModel, alpha: 2 * rank, tensors });
}

let dir: string;
let running: RunningServer;
let client: OpenAI;

beforeAll(async () => {
  dir = await mkdtemp(path.join(tmpdir(), "thinktune-serve-"));
  await writeRandomAdapter(path.join(dir, "noisy.gguf"));
  running = await startServer({
    modelPath: baseModel,
    adapters: [path.join(dir, "noisy.gguf")],
    gpu: false,
    threads: 1,
    contextSize: 4096,
    parallel: 1,
    port: 0,
    apiKey,
    // the thought is closed after 8 tokens, so both parts appear within a short reply
    defaults: { thoughtBudget: 8, maxTokens: 32 },
  });
  client = new OpenAI({ baseURL: `${running.url}/v1`, apiKey, maxRetries: 0 });
});

afterAll(async () => {
  await running?.close();
  if (dir) await rm(dir, { recursive: true, force: true });
});

const hello = [{ role: "user" as const, content: "Why is the sky blue?" }];

describe("serve with the openai client", () => {
  it("lists the base and the adapter by name", async () => {
    const models = await client.models.list();
    expect(models.data.map((model) => model.id)).toEqual(["tiny-r1", "noisy"]);
    expect((await client.models.retrieve("noisy")).id).toBe("noisy");
  });

  it("answers unstreamed with the reasoning in reasoning_content, apart from content", async () => {
    const completion = await client.chat.completions.create({ model: "tiny-r1", messages: hello, seed: 7, temperature: 0.8 });
    const message = completion.choices[0].message as typeof completion.choices[0]["message"] & { reasoning_content?: string };
    expect(completion.object).toBe("chat.completion");
    expect(message.role).toBe("assistant");
    expect(message.reasoning_content!.length).toBeGreaterThan(0);
    expect(message.content!.length).toBeGreaterThan(0);
    expect(message.content).not.toContain("</think>");
    expect(message.reasoning_content).not.toContain("</think>");
    expect(completion.choices[0].finish_reason).toBe("length");
    expect(completion.usage!.completion_tokens).toBe(32);
    // 8 thought tokens, then the budget closes the thought
    expect(completion.usage!.completion_tokens_details!.reasoning_tokens).toBe(8);
  });

  it("streams the thought as reasoning_content deltas before the answer's content deltas", async () => {
    const stream = await client.chat.completions.create({
      model: "tiny-r1",
      messages: hello,
      seed: 7,
      temperature: 0.8,
      stream: true,
      stream_options: { include_usage: true },
    });
    const kinds: string[] = [];
    let reasoning = "";
    let content = "";
    let finish: string | null = null;
    let usageSeen = false;
    for await (const chunk of stream) {
      expect(chunk.object).toBe("chat.completion.chunk");
      if (chunk.usage) usageSeen = true;
      const choice = chunk.choices[0];
      if (!choice) continue;
      const delta = choice.delta as typeof choice.delta & { reasoning_content?: string };
      if (delta.reasoning_content) {
        kinds.push("thought");
        reasoning += delta.reasoning_content;
      }
      if (delta.content) {
        kinds.push("answer");
        content += delta.content;
      }
      if (choice.finish_reason) finish = choice.finish_reason;
    }
    expect(reasoning.length).toBeGreaterThan(0);
    expect(content.length).toBeGreaterThan(0);
    // every thought delta comes before the first answer delta
    expect(kinds.lastIndexOf("thought")).toBeLessThan(kinds.indexOf("answer"));
    expect(finish).toBe("length");
    expect(usageSeen).toBe(true);
    // the same seed unstreamed gives the same text: streaming only cuts it into pieces
    const whole = await client.chat.completions.create({ model: "tiny-r1", messages: hello, seed: 7, temperature: 0.8 });
    expect(content).toBe(whole.choices[0].message.content);
    expect(reasoning).toBe((whole.choices[0].message as { reasoning_content?: string }).reasoning_content);
  });

  it("frames the stream as server-sent events ending in [DONE]", async () => {
    const response = await fetch(`${running.url}/v1/chat/completions`, {
      method: "POST",
      headers: { authorization: `Bearer ${apiKey}`, "content-type": "application/json" },
      body: JSON.stringify({ model: "tiny-r1", messages: hello, stream: true, max_tokens: 12 }),
    });
    expect(response.status).toBe(200);
    expect(response.headers.get("content-type")).toMatch(/^text\/event-stream/);
    const text = await response.text();
    const events = text.split("\n\n").filter((event) => event !== "");
    expect(events.every((event) => event.startsWith("data: "))).toBe(true);
    expect(events.at(-1)).toBe("data: [DONE]");
    expect(text.endsWith("data: [DONE]\n\n")).toBe(true);
    const first = JSON.parse(events[0].slice(6));
    expect(first.choices[0].delta.role).toBe("assistant");
  });

  it("serves the adapter by name, and it changes the model's output", async () => {
    const request = { messages: hello, temperature: 0, max_tokens: 24, max_reasoning_tokens: 4 } as const;
    const base = await client.chat.completions.create({ model: "tiny-r1", ...request } as never);
    const adapted = await client.chat.completions.create({ model: "noisy", ...request } as never);
    const text = (completion: typeof base) =>
      `${(completion.choices[0].message as { reasoning_content?: string }).reasoning_content}|${completion.choices[0].message.content}`;
    expect(adapted.model).toBe("noisy");
    expect(text(adapted)).not.toBe(text(base));
    // greedy decoding is repeatable, so the difference is the adapter's
    const again = await client.chat.completions.create({ model: "tiny-r1", ...request } as never);
    expect(text(again)).toBe(text(base));
  });

  it("refuses a request without the right key with 401", async () => {
    const wrong = new OpenAI({ baseURL: `${running.url}/v1`, apiKey: "wrong-key", maxRetries: 0 });
    const error = await wrong.chat.completions.create({ model: "tiny-r1", messages: hello }).catch((caught: unknown) => caught);
    expect(error).toBeInstanceOf(APIError);
    expect((error as APIError).status).toBe(401);
    expect((error as APIError).code).toBe("invalid_api_key");
    const missing = await fetch(`${running.url}/v1/models`);
    expect(missing.status).toBe(401);
    expect((await missing.json()).error.type).toBe("authentication_error");
  });

  it("answers malformed and invalid bodies with 400 and an OpenAI-style error", async () => {
    const post = (body: string) =>
      fetch(`${running.url}/v1/chat/completions`, { method: "POST", headers: { authorization: `Bearer ${apiKey}`, "content-type": "application/json" }, body });
    const malformed = await post("{not json");
    expect(malformed.status).toBe(400);
    const malformedBody = await malformed.json();
    expect(malformedBody.error).toMatchObject({ type: "invalid_request_error", code: "invalid_json", param: null });
    expect(typeof malformedBody.error.message).toBe("string");

    const badRole = await post(JSON.stringify({ model: "tiny-r1", messages: [{ role: "wizard", content: "hi" }] }));
    expect(badRole.status).toBe(400);
    expect((await badRole.json()).error).toMatchObject({ type: "invalid_request_error", param: "messages[0].role", code: "invalid_value" });

    const badTemperature = await post(JSON.stringify({ model: "tiny-r1", messages: hello, temperature: 7 }));
    expect(badTemperature.status).toBe(400);
    expect((await badTemperature.json()).error.param).toBe("temperature");

    const noMessages = await post(JSON.stringify({ model: "tiny-r1" }));
    expect(noMessages.status).toBe(400);
    expect((await noMessages.json()).error.param).toBe("messages");

    // through the client too: the status and the parameter reach the caller
    const error = await client.chat.completions.create({ model: "tiny-r1", messages: hello, max_tokens: -1 }).catch((caught: unknown) => caught);
    expect((error as APIError).status).toBe(400);
    expect((error as APIError).param).toBe("max_tokens");
  });

  it("answers an unknown model with 404, an unknown path with 404 and a wrong method with 405", async () => {
    const error = await client.chat.completions.create({ model: "nope", messages: hello }).catch((caught: unknown) => caught);
    expect((error as APIError).status).toBe(404);
    expect((error as APIError).code).toBe("model_not_found");
    const auth = { authorization: `Bearer ${apiKey}` };
    const unknownPath = await fetch(`${running.url}/v1/embeddings`, { method: "POST", headers: auth, body: "{}" });
    expect(unknownPath.status).toBe(404);
    expect((await unknownPath.json()).error.code).toBe("unknown_url");
    const wrongMethod = await fetch(`${running.url}/v1/chat/completions`, { headers: auth });
    expect(wrongMethod.status).toBe(405);
    expect(wrongMethod.headers.get("allow")).toBe("POST");
    expect((await wrongMethod.json()).error.code).toBe("method_not_allowed");
  });

  it("stops the generation of a client that disconnects mid-stream and frees its slot for the next request", async () => {
    const ended: GenerationRecord[] = [];
    running.host.on("generation", (record) => ended.push(record));
    const controller = new AbortController();
    // Without the disconnect this would generate up to the 4096-token context: many seconds.
    const stream = await client.chat.completions.create(
      { model: "tiny-r1", messages: hello, stream: true, max_tokens: 4000, max_reasoning_tokens: 3000 } as never,
      { signal: controller.signal },
    );
    let chunks = 0;
    const reading = (async () => {
      for await (const _chunk of stream as unknown as AsyncIterable<unknown>) {
        chunks++;
        if (chunks === 3) controller.abort();
      }
    })();
    // the client ends its stream on abort (quietly or with an AbortError, depending on the moment)
    await reading.catch((error: Error) => expect(error.name).toMatch(/Abort/));
    expect(chunks).toBe(3);
    // parallel is 1: this request gets the slot only once the abandoned generation stopped
    const next = await client.chat.completions.create({ model: "tiny-r1", messages: hello, max_tokens: 8 });
    expect(next.choices[0].finish_reason).toBe("length");
    expect(running.host.active).toBe(0);
    expect(running.host.queued).toBe(0);
    // the abandoned generation ended as aborted, long before its 4000 tokens
    expect(ended[0].result.finishReason).toBe("abort");
    expect(ended[0].result.completionTokens).toBeLessThan(1000);
    expect(ended[1].result.finishReason).toBe("length");
  });

  it("queues requests beyond --parallel instead of failing them", async () => {
    const requests = Array.from({ length: 3 }, (_, index) =>
      client.chat.completions.create({ model: index === 1 ? "noisy" : "tiny-r1", messages: hello, max_tokens: 16, seed: index, temperature: 0.8 }),
    );
    const results = await Promise.all(requests);
    for (const result of results) expect(result.choices[0].finish_reason).toBe("length");
    expect(running.host.active).toBe(0);
  });
});
