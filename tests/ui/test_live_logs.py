"""The run page shows a run's log lines while it runs: the server's ``flow-run.logs`` notice on
the event stream (worker → write_logs over RabbitMQ → server → browser) makes the page read them,
without a reload and without waiting for the run to end."""

from __future__ import annotations

from typing import Any

import pytest

from tests.ui.cluster import UiCluster
from tests.ui.conftest import open_page

pytestmark = pytest.mark.rabbitmq

#: Records the ``flow-run.logs`` frames the server sends, on a stream of its own.
WATCH_NOTICES = """() => {
  window.__logNotices = [];
  const source = new EventSource("/api/stream?match=flow-run.logs");
  source.addEventListener("flow-run.logs", (m) => window.__logNotices.push(JSON.parse(m.data)));
  return new Promise((resolve) => { source.onopen = () => resolve(true); });
}"""

#: True once the page has read the run's logs more often than its states.
READ_LOGS_ALONE = """id => {
  const urls = performance.getEntriesByType("resource").map((e) => e.name);
  const reads = (part) => urls.filter((u) => u.includes(`/api/flow-runs/${id}/${part}`)).length;
  return reads("logs") > reads("states");
}"""


def test_run_page_shows_log_lines_while_the_run_is_running(page: Any, ui: UiCluster) -> None:
    # Given the page of a run that logs a line, then works quietly for a while
    run_id = ui.run("chatty/ui", {"seconds": 8})
    open_page(page, f"/runs/{run_id}")
    page.evaluate(WATCH_NOTICES)
    page.evaluate("window.__notReloaded = true")

    # When the run logs its line, the page shows it while the run is still Running
    page.wait_for_function(
        "() => (document.querySelector('#logs') || {}).innerText?.includes('chatty: started')",
        timeout=20_000,
    )
    assert ui.get(f"/api/flow-runs/{run_id}")["state_type"] == "RUNNING"
    states = page.eval_on_selector_all("#timeline li", "els => els.map(e => e.dataset.state)")
    assert states[-1] == "Running", states

    # And the server told the stream of the run's new line, upon which the page read the logs
    # alone (a state or task event would have read the rest of the run with them)
    page.wait_for_function(
        "id => window.__logNotices.some(e => e.resource.id === `flow-run/${id}` && e.payload.count >= 1)",
        arg=run_id,
    )
    page.wait_for_function(READ_LOGS_ALONE, arg=run_id)

    # Then the run ends on the same page, which was never reloaded
    page.wait_for_selector("#timeline li[data-state='Completed']", timeout=30_000)
    assert "chatty: started" in page.inner_text("#logs")
    assert page.evaluate("window.__notReloaded") is True
