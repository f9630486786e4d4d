// One flow run: why it started, its states on a timeline, parameters and result, task runs,
// parent and children, logs. Any event of the run (its states, its task runs, its children's
// states) refreshes the page's parts, and the server's notice of new log lines (flow-run.logs)
// its logs, at most a few times a second; nothing polls.

import { LOGS_EVENT, api, flowRunIdOf, listItems, relatedFlowRunIds, subscribe } from "../api.js";
import {
  FINAL_TYPES, automationLink, badge, deploymentLink, duration, empty, errorBox, facts, fill, h,
  jsonBlock, localTime, parseTime, runLink, section, short, table, throttle, timeCell,
} from "../util.js";

const LOG_LIMIT = 1000;
const LEVELS = { 10: "DEBUG", 20: "INFO", 30: "WARNING", 40: "ERROR", 50: "CRITICAL" };

export async function render(main, { params, isCurrent }) {
  const id = params[0].toLowerCase();
  const parts = {
    head: h("div", { class: "page-head" }),
    summary: h("div"),
    why: h("div"),
    timeline: h("div"),
    params: h("div"),
    result: h("div"),
    tasks: h("div"),
    family: h("div"),
    logs: h("div"),
  };
  const note = h("div");
  fill(
    main,
    h("p", { class: "crumbs" }, h("a", { href: "#/runs" }, "Runs"), " / ", h("span", { class: "mono" }, short(id))),
    parts.head,
    note,
    h("div", { class: "grid two" },
      section("Details", parts.summary),
      section("Why did this run start?", parts.why)),
    section("States", parts.timeline),
    h("div", { class: "grid two" },
      section("Parameters", parts.params),
      section("Result", parts.result)),
    section("Task runs", parts.tasks),
    section("Parent and children", parts.family),
    section("Logs", parts.logs),
  );

  let run = null;
  const children = new Set();
  // Reads of the logs are numbered: an older answer arriving last does not hide newer lines.
  let logsAsked = 0;
  let logsDrawn = 0;

  function showLogs(ticket, logs) {
    if (ticket < logsDrawn) return;
    logsDrawn = ticket;
    drawLogs(parts.logs, listItems(logs), run);
  }

  async function refreshLogs() {
    const ticket = ++logsAsked;
    let logs;
    try {
      logs = await api(`/flow-runs/${id}/logs`, { query: { limit: LOG_LIMIT } });
    } catch (exc) {
      if (isCurrent()) fill(note, errorBox(exc));
      return;
    }
    if (isCurrent()) showLogs(ticket, logs);
  }

  async function refresh() {
    const ticket = ++logsAsked;
    let data;
    try {
      data = await Promise.all([
        api(`/flow-runs/${id}`),
        api(`/flow-runs/${id}/states`),
        api(`/flow-runs/${id}/task-runs`),
        api(`/flow-runs/${id}/logs`, { query: { limit: LOG_LIMIT } }),
        api(`/flow-runs/${id}/children`),
      ]);
    } catch (exc) {
      if (!isCurrent()) return;
      if (!run) fill(main, h("h1", {}, "Flow run"), errorBox(exc), h("a", { href: "#/runs" }, "Back to the runs"));
      else fill(note, errorBox(exc));
      return;
    }
    if (!isCurrent()) return;
    const [detail, states, tasks, logs, kids] = data;
    run = detail;
    fill(note);
    children.clear();
    for (const child of listItems(kids)) children.add(String(child.id || child).toLowerCase());
    drawHead(parts.head, run, refreshSoon);
    drawSummary(parts.summary, run, listItems(states));
    drawWhy(parts.why, run);
    drawTimeline(parts.timeline, listItems(states));
    fill(parts.params, jsonBlock(run.parameters, "Parameters"));
    drawResult(parts.result, run);
    drawTasks(parts.tasks, listItems(tasks));
    drawFamily(parts.family, run, listItems(kids));
    showLogs(ticket, logs);
  }

  const refreshSoon = throttle(refresh, 250);
  const refreshLogsSoon = throttle(refreshLogs, 250);
  const unsubscribe = subscribe((event) => {
    const about = flowRunIdOf(event);
    if (event.event === LOGS_EVENT) {
      if (about === id) refreshLogsSoon(); // a child's lines are on the child's page
      return;
    }
    const related = relatedFlowRunIds(event);
    if (about === id || related.includes(id) || (about && children.has(about))) refreshSoon();
  });
  await refresh();
  return unsubscribe;
}

