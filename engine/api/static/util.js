// DOM and formatting helpers. Text always goes in as text nodes (never innerHTML), so run names,
// parameters and log lines cannot inject markup.

/** `h("a", {href: "#/x", class: "y"}, "text", child)`: an element with attributes and children. */
export function h(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on") && typeof value === "function") {
      node.addEventListener(key.slice(2), value);
    } else if (key === "dataset") {
      Object.assign(node.dataset, value);
    } else if (value === true) {
      node.setAttribute(key, "");
    } else {
      node.setAttribute(key, String(value));
    }
  }
  append(node, children);
  return node;
}

function append(node, children) {
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

/** Replace the children of `node`. */
export function fill(node, ...children) {
  node.replaceChildren();
  append(node, children);
  return node;
}

const SVG_NS = "http://www.w3.org/2000/svg";

export function svg(tag, attrs = {}, ...children) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value !== undefined && value !== null) node.setAttribute(key, String(value));
  }
  append(node, children);
  return node;
}

// --- states ----------------------------------------------------------------------------------
export const STATE_TYPES = [
  "SCHEDULED", "PENDING", "RUNNING", "COMPLETED", "FAILED", "CRASHED", "CANCELLING",
  "CANCELLED", "PAUSED",
];
export const FINAL_TYPES = new Set(["COMPLETED", "FAILED", "CRASHED", "CANCELLED"]);

const TYPE_OF_NAME = {
  Scheduled: "SCHEDULED", Late: "SCHEDULED", AwaitingRetry: "SCHEDULED",
  AwaitingConcurrencySlot: "SCHEDULED", Pending: "PENDING", Running: "RUNNING",
  Retrying: "RUNNING", Completed: "COMPLETED", Failed: "FAILED", Crashed: "CRASHED",
  Cancelling: "CANCELLING", Cancelled: "CANCELLED", Paused: "PAUSED",
};

export function stateTypeOf(name) {
  return TYPE_OF_NAME[name] || (name ? String(name).toUpperCase() : null);
}

/** A colored badge: the state's name, colored by its type (Late is a Scheduled, ...). */
export function badge(type, name) {
  const kind = (type || stateTypeOf(name) || "UNKNOWN").toUpperCase();
  const label = name || titleCase(kind);
  return h("span", { class: `badge s-${kind.toLowerCase()}`, "data-state": label }, label);
}

function titleCase(text) {
  return text.charAt(0) + text.slice(1).toLowerCase();
}

// --- times -----------------------------------------------------------------------------------
export function parseTime(value) {
  if (!value) return null;
  const date = new Date(value);
  return Number.isNaN(date.getTime()) ? null : date;
}

/** `2026-11-22 09:30:12` in the browser's zone, with the UTC time in the tooltip. */
export function timeCell(value) {
  const date = parseTime(value);
  if (!date) return h("span", { class: "muted" }, "–");
  return h("time", { datetime: date.toISOString(), title: `${date.toISOString()} (UTC)` }, localTime(date));
}

export function localTime(date) {
  const pad = (n) => String(n).padStart(2, "0");
  return (
    `${date.getFullYear()}-${pad(date.getMonth() + 1)}-${pad(date.getDate())} ` +
    `${pad(date.getHours())}:${pad(date.getMinutes())}:${pad(date.getSeconds())}`
  );
}

/** `850 ms`, `12.3 s`, `4m 05s`, `2h 03m`. */
export function duration(seconds) {
  if (seconds === null || seconds === undefined || Number.isNaN(seconds)) return "–";
  if (seconds < 1) return `${Math.round(seconds * 1000)} ms`;
  if (seconds < 60) return `${seconds.toFixed(seconds < 10 ? 2 : 1)} s`;
  const s = Math.round(seconds);
  if (s < 3600) return `${Math.floor(s / 60)}m ${String(s % 60).padStart(2, "0")}s`;
  if (s < 172800) return `${Math.floor(s / 3600)}h ${String(Math.floor((s % 3600) / 60)).padStart(2, "0")}m`;
  return `${Math.floor(s / 86400)}d ${Math.floor((s % 86400) / 3600)}h`;
}

