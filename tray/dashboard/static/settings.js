// The settings page: every key with its value, help and when a change applies.

import { $, LOCKED_TEXT, element, forgetToken, getJSON, postJSON, takeToken } from "./common.js";

const APPLIES = {
  now: "applies at once",
  ollama_start: "applies when Ollama next starts",
  app_restart: "applies after the app restarts",
};
const SECTION_NOTES = {
  ollama_server:
    "Passed to an Ollama the manager starts itself, not to one run by the Ollama app or systemd " +
    "(for systemd, the status page and `ollama-manager status` give the `systemctl edit ollama` lines that would).",
};

const page = { token: takeToken(), settings: [] };

function inputFor(setting) {
  const id = `setting-${setting.key}`;
  if (setting.kind === "bool") {
    const disabled = setting.read_only;
    return element("input", { id, type: "checkbox", name: setting.key, checked: setting.value === true, disabled });
  }
  if (setting.choices.length) {
    const select = element("select", { id, name: setting.key });
    for (const choice of setting.choices) {
      select.append(element("option", { value: choice, text: choice, selected: choice === setting.value }));
    }
    return select;
  }
  const numeric = setting.kind === "int" || setting.kind === "float";
  const input = element("input", {
    id,
    name: setting.key,
    type: numeric ? "number" : "text",
    step: numeric ? (setting.kind === "int" ? "1" : "any") : null,
    spellcheck: "false",
    placeholder: setting.kind === "str" ? "default" : null,
    readonly: setting.read_only,
  });
  input.value = shownValue(setting.value);
  return input;
}

// A value as its text field shows it: a list's entries separated by commas (the form the server reads back).
function shownValue(value) {
  if (value === null) return "";
  return Array.isArray(value) ? value.join(", ") : String(value);
}

function describeDefault(setting) {
  if (setting.kind === "bool") return setting.default ? "on" : "off";
  if (setting.kind === "list" && !setting.default.length) return "none";
  return setting.default === "" ? "empty" : shownValue(setting.default);
}

function settingRow(setting) {
  const id = `setting-${setting.key}`;
  const badges = [element("span", { class: `badge ${setting.applies}`, text: APPLIES[setting.applies] })];
  if (setting.env_override) {
    badges.push(element("span", { class: "badge override", text: `overridden by ${setting.env_override}` }));
  }
  if (setting.pending_restart) {
    badges.push(element("span", { class: "badge pending", text: "saved, not yet in use" }));
  }
  if (setting.read_only) {
    badges.push(element("span", { class: "badge read-only", text: "read only here" }));
  }
  // Keys that choose a program, an address or where data or the cloud key goes change only from a terminal.
  const command = setting.read_only
    ? [element("p", { class: "command" }, "Change it in a terminal: ", element("code", { text: setting.command }))]
    : [];
  return element(
    "div",
    { class: "setting", "data-key": setting.key },
    element("label", { for: id, text: setting.name }),
    element("div", { class: "control" }, inputFor(setting), ...badges),
    element("p", { class: "help", text: `${setting.help} · default: ${describeDefault(setting)}` }),
    ...command,
    element("p", { class: "field-error", id: `error-${setting.key}`, role: "alert", hidden: true })
  );
}

function render(data) {
  page.settings = data.settings;
  $("path").textContent = data.path;
  const fileError = $("file-error");
  fileError.hidden = !data.error;
  fileError.textContent = data.error ? `The file does not load: ${data.error}` : "";
  const sections = data.sections.map((section) => {
    const rows = data.settings.filter((s) => s.section === section.name).map(settingRow);
    const title = section.name ? `[${section.name}]` : "General";
    const notes = [section.help, SECTION_NOTES[section.name]].filter(Boolean).join(" ");
    return element(
      "fieldset",
      { "data-section": section.name },
      element("legend", { text: title }),
      ...(notes ? [element("p", { class: "note", text: notes })] : []),
      ...rows
    );
  });
  $("sections").replaceChildren(...sections);
  $("save").disabled = !page.token;
  $("lock-note").hidden = Boolean(page.token);
  $("lock-note").textContent = LOCKED_TEXT;
}

function currentValue(setting) {
  const input = $(`setting-${setting.key}`);
  if (setting.kind === "bool") return input.checked;
  const text = input.value;
  if ((setting.kind === "int" || setting.kind === "float") && text.trim() !== "" && Number.isFinite(Number(text))) {
    return Number(text);
  }
  return text;
}

function changedValues() {
  const values = {};
  for (const setting of page.settings) {
    if (setting.read_only) continue;
    const value = currentValue(setting);
    const unchanged = setting.kind === "list" ? value === shownValue(setting.value) : value === setting.value;
    if (!unchanged) values[setting.key] = value;
  }
  return values;
}

function showErrors(errors) {
  for (const setting of page.settings) {
    const message = errors[setting.key];
    const node = $(`error-${setting.key}`);
    node.hidden = !message;
    node.textContent = message || "";
    $(`setting-${setting.key}`).setAttribute("aria-invalid", String(Boolean(message)));
  }
}

async function load() {
  render(await getJSON("/api/settings", page.token));
}

async function save(event) {
  event.preventDefault();
  const result = $("save-result");
  const values = changedValues();
  if (!Object.keys(values).length) {
    result.dataset.outcome = "ok";
    result.textContent = "Nothing changed.";
    return;
  }
  $("save").disabled = true;
  const { status, body } = await postJSON("/api/settings", page.token, { values });
  if (status === 401) {
    forgetToken();
    page.token = null;
  }
  if (body.ok) {
    await load();
    result.dataset.outcome = "ok";
    result.textContent = body.message;
  } else {
    $("save").disabled = !page.token;
    showErrors(body.errors || {});
    result.dataset.outcome = "failed";
    result.textContent = `Not saved: ${body.error || `the manager answered ${status}`}`;
  }
}

$("settings-form").addEventListener("submit", save);
$("undo").addEventListener("click", () => {
  $("save-result").textContent = "";
  load();
});
load().catch((error) => {
  $("file-error").hidden = false;
  $("file-error").textContent = `Cannot read the settings: ${error.message}`;
});