function drawHead(node, run, refreshSoon) {
  const final = FINAL_TYPES.has(run.state_type);
  const cancel = h("button", {
    type: "button",
    class: "danger",
    disabled: final || run.state_type === "CANCELLING",
    onclick: async (e) => {
      const button = e.currentTarget;
      button.disabled = true;
      try {
        await api(`/flow-runs/${run.id}/cancel`, { method: "POST" });
        refreshSoon();
      } catch (exc) {
        button.disabled = false;
        button.after(errorBox(exc));
      }
    },
  }, "Cancel run");
  fill(
    node,
    h("h1", {}, run.name || short(run.id), " ", badge(run.state_type, run.state_name)),
    h("div", { class: "actions" }, final ? null : cancel),
  );
  document.title = `${run.name || short(run.id)} · flowrelay`;
}

function runDuration(run) {
  if (typeof run.duration_seconds === "number") return duration(run.duration_seconds);
  const start = parseTime(run.start_time);
  if (!start) return "–";
  return `${duration(((parseTime(run.end_time) || new Date()) - start) / 1000)} (running)`;
}

/** The code the run's latest execution ran: its last Running state's `details.code`. */
function executedCode(states) {
  const running = states.filter((s) => s.type === "RUNNING" && s.details && s.details.code);
  return running.length ? running[running.length - 1].details.code : null;
}

function drawSummary(node, run, states) {
  const code = executedCode(states);
  fill(node, facts([
    ["Id", h("span", { class: "mono", id: "run-id" }, run.id)],
    ["Flow", run.flow_name],
    ["Deployment", deploymentLink(run.deployment)],
    ["State", h("span", {}, badge(run.state_type, run.state_name), run.state_message ? ` ${run.state_message}` : "")],
    run.waiting ? ["Waiting", h("span", { class: "error-text", id: "run-waiting" }, run.waiting)] : null,
    ["Created", timeCell(run.created)],
    ["Started", timeCell(run.start_time)],
    ["Ended", timeCell(run.end_time)],
    ["Duration", runDuration(run)],
    run.work_pool ? ["Work pool", run.work_pool] : null,
    run.deployment_version ? ["Version", String(run.deployment_version)] : null,
    code ? ["Code", h("code", { id: "run-code", title: code }, code === "env" ? "installed on the worker" : code.slice(0, 19))] : null,
    run.idempotency_key ? ["Idempotency key", h("code", {}, run.idempotency_key)] : null,
    run.tags && run.tags.length ? ["Tags", run.tags.map((t) => h("span", { class: "tag" }, t))] : null,
  ]));
}

/** caused_by as the engine records it: an automation firing, a schedule slot, or a parent. */
function drawWhy(node, run) {
  const cause = run.caused_by;
  const rows = [];
  if (cause && cause.automation) {
    rows.push(h("p", { id: "why" }, "Launched by automation ", automationLink(cause.automation),
      cause.kind && cause.kind !== "fired" ? ` (${cause.kind})` : "", "."));
    const pairs = [
      cause.firing_id ? ["Firing", h("code", {}, cause.firing_id)] : null,
      cause.event || cause.event_id ? ["Triggering event", eventText(cause.event, cause.event_id)] : null,
    ];
    const joined = Object.entries(cause.events || {});
    if (joined.length > 1) {
      pairs.push(["Events joined", h("ul", { class: "plain" }, joined.map(([child, eventId]) =>
        h("li", {}, h("span", {}, `${child}: `), h("code", {}, short(eventId)))))]);
    }
    if (cause.event_detail || cause.triggering_event) {
      const ev = cause.event_detail || cause.triggering_event;
      const source = flowRunIdOf(ev);
      if (source) pairs.push(["Event from run", runLink(source, ev.resource?.name || short(source))]);
      pairs.push(["Occurred", timeCell(ev.occurred)]);
    }
    rows.push(facts(pairs));
  } else if (cause && cause.schedule) {
    rows.push(h("p", { id: "why" }, "Created by schedule ", h("code", {}, cause.schedule),
      " of ", deploymentLink(run.deployment), " for the slot ", timeCell(cause.slot), "."));
  } else if (run.parent_flow_run_id) {
    rows.push(h("p", { id: "why" }, "Launched from the flow run ",
      runLink(run.parent_flow_run_id), " (a subflow, or run_deployment in a flow)."));
  } else if (cause && cause.source) {
    rows.push(h("p", { id: "why" }, "Started by a request through ",
      cause.source === "api" ? "the HTTP API (or this UI's Run button)" : h("code", {}, cause.source),
      ", not by an automation or a schedule."));
  } else if (cause && Object.keys(cause).length) {
    rows.push(h("p", { id: "why" }, "Recorded cause:"), jsonBlock(cause, "Cause"));
  } else {
    rows.push(h("p", { id: "why" }, run.deployment
      ? "Started by a request (the CLI, the API or a script), not by an automation or a schedule."
      : "Run directly from Python (not through a deployment)."));
  }
  fill(node, rows);
}

