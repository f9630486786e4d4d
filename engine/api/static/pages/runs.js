// Runs: a table of flow runs with filters and pages, kept up to date from the event stream.
// A state event patches its row at once; a run not on screen yet is read once and put on top
// when it fits the filters (and page 1 is shown). Nothing polls.

import { LOGS_EVENT, api, apiAll, flowRunIdOf, listItems, subscribe } from "../api.js";
import { navigate } from "../router.js";
import {
  FINAL_TYPES, STATE_TYPES, badge, deploymentLink, duration, errorBox, fill, h, parseTime,
  runLink, stateTypeOf, timeCell,
} from "../util.js";

const PAGE_SIZE = 50;

function filtersFrom(query) {
  return {
    state: query.get("state") || "",
    flow: query.get("flow") || "",
    deployment: query.get("deployment") || "",
    since: query.get("since") || "",
    until: query.get("until") || "",
    offset: Math.max(0, Number.parseInt(query.get("offset") || "0", 10) || 0),
  };
}

/** `2026-11-22T10:30` from a datetime-local input → ISO UTC; and back. */
function toIso(local) {
  const date = local ? new Date(local) : null;
  return date && !Number.isNaN(date.getTime()) ? date.toISOString() : "";
}

function toLocalInput(iso) {
  const date = parseTime(iso);
  if (!date) return "";
  const shifted = new Date(date.getTime() - date.getTimezoneOffset() * 60000);
  return shifted.toISOString().slice(0, 16);
}

export async function render(main, { query, isCurrent }) {
  const filters = filtersFrom(query);
  const rows = new Map(); // run id -> {run, tr}
  let total = 0;

  const tbody = h("tbody", { id: "runs-body" });
  const summary = h("p", { class: "muted", id: "runs-summary", "aria-live": "polite" });
  const pager = h("nav", { class: "pager", "aria-label": "Pages of runs" });
  const errors = h("div");

  fill(
    main,
    h("div", { class: "page-head" }, h("h1", {}, "Flow runs")),
    filterForm(filters),
    errors,
    h(
      "table",
      { class: "runs", id: "runs-table" },
      h("caption", { class: "visually-hidden" }, "Flow runs, newest first"),
      h("thead", {}, h("tr", {}, ["State", "Run", "Flow", "Deployment", "Start", "Duration"].map(
        (x) => h("th", { scope: "col" }, x)))),
      tbody,
    ),
    summary,
    pager,
  );

  function matches(run) {
    if (filters.state && run.state_type !== filters.state) return false;
    if (filters.flow && run.flow_name !== filters.flow) return false;
    if (filters.deployment && run.deployment !== filters.deployment) return false;
    const created = parseTime(run.created);
    if (filters.since && created && created < new Date(filters.since)) return false;
    if (filters.until && created && created > new Date(filters.until)) return false;
    return true;
  }

  function rowFor(run) {
    const tr = h("tr", { "data-run-id": run.id });
    drawRow(tr, run);
    return tr;
  }

  function drawRow(tr, run) {
    tr.dataset.state = run.state_name || "";
    fill(
      tr,
      h("td", {}, badge(run.state_type, run.state_name),
        run.waiting ? h("div", { class: "small error-text", "data-waiting": "", title: run.waiting }, "no live worker") : null),
      h("td", {}, runLink(run.id, run.name || run.id)),
      h("td", {}, run.flow_name),
      h("td", {}, deploymentLink(run.deployment)),
      h("td", {}, timeCell(run.start_time)),
      h("td", { class: "num", "data-duration": "" }, durationText(run)),
    );
  }

  function drawSummary() {
    const first = total ? filters.offset + 1 : 0;
    const last = filters.offset + rows.size;
    summary.textContent = total ? `${first}–${last} of ${total}` : "";
    const prev = filters.offset > 0;
    const next = filters.offset + PAGE_SIZE < total;
    fill(
      pager,
      h("button", {
        type: "button", disabled: !prev,
        onclick: () => go({ offset: Math.max(0, filters.offset - PAGE_SIZE) }),
      }, "← Newer"),
      h("button", {
        type: "button", disabled: !next,
        onclick: () => go({ offset: filters.offset + PAGE_SIZE }),
      }, "Older →"),
    );
    if (!rows.size) {
      fill(tbody, h("tr", {}, h("td", { colspan: 6, class: "empty muted" },
        anyFilter(filters) ? "No flow run matches these filters." : "No flow runs yet.")));
    }
  }

  function go(changes) {
    navigate("/runs", { ...filters, ...changes, offset: changes.offset || "" });
  }

  // Subscribe before the first read so that nothing between the read and the stream is lost.
  const pendingFetch = new Set();
  const unsubscribe = subscribe((event) => {
    const name = String(event.event || "");
    if (!name.startsWith("flow-run.") || name === LOGS_EVENT) return; // new log lines change no row
    const id = flowRunIdOf(event);
    if (!id) return;
    const known = rows.get(id);
    if (known) {
      patch(known.run, event);
      drawRow(known.tr, known.run);
      return;
    }
    if (filters.offset > 0 || pendingFetch.has(id)) return;
    const res = event.resource || {};
    if (filters.flow && res.flow !== filters.flow) return;
    if (filters.deployment && res.deployment !== filters.deployment) return;
    pendingFetch.add(id);
    api(`/flow-runs/${id}`).then((run) => {
      pendingFetch.delete(id);
      if (!isCurrent() || rows.has(id) || !matches(run)) return;
      if (!rows.size) tbody.replaceChildren();
      const tr = rowFor(run);
      tr.classList.add("fresh");
      rows.set(id, { run, tr });
      tbody.prepend(tr);
      total += 1;
      while (rows.size > PAGE_SIZE) {
        const lastTr = tbody.lastElementChild;
        rows.delete(lastTr.dataset.runId);
        lastTr.remove();
      }
      drawSummary();
    }, () => pendingFetch.delete(id));
  });

  // Durations of running runs grow on screen (a local clock, not a request).
  const ticker = setInterval(() => {
    for (const { run, tr } of rows.values()) {
      if (run.start_time && !run.end_time && !FINAL_TYPES.has(run.state_type)) {
        const cell = tr.querySelector("[data-duration]");
        if (cell) cell.textContent = durationText(run);
      }
    }
  }, 1000);

  try {
    const page = await api("/flow-runs", {
      query: {
        state: filters.state, flow: filters.flow, deployment: filters.deployment,
        since: filters.since, until: filters.until, limit: PAGE_SIZE, offset: filters.offset,
      },
    });
    if (!isCurrent()) return () => { unsubscribe(); clearInterval(ticker); };
    tbody.replaceChildren();
    for (const run of listItems(page)) {
      if (rows.has(run.id)) continue;
      const tr = rowFor(run);
      rows.set(run.id, { run, tr });
      tbody.append(tr);
    }
    total = typeof page.total === "number" ? page.total : rows.size;
    drawSummary();
  } catch (exc) {
    fill(errors, errorBox(exc));
  }
  fillChoices(main);
  return () => {
    unsubscribe();
    clearInterval(ticker);
  };
}

