// The chat page served at GET /: one self-contained HTML file (inline CSS and script, no CDN), so it
// works offline. It lists the models from /v1/models with the server's adapter preselected, streams each
// reply from /v1/chat/completions, shows the thought folded (<details>) above the answer, and keeps the
// conversation (also across reloads, in localStorage). The answer's markdown is rendered by marked and
// sanitized by DOMPurify (both inlined from node_modules); everything else is inserted as text.
import { existsSync, readFileSync } from "node:fs";
import { createRequire } from "node:module";
import path from "node:path";

export interface ChatPageSettings {
  /** the model the page starts on: the server's (first) adapter, else the base */
  defaultModel: string;
  /** the server's reply limit for requests that set none */
  maxTokens: number;
  /** the server's thought budget; absent: 3/4 of each reply's limit */
  thoughtBudget?: number;
}

const require = createRequire(import.meta.url);

/** The folder of an installed package (its "exports" need not list the file wanted or package.json). */
function packageFolder(packageName: string): string {
  let dir = path.dirname(require.resolve(packageName));
  while (!existsSync(path.join(dir, "package.json")) || JSON.parse(readFileSync(path.join(dir, "package.json"), "utf8")).name !== packageName) {
    const parent = path.dirname(dir);
    if (parent === dir) throw new Error(`cannot find the folder of the package ${packageName}`);
    dir = parent;
  }
  return dir;
}

/** A browser build of a package, made safe to inline in a <script> element. */
function inlineLibrary(packageName: string, file: string): string {
  const source = readFileSync(path.join(packageFolder(packageName), file), "utf8");
  // "</script" would end the element early; none of the builds used has it, and a later one must not.
  if (/<\/?script/i.test(source)) throw new Error(`${packageName}/${file} contains a script tag and cannot be inlined in the chat page`);
  // URLs in these builds are license links and XML namespace names compared as strings, never loaded;
  // writing "://" as ":\/\/" (the same string in JS) keeps the page free of anything that looks like a fetch.
  return source.replaceAll("://", ":\\/\\/");
}

let libraries: string | undefined;

/** JSON inside a <script>: "<" escaped so no value can close the element. */
const scriptJson = (value: unknown): string => JSON.stringify(value).replace(/</g, "\\u003c");

export function chatPageHtml(settings: ChatPageSettings): string {
  libraries ??= [inlineLibrary("marked", "lib/marked.umd.js"), inlineLibrary("dompurify", "dist/purify.min.js")].join("\n");
  return pageTemplate.replace("/*settings*/", () => `const settings = ${scriptJson(settings)};`).replace("/*libraries*/", () => libraries!);
}

