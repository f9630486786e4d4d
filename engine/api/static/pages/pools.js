// Work pools: each pool's concurrency limit, live workers, busy and waiting runs (and runs
// stranded with no live worker), then every worker with its runs, last heartbeat and the code
// its warm children have loaded. Run events (a run claimed, finished, waiting) refresh it.

import { api, listItems, subscribe } from "../api.js";
import { empty, errorBox, fill, h, relative, section, table, throttle } from "../util.js";

const OPEN = new Set(["Pending", "Running", "Cancelling"]);

export async function render(main, { isCurrent }) {
  const parts = { pools: h("div"), workers: h("div") };
  fill(
    main,
    h("div", { class: "page-head" }, h("h1", {}, "Work pools")),
    section("Pools", parts.pools),
    section("Workers", parts.workers),
  );

  async function load() {
    let pools, workers;
    try {
      [pools, workers] = await Promise.all([api("/work-pools"), api("/workers")]);
    } catch (exc) {
      if (isCurrent()) fill(parts.pools, errorBox(exc));
      return;
    }
    if (!isCurrent()) return;
    drawPools(parts.pools, listItems(pools));
    drawWorkers(parts.workers, listItems(workers));
  }

  const reload = throttle(load, 1000);
  const unsubscribe = subscribe((event) => {
    if (String(event.event || "").startsWith("flow-run.")) reload();
  });
  await load();
  return unsubscribe;
}

function drawPools(node, pools) {
  if (!pools.length) {
    fill(node, empty("No work pools yet: a pool exists once a deployment names it or a worker serves it."));
    return;
  }
  fill(node, table(
    ["Pool", "Limit", "Live workers", "Busy", "Waiting", "Without a worker"],
    pools.map((p) => {
      const waiting = Object.entries(p.runs || {}).filter(([s]) => !OPEN.has(s)).reduce((n, [, c]) => n + c, 0);
      const load = p.concurrency_limit ? `${p.busy} / ${p.concurrency_limit}` : String(p.busy);
      return [
        h("strong", { "data-pool": p.name }, p.name),
        p.concurrency_limit ? String(p.concurrency_limit) : "no limit",
        p.live_workers ? String(p.live_workers) : h("span", { class: "error-text" }, "none"),
        load,
        String(waiting),
        p.waiting_without_worker
          ? h("span", { class: "error-text" }, `${p.waiting_without_worker} run(s) stranded: start flowrelay worker --pool ${p.name}`)
          : "–",
      ];
    }),
    { id: "pools" },
  ));
}

function drawWorkers(node, workers) {
  if (!workers.length) {
    fill(node, empty("No workers: start one with `flowrelay worker --pool NAME`."));
    return;
  }
  fill(node, table(
    ["Worker", "Pool", "Alive", "Runs held", "Concurrency", "Last heartbeat", "Code loaded"],
    workers.map((w) => [
      h("span", { class: "mono" }, w.id),
      w.pool,
      w.alive ? "yes" : h("span", { class: "error-text" }, "no"),
      String((w.runs || []).length),
      w.concurrency ? String(w.concurrency) : "–",
      relative(w.last_seen),
      (w.code || []).length
        ? (w.code || []).map((c) => h("div", { class: "mono small", title: c }, c === "env" ? "installed code" : c.slice(0, 19)))
        : "–",
    ]),
    { id: "workers" },
  ));
}
