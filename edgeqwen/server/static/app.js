// edgeqwen page: one conversation against POST /v1/run (streamed over SSE). No build step, no dependencies.
"use strict";

const $ = (id) => document.getElementById(id);
const log = $("log"), input = $("input"), form = $("form"), sendButton = $("send"), stopButton = $("stop");
const HISTORY_MESSAGES = 20; // the server trims further to fit the context window

const state = {
  task: localStorage.getItem("edgeqwen.task") || "auto",
  key: localStorage.getItem("edgeqwen.key") || "",
  history: [], // {role, content} of the turns that got a chat reply
  controller: null,
};

function headers() {
  const h = { "Content-Type": "application/json" };
  if (state.key) h.Authorization = "Bearer " + state.key;
  return h;
}

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text; // never innerHTML: replies are untrusted text
  return node;
}

function scrollDown() { log.scrollTop = log.scrollHeight; }

function setBusy(busy) {
  document.body.dataset.state = busy ? "busy" : "idle";
  sendButton.hidden = busy;
  stopButton.hidden = !busy;
}

// ---- server status -------------------------------------------------------------------------------

async function refreshHealth() {
  const dot = $("status");
  try {
    const response = await fetch("/health", { cache: "no-store" });
    const health = await response.json();
    $("model").textContent = health.model;
    dot.className = "dot " + (health.queue.busy ? "busy" : "ok");
    dot.title = health.queue.busy ? `busy, ${health.queue.waiting} waiting` : "ready";
  } catch (error) {
    dot.className = "dot down";
    dot.title = "server unreachable";
  }
}

// ---- one message ---------------------------------------------------------------------------------

function addTurn(text) {
  $("empty")?.remove();
  const turn = el("section", "turn");
  turn.append(el("div", "user", text));
  const answer = el("div", "answer");
  turn.append(answer);
  log.append(turn);
  scrollDown();
  return answer;
}

function showBadge(answer, s) {
  const badge = el("span", "badge");
  badge.dataset.label = s.label;
  badge.append(el("span", "label", s.display || s.label), el("span", "conf", Math.round(s.confidence * 100) + "%"));
  badge.title = `${s.role}: ${Object.entries(s.scores).map(([k, v]) => `${k} ${v.toFixed(2)}`).join(", ")}`;
  answer.append(badge);
}

function readEvents(response, onEvent) {
  // Server-sent events over fetch (EventSource cannot POST): "data: {json}\n\n" blocks.
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  return (async () => {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        const data = block.split("\n").filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trim()).join("\n");
        if (data) onEvent(JSON.parse(data));
      }
    }
  })();
}

async function send(text) {
  const answer = addTurn(text);
  const task = state.task;
  let reply = null;
  state.controller = new AbortController();
  setBusy(true);
  try {
    const response = await fetch("/v1/run", {
      method: "POST",
      headers: headers(),
      body: JSON.stringify({ text, task, stream: true, history: state.history.slice(-HISTORY_MESSAGES) }),
      signal: state.controller.signal,
    });
    if (!response.ok) {
      const body = await response.json().catch(() => ({}));
      let message = body.error?.message || `HTTP ${response.status}`;
      if (response.status === 401) { $("keyrow").hidden = false; $("apikey").focus(); message = "This server needs an API key: enter it above, then send again."; }
      if (response.status === 503) message = `The model is busy. Try again in ${response.headers.get("Retry-After") || "a few"} s.`;
      answer.append(el("div", "error", message));
      return;
    }
    await readEvents(response, (event) => {
      if (event.type === "route") {
        answer.prepend(el("div", "route", `auto → ${event.task}` + (event.confidence != null ? ` (${Math.round(event.confidence * 100)}%)` : "")));
      } else if (event.type === "sentiment") {
        showBadge(answer, event);
      } else if (event.type === "delta") {
        if (reply === null) { reply = el("div", "reply streaming"); answer.append(reply); }
        reply.textContent += event.text;
      } else if (event.type === "done") {
        const t = event.result.timings;
        answer.append(el("div", "meta", `${event.result.task} · ${(t.total_ms / 1000).toFixed(1)} s`));
      } else if (event.type === "error") {
        answer.append(el("div", "error", event.error.message));
      }
      scrollDown();
    });
  } catch (error) {
    answer.append(el("div", "error", error.name === "AbortError" ? "stopped" : `connection failed: ${error.message}`));
  } finally {
    if (reply !== null) {
      reply.classList.remove("streaming");
      state.history.push({ role: "user", content: text }, { role: "assistant", content: reply.textContent });
    }
    state.controller = null;
    setBusy(false);
    scrollDown();
    setTimeout(refreshHealth, 500); // after a stop the server needs a moment to free the engine
  }
}

// ---- wiring --------------------------------------------------------------------------------------

form.addEventListener("submit", (event) => {
  event.preventDefault();
  const text = input.value.trim();
  if (!text || state.controller) return;
  input.value = "";
  input.style.height = "";
  send(text);
});

input.addEventListener("keydown", (event) => {
  // Enter sends, Shift+Enter is a new line; never while an input method (pinyin…) is composing.
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing && event.keyCode !== 229) {
    event.preventDefault();
    form.requestSubmit();
  }
});

input.addEventListener("input", () => {
  input.style.height = "";
  input.style.height = Math.min(input.scrollHeight + 2, 160) + "px";
});

stopButton.addEventListener("click", () => state.controller?.abort()); // the server stops generating at once

for (const radio of document.querySelectorAll('input[name="task"]')) {
  radio.checked = radio.value === state.task;
  radio.addEventListener("change", () => {
    state.task = radio.value;
    localStorage.setItem("edgeqwen.task", state.task);
    input.focus();
  });
}

$("reset").addEventListener("click", () => {
  state.controller?.abort();
  state.history = [];
  log.replaceChildren(el("p", "hint", "New conversation."));
  input.focus();
});

$("savekey").addEventListener("click", () => {
  state.key = $("apikey").value.trim();
  localStorage.setItem("edgeqwen.key", state.key);
  $("keyrow").hidden = true;
  input.focus();
});

setBusy(false);
refreshHealth();
setInterval(refreshHealth, 15000);
