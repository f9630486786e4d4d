// Automations: the list with pause/resume, and one automation's definition, counters, open
// joins (what arrived, what is awaited, when the window closes) and last firings. Refreshed by
// the automation's own events (triggered, paused, resumed, join expired, ...).

import { api, apiAll, subscribe } from "../api.js";
import {
  automationLink, duration, empty, errorBox, facts, fill, h, isoDuration, jsonBlock, pruned,
  relative, runLink, section, short, table, throttle, timeCell,
} from "../util.js";

const COUNTERS = ["matched", "fired", "expired", "failed", "errors"];

export async function render(main, route) {
  return route.params.length ? renderOne(main, route) : renderList(main, route);
}

function statusTag(enabled) {
  return h("span", { class: `tag ${enabled ? "on" : "off"}`, "data-enabled": String(Boolean(enabled)) },
    enabled ? "enabled" : "paused");
}

/** A Pause or Resume button for `automation`; `after()` runs once the server agreed. */
function toggleButton(automation, after) {
  const enabled = automation.enabled !== false;
  const verb = enabled ? "pause" : "resume";
  return h("button", {
    type: "button",
    class: enabled ? "secondary" : "",
    "data-action": verb,
    "aria-label": `${enabled ? "Pause" : "Resume"} automation ${automation.name}`,
    onclick: async (e) => {
      const button = e.currentTarget;
      button.disabled = true;
      try {
        await api(`/automations/${encodeURIComponent(automation.name)}/${verb}`, { method: "POST" });
        await after();
      } catch (exc) {
        button.disabled = false;
        button.after(errorBox(exc));
      }
    },
  }, enabled ? "Pause" : "Resume");
}

function triggerText(trigger) {
  if (!trigger || typeof trigger !== "object") return "";
  const parts = [trigger.type];
  if (trigger.posture === "proactive") parts.push("(proactive)");
  if (trigger.match && Object.keys(trigger.match).length) {
    parts.push(Object.entries(trigger.match).map(([k, v]) => `${k}=${Array.isArray(v) ? v.join("|") : v}`).join(" "));
  }
  if (trigger.expect) parts.push(`→ ${[].concat(trigger.expect).join(", ")}`);
  if (trigger.triggers) parts.push(`${trigger.require ?? "all"} of ${trigger.triggers.length}`);
  if (trigger.correlate) parts.push(`per ${trigger.correlate}`);
  if (trigger.threshold > 1) parts.push(`${trigger.threshold} times`);
  if (trigger.within && trigger.within !== "PT0S") {
    parts.push(`within ${typeof trigger.within === "number" ? duration(trigger.within) : isoDuration(trigger.within)}`);
  }
  return parts.join(" ");
}

async function renderList(main, { isCurrent }) {
  const body = h("div");
  fill(main, h("div", { class: "page-head" }, h("h1", {}, "Automations")), body);

  async function load() {
    let items;
    try {
      items = await apiAll("/automations");
    } catch (exc) {
      if (isCurrent()) fill(body, errorBox(exc));
      return;
    }
    if (!isCurrent()) return;
    if (!items.length) {
      fill(body, empty("No automations. Apply a YAML file with `flowrelay automation apply FILE`."));
      return;
    }
    fill(body, table(
      ["Name", "Status", "Trigger", "Matched", "Fired", ""],
      items.map((a) => [
        automationLink(a.name),
        statusTag(a.enabled !== false),
        h("span", { class: "small" }, a.description || triggerText(a.definition?.trigger) || a.trigger_type || ""),
        String(a.counters?.matched ?? 0),
        String(a.counters?.fired ?? 0),
        toggleButton(a, load),
      ]),
      { id: "automations", class: "automations" },
    ));
  }

  const reload = throttle(load, 300);
  const unsubscribe = subscribe((event) => {
    if (String(event.event || "").startsWith("automation.")) reload();
  });
  await load();
  return unsubscribe;
}

