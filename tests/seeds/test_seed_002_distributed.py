"""Seed 002 — "Prefect Flow Dependencies Guide": the deployment, CLI, state-based and event-driven
patterns, on RabbitMQ with `flowrelay server` and `flowrelay worker` processes
(tests/seeds/conftest.py); flows in tests/seeds/flows/seeds.py.

Translations (smallest change):
- `docker-compose exec prefect-server prefect deployment run "Upstream Data Preparation/upstream-
  data-preparation"` → `flowrelay deployment run "Upstream Data Preparation/upstream-data-preparation"`
  (flow names with spaces, as in the seed); `--param upstream_batch_id=batch_123` unchanged.
- `docker-compose exec prefect-server python /opt/prefect/flows/orchestrator_flow.py` → `python
  seeds.py` against the cluster's broker.
- `run_deployment(name="downstream-processing", ...)`: a deployment is `FLOW/DEPLOYMENT` (as in
  Prefect 2, where the bare name would not resolve either).
- "State-based dependencies" polls `read_flow_runs` every 10 s; the flowrelay form takes the
  latest run and waits on its events (`wait_for_flow_run`), nothing polls.
- "Event-driven dependencies" (a Prefect automation in JSON, "configured in UI or API") → the same
  rule in flowrelay's YAML, `flowrelay automation apply`; `{"flow.name": ...}` → `{flow: ...}`,
  `deployment_id` → the deployment's `FLOW/NAME`, plus the batch id passed on by a template.
- Circuit breaker: besides the task of the guide (tested in test_seed_002_flow_dependencies_guide),
  the event-driven form from the README (`threshold: 3` Failed → `pause-deployment`).
- `prefect flow-run ls --limit 10`, `flow-run inspect`, `deployment ls`, `deployment inspect` →
  the same `flowrelay` commands. "Runs every 2 hours" / "hourly" → `--interval 2h` / `1h`.
- "Option 3: demo_flow_dependencies.py": the guide does not show that script; nothing to run.
"""

from __future__ import annotations

import json
from datetime import datetime

import pytest

from tests.integration.conftest import Cluster, wait_until

pytestmark = pytest.mark.rabbitmq

UPSTREAM = "Upstream Data Preparation/upstream-data-preparation"
DOWNSTREAM = "Downstream Data Processing/downstream-processing"


@pytest.fixture(scope="module")
def guide(seed_cluster: Cluster) -> Cluster:
    """The guide's two deployments, registered with the CLI as a user would (the downstream one
    with no schedule, 'triggered by upstream')."""
    seed_cluster.deploy("upstream_data_preparation", "upstream-data-preparation",
                        "--description", "prepares a batch", "--tag", "etl")
    seed_cluster.deploy("downstream_flow", "downstream-processing", "--tag", "etl")
    return seed_cluster


def run(cluster: Cluster, deployment: str, *params: str, watch: bool = True) -> dict:
    args = [a for p in params for a in ("--param", p)]
    proc = cluster.cli("deployment", "run", deployment, *args, *(["--watch"] if watch else []), "--json")
    return cluster.cli_json("flow-run", "inspect", json.loads(proc.stdout)["id"])  # type: ignore[return-value]


def runs_of(cluster: Cluster, flow_name: str) -> list[dict]:
    return cluster.cli_json("flow-run", "ls", "--flow", flow_name, "--limit", "100")  # type: ignore[return-value]


def test_trigger_deployments_from_the_cli_with_parameters(guide: Cluster) -> None:
    upstream = run(guide, UPSTREAM, "batch_id=batch-cli")
    assert upstream["state"]["name"] == "Completed" and upstream["result"] == {"batch_id": "batch-cli"}
    downstream = run(guide, DOWNSTREAM, "upstream_batch_id=batch_123")
    assert downstream["parameters"] == {"upstream_batch_id": "batch_123"}
    assert downstream["result"] == "processed batch_123"
    # "Parameter passing": without a batch id, the downstream flow takes the latest upstream one
    latest = run(guide, DOWNSTREAM)
    assert latest["state"]["name"] == "Completed" and latest["result"] == "processed batch-cli"


def test_run_deployment_from_an_async_task_returns_the_run_id(guide: Cluster) -> None:
    parent = run(guide, "trigger/seeds")
    assert parent["state"]["name"] == "Completed"
    child = guide.cli_json("flow-run", "inspect", parent["result"])
    assert child["deployment_name"] == DOWNSTREAM and child["parent_flow_run_id"] == parent["id"]
    assert child["parameters"] == {"upstream_batch_id": "batch_123"}
    assert child["state"]["name"] == "Completed" and child["result"] == "processed batch_123"


def test_state_based_dependency_waits_on_the_upstream_runs_events(guide: Cluster) -> None:
    upstream = run(guide, UPSTREAM, "batch_id=batch-state", "seconds=1.0", watch=False)
    waiter = run(guide, "waits-for-upstream/seeds")
    assert waiter["state"]["name"] == "Completed" and waiter["result"] == "processed batch-state"
    upstream = guide.cli_json("flow-run", "inspect", upstream["id"])
    assert upstream["state"]["name"] == "Completed"
    [(up_t, _)] = [(float(r[2]), r) for r in guide.records("upstream") if r[3:] == ["batch-state"]]
    [(down_t, _)] = [(float(r[2]), r) for r in guide.records("downstream") if r[3:] == ["batch-state"]]
    assert up_t < down_t


