"""Seed 003 — Prefect 1 "Creating flow runs" (CLI, Python client, task, GraphQL, optional
settings), on RabbitMQ with `flowrelay server` and `flowrelay worker` processes
(tests/seeds/conftest.py); flows in tests/seeds/flows/seeds.py.

Translations (smallest change):
- "The backend will place your flow run into a queue that agents poll": flowrelay workers are
  pushed work by RabbitMQ (`flowrelay worker --pool P`), nothing polls; that is the path tested.
- `prefect run --name "hello-world"` (create a run of a registered flow and return at once) →
  `flowrelay deployment run hello-world/seeds`; `--watch` streams states and logs from events.
- `prefect run --path/--module ... --execute` (run here, still recorded by the backend) →
  `flowrelay run path.py:flow` / `flowrelay run module:flow` (`--execute` accepted).
  `breakpoint()` with local executors is interactive: not tested. "A task with a long retry makes
  the process sleep": task retries wait in the run's process (test_seed_002_flow_dependencies_guide).
  "A special label so no agent picks it up": a local run is never sent to a pool at all.
- `Client().create_flow_run(flow_id=...)` → `get_client().create_flow_run("FLOW/DEPLOYMENT")`.
- `create_flow_run(flow_name="hello-world")` + `wait_for_flow_run(child_run_id)` in a flow: the same
  names from `engine`.
- GraphQL `mutation { create_flow_run(...) }`: flowrelay has no GraphQL; its HTTP API's
  `POST /api/deployments/{flow}/{name}/runs` is the equivalent, tested in tests/api.
- Optional settings: parameters (`--param`), run names (`--name`), start times (`--start-in`),
  idempotency keys (never expire); "flow groups vs flows" (run the group's current flow) is
  flowrelay's "a run starts the deployment's latest version", tested in test_seed_000.
- `run_deployment(..., timeout=0)` (Prefect 2's "launch, don't wait"): returns the run at once.
"""

from __future__ import annotations

import datetime as dt
import json
import subprocess
from pathlib import Path

import pytest

from tests.integration.conftest import FLOWRELAY, Cluster, wait_until

pytestmark = pytest.mark.rabbitmq


def inspect(cluster: Cluster, run_id: str) -> dict:
    return cluster.cli_json("flow-run", "inspect", run_id)  # type: ignore[return-value]


def completed(cluster: Cluster, run_id: str) -> dict:
    return wait_until(lambda: (r := inspect(cluster, run_id))["state"]["name"] == "Completed" and r,
                      timeout=30, what=f"run {run_id} completed")


def test_cli_creates_a_run_and_returns_immediately_then_a_worker_runs_it(seed_cluster: Cluster) -> None:
    created = seed_cluster.cli_json("deployment", "run", "hello-world/seeds", "--param", "name=immediate")
    assert created["state"]["name"] in ("Scheduled", "Pending")
    done = completed(seed_cluster, created["id"])
    assert done["result"] == "Hello, immediate!"


def test_cli_watch_streams_states_and_logs(seed_cluster: Cluster) -> None:
    proc = seed_cluster.cli("deployment", "run", "hello-world/seeds", "--param", "name=watched", "--watch")
    assert "Completed" in proc.stdout and "Hello, watched!" in proc.stdout


def test_local_run_by_path_or_module_is_recorded(seed_cluster: Cluster) -> None:
    proc = seed_cluster.cli("run", f"{seed_cluster.flows}:hello_world", "--param", "name=local", "--execute")
    assert "Completed" in proc.stdout
    env = {**seed_cluster.env, "PYTHONPATH": str(Path(seed_cluster.flows).parent)}
    by_module = subprocess.run([FLOWRELAY, "run", "seeds:hello_world", "--param", "name=module", "--json"],
                               env=env, cwd=seed_cluster.workdir, capture_output=True, text=True, timeout=120)
    assert by_module.returncode == 0, by_module.stderr[-3000:]
    assert json.loads(by_module.stdout)["result"] == "Hello, module!"
    names = {r["parameters"].get("name") for r in seed_cluster.cli_json("flow-run", "ls", "--flow", "hello-world",
                                                                        "--limit", "100")}
    assert {"local", "module"} <= names  # both runs are in the backend


