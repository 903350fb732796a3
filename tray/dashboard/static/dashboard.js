// The dashboard: live status over server-sent events, charts from /api/history.

import { $, LOCKED_TEXT, clockTime, element, forgetToken, getJSON, postJSON, setText, takeToken } from "./common.js";
import { drawLineChart } from "./chart.js";

const HISTORY_MIN_INTERVAL_MS = 5000;
const HISTORY_REFRESH_MS = 30000;
const ATTENTION_KINDS = new Set(["restart", "crash", "unexpected_restart", "gave_up", "alert", "oom", "error"]);

const page = {
  token: takeToken(),
  range: "1h",
  history: null,
  historyFetchedAt: 0,
  historyTimer: null,
  view: null,
  busyAction: null,
};

// ------------------------------------------------------------------ status

function renderStatus({ view }) {
  const gpuKnownNow = page.view === null || page.view.gpu !== view.gpu;
  page.view = view;
  $("health").dataset.health = view.health;
  setText("health-word", view.health);
  setText("summary", view.summary);
  setText("busy", view.busy.text);
  $("busy").dataset.stuck = String(view.busy.stuck);
  setText("latency", view.latency);
  setText("uptime", view.uptime);
  setText("memory", view.memory);
  setText("cpu", view.cpu);
  setText("gpu", view.gpu);
  setText("gateway", view.gateway.text);
  setText("host", view.host);
  setText("state", view.state);
  const error = $("last-error");
  error.hidden = !view.last_error;
  setText("last-error", view.last_error ? `Last error: ${view.last_error}` : "");
  $("settings-note").hidden = !view.settings_note;
  setText("settings-note", view.settings_note || "");
  $("cloud-note").hidden = !view.cloud_active;

  const model = view.model;
  setText("model-name", model.name);
  setText("model-status", model.present ? `installed (${model.status})` : `not available (${model.status})`);
  setText("model-size", model.size);
  setText("model-parameters", model.parameters);
  setText("model-quantization", model.quantization);
  setText("model-verified", model.last_verified);
  $("model-verified").title = model.last_verified_at || "";
  setText("model-loaded", model.loaded.length ? model.loaded.join(", ") : "none");
  renderActions(view.actions);
  renderModels(view.models);
  if (gpuKnownNow) drawCharts(); // the GPU chart says whether there is a GPU at all
  requestHistory();
}

function renderActions(actions) {
  const box = $("actions");
  const ids = actions.map((a) => a.id).join(",");
  if (box.dataset.ids !== ids) {
    box.replaceChildren(
      ...actions.map((a) => element("button", { type: "button", "data-action": a.id, text: a.label }))
    );
    box.dataset.ids = ids;
  }
  for (const action of actions) {
    const button = box.querySelector(`[data-action="${action.id}"]`);
    button.disabled = !page.token || page.busyAction !== null || !action.enabled;
    button.setAttribute("aria-busy", String(page.busyAction === action.id));
  }
  const lock = $("lock-note");
  lock.hidden = Boolean(page.token);
  lock.textContent = LOCKED_TEXT;
}

// POST with the page's token, the outcome shown in the result line ``resultId``.
async function postAndShow(path, body, resultId, pendingText) {
  const result = $(resultId);
  result.dataset.outcome = "pending";
  result.textContent = pendingText;
  try {
    const { status, body: answer } = await postJSON(path, page.token, body);
    if (status === 401) {
      forgetToken();
      page.token = null;
    }
    result.dataset.outcome = answer.ok ? "ok" : "failed";
    result.textContent = answer.ok ? answer.message : answer.error || `failed (${status})`;
  } catch (error) {
    result.dataset.outcome = "failed";
    result.textContent = `The manager did not answer: ${error.message}`;
  }
}

async function runAction(id) {
  if (!page.token || page.busyAction) return;
  page.busyAction = id;
  renderActions(page.view.actions);
  const label = $("actions").querySelector(`[data-action="${id}"]`).textContent;
  try {
    await postAndShow(`/api/actions/${id}`, undefined, "action-result", `${label}…`);
  } finally {
    page.busyAction = null;
    renderActions(page.view.actions);
  }
}

// ------------------------------------------------------------------ models

function modelRow(model) {
  const choice = element("input", { type: "radio", name: "active-model", value: model.name, "aria-label": `Use ${model.name}` });
  const name = element("td", { text: model.name });
  if (model.modelfile) name.append(" ", element("span", { class: "badge", text: "Modelfile" }));
  const row = element(
    "tr",
    { "data-model": model.name },
    element("td", {}, choice),
    name,
    element("td", { text: model.size }),
    element("td", { text: model.parameters }),
    element("td", { text: model.quantization }),
    element("td", { class: "in-memory", text: model.loaded ? "loaded" : "—" })
  );
  return row;
}

function renderModels(models) {
  const body = $("models");
  const names = models.rows.map((m) => m.name).join("\n");
  if (body.dataset.names !== names) {
    body.replaceChildren(...models.rows.map(modelRow));
    body.dataset.names = names;
  }
  for (const model of models.rows) {
    const row = body.querySelector(`tr[data-model="${CSS.escape(model.name)}"]`);
    row.dataset.active = String(model.active);
    row.querySelector(".in-memory").textContent = model.loaded ? "loaded" : "—";
    const choice = row.querySelector("input");
    choice.checked = model.active;
    choice.disabled = !page.token || page.busyAction !== null;
  }
  if (!models.rows.length) body.replaceChildren(element("tr", {}, element("td", { colspan: "6", text: "No models installed" })));
  $("use-modelfile").disabled = !page.token || page.busyAction !== null || models.modelfile_active;
  $("model-loading").hidden = !models.loading;
  setText("model-loading", models.loading || "");
}

