"""Deployed code travels with the deployment, and failures carry their traceback: `flowrelay
server` and `flowrelay worker` processes on RabbitMQ, driven through the CLI as a user would.

- a redeploy onto a warm worker runs the new code (and records its hash); a run dispatched before
  the redeploy still runs the old code;
- a worker started in an empty folder runs a path-entrypoint deployment from its bundle (the
  project's helper module and data file included), fetches it once, and fetches it again when
  its cached copy was tampered with;
- a failing flow's traceback (the user's file and line) is in `flow-run logs`,
  `flow-run inspect --json` and `deployment run --watch`.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import Cluster, wait_until

pytestmark = pytest.mark.rabbitmq

FLOW = '''
import time

from engine import flow, get_run_logger


@flow(name="greet")
def greet(seconds: float = 0.0) -> str:
    time.sleep(seconds)
    get_run_logger().info("code version {version} speaking")
    return "v{version}"
'''


def write_project(folder: Path, version: int) -> Path:
    folder.mkdir(exist_ok=True)
    (folder / "pyproject.toml").write_text('[project]\nname = "greeter"\nversion = "0"\n')
    (folder / "flows.py").write_text(FLOW.format(version=version))
    return folder / "flows.py"


def run_json(cluster: Cluster, *args: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(cluster.cli(*args, "--json").stdout)
    return data


def wait_final(cluster: Cluster, run_id: str, timeout: float = 60) -> dict[str, Any]:
    def final() -> dict[str, Any] | None:
        run = run_json(cluster, "flow-run", "inspect", run_id)
        return run if run["state"]["type"] in ("COMPLETED", "FAILED", "CRASHED") else None

    return wait_until(final, timeout=timeout, what=f"run {run_id} final")


def test_a_redeploy_runs_the_new_code_and_a_run_dispatched_before_it_the_old(
    cluster: Cluster, tmp_path: Path
) -> None:
    project = tmp_path / "project"
    flows = write_project(project, 1)
    empty = tmp_path / "elsewhere"
    empty.mkdir()
    cluster.start_server()
    cluster.start_worker(concurrency=1, cwd=empty)
    v1 = run_json(cluster, "deploy", f"{flows}:greet", "--name", "main", "--pool", cluster.pool)
    assert v1["entrypoint"] == "flows.py:greet" and v1["code"]["bundle"].startswith("sha256:")

    first = run_json(cluster, "deployment", "run", "greet/main", "--watch", "--timeout", "60")
    assert first["result"] == "v1"
    # The worker's only child is now warm with version 1. Keep it busy, queue a run of v1 behind
    # it, then redeploy changed code and queue a run of v2.
    busy = run_json(cluster, "deployment", "run", "greet/main", "--param", "seconds=3")
    queued_old = run_json(cluster, "deployment", "run", "greet/main")
    write_project(project, 2)
    v2 = run_json(cluster, "deploy", f"{flows}:greet", "--name", "main", "--pool", cluster.pool)
    assert v2["version"] == 2 and v2["code"]["bundle"] != v1["code"]["bundle"]
    new = run_json(cluster, "deployment", "run", "greet/main")

    finals = {name: wait_final(cluster, run["id"]) for name, run in
              (("busy", busy), ("queued_old", queued_old), ("new", new))}
    assert {name: run["result"] for name, run in finals.items()} == {
        "busy": "v1", "queued_old": "v1", "new": "v2"}
    assert {name: run["deployment_version"] for name, run in finals.items()} == {
        "busy": 1, "queued_old": 1, "new": 2}
    assert {name: run["code"] for name, run in finals.items()} == {
        "busy": v1["code"]["bundle"], "queued_old": v1["code"]["bundle"], "new": v2["code"]["bundle"]}
    logs = cluster.cli("flow-run", "logs", new["id"]).stdout
    assert "code version 2 speaking" in logs and "code version 1" not in logs
    # the same warm worker ran all of them
    workers = {state["details"].get("worker_id") for run in finals.values()
               for state in run["states"] if state["type"] == "RUNNING"}
    assert len(workers) == 1


HELPER_FLOW = '''
from pathlib import Path

from engine import flow
from helpers.text import shout


@flow(name="shouter")
def shouter(name: str = "ada") -> str:
    greeting = Path("data/greeting.txt").read_text().strip()
    return shout(f"{greeting} {name}")
'''


def test_a_worker_in_an_empty_folder_runs_the_bundle_and_refetches_a_tampered_cache(
    cluster: Cluster, tmp_path: Path
) -> None:
    project = tmp_path / "project"
    (project / "helpers").mkdir(parents=True)
    (project / "data").mkdir()
    (project / ".git").mkdir()  # the project's root
    (project / "flows").mkdir()
    (project / "flows" / "shouter.py").write_text(HELPER_FLOW)
    (project / "helpers" / "__init__.py").write_text("")
    (project / "helpers" / "text.py").write_text("def shout(text: str) -> str:\n    return text.upper() + '!'\n")
    (project / "data" / "greeting.txt").write_text("hello\n")
    (project / "big.log").write_text("x" * 100_000)
    (project / ".gitignore").write_text("*.log\n")
    empty = tmp_path / "empty"
    empty.mkdir()
    cache = tmp_path / "cache"
    env = {"FLOWRELAY_CODE__CACHE_DIR": str(cache)}
    cluster.start_server()
    worker = cluster.start_worker(concurrency=2, cwd=empty, env=env)
    # deployed from the project's folder, as a user would
    deployed = json.loads(cluster.cli_in(project, "deploy", "flows/shouter.py:shouter", "--name", "main",
                                         "--pool", cluster.pool, "--json").stdout)
    assert deployed["entrypoint"] == "flows/shouter.py:shouter"
    assert deployed["code"]["files"] == 5  # .gitignore'd big.log and .git stay home
    bundle = deployed["code"]["bundle"]

    runs = [run_json(cluster, "deployment", "run", "shouter/main", "--param", f"name=n{i}") for i in range(3)]
    results = [wait_final(cluster, run["id"]) for run in runs]
    assert [r["result"] for r in results] == ["HELLO N0!", "HELLO N1!", "HELLO N2!"]
    assert {r["code"] for r in results} == {bundle}
    log = cluster.log_of(f"worker-{cluster.procs.index(worker)}")
    assert log.count('"bundle fetched"') == 1  # once per worker and hash, never per run
    assert list(empty.iterdir()) == []  # nothing written where the worker was started

    cluster.stop_process(worker)
    cached = cache / f"{bundle.removeprefix('sha256:')}.zip"
    assert cached.is_file()
    cached.write_bytes(cached.read_bytes()[:-10] + b"tampered!!")
    second = cluster.start_worker(concurrency=1, cwd=empty, env=env)
    again = wait_final(cluster, run_json(cluster, "deployment", "run", "shouter/main")["id"])
    assert again["result"] == "HELLO ADA!"
    log = cluster.log_of(f"worker-{cluster.procs.index(second)}")
    assert "cached bundle does not match its hash" in log and log.count('"bundle fetched"') == 1


BROKEN = '''
from engine import flow


def check(batch: str) -> None:
    raise ValueError(f"bad batch {batch}")


@flow(name="broken")
def broken(batch: str = "b-1") -> None:
    check(batch)
'''


def test_a_failed_runs_traceback_is_in_its_logs_inspect_and_watch(cluster: Cluster, tmp_path: Path) -> None:
    project = tmp_path / "project"
    project.mkdir()
    (project / "broken.py").write_text(textwrap.dedent(BROKEN))
    cluster.start_server()
    cluster.start_worker(concurrency=1)
    cluster.cli("deploy", f"{project / 'broken.py'}:broken", "--name", "main", "--pool", cluster.pool)

    watch = cluster.cli("deployment", "run", "broken/main", "--watch", "--timeout", "60", check=False)
    assert watch.returncode == 1
    where = 'broken.py", line 6, in check'
    assert "Traceback (most recent call last):" in watch.stdout and where in watch.stdout
    assert 'line 11, in broken' in watch.stdout and "ValueError: bad batch b-1" in watch.stdout
    run_id = json.loads(cluster.cli("flow-run", "ls", "--json").stdout)[0]["id"]

    inspected = run_json(cluster, "flow-run", "inspect", run_id)
    assert inspected["error"]["type"] == "ValueError" and inspected["error"]["message"] == "bad batch b-1"
    assert where in inspected["error"]["traceback"]
    assert "engine/runtime" not in inspected["error"]["traceback"]  # the engine's frames trimmed
    logs = cluster.cli("flow-run", "logs", run_id).stdout
    assert "Encountered exception during execution" in logs and where in logs
    text = cluster.cli("flow-run", "inspect", run_id).stdout
    assert "Error" in text and where in text
