"""Seed 001 — Prefect 1 "Running dependent flows" with `StartFlowRun` (the older form of seed 000),
on RabbitMQ with `flowrelay server` and `flowrelay worker` processes (tests/seeds/conftest.py).

Translations (smallest change), flows in tests/seeds/flows/seeds.py:
- `StartFlowRun(flow_name="example", project_name="examples")(parameters=extract_some_data)` →
  `run_deployment("example/seeds", parameters=extract_some_data())` inside a `@flow`; no projects
  in flowrelay, a deployment is `FLOW/DEPLOYMENT`.
- `StartFlowRun(..., wait=True)` for A, B, C, D with `upstream_tasks` → `run_deployment` (it
  waits by default, on events), B and C with `asyncio.gather` so they run at the same time.
- The imperative API (`class ExtractSomeData(Task)`, `set_upstream`) is Prefect 1's class-based
  task graph: no flowrelay form; it describes the same graph, tested once. (The seed's own
  imperative snippet has a syntax error, `class ExtractSomeData(Task)` without a colon.)
- The weekday `CronSchedule` is tested in test_seed_000 (`--cron ... --timezone US/Eastern`).
- "If running on Prefect Cloud, wait=True requires at least 2 Flow concurrency slots": in
  flowrelay a waiting parent holds a worker slot, so the parent and its children need a worker
  (or workers) with concurrency ≥ 2; the cluster's worker has 8. No Cloud slots to check.
"""

from __future__ import annotations

import json

import pytest

from tests.integration.conftest import Cluster

pytestmark = pytest.mark.rabbitmq


def watch(cluster: Cluster, deployment: str, *params: str) -> dict:
    args = [a for p in params for a in ("--param", p)]
    proc = cluster.cli("deployment", "run", deployment, *args, "--watch", "--json")
    return cluster.cli_json("flow-run", "inspect", json.loads(proc.stdout)["id"])  # type: ignore[return-value]


def test_start_flow_run_with_parameters_from_a_task(seed_cluster: Cluster) -> None:
    parent = watch(seed_cluster, "parent-flow-start/seeds")
    assert parent["state"]["name"] == "Completed"
    assert parent["result"] == "processed some-random-piece-of-data"
    [child] = parent["children"]
    assert child["flow_name"] == "example" and child["deployment_name"] == "example/seeds"
    assert child["parameters"] == {"param_key": "some-random-piece-of-data"}
    # wait=True: the calling task run reflects the child's state
    [mirror] = [t for t in parent["task_runs"] if t["child_flow_run_id"] == child["id"]]
    assert mirror["state"]["name"] == "Completed"


def test_flow_of_flows_with_wait_runs_a_then_b_and_c_together_then_d(seed_cluster: Cluster) -> None:
    parent = watch(seed_cluster, "parent-flow-wait/seeds", "batch_id=fof-001")
    assert parent["state"]["name"] == "Completed"
    assert parent["result"] == "D[B(fof-001), C(fof-001)]"
    rows = {r[0]: r for r in seed_cluster.records() if r[3:] and "fof-001" in r[3]}
    a_t, b_t, c_t, d_t = (float(rows[n][2]) for n in "ABCD")
    assert a_t < min(b_t, c_t) and d_t > max(b_t, c_t)
    children = {c["flow_name"]: c for c in parent["children"]}
    assert sorted(children) == ["A", "B", "C", "D"]
    # B and C overlapped: each started before the other ended (no duration is assumed)
    b, c = children["B"], children["C"]
    assert b["start_time"] < c["end_time"] and c["start_time"] < b["end_time"]
    mirrors = [t for t in parent["task_runs"] if t["child_flow_run_id"]]
    assert len(mirrors) == 4 and all(t["state"]["name"] == "Completed" for t in mirrors)
