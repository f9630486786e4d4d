"""Seed 000 — Prefect 1 "Running dependent flows" (`create_flow_run` / `wait_for_flow_run` tasks),
on RabbitMQ with `flowrelay server` and `flowrelay worker` processes (tests/seeds/conftest.py).

Translations (smallest change), flows in tests/seeds/flows/seeds.py:
- `from prefect.tasks.prefect import create_flow_run, wait_for_flow_run` →
  `from engine import create_flow_run, wait_for_flow_run`; `with Flow("parent-flow") as flow:`
  (Prefect 1's deferred graph) → a `@flow` function calling them in order.
- `create_flow_run(flow_name="example", project_name="examples")`: flowrelay has no projects; a
  flow with one deployment is addressed by `flow_name=` alone (else `"FLOW/DEPLOYMENT"`).
- The seed's parameter key `"param-key"` is not a Python identifier, so no flow function can take
  it; the flow here takes `param_key`.
- "Imperative API" (`class ExtractSomeData(Task)`, `set_upstream(..., key="parameters")`): Prefect
  1's class-based tasks have no flowrelay form; it builds the same graph as the functional one,
  which is what is tested.
- `Flow("parent-flow", schedule=CronSchedule("30 9 * * 1-5", start_date=pendulum.now(tz=
  "US/Eastern")))` → `flowrelay deploy ... --cron "30 9 * * 1-5" --timezone US/Eastern`; the
  next fire times are checked with `flowrelay deployment next` (no test waits for 09:30).
- `create_flow_run(..., wait=True)` followed by `wait_for_flow_run(...)` in the seed is the same as
  `wait_for_flow_run(create_flow_run(...), raise_final_state=True)`: waiting listens to events.
"""

from __future__ import annotations

import pytest

from tests.integration.conftest import Cluster, wait_until

pytestmark = pytest.mark.rabbitmq


def inspect(cluster: Cluster, run_id: str) -> dict:
    return cluster.cli_json("flow-run", "inspect", run_id)  # type: ignore[return-value]


def watch(cluster: Cluster, deployment: str, *params: str, ok: bool = True) -> dict:
    """`flowrelay deployment run NAME --watch --json`: the final run."""
    args = [a for p in params for a in ("--param", p)]
    proc = cluster.cli("deployment", "run", deployment, *args, "--watch", "--json", check=ok)
    assert proc.returncode == (0 if ok else 1), proc.stdout + proc.stderr
    return inspect(cluster, __import__("json").loads(proc.stdout)["id"])


def test_parameters_generated_at_runtime_are_given_to_the_created_run(seed_cluster: Cluster) -> None:
    parent = watch(seed_cluster, "parent-flow-create/seeds")
    child_id = parent["result"]
    child = wait_until(lambda: (r := inspect(seed_cluster, child_id))["state"]["name"] == "Completed" and r,
                       what="the created example run completed")
    assert child["parameters"] == {"param_key": "some-random-piece-of-data"}
    assert child["result"] == "processed some-random-piece-of-data"
    assert child["parent_flow_run_id"] == parent["id"]


def test_flow_of_flows_a_then_b_and_c_then_d_each_waited_with_raise_final_state(seed_cluster: Cluster) -> None:
    parent = watch(seed_cluster, "parent-flow/seeds", "batch_id=fof-000")
    assert parent["state"]["name"] == "Completed"
    assert parent["result"] == "D[B(fof-000), C(fof-000)]"
    rows = {r[0]: r for r in seed_cluster.records() if r[3:] and "fof-000" in r[3]}
    assert rows["D"][3] == "B(fof-000)+C(fof-000)"
    a_t, b_t, c_t, d_t = (float(rows[n][2]) for n in "ABCD")
    assert a_t < min(b_t, c_t) and d_t > max(b_t, c_t)  # B and C after A, D after both
    children = parent["children"]
    assert sorted(c["flow_name"] for c in children) == ["A", "B", "C", "D"]
    assert all(c["state"]["name"] == "Completed" for c in children)
    # Each child has a create_flow_run task run (Completed once the run exists, with its id) and a
    # wait_for_flow_run one, which reflects the child's final state as its own.
    created = [t for t in parent["task_runs"] if t["task_key"].startswith("create_flow_run")]
    waited = [t for t in parent["task_runs"] if t["task_key"] == "wait_for_flow_run"]
    assert sorted(t["child_flow_run_id"] for t in created) == sorted(c["id"] for c in children)
    assert {t["child_flow_run_id"] for t in waited} == {c["id"] for c in children}
    assert all(t["state"]["name"] == "Completed" for t in created + waited)


