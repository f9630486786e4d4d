// Hash routes: `#/runs/abc?state=FAILED`. Pages read their filters from the query part, so a
// filtered view is a link that can be shared.

/** The current route: {path: "/runs/abc", query: URLSearchParams}. */
export function currentRoute() {
  const raw = window.location.hash.replace(/^#/, "") || "/runs";
  const [path, search = ""] = raw.split("?");
  return { path: path || "/runs", query: new URLSearchParams(search) };
}

/** Go to `path` with `query` (an object; empty values are left out). */
export function navigate(path, query = {}, { replace = false } = {}) {
  const params = new URLSearchParams();
  for (const [key, value] of Object.entries(query)) {
    if (value !== undefined && value !== null && value !== "") params.set(key, value);
  }
  const search = params.toString();
  const hash = `#${path}${search ? `?${search}` : ""}`;
  if (window.location.hash === hash) return;
  if (replace) {
    window.history.replaceState(null, "", hash);
    window.dispatchEvent(new HashChangeEvent("hashchange"));
  } else {
    window.location.hash = hash;
  }
}
