// The chat page served at / in headless Chromium (Debian's chromium driven by playwright-core): send a
// message, see the thought (folded in <details>) and the answer appear, keep a screenshot as an artifact.
import { existsSync } from "node:fs";
import { mkdir, mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { chromium, type BrowserContext } from "playwright-core";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { chatPageHtml } from "../../src/infer/chat-page.js";
import { startServer, type RunningServer } from "../../src/infer/server.js";

const projectRoot = path.resolve(import.meta.dirname, "..", "..");
const chromiumPath = "/usr/bin/chromium";
const haveChromium = existsSync(chromiumPath);
if (!haveChromium) console.warn(`chat page test skipped: ${chromiumPath} is missing (apt-get install chromium)`);

describe("the chat page", () => {
  it("is one self-contained file: no external scripts, styles or fetches outside this server", () => {
    expect(chatPageHtml).not.toMatch(/<script[^>]+src=/i);
    expect(chatPageHtml).not.toMatch(/<link[^>]+stylesheet/i);
    expect(chatPageHtml).not.toMatch(/https?:\/\//);
  });

  describe.skipIf(!haveChromium)("in headless Chromium", () => {
    let running: RunningServer;
    let browser: BrowserContext;
    let profile: string;

    beforeAll(async () => {
      running = await startServer({
        modelPath: path.join(projectRoot, "models", "tiny-r1.gguf"),
        gpu: false,
        threads: 1,
        contextSize: 1024,
        port: 0,
        defaults: { thoughtBudget: 12, maxTokens: 40 },
      });
      profile = await mkdtemp(path.join(tmpdir(), "thinktune-chromium-"));
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
  });
});