const pageTemplate = `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>thinktune chat</title>
<style>
  :root { color-scheme: light dark; --fg: #1d1d1f; --bg: #fafafa; --muted: #6b6b70; --card: #fff; --line: #dcdce0; --accent: #3b5bdb; }
  @media (prefers-color-scheme: dark) { :root { --fg: #e8e8ea; --bg: #17171a; --muted: #9a9aa2; --card: #222226; --line: #3a3a40; --accent: #7c94f0; } }
  * { box-sizing: border-box; }
  body { margin: 0; font: 15px/1.5 system-ui, sans-serif; color: var(--fg); background: var(--bg); display: flex; flex-direction: column; height: 100vh; }
  header { display: flex; gap: .75rem; align-items: center; padding: .6rem 1rem; border-bottom: 1px solid var(--line); flex-wrap: wrap; }
  header h1 { font-size: 1rem; margin: 0 auto 0 0; }
  select, input, button, textarea { font: inherit; color: inherit; background: var(--card); border: 1px solid var(--line); border-radius: 6px; padding: .35rem .6rem; }
  button { cursor: pointer; }
  button.primary { background: var(--accent); color: #fff; border-color: var(--accent); }
  button:disabled { opacity: .5; cursor: default; }
  main { flex: 1; overflow-y: auto; padding: 1rem; }
  .turn { max-width: 52rem; margin: 0 auto 1rem; padding: .7rem .9rem; border-radius: 8px; background: var(--card); border: 1px solid var(--line); }
  .turn.user { border-left: 4px solid var(--accent); }
  .role { font-size: .75rem; text-transform: uppercase; letter-spacing: .05em; color: var(--muted); margin-bottom: .25rem; }
  .text { white-space: pre-wrap; word-wrap: break-word; }
  .answer.markdown { white-space: normal; }
  .answer.markdown > :first-child { margin-top: 0; }
  .answer.markdown > :last-child { margin-bottom: 0; }
  .answer.markdown pre { background: var(--bg); border: 1px solid var(--line); border-radius: 6px; padding: .5rem .7rem; overflow-x: auto; }
  .answer.markdown code { font: .9em ui-monospace, monospace; }
  .answer.markdown table { border-collapse: collapse; }
  .answer.markdown th, .answer.markdown td { border: 1px solid var(--line); padding: .2rem .5rem; }
  details.thought { margin-bottom: .5rem; color: var(--muted); border-left: 2px solid var(--line); padding-left: .6rem; }
  details.thought summary { cursor: pointer; font-size: .85rem; }
  .error { color: #c92a2a; }
  form { display: flex; gap: .5rem; padding: .75rem 1rem; border-top: 1px solid var(--line); max-width: 54rem; width: 100%; margin: 0 auto; }
  form textarea { flex: 1; resize: vertical; min-height: 2.6rem; }
</style>
</head>
<body>
<header>
  <h1>thinktune chat</h1>
  <label>model <select id="model" aria-label="model"></select></label>
  <label>temperature <input id="temperature" type="number" min="0" max="2" step="0.1" value="0.6" style="width:4.5rem"></label>
  <label>max tokens <input id="max-tokens" type="number" min="1" step="1" style="width:5.5rem"></label>
  <input id="api-key" type="password" placeholder="API key (if set)" autocomplete="off" style="width:10rem">
  <button id="new-chat" type="button">New chat</button>
</header>
<main id="log" aria-live="polite"></main>
<form id="composer">
  <textarea id="input" rows="2" placeholder="Send a message (Enter sends, Shift+Enter for a new line)"></textarea>
  <button id="send" class="primary" type="submit">Send</button>
  <button id="stop" type="button" disabled>Stop</button>
</form>
<script>
/*libraries*/
</script>
<script>
"use strict";
/*settings*/
const storageKey = "thinktune-chat";
const $ = (id) => document.getElementById(id);
const state = JSON.parse(localStorage.getItem(storageKey) || "null") || { model: "", messages: [] };
let controller = null;

function save() { localStorage.setItem(storageKey, JSON.stringify(state)); }
function headers() {
  const h = { "content-type": "application/json" };
  const key = $("api-key").value.trim();
  if (key) h.authorization = "Bearer " + key;
  return h;
}

function addTurn(role) {
  const turn = document.createElement("div");
  turn.className = "turn " + role;
  const label = document.createElement("div");
  label.className = "role";
  label.textContent = role === "user" ? "you" : "assistant";
  turn.append(label);
  const thought = document.createElement("details");
  thought.className = "thought";
  thought.hidden = true;
  const summary = document.createElement("summary");
  summary.textContent = "Thought";
  const thoughtText = document.createElement("div");
  thoughtText.className = "text thought-text";
  thought.append(summary, thoughtText);
  const answer = document.createElement("div");
  answer.className = "text answer";
  turn.append(thought, answer);
  $("log").append(turn);
  return { turn, thought, summary, thoughtText, answer };
}

// The answer's markdown as sanitized HTML (DOMPurify drops scripts, event handlers and javascript: links).
function renderAnswer(element, text) {
  element.classList.add("markdown");
  element.innerHTML = DOMPurify.sanitize(marked.parse(text, { gfm: true, breaks: true }));
}

function showMessage(message) {
  const view = addTurn(message.role);
  if (message.reasoning) { view.thought.hidden = false; view.thoughtText.textContent = message.reasoning; }
  if (message.role === "assistant") renderAnswer(view.answer, message.content);
  else view.answer.textContent = message.content;
  return view;
}

function render() {
  $("log").textContent = "";
  for (const message of state.messages) showMessage(message);
}

async function loadModels() {
  const select = $("model");
  try {
    const response = await fetch("/v1/models", { headers: headers() });
    const body = await response.json();
    if (!response.ok) throw new Error(body.error ? body.error.message : response.statusText);
    select.textContent = "";
    for (const model of body.data) {
      const option = document.createElement("option");
      option.value = model.id;
      option.textContent = model.adapter ? model.id + " (adapter)" : model.id + " (base)";
      select.append(option);
    }
    // the server's adapter first; a model picked on this page is kept while the server offers the same default
    const picked = state.serverDefault === settings.defaultModel ? state.model : settings.defaultModel;
    const preferred = body.data.some((model) => model.id === picked) ? picked : settings.defaultModel;
    if (body.data.some((model) => model.id === preferred)) select.value = preferred;
    state.model = select.value;
    state.serverDefault = settings.defaultModel;
    save();
  } catch (error) {
    const view = addTurn("assistant");
    view.answer.className = "text error";
    view.answer.textContent = "Could not list the models: " + error.message + " (set the API key, then pick New chat)";
  }
}

async function send(text) {
  state.messages.push({ role: "user", content: text });
  showMessage(state.messages[state.messages.length - 1]);
  save();
  const view = addTurn("assistant");
  view.turn.scrollIntoView({ block: "end" });
  const reply = { role: "assistant", content: "", reasoning: "" };
  const body = {
    model: $("model").value,
    stream: true,
    temperature: Number($("temperature").value),
    messages: state.messages.map((message) => ({ role: message.role, content: message.content })),
  };
  const maxTokens = parseInt($("max-tokens").value, 10);
  if (maxTokens > 0) body.max_tokens = maxTokens;
  controller = new AbortController();
  $("send").disabled = true;
  $("stop").disabled = false;
  const started = Date.now();
  try {
    const response = await fetch("/v1/chat/completions", { method: "POST", headers: headers(), body: JSON.stringify(body), signal: controller.signal });
    if (!response.ok) {
      const error = await response.json().catch(() => ({}));
      throw new Error(error.error ? error.error.message : response.status + " " + response.statusText);
    }
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let end;
      while ((end = buffer.indexOf("\\n\\n")) >= 0) {
        const event = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        for (const line of event.split("\\n")) {
          if (!line.startsWith("data: ")) continue;
          const data = line.slice(6);
          if (data === "[DONE]") continue;
          const chunk = JSON.parse(data);
          if (chunk.error) throw new Error(chunk.error.message);
          const delta = chunk.choices[0] ? chunk.choices[0].delta : {};
          if (delta.reasoning_content) {
            reply.reasoning += delta.reasoning_content;
            view.thought.hidden = false;
            if (!reply.content) view.thought.open = true;
            view.summary.textContent = "Thinking…";
            view.thoughtText.textContent = reply.reasoning;
          }
          if (delta.content) {
            if (!reply.content && reply.reasoning) {
              view.thought.open = false;
              view.summary.textContent = "Thought for " + ((Date.now() - started) / 1000).toFixed(1) + " s";
            }
            reply.content += delta.content;
            renderAnswer(view.answer, reply.content);
          }
          view.turn.scrollIntoView({ block: "end" });
        }
      }
    }
    if (reply.reasoning && !reply.content) view.summary.textContent = "Thought (no answer)";
    state.messages.push(reply);
  } catch (error) {
    if (error.name !== "AbortError") {
      const line = document.createElement("div");
      line.className = "error";
      line.textContent = error.message;
      view.turn.append(line);
    }
    if (reply.content || reply.reasoning) state.messages.push(reply);
  } finally {
    save();
    controller = null;
    $("send").disabled = false;
    $("stop").disabled = true;
    view.turn.dataset.done = "true";
  }
}

$("composer").addEventListener("submit", (event) => {
  event.preventDefault();
  const text = $("input").value.trim();
  if (!text || controller) return;
  $("input").value = "";
  send(text);
});
$("input").addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey) { event.preventDefault(); $("composer").requestSubmit(); }
});
$("stop").addEventListener("click", () => { if (controller) controller.abort(); });
$("model").addEventListener("change", () => { state.model = $("model").value; save(); });
$("new-chat").addEventListener("click", () => {
  if (controller) controller.abort();
  state.messages = [];
  save();
  render();
  loadModels();
});
$("max-tokens").placeholder = String(settings.maxTokens);
$("max-tokens").title = "Tokens per reply at most, thought and answer together (empty: the server's " + settings.maxTokens +
  "). The thought is closed after " + (settings.thoughtBudget === undefined ? "3/4 of them" : settings.thoughtBudget + " tokens") + ".";
$("api-key").value = sessionStorage.getItem(storageKey + "-key") || "";
$("api-key").addEventListener("change", () => { sessionStorage.setItem(storageKey + "-key", $("api-key").value); loadModels(); });
render();
loadModels();
</script>
</body>
</html>
`;
