"""Fault 3: RabbitMQ connections closed (`rabbitmqctl close_all_connections`) and the broker app
restarted (`rabbitmqctl stop_app` / `start_app`) while chained runs flow. Every component must
reconnect by itself; the outbox delivers every committed event (each upstream Completed still
launches its downstream); nothing runs twice.

This restarts the broker shared by everything on the machine: it lives in its own module so it
can be deselected (`-k "not broker_restart"`) where other people's tests share the broker, and
it always leaves the broker started (`start_app`, `await_startup`). Scaled down: 100 chains.
"""

from __future__ import annotations

import subprocess
import time

import pytest

from tests.faults.conftest import FINAL, FaultCluster, check_chain, setup_chain, wait_until

pytestmark = pytest.mark.rabbitmq

RUNS = 100


def rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", *args], check=True, capture_output=True, timeout=120)


def test_connections_closed_and_broker_restarted_during_load(faults: FaultCluster) -> None:
    # Given a server, two workers and the chain, with upstream runs being launched
    faults.start_server()
    faults.start_worker(concurrency=4, name="w1")
    faults.start_worker(concurrency=4, name="w2")
    setup_chain(faults)
    batches = [f"r{i:03d}" for i in range(RUNS)]
    launcher = faults.launch("up/faults", batches, pace=0.1)

    # When every connection is closed, then the broker app is stopped and started
    try:
        time.sleep(2.0)
        rabbitmqctl("close_all_connections", "flowrelay fault test")
        time.sleep(3.0)
        rabbitmqctl("stop_app")
        time.sleep(2.0)
    finally:
        rabbitmqctl("start_app")
        rabbitmqctl("await_startup")
    assert launcher.wait(timeout=240) == 0, faults.log_of("launcher")

    # Then, with nobody restarted by hand, all chains complete, once each
    def quiet() -> bool:
        runs = faults.runs()
        downs = [r for r in runs.values() if r.flow == "down"]
        ups = [r for r in runs.values() if r.flow == "up" and r.state == "Completed"]
        return (len(downs) >= len(ups) and len(runs) >= RUNS
                and all(r.state in FINAL for r in runs.values()))

    try:
        wait_until(quiet, timeout=180, interval=1.0, what="all runs final")
    finally:
        counts = check_chain(faults, batches)
    executions = [e for e in faults.executions() if e.kind in ("up", "down")]
    seen: dict[str, list[object]] = {}
    for e in executions:
        seen.setdefault(e.run_id, []).append(e)
    runs = faults.runs()
    twice = {run_id: (found, runs[run_id].states) for run_id, found in seen.items() if len(found) > 1}
    assert not twice, f"runs executed twice: {twice}"
    print("fault 3:", counts)
    unfinished = [(r.flow, r.id, r.states) for r in faults.runs().values()
                  if r.state != "Completed"]
    assert not unfinished, unfinished
    assert counts == {"up": RUNS, "up_completed": RUNS, "down": RUNS, "down_completed": RUNS}
