// Talking to the flowrelay HTTP API: JSON over fetch with the bearer token, and one shared
// EventSource on /api/stream that pages subscribe to (nothing in the UI polls).

const TOKEN_KEY = "flowrelay.token";

/** Take `?token=` from the address once, keep it in localStorage, and drop it from the URL. */
export function adoptTokenFromUrl() {
  const url = new URL(window.location.href);
  const token = url.searchParams.get("token");
  if (token !== null) {
    setToken(token);
    url.searchParams.delete("token");
    window.history.replaceState(null, "", url.pathname + url.search + url.hash);
  }
}

export function getToken() {
  try {
    return window.localStorage.getItem(TOKEN_KEY) || "";
  } catch {
    return "";
  }
}

export function setToken(token) {
  try {
    if (token) window.localStorage.setItem(TOKEN_KEY, token);
    else window.localStorage.removeItem(TOKEN_KEY);
  } catch {
    // storage disabled: the token lasts as long as the page
  }
  memoryToken = token;
}

let memoryToken = "";

function token() {
  return getToken() || memoryToken;
}

export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

/** `GET`/`POST` a JSON endpoint under /api; throws ApiError with the server's reason. */
export async function api(path, { method = "GET", body, query } = {}) {
  const url = new URL(`/api${path}`, window.location.origin);
  for (const [key, value] of Object.entries(query || {})) {
    if (value !== undefined && value !== null && value !== "") url.searchParams.set(key, value);
  }
  const headers = { Accept: "application/json" };
  if (token()) headers.Authorization = `Bearer ${token()}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let response;
  try {
    response = await fetch(url, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch (exc) {
    throw new ApiError(0, `the server did not answer (${exc.message})`);
  }
  const text = await response.text();
  let data = null;
  if (text) {
    try {
      data = JSON.parse(text);
    } catch {
      data = text;
    }
  }
  if (!response.ok) {
    throw new ApiError(response.status, errorText(response.status, data));
  }
  return data;
}

function errorText(status, data) {
  const detail = data && typeof data === "object" ? data.detail ?? data.error ?? data.message : data;
  let reason = typeof detail === "string" ? detail : detail ? JSON.stringify(detail) : "";
  if (status === 401 || status === 403) reason ||= "a valid API token is needed";
  return `${status}: ${reason || "request failed"}`;
}

/** Every page of a list endpoint ({items, total, limit, offset}), up to `max` items. */
export async function apiAll(path, query = {}, max = 1000) {
  const items = [];
  let offset = 0;
  for (;;) {
    const page = await api(path, { query: { ...query, limit: 200, offset } });
    const got = listItems(page);
    items.push(...got);
    offset += got.length;
    const total = page && typeof page.total === "number" ? page.total : items.length;
    if (!got.length || offset >= total || items.length >= max) return items;
  }
}

/** The items of a list answer, whether it is `{items: [...]}` or a bare array. */
export function listItems(page) {
  if (Array.isArray(page)) return page;
  return (page && page.items) || [];
}

// --- the event stream ------------------------------------------------------------------------
// EventSource delivers `event: <name>` messages only to listeners of that exact name, so the hub
// listens to every event name the engine emits (flow-run.<State>, task-run.<State>, ...).
/** Not an event: the server's notice that a run has new log lines (`resource.id`, `payload.count`). */
export const LOGS_EVENT = "flow-run.logs";
const STATE_NAMES = [
  "Scheduled", "Late", "AwaitingRetry", "AwaitingConcurrencySlot", "Pending", "Running",
  "Retrying", "Completed", "Failed", "Crashed", "Cancelling", "Cancelled", "Paused",
];
const OTHER_EVENTS = [
  "automation.triggered", "automation.action.executed", "automation.action.failed",
  "automation.join.expired", "automation.paused", "automation.resumed", "automation.updated",
  "automation.deleted", "deployment.registered", "deployment.paused", "deployment.resumed",
  "deployment.schedule-paused", "deployment.schedule-resumed", "worker.lost",
];
export const EVENT_NAMES = [
  ...STATE_NAMES.map((s) => `flow-run.${s}`),
  ...STATE_NAMES.map((s) => `task-run.${s}`),
  ...OTHER_EVENTS,
  LOGS_EVENT,
];

const subscribers = new Set();
const statusListeners = new Set();
let source = null;
let status = "connecting";
let lastId = null;
const seen = new Set();

function setStatus(next) {
  status = next;
  for (const fn of statusListeners) fn(status);
}

export function onStreamStatus(fn) {
  statusListeners.add(fn);
  fn(status);
  return () => statusListeners.delete(fn);
}

/** Open the stream (once). Events reach every `subscribe`r, each at most once. */
export function openStream() {
  if (source) return;
  const url = new URL("/api/stream", window.location.origin);
  if (token()) url.searchParams.set("access_token", token());
  source = new EventSource(url);
  source.onopen = () => setStatus("live");
  source.onerror = () => {
    // EventSource reconnects by itself (with Last-Event-ID); say so meanwhile.
    setStatus(source.readyState === EventSource.CLOSED ? "offline" : "reconnecting");
  };
  const handle = (message) => {
    let event;
    try {
      event = JSON.parse(message.data);
    } catch {
      return;
    }
    const id = event.id || message.lastEventId;
    if (id) {
      if (seen.has(id)) return;
      seen.add(id);
      if (seen.size > 5000) seen.delete(seen.values().next().value);
      lastId = id;
    }
    if (!event.event && message.type !== "message") event.event = message.type;
    for (const fn of subscribers) {
      try {
        fn(event);
      } catch (exc) {
        console.error("event handler failed", exc);
      }
    }
  };
  source.addEventListener("message", handle);
  for (const name of EVENT_NAMES) source.addEventListener(name, handle);
}

export function lastEventId() {
  return lastId;
}

/** Call `fn(event)` for every event from now on; returns the unsubscribe function. */
export function subscribe(fn) {
  subscribers.add(fn);
  return () => subscribers.delete(fn);
}

// --- reading events --------------------------------------------------------------------------
const UUID = /[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}/i;

/** The flow-run id an event is about (`flow-run/<uuid>`), or null. */
export function flowRunIdOf(event) {
  const rid = String(event?.resource?.id ?? event?.resource?.["flowrelay.resource.id"] ?? "");
  if (!rid.includes("flow-run")) return null;
  const match = rid.match(UUID);
  return match ? match[0].toLowerCase() : null;
}

/** The flow-run ids an event is related to (a task run's flow run, a run's parent). */
export function relatedFlowRunIds(event) {
  const ids = [];
  for (const rel of event?.related || []) {
    const rid = String(rel?.id ?? rel?.["flowrelay.resource.id"] ?? "");
    const match = rid.includes("flow-run") && rid.match(UUID);
    if (match) ids.push(match[0].toLowerCase());
  }
  return ids;
}
