// busstop chat page: streams /v1/chat/completions over SSE with fetch + ReadableStream.
// No build step and no dependencies. The API key lives in localStorage only; the conversation is
// kept in sessionStorage so a reload keeps it, and is sent whole with every question.

const STORAGE = {
  apiKey: "busstop.apiKey",
  model: "busstop.model",
  options: "busstop.options",
  conversation: "busstop.conversation",
};

const $ = (id) => document.getElementById(id);
const els = {
  model: $("model"),
  apiKey: $("api-key"),
  newChat: $("new-chat"),
  conversation: $("conversation"),
  emptyState: $("empty-state"),
  status: $("status"),
  composer: $("composer"),
  prompt: $("prompt"),
  send: $("send"),
  stop: $("stop"),
  maxTokens: $("max-tokens"),
  temperature: $("temperature"),
  systemPrompt: $("system-prompt"),
};

const state = {
  messages: loadJson(sessionStorage, STORAGE.conversation, []), // [{role, content, meta?}]
  controller: null, // AbortController of the answer being streamed
};

function loadJson(storage, key, fallback) {
  try {
    const value = JSON.parse(storage.getItem(key));
    return value ?? fallback;
  } catch {
    return fallback;
  }
}

function saveConversation() {
  sessionStorage.setItem(STORAGE.conversation, JSON.stringify(state.messages));
}

function setStatus(text) {
  els.status.textContent = text;
}

function authHeaders() {
  const key = els.apiKey.value.trim();
  return key ? { Authorization: `Bearer ${key}` } : {};
}

async function errorMessage(response) {
  try {
    const body = await response.json();
    if (body?.error?.message) return body.error.message;
    if (typeof body?.detail === "string") return body.detail;
  } catch {
    // not JSON: fall through to the status line
  }
  return `${response.status} ${response.statusText}`.trim();
}

// ---- models ---------------------------------------------------------------------------------

async function loadModels() {
  const remembered = localStorage.getItem(STORAGE.model);
  let response;
  try {
    response = await fetch("/v1/models", { headers: authHeaders() });
  } catch {
    setStatus("Cannot reach the server.");
    return;
  }
  if (response.status === 401) {
    els.apiKey.setAttribute("aria-invalid", "true");
    replaceOptions([]);
    setStatus(els.apiKey.value ? "That API key was not accepted." : "Enter an API key to start.");
    return;
  }
  els.apiKey.removeAttribute("aria-invalid");
  if (!response.ok) {
    setStatus(`Could not list models: ${await errorMessage(response)}`);
    return;
  }
  const ids = ((await response.json()).data ?? []).map((m) => m.id);
  replaceOptions(ids);
  if (ids.includes(remembered)) els.model.value = remembered;
  setStatus(ids.length ? "" : "The server has no models.");
}

function replaceOptions(ids) {
  els.model.replaceChildren(
    ...(ids.length ? ids : [""]).map((id) => {
      const option = document.createElement("option");
      option.value = id;
      option.textContent = id || "No models";
      return option;
    }),
  );
  els.model.disabled = ids.length === 0;
}

// ---- rendering ------------------------------------------------------------------------------

function renderMessage(role, content, meta) {
  els.emptyState.hidden = true;
  const article = document.createElement("article");
  article.className = `msg msg-${role}`;
  const header = document.createElement("h2");
  header.className = "msg-role";
  header.textContent = role === "user" ? "You" : "Assistant";
  const body = document.createElement("div");
  body.className = "msg-body";
  body.append(document.createTextNode(content));
  const footer = document.createElement("p");
  footer.className = "msg-meta";
  footer.textContent = meta ?? "";
  article.append(header, body, footer);
  els.conversation.append(article);
  return { article, text: body.firstChild, body, footer };
}

function renderConversation() {
  els.conversation.querySelectorAll(".msg").forEach((node) => node.remove());
  els.emptyState.hidden = state.messages.length > 0;
  for (const m of state.messages) renderMessage(m.role, m.content, m.meta);
  scrollToEnd(true);
}

function isNearEnd() {
  const el = document.scrollingElement;
  return el.scrollHeight - el.scrollTop - el.clientHeight < 80;
}