/** Apply a flow-run state event to a run as the table holds it. */
export function patch(run, event) {
  const payload = event.payload || {};
  const name = payload.state || String(event.event).slice("flow-run.".length);
  run.state_name = name;
  run.state_type = payload.type || stateTypeOf(name);
  const at = event.occurred;
  if (run.state_type === "RUNNING" && !run.start_time) run.start_time = at;
  if (FINAL_TYPES.has(run.state_type)) {
    run.end_time = run.end_time || at;
    if (payload.result !== undefined) run.result = payload.result;
  }
  const start = parseTime(run.start_time);
  const end = parseTime(run.end_time);
  if (start && end) run.duration_seconds = Math.max(0, (end - start) / 1000);
}

function durationText(run) {
  if (typeof run.duration_seconds === "number" && (run.end_time || FINAL_TYPES.has(run.state_type))) {
    return duration(run.duration_seconds);
  }
  const start = parseTime(run.start_time);
  if (!start) return "–";
  const end = parseTime(run.end_time) || new Date();
  return duration(Math.max(0, (end - start) / 1000));
}

function anyFilter(filters) {
  return Boolean(filters.state || filters.flow || filters.deployment || filters.since || filters.until);
}

function filterForm(filters) {
  const field = (id, label, control) => h("div", { class: "field" }, h("label", { for: id }, label), control);
  const state = h("select", { id: "f-state", name: "state" },
    h("option", { value: "" }, "any"),
    STATE_TYPES.map((t) => h("option", { value: t, selected: t === filters.state }, t.charAt(0) + t.slice(1).toLowerCase())));
  const flow = h("input", { id: "f-flow", name: "flow", value: filters.flow, list: "flow-names", placeholder: "any" });
  const deployment = h("input", {
    id: "f-deployment", name: "deployment", value: filters.deployment, list: "deployment-names", placeholder: "FLOW/NAME",
  });
  const since = h("input", { id: "f-since", name: "since", type: "datetime-local", value: toLocalInput(filters.since) });
  const until = h("input", { id: "f-until", name: "until", type: "datetime-local", value: toLocalInput(filters.until) });
  return h(
    "form",
    {
      class: "filters",
      role: "search",
      "aria-label": "Filter flow runs",
      onsubmit: (e) => {
        e.preventDefault();
        navigate("/runs", {
          state: state.value, flow: flow.value.trim(), deployment: deployment.value.trim(),
          since: toIso(since.value), until: toIso(until.value),
        });
      },
    },
    field("f-state", "State", state),
    field("f-flow", "Flow", flow),
    field("f-deployment", "Deployment", deployment),
    field("f-since", "Created after", since),
    field("f-until", "Created before", until),
    h("div", { class: "field buttons" },
      h("button", { type: "submit" }, "Apply"),
      h("button", { type: "button", class: "secondary", onclick: () => navigate("/runs") }, "Clear")),
    h("datalist", { id: "flow-names" }),
    h("datalist", { id: "deployment-names" }),
  );
}

/** Suggestions for the flow and deployment fields, from the deployments. */
async function fillChoices(main) {
  try {
    const deployments = await apiAll("/deployments", {}, 500);
    const names = (d) => d.full_name || d.name_full || `${d.flow_name}/${d.name}`;
    const flows = [...new Set(deployments.map((d) => d.flow_name).filter(Boolean))].sort();
    const fulls = [...new Set(deployments.map(names))].sort();
    const flowList = main.querySelector("#flow-names");
    const depList = main.querySelector("#deployment-names");
    if (flowList) fill(flowList, flows.map((f) => h("option", { value: f })));
    if (depList) fill(depList, fulls.map((f) => h("option", { value: f })));
  } catch {
    // suggestions only
  }
}
