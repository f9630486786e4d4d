"""Every page of the UI opens on a real server, shows its data, and logs no error on the
browser console (the `page` fixture fails the test on any)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.integration.conftest import wait_until
from tests.ui.cluster import UiCluster
from tests.ui.conftest import open_page

pytestmark = pytest.mark.rabbitmq


@pytest.fixture(scope="module")
def finished_run(ui: UiCluster) -> dict[str, Any]:
    """A completed run of `up/ui` (with a task run and a log line)."""
    return ui.wait_final(ui.run("up/ui", {"batch_id": "b-pages"}))


@pytest.mark.parametrize(
    ("route", "heading"),
    [
        ("/runs", "Flow runs"),
        ("/graph", "Flow-of-flows"),
        ("/deployments", "Deployments"),
        ("/deployments/up/ui", "up/ui"),
        ("/automations", "Automations"),
        ("/work-pools", "Work pools"),
        ("/no/such/page", "Not found"),
    ],
)
def test_page_opens_without_errors(page: Any, route: str, heading: str) -> None:
    open_page(page, route)
    assert heading in page.inner_text("main h1")


def test_run_page_shows_states_task_runs_logs_and_result(page: Any, finished_run: dict[str, Any]) -> None:
    open_page(page, f"/runs/{finished_run['id']}")

    page.wait_for_selector("#timeline")
    states = page.eval_on_selector_all("#timeline li", "els => els.map(e => e.dataset.state)")
    assert states[-1] == "Completed" and "Running" in states
    assert "prepared batch b-pages" in page.inner_text("#logs")
    assert "prepare" in page.inner_text("#task-runs")
    assert '"batch_id": "b-pages"' in page.inner_text("#result")
    assert "Started by a request through the HTTP API" in page.inner_text("#why")


def test_run_page_shows_a_failed_runs_traceback(page: Any, ui: UiCluster) -> None:
    run = ui.wait_final(ui.run("broken/ui", {"batch_id": "b-bad"}))
    assert run["state_type"] == "FAILED"
    open_page(page, f"/runs/{run['id']}")

    page.wait_for_selector("#traceback")
    text = page.inner_text("#traceback")
    assert text.startswith("Traceback (most recent call last):")
    assert "flows.py\", line" in text and "in _check" in text and "in broken" in text
    assert text.rstrip().endswith("ValueError: bad batch b-bad")
    assert "engine/runtime" not in text  # the engine's frames are trimmed
    assert "Encountered exception during execution" in page.inner_text("#logs")


def test_runs_filters_narrow_the_table(page: Any, finished_run: dict[str, Any]) -> None:
    open_page(page, "/runs")
    page.select_option("#f-state", "COMPLETED")
    page.fill("#f-deployment", "up/ui")
    page.click("form.filters button[type=submit]")

    page.wait_for_function("() => location.hash.includes('deployment=up%2Fui')")
    page.wait_for_selector(f"tr[data-run-id='{finished_run['id']}']")
    deployments = page.eval_on_selector_all("#runs-body tr", "rows => rows.map(r => r.cells[3].innerText)")
    assert deployments and set(deployments) == {"up/ui"}


def test_deployment_run_button_starts_a_run_with_the_given_parameters(page: Any, ui: UiCluster) -> None:
    open_page(page, "/deployments/pinged/ui")
    page.fill("#run-params", '{"source": "the run button"}')
    page.click(".run-form button[type=submit]")

    page.wait_for_function("() => /^#\\/runs\\/[0-9a-f-]{36}$/.test(location.hash)")
    run_id = page.evaluate("location.hash.split('/').pop()")
    run = ui.wait_final(run_id)
    assert run["parameters"] == {"source": "the run button"}
    assert run["deployment"] == "pinged/ui"


def test_run_form_refuses_parameters_that_are_not_a_json_object(page: Any, ui: UiCluster) -> None:
    before = len(ui.runs(deployment="pinged/ui"))
    open_page(page, "/deployments/pinged/ui")
    page.fill("#run-params", "[1, 2]")
    page.click(".run-form button[type=submit]")

    assert "must be a JSON object" in page.inner_text("#run-status")
    assert page.get_attribute("#run-params", "aria-invalid") == "true"
    assert len(ui.runs(deployment="pinged/ui")) == before


def test_work_pools_page_and_a_run_without_a_worker_are_flagged(page: Any, ui: UiCluster) -> None:
    lonely = "ui-lonely"
    ui.extra_pools.append(lonely)
    ui.cli("deploy", f"{ui.flows}:pinged", "--name", "lonely", "--pool", lonely)
    run_id = ui.run("pinged/lonely", {"source": "nobody"})
    # the cluster's heartbeat timeout is 3 s: once past it, the run is flagged
    wait_until(lambda: ui.get(f"/api/flow-runs/{run_id}").get("waiting"), timeout=30,
               what="the run flagged without a worker")

    open_page(page, "/work-pools")
    page.wait_for_selector(f"#pools [data-pool='{lonely}']")
    row = page.inner_text(f"#pools tr:has([data-pool='{lonely}'])")
    assert "none" in row and "1 run(s) stranded" in row
    row = page.inner_text(f"#pools tr:has([data-pool='{ui.pool}'])")
    assert "none" not in row  # the cluster's worker serves it
    assert ui.pool in page.inner_text("#workers")

    open_page(page, "/runs")
    page.wait_for_selector(f"tr[data-run-id='{run_id}'] [data-waiting]")
    open_page(page, f"/runs/{run_id}")
    page.wait_for_selector("#run-waiting")
    assert f"no live worker on pool {lonely}" in page.inner_text("#run-waiting")

    ui.post(f"/api/flow-runs/{run_id}/cancel")  # leave the shared cluster as it was