def test_a_failed_child_fails_the_task_that_waits_and_the_parent(seed_cluster: Cluster) -> None:
    parent = watch(seed_cluster, "parent-of-broken/seeds", ok=False)
    assert parent["state"]["name"] == "Failed"
    [child] = parent["children"]
    assert child["flow_name"] == "broken" and child["state"]["name"] == "Failed"
    assert "broken child" in child["state"]["message"]
    tasks = {t["task_key"]: t for t in parent["task_runs"] if t["child_flow_run_id"] == child["id"]}
    # The task that waited took the child's state; the one that created it did its job (it was
    # left Running in a finished parent before: engine/runtime/deployments.py `launched`).
    assert tasks["wait_for_flow_run"]["state"]["name"] == "Failed"
    assert tasks["create_flow_run-broken/seeds"]["state"]["name"] == "Completed"


def test_always_the_most_recent_version_of_the_flow(seed_cluster: Cluster) -> None:
    # Given the child deployment registered again (a new version)
    before = seed_cluster.cli_json("deployment", "inspect", "example/seeds")
    seed_cluster.cli("deploy", f"{seed_cluster.flows}:example", "--name", "seeds", "--pool", seed_cluster.pool)
    after = seed_cluster.cli_json("deployment", "inspect", "example/seeds")
    assert after["version"] == before["version"] + 1
    # When the parent creates its run by flow name, Then that run uses the new version
    parent = watch(seed_cluster, "parent-flow-create/seeds")
    child = wait_until(lambda: (r := inspect(seed_cluster, parent["result"]))["state"]["name"] == "Completed" and r,
                       what="the example run completed")
    assert child["deployment_version"] == after["version"]


def test_a_retried_parent_does_not_launch_its_child_twice(seed_cluster: Cluster) -> None:
    parent = watch(seed_cluster, "parent-retried/seeds")
    assert parent["state"]["name"] == "Completed" and parent["result"] == "processed once"
    attempts = seed_cluster.records("parent-retried")
    assert len(attempts) == 2 and attempts[0][3] == attempts[1][3]  # the same child id twice
    assert [c["id"] for c in parent["children"]] == [attempts[0][3]]
    assert [r for r in seed_cluster.records("example") if r[3:] == ["once"]] != []
    assert len([r for r in seed_cluster.records("example") if r[3:] == ["once"]]) == 1
    states = [s["name"] for s in parent["states"]]
    assert "AwaitingRetry" in states and states[-1] == "Completed"


def test_weekday_schedule_in_us_eastern(seed_cluster: Cluster) -> None:
    seed_cluster.cli("deploy", f"{seed_cluster.flows}:parent_flow_of_flows", "--name", "weekdays",
                     "--pool", seed_cluster.pool, "--cron", "30 9 * * 1-5", "--timezone", "US/Eastern")
    try:
        nxt = seed_cluster.cli_json("deployment", "next", "parent-flow/weekdays", "--count", "3",
                                    "--after", "2026-11-27T00:00:00Z")
        # Friday 27 Nov, then Monday 30 Nov and Tuesday 1 Dec (the weekend skipped), 09:30 EST
        assert [n["utc"] for n in nxt] == [
            "2026-11-27T14:30:00Z", "2026-11-30T14:30:00Z", "2026-12-01T14:30:00Z"]
    finally:
        seed_cluster.cli("deployment", "pause", "parent-flow/weekdays")