def test_run_the_orchestrator_script(guide: Cluster) -> None:
    proc = guide.python(f"import runpy; runpy.run_path({str(guide.flows)!r}, run_name='__main__')")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "processed batch-orch" in proc.stdout
    [orchestrator] = runs_of(guide, "orchestrator")
    detail = guide.cli_json("flow-run", "inspect", orchestrator["id"])
    assert detail["state"]["name"] == "Completed"
    assert sorted(c["flow_name"] for c in detail["children"]) == [
        "Downstream Data Processing", "Upstream Data Preparation"]


def test_monitoring_commands(guide: Cluster) -> None:
    listed = guide.cli_json("flow-run", "ls", "--limit", "10")
    assert 0 < len(listed) <= 10
    detail = guide.cli_json("flow-run", "inspect", listed[0]["id"])
    assert detail["id"] == listed[0]["id"] and "states" in detail
    deployments = {f"{d['flow_name']}/{d['name']}" for d in guide.cli_json("deployment", "ls")}
    assert {UPSTREAM, DOWNSTREAM} <= deployments
    upstream = guide.cli_json("deployment", "inspect", UPSTREAM)
    assert upstream["description"] == "prepares a batch" and upstream["tags"] == ["etl"]
    text = guide.cli("flow-run", "ls", "--limit", "10").stdout
    assert listed[0]["name"] in text


def test_event_driven_dependency_with_an_automation(guide: Cluster) -> None:
    rules = guide.workdir / "downstream-after-upstream.yaml"
    rules.write_text(f"""
automations:
  - name: downstream-after-upstream
    trigger:
      type: flow-run-state-change
      match: {{flow: "Upstream Data Preparation"}}
      expect: [Completed]
    actions:
      - type: run-deployment
        deployment: "{DOWNSTREAM}"
        parameters:
          upstream_batch_id: "{{{{ event.payload.result.batch_id }}}}"
""")
    guide.cli("automation", "apply", str(rules))
    try:
        upstream = run(guide, UPSTREAM, "batch_id=batch-evt")

        def launched() -> dict | None:
            for r in runs_of(guide, "Downstream Data Processing"):
                if r["parameters"] == {"upstream_batch_id": "batch-evt"} and r["state"]["name"] == "Completed":
                    return r
            return None

        downstream = wait_until(launched, timeout=30, what="downstream launched by the automation")
        assert downstream["result"] == "processed batch-evt"
        detail = guide.cli_json("flow-run", "inspect", downstream["id"])
        assert detail["caused_by"]["automation"] == "downstream-after-upstream"
        assert detail["start_time"] > upstream["end_time"]
    finally:
        guide.cli("automation", "delete", "downstream-after-upstream")


def test_circuit_breaker_automation_pauses_a_failing_deployment(guide: Cluster) -> None:
    rules = guide.workdir / "circuit-breaker.yaml"
    rules.write_text("""
automations:
  - name: circuit-breaker
    trigger:
      type: flow-run-state-change
      match: {deployment: flaky/seeds}
      expect: [Failed]
      threshold: 3
      within: 5m
    actions:
      - type: pause-deployment
""")
    guide.cli("automation", "apply", str(rules))
    try:
        for _ in range(2):
            guide.cli("deployment", "run", "flaky/seeds", "--watch", check=False)
        assert guide.cli_json("deployment", "inspect", "flaky/seeds")["paused"] is False
        guide.cli("deployment", "run", "flaky/seeds", "--watch", check=False)
        wait_until(lambda: guide.cli_json("deployment", "inspect", "flaky/seeds")["paused"],
                   timeout=30, what="flaky/seeds paused by the circuit breaker")
        assert len(guide.records("flaky")) == 3
    finally:
        guide.cli("automation", "delete", "circuit-breaker")
        guide.cli("deployment", "resume", "flaky/seeds")


def test_every_two_hours_and_hourly_schedules(guide: Cluster) -> None:
    # "upstream-data-preparation - Runs every 2 hours", "data-processing-demo - Runs hourly" (as
    # deployments of their own here, paused at the end, so the other tests' runs stay theirs)
    schedules = [("Upstream Data Preparation/every-2h", "upstream_data_preparation", 2),
                 ("Data Processing/data-processing-demo", "data_processing_flow", 1)]
    for name, fn, hours in schedules:
        guide.cli("deploy", f"{guide.flows}:{fn}", "--name", name.split("/")[1], "--pool", guide.pool,
                  "--interval", f"{hours}h")
    try:
        for name, _, hours in schedules:
            nxt = guide.cli_json("deployment", "next", name, "--count", "3")
            times = [datetime.fromisoformat(n["utc"].replace("Z", "+00:00")) for n in nxt]
            assert [(b - a).total_seconds() for a, b in zip(times, times[1:], strict=False)] == [hours * 3600.0] * 2
    finally:
        for name, _, _ in schedules:
            guide.cli("deployment", "pause", name)