/** An ISO 8601 duration as the YAML says it: `PT10M` → `10m`, `P1DT2H` → `1d2h`. */
export function isoDuration(text) {
  const match = /^P(?:(\d+)D)?(?:T(?:(\d+)H)?(?:(\d+)M)?(?:(\d+(?:\.\d+)?)S)?)?$/.exec(String(text));
  if (!match) return String(text);
  const [, d, hh, mm, ss] = match;
  const out = [d && `${d}d`, hh && `${hh}h`, mm && `${mm}m`, ss && `${Number(ss)}s`].filter(Boolean).join("");
  return out || "0s";
}

/** `2026-11-24T09:30:00-05:00` (a time in its own zone) → `2026-11-24 09:30 −05:00`. */
export function zonedTime(text) {
  const match = /^(\d{4}-\d{2}-\d{2})T(\d{2}:\d{2})(?::\d{2}(?:\.\d+)?)?(Z|[+-]\d{2}:\d{2})?$/.exec(String(text));
  if (!match) return String(text);
  const zone = !match[3] || match[3] === "Z" || match[3] === "+00:00" ? "UTC" : match[3].replace("-", "\u2212");
  return `${match[1]} ${match[2]} ${zone}`;
}

/** `value` without nulls, empty lists and empty objects (definitions read better so). */
export function pruned(value) {
  if (Array.isArray(value)) return value.map(pruned);
  if (value && typeof value === "object") {
    const out = {};
    for (const [key, item] of Object.entries(value)) {
      const kept = pruned(item);
      if (kept === null || kept === undefined) continue;
      if (Array.isArray(kept) && !kept.length) continue;
      if (typeof kept === "object" && !Array.isArray(kept) && !Object.keys(kept).length) continue;
      out[key] = kept;
    }
    return out;
  }
  return value;
}

/** `in 3m 10s` / `2m 04s ago` relative to now. */
export function relative(value) {
  const date = parseTime(value);
  if (!date) return "";
  const delta = (date.getTime() - Date.now()) / 1000;
  return delta >= 0 ? `in ${duration(delta)}` : `${duration(-delta)} ago`;
}

// --- values ----------------------------------------------------------------------------------
export function json(value) {
  return JSON.stringify(value, null, 2);
}

/** A <pre> with pretty JSON, or a muted dash when there is nothing. */
export function jsonBlock(value, label) {
  if (value === undefined || value === null || (typeof value === "object" && !Object.keys(value).length)) {
    return h("p", { class: "muted" }, "none");
  }
  return h("pre", { class: "json", "aria-label": label }, json(value));
}

export function short(id) {
  return String(id || "").slice(0, 8);
}

/** Links to a run, a deployment, an automation. */
export function runLink(id, label) {
  return h("a", { href: `#/runs/${encodeURIComponent(id)}`, class: "mono" }, label || short(id));
}

export function deploymentLink(full) {
  if (!full) return h("span", { class: "muted" }, "–");
  return h("a", { href: `#/deployments/${full.split("/").map(encodeURIComponent).join("/")}` }, full);
}

export function automationLink(name) {
  return h("a", { href: `#/automations/${encodeURIComponent(name)}` }, name);
}

/** A definition list from [label, value] pairs. */
export function facts(pairs) {
  return h(
    "dl",
    { class: "facts" },
    pairs.filter(Boolean).map(([label, value]) => [h("dt", {}, label), h("dd", {}, value ?? "–")]),
  );
}

/** A `<section>` with a heading. */
export function section(title, ...children) {
  const id = `sec-${title.toLowerCase().replace(/[^a-z0-9]+/g, "-")}`;
  return h("section", { class: "card", "aria-labelledby": id }, h("h2", { id }, title), children);
}

/** A table with a header row; `rows` are arrays of cells. */
export function table(headers, rows, attrs = {}) {
  return h(
    "table",
    attrs,
    h("thead", {}, h("tr", {}, headers.map((x) => h("th", { scope: "col" }, x)))),
    h("tbody", {}, rows.map((cells) => h("tr", {}, cells.map((c) => h("td", {}, c))))),
  );
}

export function empty(text) {
  return h("p", { class: "empty muted" }, text);
}

export function errorBox(exc) {
  return h("p", { class: "error", role: "alert" }, String(exc?.message || exc));
}

/** Run `fn` at most once per `ms`, with the latest arguments (trailing call). */
export function throttle(fn, ms) {
  let timer = null;
  let pending = null;
  return (...args) => {
    pending = args;
    if (timer) return;
    timer = setTimeout(() => {
      timer = null;
      const next = pending;
      pending = null;
      fn(...next);
    }, ms);
  };
}