function scrollToEnd(force) {
  if (force || isNearEnd()) window.scrollTo({ top: document.scrollingElement.scrollHeight });
}

function setStreaming(on) {
  els.send.hidden = on;
  els.stop.hidden = !on;
  els.model.disabled = on || els.model.options.length === 0 || !els.model.value;
  els.newChat.disabled = on;
  if (on) els.stop.focus();
  else els.prompt.focus();
}

// ---- streaming ------------------------------------------------------------------------------

// Yields the data of each server-sent event as it arrives ("\n\n", "\r\n\r\n" or "\r\r" separated).
async function* sseData(body) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  let held = ""; // a trailing "\r" may be the first half of "\r\n"
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      const text = held + value;
      held = text.endsWith("\r") ? "\r" : "";
      buffer += (held ? text.slice(0, -1) : text).replace(/\r\n?/g, "\n");
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const event = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        const data = event
          .split("\n")
          .filter((line) => line.startsWith("data:"))
          .map((line) => line.slice(5).replace(/^ /, ""));
        if (data.length) yield data.join("\n");
      }
    }
  } finally {
    // Leaving early (an error event) closes the connection, which cancels the request server-side.
    await reader.cancel().catch(() => {});
  }
}

function readOptions() {
  const maxTokens = Number.parseInt(els.maxTokens.value, 10);
  const temperature = Number.parseFloat(els.temperature.value);
  return {
    max_tokens: Number.isFinite(maxTokens) && maxTokens > 0 ? maxTokens : 512,
    temperature: Number.isFinite(temperature) && temperature >= 0 ? temperature : 0.7,
    system: els.systemPrompt.value.trim(),
  };
}

function formatMeta({ ttftMs, tokens, decodeS, exact, stopped, finishReason }) {
  const parts = [];
  if (ttftMs !== null) parts.push(`TTFT ${Math.round(ttftMs)} ms`);
  if (tokens > 1 && decodeS > 0) parts.push(`${((tokens - 1) / decodeS).toFixed(1)} tok/s`);
  if (tokens > 0) parts.push(`${exact ? "" : "≈"}${tokens} token${tokens === 1 ? "" : "s"}`);
  if (stopped) parts.push("stopped");
  else if (finishReason === "length") parts.push("max tokens reached");
  return parts.join(" · ");
}

async function ask(question) {
  const model = els.model.value;
  const options = readOptions();
  state.messages.push({ role: "user", content: question });
  saveConversation();
  renderMessage("user", question);
  const answer = renderMessage("assistant", "");
  answer.article.setAttribute("aria-busy", "true");
  scrollToEnd(true);

  const history = state.messages.map(({ role, content }) => ({ role, content }));
  const body = {
    model,
    messages: options.system ? [{ role: "system", content: options.system }, ...history] : history,
    stream: true,
    stream_options: { include_usage: true },
    max_tokens: options.max_tokens,
    temperature: options.temperature,
  };

  const controller = new AbortController();
  state.controller = controller;
  setStreaming(true);
  setStatus("Waiting for the first token…");

  const started = performance.now();
  let first = null;
  let last = null;
  let numChunks = 0;
  let usage = null;
  let finishReason = null;
  let error = null;
  let sawDone = false;
  try {
    const response = await fetch("/v1/chat/completions", {
      method: "POST",
      headers: { "Content-Type": "application/json", ...authHeaders() },
      body: JSON.stringify(body),
      signal: controller.signal,
    });
    if (!response.ok) {
      error = await errorMessage(response);
    } else {
      setStatus("Answering…");
      for await (const data of sseData(response.body)) {
        if (data === "[DONE]") {
          sawDone = true;
          break;
        }
        const chunk = JSON.parse(data);
        if (chunk.error) {
          error = chunk.error.message ?? "The server reported an error.";
          break;
        }
        if (chunk.usage) usage = chunk.usage;
        for (const choice of chunk.choices ?? []) {
          if (choice.finish_reason) finishReason = choice.finish_reason;
          const delta = choice.delta?.content;
          if (!delta) continue;
          last = performance.now();
          if (first === null) first = last;
          numChunks += 1;
          answer.text.appendData(delta);
        }
        scrollToEnd(false);
      }
      if (!sawDone && !error) error = "The connection closed before the answer was complete.";
    }
  } catch (err) {
    if (err.name !== "AbortError") error = err instanceof SyntaxError ? "Bad data from the server." : err.message;
  } finally {
    state.controller = null;
  }

  const stopped = controller.signal.aborted;
  const content = answer.text.data;
  answer.article.removeAttribute("aria-busy");
  if (!content && (error || stopped)) {
    // Nothing was answered: take the question back so it can be sent again.
    state.messages.pop();
    if (error) {
      answer.article.classList.add("msg-error");
      answer.body.setAttribute("role", "alert");
    }
    answer.text.appendData(error ?? "Stopped before the first token.");
    els.prompt.value = question;
    autosize();
    setStatus(error ? "" : "Stopped.");
  } else {
    const meta = formatMeta({
      ttftMs: first === null ? null : first - started,
      tokens: usage?.completion_tokens ?? numChunks,
      decodeS: first === null ? 0 : (last - first) / 1000,
      exact: Boolean(usage),
      stopped,
      finishReason,
    });
    answer.footer.textContent = error ? `${meta} · ${error}` : meta;
    state.messages.push({ role: "assistant", content, meta: answer.footer.textContent });
    setStatus(stopped ? "Stopped." : error ? "The answer was cut short." : "");
  }
  saveConversation();
  setStreaming(false);
}

