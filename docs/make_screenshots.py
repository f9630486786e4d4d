"""Screenshots of the web UI for the README, from a real cluster.

    .venv/bin/python docs/make_screenshots.py            # writes docs/screenshots/*.png

Needs RabbitMQ on 127.0.0.1:5672 (or FLOWRELAY_TEST_AMQP_URL) and Debian's chromium at
/usr/bin/chromium. It starts a `flowrelay server` and a `flowrelay worker` (the browser tests'
`tests/ui/cluster.py`: own broker prefix and database, removed afterwards), deploys the examples'
flow-of-flows (`examples/flows.py`, wired by `examples/automations.yaml`), runs a few chains, a
run with bad parameters and half of a join, and photographs the main pages.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.ui.cluster import UiCluster, wait_until  # noqa: E402

OUT = ROOT / "docs" / "screenshots"
AMQP_URL = os.environ.get("FLOWRELAY_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
CHROMIUM = os.environ.get("FLOWRELAY_TEST_CHROMIUM", "/usr/bin/chromium")
FLOWS = ["upstream_flow", "downstream_flow", "flow_a", "flow_b", "flow_c", "flow_d"]
WEEKDAYS_NY = {"schedules": [{"cron": "30 9 * * 1-5", "timezone": "America/New_York", "id": "weekdays"}]}


def latest(c: UiCluster, deployment: str, **match: Any) -> dict[str, Any] | None:
    for run in c.runs(deployment=deployment):
        if all(run["parameters"].get(k) == v for k, v in match.items()) and run["state_type"] == "COMPLETED":
            return run
    return None


def populate(c: UiCluster) -> dict[str, str]:
    """Deployments, automations and runs; returns the ids the screenshots open."""
    c.deploy_all("demo", FLOWS, upstream_flow=WEEKDAYS_NY)
    c.cli("automation", "apply", str(ROOT / "examples" / "automations.yaml"))
    for batch in ("b-1001", "b-1002"):
        c.run("upstream-data-preparation/demo")
        c.run("A/demo", {"batch_id": batch})
        wait_until(lambda: latest(c, "D/demo", b=f"B({batch})"), timeout=60,  # noqa: B023 - used at once
                   what=f"D for {batch}")
    downstream = wait_until(lambda: latest(c, "downstream-processing/demo"), what="a downstream run")
    # a run refused by its parameters (Failed, never Running), and half of a join: B without C
    c.wait_final(c.run("downstream-processing/demo", {"upstream_batch_id": ["not", "a", "string"]}))
    c.wait_final(c.run("B/demo", {"batch_id": "b-1003"}))
    wait_until(lambda: c.get("/api/automations/D-after-B-and-C")["pending"], what="an open join")
    return {"downstream": downstream["id"]}


def shoot(c: UiCluster, ids: dict[str, str]) -> list[Path]:
    from playwright.sync_api import sync_playwright

    OUT.mkdir(parents=True, exist_ok=True)
    shots = [
        ("runs", "/runs"),
        ("run", f"/runs/{ids['downstream']}"),
        ("graph", "/graph"),
        ("automation", "/automations/D-after-B-and-C"),
        ("deployment", "/deployments/upstream-data-preparation/demo"),
    ]
    written = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page(base_url=c.url, viewport={"width": 1360, "height": 860})
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            for name, route in shots:
                page.goto(f"/#{route}")
                page.wait_for_selector("#live.is-live")
                page.wait_for_function("r => document.querySelector('main').dataset.route === r", arg=route)
                page.wait_for_timeout(400)  # let the row highlight fade
                path = OUT / f"{name}.png"
                page.screenshot(path=str(path), full_page=name != "runs")
                written.append(path)
            if errors:
                raise SystemExit("the browser reported errors:\n" + "\n".join(errors))
        finally:
            browser.close()
    return written


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="flowrelay-shots-") as tmp:
        cluster = UiCluster(AMQP_URL, Path(tmp), flows=ROOT / "examples" / "flows.py")
        try:
            cluster.start()
            ids = populate(cluster)
            for path in shoot(cluster, ids):
                print(path.relative_to(ROOT))
        finally:
            cluster.close()


if __name__ == "__main__":
    main()
