// The chat page served at / in headless Chromium (Debian's chromium driven by playwright-core): send a
// message, see the thought (folded in <details>) and the answer appear, keep a screenshot as an artifact.
import { existsSync } from "node:fs";
import { mkdir, mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { chromium, type BrowserContext } from "playwright-core";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { writeGgufAdapter } from "../../src/export/gguf-adapter.js";
import { chatPageHtml } from "../../src/infer/chat-page.js";
import { startServer, type RunningServer } from "../../src/infer/server.js";

const projectRoot = path.resolve(import.meta.dirname, "..", "..");
const tinyModel = path.join(projectRoot, "models", "tiny-r1.gguf");
const chromiumPath = "/usr/bin/chromium";
const haveChromium = existsSync(chromiumPath);
if (!haveChromium) console.warn(`chat page test skipped: ${chromiumPath} is missing (apt-get install chromium)`);

describe("the chat page", () => {
  const html = chatPageHtml({ defaultModel: "tiny-r1", maxTokens: 2048 });

  it("is one self-contained file: no external scripts, styles or fetches outside this server", () => {
    expect(html).not.toMatch(/<script[^>]+src=/i);
    expect(html).not.toMatch(/<link[^>]+stylesheet/i);
    expect(html).not.toMatch(/https?:\/\//);
  });

  it("inlines the markdown renderer and the sanitizer, and the server's settings", () => {
    expect(html).toContain("marked v");
    expect(html).toContain("DOMPurify");
    expect(html).toContain('const settings = {"defaultModel":"tiny-r1","maxTokens":2048};');
    // a value cannot close the script element it is embedded in
    expect(chatPageHtml({ defaultModel: "</script><b>", maxTokens: 1 })).toContain('"defaultModel":"\\u003c/script>\\u003cb>"');
  });

  describe.skipIf(!haveChromium)("in headless Chromium", () => {
    let running: RunningServer;
    let browser: BrowserContext;
    let profile: string;
    let adapterFile: string;

    beforeAll(async () => {
      profile = await mkdtemp(path.join(tmpdir(), "thinktune-chromium-"));
      // an adapter on q of every layer, so the server offers a base and an adapter to choose from
      adapterFile = path.join(profile, "tuned.gguf");
      const tensors = [0, 1, 2, 3].flatMap((layer) => [
        { name: `blk.${layer}.attn_q.weight.lora_a`, shape: [2, 256], data: new Float32Array(512).fill(0.01) },
        { name: `blk.${layer}.attn_q.weight.lora_b`, shape: [256, 2], data: new Float32Array(512).fill(0.01) },
      ]);
      await writeGgufAdapter(adapterFile, { baseModelPath: tinyModel, alpha: 4, tensors });
      running = await startServer({
        modelPath: tinyModel,
        gpu: false,
        threads: 1,
        contextSize: 1024,
        port: 0,
        defaults: { thoughtBudget: 12, maxTokens: 40 },
      });
      // a fresh profile folder (playwright passes it to Chromium as --user-data-dir)
      browser = await chromium.launchPersistentContext(profile, {
        executablePath: chromiumPath,
        headless: true,
        viewport: { width: 1000, height: 700 },
        args: [
          "--headless",
          "--no-sandbox",
          "--disable-gpu",
          "--disable-quic",
          "--no-first-run",
          "--disable-background-networking",
          "--disable-component-update",
          "--disable-sync",
        ],
      });
    });

    afterAll(async () => {
      await browser?.close();
      await running?.close();
      if (profile) await rm(profile, { recursive: true, force: true });
    });

    it("streams the thought folded above the answer and keeps the conversation", async () => {
      const page = await browser.newPage();
      const pageErrors: string[] = [];
      page.on("pageerror", (error) => pageErrors.push(error.message));
      await page.goto(running.url);
      await expect.poll(() => page.locator("#model option").allTextContents()).toEqual(["tiny-r1 (base)"]);

      await page.fill("#input", "Why is the sky blue?");
      await page.click("#send");
      const reply = page.locator(".turn.assistant[data-done]").first();
      await reply.waitFor({ timeout: 60_000 });
      const thought = reply.locator("details.thought");
      expect(await thought.isHidden()).toBe(false);
      expect((await reply.locator(".thought-text").textContent())!.length).toBeGreaterThan(0);
      expect((await reply.locator(".answer").textContent())!.length).toBeGreaterThan(0);
      // once the answer started, the thought is folded away under its summary
      expect(await thought.evaluate((element) => (element as HTMLDetailsElement).open)).toBe(false);
      expect(await reply.locator("summary").textContent()).toMatch(/^Thought for \d+\.\d s$/);
      expect(await page.locator(".turn.user .answer").first().textContent()).toBe("Why is the sky blue?");

      // a second message is sent with the first exchange as its history
      await page.fill("#input", "And at sunset?");
      await page.press("#input", "Enter");
      await page.locator(".turn.assistant[data-done]").nth(1).waitFor({ timeout: 60_000 });
      const stored = await page.evaluate(() => JSON.parse(localStorage.getItem("thinktune-chat") ?? "{}"));
      expect(stored.messages.map((message: { role: string }) => message.role)).toEqual(["user", "assistant", "user", "assistant"]);
      expect(stored.messages[1].reasoning.length).toBeGreaterThan(0);

      await reply.locator("summary").click(); // unfold the first thought for the screenshot
      await mkdir(path.join(projectRoot, "test-artifacts"), { recursive: true });
      await page.screenshot({ path: path.join(projectRoot, "test-artifacts", "chat-page.png"), fullPage: true });
      expect(pageErrors).toEqual([]);
    });

    it("preselects the server's adapter, states the reply limit, and renders the answer's markdown sanitized", async () => {
      const withAdapter = await startServer({ modelPath: tinyModel, adapters: [adapterFile], gpu: false, threads: 1, contextSize: 1024, port: 0, defaults: { maxTokens: 40 } });
      try {
        const page = await browser.newPage();
        const pageErrors: string[] = [];
        page.on("pageerror", (error) => pageErrors.push(error.message));
        page.on("dialog", (dialog) => pageErrors.push(`dialog: ${dialog.message()}`));
        await page.goto(withAdapter.url);
        await expect.poll(() => page.locator("#model option").allTextContents()).toEqual(["tiny-r1 (base)", "tuned (adapter)"]);
        expect(await page.locator("#model").inputValue()).toBe("tuned");
        expect(await page.locator("#max-tokens").getAttribute("placeholder")).toBe("40");
        expect(await page.locator("#max-tokens").getAttribute("title")).toContain("closed after 3/4 of them");

        const answer = "The length is **350 centimeters**.\n\n- one\n- two\n\n<img src=x onerror=\"alert(1)\"><script>alert(2)</script>[link](javascript:alert(3))";
        await page.evaluate((content) => {
          const conversation = { model: "tuned", serverDefault: "tuned", messages: [{ role: "user", content: "How long? **bold?**" }, { role: "assistant", content, reasoning: "3.5 m" }] };
          localStorage.setItem("thinktune-chat", JSON.stringify(conversation));
        }, answer);
        await page.reload();
        const rendered = page.locator(".turn.assistant .answer").first();
        await expect.poll(() => rendered.locator("strong").textContent()).toBe("350 centimeters");
        expect(await rendered.locator("li").allTextContents()).toEqual(["one", "two"]);
        expect(await rendered.locator("script, [onerror]").count()).toBe(0);
        expect(await rendered.locator("a").getAttribute("href")).toBeNull();
        // what the user typed stays text
        expect(await page.locator(".turn.user .answer").first().textContent()).toBe("How long? **bold?**");
        expect(pageErrors).toEqual([]);
      } finally {
        await withAdapter.close();
      }
    });
  });
});