// ---- events ---------------------------------------------------------------------------------

function submitPrompt() {
  const question = els.prompt.value.trim();
  if (!question || state.controller) return;
  if (!els.model.value) {
    setStatus(els.apiKey.value ? "No model to ask: is the API key right?" : "Enter an API key first.");
    els.apiKey.focus();
    return;
  }
  els.prompt.value = "";
  autosize();
  ask(question);
}

function autosize() {
  els.prompt.style.height = "auto";
  els.prompt.style.height = `${els.prompt.scrollHeight}px`;
}

function saveOptions() {
  localStorage.setItem(
    STORAGE.options,
    JSON.stringify({
      maxTokens: els.maxTokens.value,
      temperature: els.temperature.value,
      system: els.systemPrompt.value,
    }),
  );
}

function restoreOptions() {
  const saved = loadJson(localStorage, STORAGE.options, {});
  if (saved.maxTokens) els.maxTokens.value = saved.maxTokens;
  if (saved.temperature) els.temperature.value = saved.temperature;
  if (saved.system) els.systemPrompt.value = saved.system;
}

let modelsTimer = null;

function init() {
  els.apiKey.value = localStorage.getItem(STORAGE.apiKey) ?? "";
  restoreOptions();
  renderConversation();

  $("settings").addEventListener("submit", (event) => {
    event.preventDefault();
    loadModels();
  });
  els.composer.addEventListener("submit", (event) => {
    event.preventDefault();
    submitPrompt();
  });
  els.prompt.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      submitPrompt();
    }
  });
  els.prompt.addEventListener("input", autosize);
  document.addEventListener("keydown", (event) => {
    if (event.key === "Escape" && state.controller) state.controller.abort();
  });
  els.stop.addEventListener("click", () => state.controller?.abort());
  els.newChat.addEventListener("click", () => {
    state.messages = [];
    saveConversation();
    renderConversation();
    setStatus("");
    els.prompt.focus();
  });
  for (const button of document.querySelectorAll(".suggestion")) {
    button.addEventListener("click", () => {
      els.prompt.value = button.textContent;
      submitPrompt();
    });
  }
  els.apiKey.addEventListener("input", () => {
    localStorage.setItem(STORAGE.apiKey, els.apiKey.value.trim());
    clearTimeout(modelsTimer);
    modelsTimer = setTimeout(loadModels, 400);
  });
  els.model.addEventListener("change", () => localStorage.setItem(STORAGE.model, els.model.value));
  for (const input of [els.maxTokens, els.temperature, els.systemPrompt]) {
    input.addEventListener("change", saveOptions);
  }
  loadModels();
}

init();
