// The flowrelay web UI: hash routes, each page a module with `render(main, route)` that returns
// a cleanup function (called when the page is left: it drops its event subscriptions).

import { adoptTokenFromUrl, api, getToken, onStreamStatus, openStream, setToken } from "./api.js";
import { currentRoute } from "./router.js";
import { h, fill } from "./util.js";
import * as automations from "./pages/automations.js";
import * as deployments from "./pages/deployments.js";
import * as graph from "./pages/graph.js";
import * as pools from "./pages/pools.js";
import * as run from "./pages/run.js";
import * as runs from "./pages/runs.js";

const ROUTES = [
  [/^\/runs\/([^/]+)$/, run, "runs"],
  [/^\/runs$/, runs, "runs"],
  [/^\/graph$/, graph, "graph"],
  [/^\/deployments\/([^/]+)\/([^/]+)$/, deployments, "deployments"],
  [/^\/deployments$/, deployments, "deployments"],
  [/^\/automations\/([^/]+)$/, automations, "automations"],
  [/^\/automations$/, automations, "automations"],
  [/^\/work-pools$/, pools, "work-pools"],
];

let cleanup = null;
let generation = 0;

async function route() {
  const { path, query } = currentRoute();
  const main = document.getElementById("main");
  if (cleanup) {
    cleanup();
    cleanup = null;
  }
  const mine = ++generation;
  delete main.dataset.route;
  let page = null;
  let params = [];
  let section = "";
  for (const [pattern, module, name] of ROUTES) {
    const match = path.match(pattern);
    if (match) {
      page = module;
      params = match.slice(1).map(decodeURIComponent);
      section = name;
      break;
    }
  }
  for (const link of document.querySelectorAll("nav a[data-section]")) {
    if (link.dataset.section === section) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  if (!page) {
    fill(main, h("h1", {}, "Not found"), h("p", {}, "No page at ", h("code", {}, path), ". ",
      h("a", { href: "#/runs" }, "Back to the runs")));
    main.dataset.route = path;
    return;
  }
  fill(main, h("p", { class: "muted loading" }, "Loading…"));
  const done = await page.render(main, { params, query, isCurrent: () => mine === generation });
  if (mine !== generation) {
    if (typeof done === "function") done();
    return;
  }
  cleanup = typeof done === "function" ? done : null;
  main.dataset.page = section;
  main.dataset.route = path; // rendered: what tests and screenshots wait for
}

function showBanner(error) {
  const banner = document.getElementById("banner");
  if (!error) {
    banner.hidden = true;
    return;
  }
  const input = h("input", { id: "token-input", type: "password", autocomplete: "off", required: true });
  fill(
    banner,
    h(
      "form",
      {
        class: "token-form",
        onsubmit: (e) => {
          e.preventDefault();
          setToken(input.value.trim());
          window.location.reload();
        },
      },
      h("span", {}, error),
      h("label", { for: "token-input" }, "API token"),
      input,
      h("button", { type: "submit" }, "Use token"),
    ),
  );
  banner.hidden = false;
}

async function start() {
  adoptTokenFromUrl();
  const live = document.getElementById("live");
  onStreamStatus((status) => {
    live.textContent = status === "live" ? "● live" : status;
    live.className = `live is-${status}`;
  });
  let authorized = true;
  try {
    await api("/flow-runs", { query: { limit: 1 } });
  } catch (exc) {
    if (exc.status === 401 || exc.status === 403) {
      authorized = false;
      showBanner(getToken() ? "The saved API token was refused." : "This server needs an API token.");
    }
  }
  if (authorized) openStream();
  else live.textContent = "no token";
  window.addEventListener("hashchange", route);
  await route();
}

start();
