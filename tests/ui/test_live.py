"""What issue 7 asks of the UI, end to end on a real server, worker and RabbitMQ: the runs
table follows runs live, the graph shows a chain defined by an automation, and the Pause button
stops an automation from firing."""

from __future__ import annotations

from typing import Any

import pytest

from tests.ui.cluster import UiCluster, wait_until
from tests.ui.conftest import open_page

pytestmark = pytest.mark.rabbitmq


def test_runs_table_updates_live_when_a_run_completes(page: Any, ui: UiCluster) -> None:
    # Given the runs page, open, with a marker that a reload would wipe
    open_page(page, "/runs")
    page.evaluate("window.__notReloaded = true")

    # When a run is created and completes on the worker
    run_id = ui.run("slow/ui", {"seconds": 1.5})

    # Then its row appears, shows it Running, then Completed, with its duration: no reload
    row = f"#runs-body tr[data-run-id='{run_id}']"
    page.wait_for_selector(f"{row}[data-state='Running']", timeout=20_000)
    page.wait_for_selector(f"{row}[data-state='Completed']", timeout=20_000)
    cells = page.eval_on_selector(row, "r => [...r.cells].map(c => c.innerText)")
    assert cells[0] == "Completed"
    assert cells[2] == "slow" and cells[3] == "slow/ui"
    assert cells[5].endswith(" s") and 1.4 <= float(cells[5].split()[0]) < 10, cells[5]
    assert page.evaluate("window.__notReloaded") is True


def test_run_page_follows_a_run_to_its_end(page: Any, ui: UiCluster) -> None:
    # Given the page of a run opened before it finished
    run_id = ui.run("slow/ui", {"seconds": 2.5})
    open_page(page, f"/runs/{run_id}")
    page.evaluate("window.__notReloaded = true")
    page.wait_for_selector("#timeline")
    assert "Completed" not in page.eval_on_selector_all("#timeline li", "els => els.map(e => e.dataset.state)")

    # Then its states, logs and result arrive as it runs, without a reload
    page.wait_for_selector("#timeline li[data-state='Completed']", timeout=20_000)
    page.wait_for_function("() => (document.querySelector('#logs') || {}).innerText?.includes('awake')")
    states = page.eval_on_selector_all("#timeline li", "els => els.map(e => e.dataset.state)")
    assert states[-3:] == ["Pending", "Running", "Completed"], states
    assert page.inner_text("#result") == "2.5"
    assert page.is_hidden("text=Cancel run")
    assert page.evaluate("window.__notReloaded") is True


CHAIN = """
    automations:
      - name: ui-chain
        description: up Completed -> down, with the batch id
        trigger:
          type: flow-run-state-change
          match: {deployment: up/ui}
          expect: [Completed]
        actions:
          - type: run-deployment
            deployment: down/ui
            parameters:
              upstream_batch_id: "{{ event.payload.result.batch_id }}"
"""


def test_graph_shows_the_chain_and_colors_it_live(page: Any, ui: UiCluster) -> None:
    # Given up/ui -> down/ui chained by an automation
    ui.apply(CHAIN, "chain.yaml")
    open_page(page, "/graph")

    # Then the graph has the edge, left to right, named after the automation
    edge = "#graph g.edge[data-source='up/ui'][data-target='down/ui']"
    page.wait_for_selector(edge)
    assert page.get_attribute(edge, "data-automation") == "ui-chain"
    up_x = float(page.get_attribute("#graph a[data-node='up/ui'] rect", "x") or "nan")
    down_x = float(page.get_attribute("#graph a[data-node='down/ui'] rect", "x") or "nan")
    assert up_x < down_x
    assert "ui-chain" in page.inner_text("#edges")

    # When up runs, the automation launches down: both nodes turn Completed without a reload
    ui.run("up/ui", {"batch_id": "b-graph"})
    page.wait_for_selector("#graph a[data-node='up/ui'][data-state='Completed']", timeout=20_000)
    page.wait_for_selector("#graph a[data-node='down/ui'][data-state='Completed']", timeout=20_000)
    assert "s-completed" in (page.get_attribute("#graph a[data-node='down/ui']", "class") or "")


PING = """
    automations:
      - name: ui-ping
        trigger: {type: event, expect: [ui.ping]}
        actions:
          - type: run-deployment
            deployment: pinged/ui
            parameters: {source: "{{ event.payload.n }}"}
      - name: ui-ping-witness
        trigger: {type: event, expect: [ui.ping]}
        actions:
          - type: run-deployment
            deployment: witness/ui
            parameters: {source: "{{ event.payload.n }}"}
"""


def runs_for(ui: UiCluster, deployment: str, n: str) -> list[dict[str, Any]]:
    return [r for r in ui.runs(deployment=deployment) if r["parameters"].get("source") == n]


def test_pausing_an_automation_from_the_ui_stops_it_firing(page: Any, ui: UiCluster) -> None:
    # Given two automations on the same event; both fire
    ui.apply(PING, "ping.yaml")
    ui.post("/api/events", {"event": "ui.ping", "resource": {"id": "ping/1"}, "payload": {"n": "1"}})
    wait_until(lambda: runs_for(ui, "pinged/ui", "1") and runs_for(ui, "witness/ui", "1"),
               what="both automations fired for ping 1")

    # When ui-ping is paused with its button
    open_page(page, "/automations/ui-ping")
    page.click("button[data-action='pause']")
    page.wait_for_selector("h1 [data-enabled='false']")
    page.wait_for_selector("button[data-action='resume']")
    assert ui.get("/api/automations/ui-ping")["enabled"] is False

    # Then the next event fires the witness (so the event was evaluated) but not ui-ping
    ui.post("/api/events", {"event": "ui.ping", "resource": {"id": "ping/2"}, "payload": {"n": "2"}})
    # (the witness's run completing takes longer than the rule engine's handling of the event)
    wait_until(lambda: [r for r in runs_for(ui, "witness/ui", "2") if r["state_type"] == "COMPLETED"],
               what="the witness fired for ping 2 and its run completed")
    assert runs_for(ui, "pinged/ui", "2") == []

    # And the list shows it paused, with a Resume button
    open_page(page, "/automations")
    assert page.inner_text("#automations tr:has(a:text-is('ui-ping')) [data-enabled]") == "paused"