def test_local_run_that_fails_is_marked_failed(seed_cluster: Cluster) -> None:
    proc = seed_cluster.cli("run", f"{seed_cluster.flows}:broken", "--execute", "--json", check=False)
    assert proc.returncode == 1
    run = json.loads(proc.stdout)
    assert run["state"] == "Failed" and "broken child" in run["message"]
    assert inspect(seed_cluster, run["id"])["state"]["name"] == "Failed"  # in the backend too


def test_python_client_creates_a_run(seed_cluster: Cluster) -> None:
    proc = seed_cluster.python(
        "from engine.client import get_client\n"
        "client = get_client()\n"
        "run = client.create_flow_run('hello-world/seeds', parameters={'name': 'client'})\n"
        "print(run.id)\n")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert completed(seed_cluster, proc.stdout.strip().splitlines()[-1])["result"] == "Hello, client!"


@pytest.mark.parametrize("wait", [True, False])
def test_create_flow_run_task_with_and_without_waiting(seed_cluster: Cluster, wait: bool) -> None:
    proc = seed_cluster.cli("deployment", "run", "parent-of-hello/seeds", "--param", f"wait={json.dumps(wait)}",
                            "--watch", "--json")
    parent = inspect(seed_cluster, json.loads(proc.stdout)["id"])
    assert parent["state"]["name"] == "Completed"
    child_id = parent["result"]
    [child] = parent["children"]
    assert child["id"] == child_id and child["flow_name"] == "hello-world"
    if wait:  # the parent was done only after its child
        assert child["state"]["name"] == "Completed" and child["end_time"] <= parent["end_time"]
        assert [t["state"]["name"] for t in parent["task_runs"] if t["task_key"] == "wait_for_flow_run"] == [
            "Completed"]
    else:  # the parent may end first; the child still runs
        assert completed(seed_cluster, child_id)["result"] == "Hello, world!"


def test_run_name_parameters_start_time_and_idempotency(seed_cluster: Cluster) -> None:
    named = seed_cluster.cli_json("deployment", "run", "hello-world/seeds", "--name", "my-custom-run",
                                  "--param", "name=Ada")
    assert named["name"] == "my-custom-run"
    assert completed(seed_cluster, named["id"])["parameters"] == {"name": "Ada"}

    later = seed_cluster.cli_json("deployment", "run", "hello-world/seeds", "--start-in", "2s",
                                  "--param", "name=later")
    assert later["state"]["name"] == "Scheduled"
    expected = dt.datetime.fromisoformat(later["expected_start_time"].replace("Z", "+00:00"))
    done = completed(seed_cluster, later["id"])
    assert dt.datetime.fromisoformat(done["start_time"].replace("Z", "+00:00")) >= expected

    first = seed_cluster.cli_json("deployment", "run", "hello-world/seeds", "--idempotency-key", "seed-003",
                                  "--param", "name=once-003")
    completed(seed_cluster, first["id"])
    again = seed_cluster.cli_json("deployment", "run", "hello-world/seeds", "--idempotency-key", "seed-003",
                                  "--param", "name=once-003")
    assert again["id"] == first["id"]  # after it finished too: keys do not expire
    assert len([r for r in seed_cluster.records("hello-world") if r[3:] == ["once-003"]]) == 1


def test_run_deployment_with_timeout_zero_returns_at_once(seed_cluster: Cluster) -> None:
    proc = seed_cluster.python(
        "from engine import run_deployment\n"
        "run = run_deployment('hello-world/seeds', parameters={'name': 'no-wait'}, timeout=0)\n"
        "print(run.id, run.state.name)\n")
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_id, state = proc.stdout.strip().splitlines()[-1].split()
    assert state in ("Scheduled", "Pending")  # returned before the run finished
    assert completed(seed_cluster, run_id)["result"] == "Hello, no-wait!"

