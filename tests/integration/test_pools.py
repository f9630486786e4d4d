"""Work pools through the CLI, with `flowrelay server` and `flowrelay worker` processes on
RabbitMQ: a pool limit of 2 with 6 runs queued never has more than 2 Running at once, `worker ls`
and `pool inspect` tell the truth meanwhile, and a run on a pool without workers is flagged
("waiting: no live worker on pool P") within the heartbeat timeout."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import Cluster, wait_until

pytestmark = pytest.mark.rabbitmq

FLOWS = '''
import time

from engine import flow


@flow(name="steady")
def steady(seconds: float = 1.5) -> float:
    time.sleep(seconds)
    return seconds
'''


def as_json(cluster: Cluster, *args: str) -> Any:
    return json.loads(cluster.cli(*args, "--json").stdout)


def running_intervals(run: dict[str, Any]) -> tuple[dt.datetime, dt.datetime]:
    times = {s["type"]: dt.datetime.fromisoformat(s["timestamp"]) for s in run["states"]}
    return times["RUNNING"], times["COMPLETED"]


def test_a_pool_limit_of_two_runs_two_at_a_time_and_the_views_tell_the_truth(
    cluster: Cluster, tmp_path: Path
) -> None:
    flows = tmp_path / "project" / "flows.py"
    flows.parent.mkdir()
    flows.write_text(FLOWS)
    cluster.start_server()
    cluster.start_worker(concurrency=4)
    cluster.cli("deploy", f"{flows}:steady", "--name", "a", "--pool", cluster.pool)
    cluster.cli("deploy", f"{flows}:steady", "--name", "b", "--pool", cluster.pool)
    limited = as_json(cluster, "pool", "set-concurrency", cluster.pool, "2")
    assert limited["concurrency_limit"] == 2

    ids = [as_json(cluster, "deployment", "run", f"steady/{'ab'[i % 2]}")["id"] for i in range(6)]
    pool = as_json(cluster, "pool", "inspect", cluster.pool)
    assert pool["concurrency_limit"] == 2 and pool["busy"] <= 2
    assert pool["runs"].get("Pending", 0) + pool["runs"].get("Running", 0) <= 2

    def worker_seen() -> list[dict[str, Any]]:
        workers: list[dict[str, Any]] = as_json(cluster, "worker", "ls")
        return [w for w in workers if w["pool"] == cluster.pool and w["alive"]]

    (worker,) = wait_until(worker_seen, timeout=20, what="the worker in worker ls")
    assert worker["concurrency"] == 4 and worker["mode"] == "process"
    assert len(worker["runs"]) <= 2

    def finals() -> list[dict[str, Any]] | None:
        runs = [as_json(cluster, "flow-run", "inspect", run_id) for run_id in ids]
        return runs if all(r["state"]["type"] == "COMPLETED" for r in runs) else None

    runs = wait_until(finals, timeout=90, what="six runs completed")
    edges = sorted([(start, 1) for start, _ in map(running_intervals, runs)]
                   + [(end, -1) for _, end in map(running_intervals, runs)])
    at_once = peak = 0
    for _, step in edges:
        at_once += step
        peak = max(peak, at_once)
    assert peak == 2  # the limit is used, and never exceeded
    assert all(len({s["details"].get("code") for s in r["states"] if s["type"] == "RUNNING"}) == 1
               for r in runs)
    (listed,) = [p for p in as_json(cluster, "pool", "ls") if p["name"] == cluster.pool]
    assert listed["live_workers"] == 1 and listed["busy"] == 0

    cleared = as_json(cluster, "pool", "clear-concurrency", cluster.pool)
    assert cleared["concurrency_limit"] is None


def test_a_run_on_a_pool_without_workers_is_flagged(cluster: Cluster, tmp_path: Path) -> None:
    flows = tmp_path / "project" / "flows.py"
    flows.parent.mkdir()
    flows.write_text(FLOWS)
    lonely = f"nobody-{uuid.uuid4().hex[:6]}"
    cluster.extra_pools.append(lonely)
    cluster.start_server()
    cluster.cli("deploy", f"{flows}:steady", "--name", "lonely", "--pool", lonely)

    watch = cluster.cli("deployment", "run", "steady/lonely", "--watch", "--timeout", "12", check=False)
    assert watch.returncode != 0  # never ran
    assert f"waiting: no live worker on pool {lonely}" in watch.stdout
    assert f"flowrelay worker --pool {lonely}" in watch.stdout
    (run,) = as_json(cluster, "flow-run", "ls")
    inspected = as_json(cluster, "flow-run", "inspect", run["id"])
    assert inspected["waiting"].startswith(f"waiting: no live worker on pool {lonely}")
    assert f"waiting: no live worker on pool {lonely}" in cluster.cli("flow-run", "inspect", run["id"]).stdout
    (pool,) = [p for p in as_json(cluster, "pool", "ls") if p["name"] == lonely]
    assert pool["live_workers"] == 0 and pool["waiting_without_worker"] == 1

    cluster.start_worker(concurrency=1, pool=lonely)  # a worker comes: the run goes, the flag goes
    done = wait_until(lambda: (r := as_json(cluster, "flow-run", "inspect", run["id"]))["state"]["type"]
                      == "COMPLETED" and r, timeout=60, what="the run completed once a worker came")
    assert done["waiting"] is None
