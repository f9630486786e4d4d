// Deployments: the list, and one deployment with its version, schedules and their next fire
// times, its recent runs, pause/resume, and a Run button with a JSON editor for parameters.

import { api, apiAll, listItems, subscribe } from "../api.js";
import { navigate } from "../router.js";
import {
  badge, deploymentLink, duration, empty, errorBox, facts, fill, h, jsonBlock, relative, runLink,
  section, table, throttle, timeCell, zonedTime,
} from "../util.js";

export async function render(main, route) {
  return route.params.length ? renderOne(main, route) : renderList(main, route);
}

function fullName(d) {
  return d.full_name || (d.flow_name && d.name ? `${d.flow_name}/${d.name}` : d.name);
}

function path(full) {
  return full.split("/").map(encodeURIComponent).join("/");
}

function pausedTag(paused) {
  return h("span", { class: `tag ${paused ? "off" : "on"}` }, paused ? "paused" : "active");
}

function scheduleText(s) {
  if (s.cron) return `cron ${s.cron}${s.timezone && s.timezone !== "UTC" ? ` (${s.timezone})` : ""}`;
  if (s.interval) return `every ${duration(Number(s.interval))}`;
  return JSON.stringify(s);
}

async function renderList(main, { isCurrent }) {
  const body = h("div");
  fill(main, h("div", { class: "page-head" }, h("h1", {}, "Deployments")), body);

  async function load() {
    let items;
    try {
      items = await apiAll("/deployments");
    } catch (exc) {
      if (isCurrent()) fill(body, errorBox(exc));
      return;
    }
    if (!isCurrent()) return;
    if (!items.length) {
      fill(body, empty("No deployments. Register one with `flowrelay deploy path/file.py:flow --name NAME`."));
      return;
    }
    items.sort((a, b) => fullName(a).localeCompare(fullName(b)));
    fill(body, table(
      ["Deployment", "Version", "Work pool", "Schedules", "Status", "Description"],
      items.map((d) => [
        deploymentLink(fullName(d)),
        String(d.version ?? "–"),
        d.work_pool || "–",
        (d.schedules || []).length ? (d.schedules || []).map((s) => h("div", { class: "small" }, scheduleText(s))) : "–",
        pausedTag(d.paused),
        h("span", { class: "small" }, d.description || ""),
      ]),
      { id: "deployments" },
    ));
  }

  const reload = throttle(load, 300);
  const unsubscribe = subscribe((event) => {
    if (String(event.event || "").startsWith("deployment.")) reload();
  });
  await load();
  return unsubscribe;
}

async function renderOne(main, { params, isCurrent }) {
  const full = `${params[0]}/${params[1]}`;
  const head = h("div", { class: "page-head" });
  const parts = { about: h("div"), schedules: h("div"), runs: h("div"), params: h("div") };
  const form = runForm(full);
  fill(
    main,
    h("p", { class: "crumbs" }, h("a", { href: "#/deployments" }, "Deployments"), " / ", full),
    head,
    h("div", { class: "grid two" }, section("About", parts.about), section("Run it", form.node)),
    section("Schedules", parts.schedules),
    section("Recent runs", parts.runs),
    section("Default parameters", parts.params),
  );

  async function load(first = false) {
    let d;
    let runs;
    try {
      [d, runs] = await Promise.all([
        api(`/deployments/${path(full)}`),
        api("/flow-runs", { query: { deployment: full, limit: 10 } }),
      ]);
    } catch (exc) {
      if (isCurrent()) fill(head, h("h1", {}, full), errorBox(exc));
      return;
    }
    if (!isCurrent()) return;
    const paused = Boolean(d.paused);
    fill(head,
      h("h1", {}, full, " ", pausedTag(paused)),
      h("div", { class: "actions" }, h("button", {
        type: "button", class: "secondary", "data-action": paused ? "resume" : "pause",
        onclick: async (e) => {
          const button = e.currentTarget;
          button.disabled = true;
          try {
            await api(`/deployments/${path(full)}/${paused ? "resume" : "pause"}`, { method: "POST" });
            await load();
          } catch (exc) {
            button.disabled = false;
            button.after(errorBox(exc));
          }
        },
      }, paused ? "Resume" : "Pause")));
    document.title = `${full} · flowrelay`;
    fill(parts.about, facts([
      ["Flow", d.flow_name],
      ["Version", h("span", { id: "version" }, String(d.version ?? "–"),
        h("span", { class: "muted" }, " (every deploy adds one; runs start the latest)"))],
      ["Entrypoint", d.entrypoint ? h("code", {}, d.entrypoint) : "–"],
      ["Work pool", d.work_pool || "–"],
      d.concurrency_limit ? ["Concurrency limit", String(d.concurrency_limit)] : null,
      d.tags && d.tags.length ? ["Tags", d.tags.map((t) => h("span", { class: "tag" }, t))] : null,
      d.description ? ["Description", d.description] : null,
      d.updated ? ["Updated", timeCell(d.updated)] : null,
    ]));
    drawSchedules(parts.schedules, d.schedules || []);
    const items = listItems(runs);
    fill(parts.runs, items.length
      ? table(["State", "Run", "Start", "Duration"], items.map((r) => [
        badge(r.state_type, r.state_name), runLink(r.id, r.name), timeCell(r.start_time),
        typeof r.duration_seconds === "number" ? duration(r.duration_seconds) : "–",
      ]), { id: "deployment-runs" })
      : empty("No runs yet."));
    fill(parts.params, jsonBlock(d.parameters, "Default parameters"));
    if (first) form.setDefaults(d.parameters || {});
  }

  const reload = throttle(() => load(), 300);
  const unsubscribe = subscribe((event) => {
    const ev = String(event.event || "");
    const res = event.resource || {};
    if ((ev.startsWith("flow-run.") && res.deployment === full) ||
        (ev.startsWith("deployment.") && JSON.stringify(res).includes(full))) reload();
  });
  await load(true);
  return unsubscribe;
}