async function useModel(name) {
  if (!page.token || page.busyAction) return;
  page.busyAction = "use-model";
  renderModels(page.view.models);
  try {
    await postAndShow("/api/model", { model: name }, "model-result", `Switching to ${name || page.view.models.modelfile}…`);
  } finally {
    page.busyAction = null;
    renderModels(page.view.models);
    renderActions(page.view.actions);
  }
}

// ------------------------------------------------------------------ history

function requestHistory() {
  const wait = page.historyFetchedAt + HISTORY_MIN_INTERVAL_MS - Date.now();
  if (page.historyTimer !== null) return;
  page.historyTimer = setTimeout(loadHistory, Math.max(0, wait));
}

async function loadHistory() {
  clearTimeout(page.historyTimer);
  page.historyTimer = null;
  page.historyFetchedAt = Date.now();
  try {
    page.history = await getJSON(`/api/history?range=${page.range}`);
  } catch {
    return;
  }
  drawCharts();
  renderTimeline(page.history.events);
}

function points(samples, field, scale = 1) {
  return samples.map((s) => [s.time, s[field] === null ? null : s[field] * scale]);
}

const gigabytes = (v) => `${Number(v.toFixed(2))} GB`;
const milliseconds = (v) => (v >= 1000 ? `${(v / 1000).toFixed(1)} s` : `${Math.round(v)} ms`);
const percent = (v) => `${Number(v.toFixed(1))} %`;

function drawCharts() {
  const history = page.history;
  if (!history) return;
  const samples = history.samples;
  const frame = { since: history.since, until: history.until, gap: history.bucket_seconds * 3 + 90 };
  const color = (name) => getComputedStyle(document.documentElement).getPropertyValue(name).trim();
  drawLineChart($("chart-latency"), {
    ...frame,
    format: milliseconds,
    series: [{ color: color("--latency"), points: points(samples, "latency_ms") }],
    health: samples.map((s) => [s.time, s.health]),
  });
  drawLineChart($("chart-memory"), {
    ...frame,
    format: gigabytes,
    series: [
      { color: color("--ram"), points: points(samples, "ram_used_mb", 1 / 1024) },
      { color: color("--memory"), points: points(samples, "memory_mb", 1 / 1024) },
    ],
  });
  drawLineChart($("chart-cpu"), {
    ...frame,
    format: percent,
    minTop: 10,
    series: [
      { color: color("--gpu-busy"), points: points(samples, "gpu_percent") },
      { color: color("--cpu"), points: points(samples, "cpu_percent") },
    ],
  });
  drawLineChart($("chart-gpu"), {
    ...frame,
    format: gigabytes,
    minTop: 1,
    series: [{ color: color("--gpu-memory"), points: points(samples, "gpu_memory_mb", 1 / 1024) }],
    empty: page.view && page.view.gpu === "none" ? "no GPU measured on this machine" : null,
  });
}

function timelineItem(event) {
  const state = event.data && event.data.state ? ` ${event.data.state}` : "";
  return element(
    "li",
    { class: ATTENTION_KINDS.has(event.kind) ? "attention" : "", "data-kind": event.kind },
    element("time", { datetime: event.time, text: clockTime(event.t) }),
    element("span", { class: "kind", text: event.kind + state }),
    element("span", { class: "message", text: event.message })
  );
}

function renderTimeline(events) {
  const list = $("timeline");
  list.replaceChildren(...events.map(timelineItem));
  if (!events.length) list.append(element("li", { class: "empty", text: "Nothing happened in this range." }));
}

function addTimelineEvent(event) {
  const list = $("timeline");
  list.querySelector(".empty")?.remove();
  list.prepend(timelineItem(event));
}

// ------------------------------------------------------------------ wiring

function connect() {
  const connection = $("connection");
  const source = new EventSource("/api/stream");
  source.addEventListener("open", () => {
    connection.dataset.state = "live";
    connection.textContent = "live";
  });
  source.addEventListener("error", () => {
    connection.dataset.state = "lost";
    connection.textContent = "reconnecting…";
  });
  source.addEventListener("status", (message) => renderStatus(JSON.parse(message.data)));
  source.addEventListener("event", (message) => {
    addTimelineEvent(JSON.parse(message.data));
    requestHistory();
  });
}

$("actions").addEventListener("click", (event) => {
  const button = event.target.closest("button[data-action]");
  if (button) runAction(button.dataset.action);
});

$("models").addEventListener("change", (event) => {
  const choice = event.target.closest("input[name=active-model]");
  if (choice) useModel(choice.value);
});
$("use-modelfile").addEventListener("click", () => useModel(""));

for (const button of document.querySelectorAll("[data-range]")) {
  button.addEventListener("click", () => {
    page.range = button.dataset.range;
    for (const other of document.querySelectorAll("[data-range]")) {
      other.setAttribute("aria-pressed", String(other === button));
    }
    loadHistory();
  });
}

window.addEventListener("resize", drawCharts);
setInterval(loadHistory, HISTORY_REFRESH_MS);
connect();
loadHistory();
