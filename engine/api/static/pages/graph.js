// The flow-of-flows: deployments as nodes, automations as edges, laid out left to right by
// depth (longest path from a node nothing triggers), each node colored by its latest run's
// state. Run events recolor nodes as they happen; automation and deployment events redraw.

import { LOGS_EVENT, api, subscribe } from "../api.js";
import { badge, empty, errorBox, fill, h, stateTypeOf, svg, table, throttle } from "../util.js";

const NODE_H = 58;
const ROW_GAP = 34;
const PAD = 24;

/** Box width and column gap that fit the longest node name and automation name. */
export function sizes(nodeIds, edges) {
  const longest = (texts) => Math.max(0, ...texts.map((t) => String(t).length));
  return {
    nodeW: Math.min(340, Math.max(180, Math.ceil(longest(nodeIds) * 8.2 + 28))),
    colGap: Math.min(260, Math.max(110, Math.ceil(longest(edges.map((e) => e.automation)) * 6.6 + 44))),
  };
}

/** Layers of a directed graph: each node's depth is the longest path to it from a node without
 * incoming edges. Cycles are cut (an edge back to a node already on the path is ignored), so
 * every node gets a finite depth. Returns Map(id → depth). */
export function layers(nodeIds, edges) {
  const out = new Map(nodeIds.map((id) => [id, []]));
  const indegree = new Map(nodeIds.map((id) => [id, 0]));
  for (const e of edges) {
    if (e.source === e.target || !out.has(e.source) || !out.has(e.target)) continue;
    out.get(e.source).push(e.target);
    indegree.set(e.target, indegree.get(e.target) + 1);
  }
  const depth = new Map();
  const visit = (id, d, path) => {
    if ((depth.get(id) ?? -1) >= d) return;
    depth.set(id, d);
    path.add(id);
    for (const next of out.get(id)) if (!path.has(next)) visit(next, d + 1, path);
    path.delete(id);
  };
  const roots = nodeIds.filter((id) => indegree.get(id) === 0);
  for (const id of roots) visit(id, 0, new Set());
  for (const id of nodeIds) if (!depth.has(id)) visit(id, 0, new Set()); // only cycles left
  return depth;
}

/** Positions: columns by depth; inside a column, nodes ordered by the mean row of their
 * predecessors (fewer crossings), then by name. Returns {pos: Map(id → {x, y}), width, height,
 * nodeW}. */
export function layout(nodeIds, edges, { nodeW, colGap } = sizes(nodeIds, edges)) {
  const depth = layers(nodeIds, edges);
  const columns = [];
  for (const id of nodeIds) {
    const d = depth.get(id);
    (columns[d] ||= []).push(id);
  }
  const row = new Map();
  const preds = new Map(nodeIds.map((id) => [id, []]));
  for (const e of edges) if (preds.has(e.target) && e.source !== e.target) preds.get(e.target).push(e.source);
  columns.forEach((col, d) => {
    const key = (id) => {
      const rows = preds.get(id).map((p) => row.get(p)).filter((r) => r !== undefined);
      return rows.length ? rows.reduce((a, b) => a + b, 0) / rows.length : Number.POSITIVE_INFINITY;
    };
    col.sort((a, b) => (d === 0 ? 0 : key(a) - key(b)) || a.localeCompare(b));
    col.forEach((id, i) => row.set(id, i));
  });
  const tallest = Math.max(1, ...columns.map((c) => (c ? c.length : 0)));
  const height = PAD * 2 + tallest * NODE_H + (tallest - 1) * ROW_GAP;
  const pos = new Map();
  columns.forEach((col, d) => {
    const colHeight = col.length * NODE_H + (col.length - 1) * ROW_GAP;
    const top = (height - colHeight) / 2;
    col.forEach((id, i) => pos.set(id, { x: PAD + d * (nodeW + colGap), y: top + i * (NODE_H + ROW_GAP) }));
  });
  const width = PAD * 2 + columns.length * nodeW + Math.max(0, columns.length - 1) * colGap;
  return { pos, width, height, nodeW };
}

/** The node's latest run state: `latest_state` is its type (COMPLETED), `latest_state_name`
 * its name (Completed); a live event sets both. */
function stateOf(node) {
  const type = node.latest_state ?? null;
  const name = node.latest_state_name ?? null;
  if (!type && !name) return { type: null, name: null };
  return { type: type || stateTypeOf(name), name: name || type.charAt(0) + type.slice(1).toLowerCase() };
}

export async function render(main, { isCurrent }) {
  const canvas = h("div", { class: "graph-wrap" });
  const listing = h("div");
  const errors = h("div");
  fill(
    main,
    h("div", { class: "page-head" }, h("h1", {}, "Flow-of-flows")),
    h("p", { class: "muted" }, "Deployments, and the automations that launch one from another. ",
      "A node's color is its latest run's state; dashed means paused."),
    h("p", { class: "legend", "aria-label": "Colors" },
      ["Completed", "Running", "Pending", "Scheduled", "Failed", "Crashed", "Cancelled"].map((s) => badge(null, s))),
    errors,
    h("section", { class: "card", "aria-label": "Graph" }, canvas),
    h("section", { class: "card", "aria-labelledby": "edges-h" }, h("h2", { id: "edges-h" }, "Edges"), listing),
  );

  let nodes = new Map();

  async function load() {
    let graph;
    try {
      graph = await api("/graph");
    } catch (exc) {
      if (isCurrent()) fill(errors, errorBox(exc));
      return;
    }
    if (!isCurrent()) return;
    fill(errors);
    nodes = new Map((graph.nodes || []).map((n) => [n.id, { ...n }]));
    draw(canvas, listing, [...nodes.values()], graph.edges || []);
  }

  const reload = throttle(load, 300);
  const unsubscribe = subscribe((event) => {
    const name = String(event.event || "");
    if (name === LOGS_EVENT) return;
    if (name.startsWith("flow-run.")) {
      const dep = event.resource?.deployment;
      const node = dep && nodes.get(dep);
      if (!node) return;
      const stateName = event.payload?.state || name.slice("flow-run.".length);
      node.latest_state = event.payload?.type || stateTypeOf(stateName);
      node.latest_state_name = stateName;
      paint(canvas, node);
    } else if (name.startsWith("automation.") || name.startsWith("deployment.")) {
      if (name === "automation.triggered" || name.startsWith("automation.action.")) return;
      reload();
    }
  });
  await load();
  return unsubscribe;
}