function drawSchedules(node, schedules) {
  if (!schedules.length) {
    fill(node, empty("No schedules: this deployment runs when asked, or when an automation launches it."));
    return;
  }
  fill(node, table(
    ["Schedule", "When", "Status", "Catch-up", "Next runs"],
    schedules.map((s) => [
      h("code", {}, s.id || "–"),
      scheduleText(s),
      h("span", { class: `tag ${s.active === false ? "off" : "on"}` }, s.active === false ? "paused" : "active"),
      s.catchup || "latest",
      (s.next || []).length
        ? h("ul", { class: "plain" }, s.next.map((n) => h("li", {},
          h("time", { datetime: n.utc || n, title: `${n.utc || n} (UTC)` }, zonedTime(n.local || n.utc || n)),
          h("span", { class: "muted" }, ` ${relative(n.utc || n)}`))))
        : h("span", { class: "muted" }, "–"),
    ]),
    { id: "schedules" },
  ));
}

/** The Run form: parameters as a JSON object (checked before sending), an optional
 * idempotency key. On success it opens the new run. */
function runForm(full) {
  const params = h("textarea", {
    id: "run-params", rows: 6, spellcheck: "false", class: "mono", "aria-describedby": "run-help",
  }, "{}");
  const key = h("input", { id: "run-key", type: "text", autocomplete: "off", placeholder: "optional" });
  const status = h("p", { role: "status", id: "run-status" });
  const node = h(
    "form",
    {
      class: "run-form",
      onsubmit: async (e) => {
        e.preventDefault();
        let parameters;
        try {
          parameters = JSON.parse(params.value || "{}");
          if (parameters === null || typeof parameters !== "object" || Array.isArray(parameters)) {
            throw new Error("parameters must be a JSON object, like {\"n\": 3}");
          }
        } catch (exc) {
          params.setAttribute("aria-invalid", "true");
          fill(status, h("span", { class: "error-text" }, `Not valid: ${exc.message}`));
          return;
        }
        params.removeAttribute("aria-invalid");
        const button = node.querySelector("button[type=submit]");
        button.disabled = true;
        fill(status, "Creating the run…");
        try {
          const run = await api(`/deployments/${path(full)}/runs`, {
            method: "POST", body: { parameters, idempotency_key: key.value.trim() || null },
          });
          navigate(`/runs/${run.id}`);
        } catch (exc) {
          fill(status, errorBox(exc));
          button.disabled = false;
        }
      },
    },
    h("label", { for: "run-params" }, "Parameters (JSON)"),
    params,
    h("p", { id: "run-help", class: "muted small" }, "Merged over the deployment's defaults and validated by the flow's type hints."),
    h("label", { for: "run-key" }, "Idempotency key"),
    key,
    h("div", { class: "buttons" }, h("button", { type: "submit" }, "Run")),
    status,
  );
  return {
    node,
    setDefaults(defaults) {
      if (params.value === "{}") params.value = JSON.stringify(defaults, null, 2);
    },
  };
}