async function renderOne(main, { params, isCurrent }) {
  const name = params[0];
  const head = h("div", { class: "page-head" });
  const parts = { about: h("div"), counters: h("div"), pending: h("div"), firings: h("div"), definition: h("div") };
  fill(
    main,
    h("p", { class: "crumbs" }, h("a", { href: "#/automations" }, "Automations"), " / ", name),
    head,
    h("div", { class: "grid two" }, section("About", parts.about), section("Counters", parts.counters)),
    section("Open joins and windows", parts.pending),
    section("Last firings", parts.firings),
    section("Definition", parts.definition),
  );

  async function load() {
    let a;
    try {
      a = await api(`/automations/${encodeURIComponent(name)}`);
    } catch (exc) {
      if (isCurrent()) fill(head, h("h1", {}, name), errorBox(exc));
      return;
    }
    if (!isCurrent()) return;
    const enabled = a.enabled !== false;
    fill(head,
      h("h1", {}, a.name, " ", statusTag(enabled)),
      h("div", { class: "actions" }, toggleButton(a, load)));
    document.title = `${a.name} · flowrelay`;
    const definition = a.definition || {};
    fill(parts.about, facts([
      ["Description", a.description || definition.description || h("span", { class: "muted" }, "–")],
      ["Trigger", triggerText(definition.trigger) || a.trigger_type],
      ["Actions", (definition.actions || []).map((x) =>
        h("div", {}, h("code", {}, x.type), x.deployment ? ` ${x.deployment}` : x.event ? ` ${x.event}` : ""))],
      a.cooldown || definition.cooldown ? ["Cooldown", isoDuration(a.cooldown || definition.cooldown)] : null,
      a.version ? ["Version", String(a.version)] : null,
      a.source ? ["Source", h("code", {}, a.source)] : null,
      a.updated ? ["Updated", timeCell(a.updated)] : null,
    ]));
    const counters = a.counters || {};
    fill(parts.counters, h("ul", { class: "counters", id: "counters" },
      COUNTERS.map((key) => h("li", { "data-counter": key },
        h("span", { class: "count" }, String(counters[key] ?? 0)), h("span", { class: "muted" }, key)))));
    drawPending(parts.pending, a.pending || a.pending_joins || []);
    drawFirings(parts.firings, a.firings || a.last_firings || []);
    fill(parts.definition, jsonBlock(pruned(definition), "Definition"));
  }

  const reload = throttle(load, 300);
  const unsubscribe = subscribe((event) => {
    const ev = String(event.event || "");
    if (!ev.startsWith("automation.")) return;
    const res = event.resource || {};
    const about = res.name || res.automation || String(res.id || "").split("/").pop();
    if (!about || about === name || String(res.id || "").endsWith(name)) reload();
  });
  await load();
  return unsubscribe;
}

function drawPending(node, pending) {
  if (!pending.length) {
    fill(node, empty("Nothing open: no join is waiting and no window is counting."));
    return;
  }
  fill(node, table(
    ["Kind", "Key", "Arrived", "Awaited", "Window closes"],
    pending.map((p) => {
      const closes = p.expires_at || p.window_ends || p.deadline || p.until || p.armed_until;
      return [
        p.kind + (p.status && p.status !== "open" ? ` (${p.status})` : ""),
        h("code", {}, p.correlation || p.bucket || "–"),
        p.status === "fired"
          ? h("span", { class: "muted" }, "all arrived", p.fired_at ? `; fired ${relative(p.fired_at)}` : "")
          : p.arrived
          ? h("ul", { class: "plain" }, Object.entries(p.arrived).map(([child, ev]) =>
            h("li", {}, `${child} `, h("span", { class: "muted" }, ev?.occurred ? relative(ev.occurred) : ""))))
          : p.count !== undefined ? `${p.count} of ${p.of ?? "?"}` : "–",
        p.awaited && p.awaited.length
          ? h("ul", { class: "plain awaited" }, p.awaited.map((c) => h("li", {}, c)))
          : h("span", { class: "muted" }, "–"),
        closes ? h("span", {}, timeCell(closes), h("span", { class: "muted" }, ` (${relative(closes)})`)) : "–",
      ];
    }),
    { id: "pending" },
  ));
}

function drawFirings(node, firings) {
  if (!firings.length) {
    fill(node, empty("It has not fired yet."));
    return;
  }
  fill(node, table(
    ["At", "Kind", "Status", "Correlation", "Launched"],
    firings.map((f) => [
      timeCell(f.at),
      f.kind,
      h("span", { class: `tag ${f.status === "done" || f.status === "ok" ? "on" : ""}` }, f.status),
      f.correlation ? h("code", {}, f.correlation) : h("span", { class: "muted" }, "–"),
      (f.results || []).map((r) => h("div", {},
        r.detail?.flow_run_id ? runLink(r.detail.flow_run_id, `${r.detail.deployment || ""} ${short(r.detail.flow_run_id)}`.trim())
          : h("code", {}, r.type),
        r.ok === false ? h("span", { class: "error-text" }, ` failed: ${r.error || ""}`) : null)),
    ]),
    { id: "firings" },
  ));
}