function eventText(name, id) {
  return h("span", {}, name ? h("code", {}, name) : null, id ? h("span", { class: "muted mono" }, ` ${short(id)}`) : null);
}

function drawTimeline(node, states) {
  if (!states.length) {
    fill(node, empty("No states recorded."));
    return;
  }
  const first = parseTime(states[0].timestamp);
  const items = states.map((state, i) => {
    const at = parseTime(state.timestamp);
    const offset = at && first ? (at - first) / 1000 : null;
    const next = states[i + 1] ? parseTime(states[i + 1].timestamp) : null;
    const spent = at && next ? (next - at) / 1000 : null;
    return h(
      "li",
      { class: `step s-${String(state.type || "").toLowerCase()}`, "data-state": state.name },
      h("span", { class: "dot", "aria-hidden": "true" }),
      badge(state.type, state.name),
      h("span", { class: "when" }, at ? localTime(at) : "", offset !== null && i > 0 ? ` (+${duration(offset)})` : ""),
      spent !== null ? h("span", { class: "muted" }, ` · ${duration(spent)} here`) : null,
      state.message ? h("span", { class: "message" }, state.message) : null,
    );
  });
  fill(node, h("ol", { class: "timeline", id: "timeline", "aria-label": "States, oldest first" }, items));
}

function drawResult(node, run) {
  if (run.state_type === "COMPLETED") {
    fill(node, run.result === null || run.result === undefined
      ? h("p", { class: "muted" }, "null")
      : h("pre", { class: "json", id: "result" }, JSON.stringify(run.result, null, 2)));
  } else if (FINAL_TYPES.has(run.state_type)) {
    const error = run.error && (run.error.traceback || `${run.error.type}: ${run.error.message}`);
    fill(node, h("p", { class: "error-text" }, run.state_message || `The run ended ${run.state_name}.`),
      error ? h("pre", { class: "traceback", id: "traceback", "aria-label": "Traceback" }, error) : null);
  } else {
    fill(node, h("p", { class: "muted" }, "Not finished yet."));
  }
}

function drawTasks(node, tasks) {
  if (!tasks.length) {
    fill(node, empty("No task runs."));
    return;
  }
  fill(node, table(
    ["State", "Task run", "Start", "Duration", "Subflow"],
    tasks.map((t) => {
      const type = t.state_type || t.state?.type;
      const name = t.state_name || t.state?.name;
      const start = parseTime(t.start_time);
      const end = parseTime(t.end_time);
      return [
        badge(type, name),
        t.name,
        timeCell(t.start_time),
        typeof t.duration_seconds === "number" ? duration(t.duration_seconds)
          : start && end ? duration((end - start) / 1000) : "–",
        t.child_flow_run_id ? runLink(t.child_flow_run_id) : "",
      ];
    }),
    { class: "tasks", id: "task-runs" },
  ));
}

function drawFamily(node, run, kids) {
  const parent = run.parent_flow_run_id
    ? h("p", {}, "Parent: ", runLink(run.parent_flow_run_id))
    : h("p", { class: "muted" }, "No parent run.");
  const list = kids.length
    ? table(
      ["State", "Child run", "Deployment", "Start"],
      kids.map((k) => typeof k === "object"
        ? [badge(k.state_type, k.state_name), runLink(k.id, k.name), deploymentLink(k.deployment), timeCell(k.start_time)]
        : ["", runLink(k), "", ""]),
      { id: "children" },
    )
    : h("p", { class: "muted" }, "No child runs.");
  fill(node, parent, list);
}

function drawLogs(node, logs, run) {
  const final = FINAL_TYPES.has(run?.state_type); // run: null until the run itself was read
  if (!logs.length) {
    fill(node, empty(final ? "No logs." : "No logs yet: they appear here as the run writes them."));
    return;
  }
  const pre = h("div", { class: "logs", id: "logs", role: "log", "aria-label": "Log lines", tabindex: "0" },
    logs.map((line) => {
      const level = LEVELS[line.level] || line.level_name || String(line.level ?? "");
      const at = parseTime(line.timestamp);
      return h("div", { class: `log l-${String(level).toLowerCase()}` },
        h("span", { class: "muted" }, at ? localTime(at) : ""), " ",
        h("span", { class: "level" }, String(level).padEnd(7)), " ",
        line.task_run_id ? h("span", { class: "muted" }, `[task ${short(line.task_run_id)}] `) : null,
        line.message);
    }));
  const stick = node.firstChild && node.firstChild.scrollTop + node.firstChild.clientHeight >= node.firstChild.scrollHeight - 4;
  fill(node, pre);
  if (stick || !final) pre.scrollTop = pre.scrollHeight;
}
