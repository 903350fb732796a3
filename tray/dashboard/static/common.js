// Shared by the dashboard and the settings page.

const TOKEN_KEY = "ollama-manager-token";

// The tray and `ollama-manager dashboard` sign the tab in through /signin
// (signin.js), which keeps the token here for this tab only.
export function keepToken(token) {
  sessionStorage.setItem(TOKEN_KEY, token);
}

export function takeToken() {
  return sessionStorage.getItem(TOKEN_KEY);
}

export function forgetToken() {
  sessionStorage.removeItem(TOKEN_KEY);
}

const SIGN_IN_TEXT = "open the dashboard from the tray menu or with `ollama-manager dashboard`";

export const LOCKED_TEXT = `Read only: ${SIGN_IN_TEXT} to use the buttons.`;

export function $(id) {
  return document.getElementById(id);
}

export function setText(id, value) {
  const node = $(id);
  if (node && node.textContent !== String(value)) node.textContent = value;
}

// GET, with the token when the tab has one (what only the user may read needs it where the OS
// cannot show the connection is the user's: macOS, Windows).
export async function getJSON(path, token = null) {
  const headers = token ? { Authorization: `Bearer ${token}` } : {};
  const response = await fetch(path, { cache: "no-store", headers });
  if (response.status === 401) throw new Error(`${path} answers only the signed-in user: ${SIGN_IN_TEXT}`);
  if (!response.ok) throw new Error(`${path} answered ${response.status}`);
  return response.json();
}

// POST with the token; resolves to {status, body} whatever the status.
export async function postJSON(path, token, body) {
  const response = await fetch(path, {
    method: "POST",
    headers: { "Content-Type": "application/json", Authorization: `Bearer ${token}` },
    body: JSON.stringify(body ?? {}),
  });
  let answer = {};
  try {
    answer = await response.json();
  } catch {
    answer = { error: `the manager answered ${response.status}` };
  }
  return { status: response.status, body: answer };
}

const sameDay = (a, b) => a.toDateString() === b.toDateString();

export function clockTime(unixSeconds, withSeconds = true) {
  const date = new Date(unixSeconds * 1000);
  const options = withSeconds
    ? { hour: "2-digit", minute: "2-digit", second: "2-digit" }
    : { hour: "2-digit", minute: "2-digit" };
  const time = date.toLocaleTimeString([], options);
  return sameDay(date, new Date()) ? time : `${date.toLocaleDateString()} ${time}`;
}

export function element(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === false || value === null || value === undefined) continue;
    if (name === "text") node.textContent = value;
    else if (name === "class") node.className = value;
    else node.setAttribute(name, value === true ? "" : value);
  }
  node.append(...children);
  return node;
}
