// Malformed request targets sent to `serve` (issue 15, case 7): a bad percent-escape or an unparseable
// URL is the client's error, answered 400 with an OpenAI-style error, not 500. No model is needed: the
// server answers these before any generation.
import { connect } from "node:net";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { ModelHost } from "../../src/infer/models.js";
import { ChatServer } from "../../src/infer/server.js";

let server: ChatServer;
let port: number;
beforeAll(async () => {
  const host = { models: [{ id: "tiny-r1" }] } as unknown as ModelHost;
  server = new ChatServer({ host });
  port = Number(new URL(await server.listen(0)).port);
});
afterAll(async () => {
  await server.close();
});

/** Sends one raw request line (the path exactly as given) and returns the status and body. */
function rawGet(target: string): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const socket = connect(port, "127.0.0.1", () => socket.write(`GET ${target} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n`));
    let response = "";
    socket.on("data", (chunk) => (response += chunk.toString()));
    socket.on("error", reject);
    socket.on("end", () => {
      const [head, body = ""] = response.split("\r\n\r\n");
      resolve({ status: Number(/^HTTP\/1\.1 (\d+)/.exec(head)?.[1]), body });
    });
  });
}

describe("serve with malformed request paths", () => {
  for (const target of ["/v1/models/%E0%A4%A", "/v1/models/%zz", "/%", "http://[bad/v1/models"]) {
    it(`answers GET ${target} with 400`, async () => {
      const { status, body } = await rawGet(target);
      expect(status).toBe(400);
      expect(JSON.parse(body)).toMatchObject({ error: { type: "invalid_request_error", code: "invalid_url", message: expect.stringContaining("is not a valid URL path") } });
    });
  }

  it("still decodes a well-formed escape in a model id", async () => {
    expect((await rawGet("/v1/models/tiny%2Dr1")).status).toBe(200);
    expect((await rawGet("/v1/models/%E2%9C%93")).status).toBe(404);
  });
});