function draw(canvas, listing, nodes, edges) {
  if (!nodes.length) {
    fill(canvas, empty("No deployments yet. Deploy flows and apply automations to see how they connect."));
    fill(listing);
    return;
  }
  const ids = nodes.map((n) => n.id).sort();
  const { pos, width, height, nodeW } = layout(ids, edges);
  const root = svg("svg", {
    viewBox: `0 0 ${width} ${height}`, width, height, role: "img", id: "graph",
    "aria-label": `Flow-of-flows graph: ${nodes.length} nodes, ${edges.length} edges`,
  });
  root.append(svg("defs", {}, svg("marker", {
    id: "arrow", viewBox: "0 0 10 10", refX: 9, refY: 5, markerWidth: 8, markerHeight: 8, orient: "auto-start-reverse",
  }, svg("path", { d: "M0,0 L10,5 L0,10 z", class: "arrow" }))));
  const seenPairs = new Map();
  for (const e of edges) {
    const a = pos.get(e.source);
    const b = pos.get(e.target);
    if (!a || !b) continue;
    const pair = `${e.source}->${e.target}`;
    const nth = seenPairs.get(pair) || 0;
    seenPairs.set(pair, nth + 1);
    const x1 = a.x + nodeW;
    const y1 = a.y + NODE_H / 2;
    const x2 = b.x;
    const y2 = b.y + NODE_H / 2;
    const bend = Math.max(40, (x2 - x1) / 2);
    const d = x2 > x1
      ? `M${x1},${y1} C${x1 + bend},${y1} ${x2 - bend},${y2} ${x2},${y2}`
      : `M${x1},${y1} C${x1 + 80},${y1 - 90} ${x2 - 80},${y2 - 90} ${x2},${y2}`; // back edge
    const paused = e.enabled === false || e.paused === true;
    const group = svg("g", {
      class: `edge${paused ? " paused" : ""}`, "data-source": e.source, "data-target": e.target,
      "data-automation": e.automation,
    });
    group.append(svg("path", { d, "marker-end": "url(#arrow)" }));
    const mx = (x1 + x2) / 2;
    const my = (y1 + y2) / 2 + nth * 16 - (x2 > x1 ? 6 : 70);
    group.append(svg("text", { x: mx, y: my, "text-anchor": "middle", class: "edge-label" }, e.automation));
    group.append(svg("title", {}, `${e.automation}: ${e.label || e.kind || ""}${paused ? " (paused)" : ""}`));
    root.append(group);
  }
  for (const node of nodes) {
    const p = pos.get(node.id);
    const isDeployment = node.kind !== "source" && String(node.id).includes("/");
    const link = svg("a", {
      href: isDeployment ? `#/deployments/${String(node.id).split("/").map(encodeURIComponent).join("/")}` : undefined,
      class: "node", "data-node": node.id, tabindex: isDeployment ? undefined : -1,
    });
    link.append(svg("rect", { x: p.x, y: p.y, width: nodeW, height: NODE_H, rx: isDeployment ? 8 : 28 }));
    link.append(svg("text", { x: p.x + 12, y: p.y + 23, class: "node-title" }, clip(node.id, 40)));
    link.append(svg("text", { x: p.x + 12, y: p.y + 43, class: "node-state" }));
    link.append(svg("title", {}, node.id));
    root.append(link);
    paint(root, node);
  }
  fill(canvas, root);
  fill(listing, edges.length
    ? table(["From", "Automation", "To", "Trigger", ""], edges.map((e) => [
      e.source,
      h("a", { href: `#/automations/${encodeURIComponent(e.automation)}` }, e.automation),
      e.target,
      e.label || e.kind || "",
      e.enabled === false ? h("span", { class: "tag" }, "paused") : "",
    ]), { id: "edges" })
    : empty("No automation links these deployments yet."));
}

function paint(root, node) {
  const link = root.querySelector(`[data-node="${CSS.escape(node.id)}"]`);
  if (!link) return;
  const { type, name } = stateOf(node);
  const kind = type ? type.toLowerCase() : "none";
  link.setAttribute("class", `node s-${kind}${node.paused ? " paused" : ""}${node.kind === "source" ? " source" : ""}`);
  link.dataset.state = name || "";
  const label = link.querySelector(".node-state");
  const text = node.kind === "source" ? "event source" : name ? `latest: ${name}` : "no runs yet";
  label.textContent = node.paused ? `${text} · paused` : text;
}

function clip(text, n) {
  return text.length > n ? `${text.slice(0, n - 1)}…` : text;
}

