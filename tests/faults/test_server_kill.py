"""Fault 1: the server is SIGKILLed at random moments while chained runs flow.

Chain: deployment `up/faults` → automation `chain` (flow-run-state-change, Completed) →
deployment `down/faults` with `upstream_batch_id` from the upstream's result. A launcher process
creates one upstream run per batch id (idempotency key per batch, retried while the server is
dead); meanwhile the server is killed with SIGKILL and restarted, again and again.

Scaled down to keep `tests/faults` within a few minutes on a 2-core machine: 200 upstream runs
and 5 kills here; `bench/soak.py` runs the issue's 1,000 and more kills.
"""

from __future__ import annotations

import random
import time

import pytest

from tests.faults.conftest import FINAL, FaultCluster, check_chain, setup_chain, wait_until

pytestmark = pytest.mark.rabbitmq

RUNS = 200
KILLS = 5


def test_server_sigkill_while_chains_flow(faults: FaultCluster) -> None:
    # Given a server, two workers and the chain
    server = faults.start_server()
    faults.start_worker(concurrency=4, name="w1")
    faults.start_worker(concurrency=4, name="w2")
    setup_chain(faults)
    batches = [f"b{i:04d}" for i in range(RUNS)]

    # When 200 upstream runs are launched while the server is killed 5 times
    launcher = faults.launch("up/faults", batches, pace=0.06)  # spread over the kills
    rng = random.Random(RUNS)
    for _ in range(KILLS):
        time.sleep(rng.uniform(0.5, 3.0))
        faults.kill(server)
        time.sleep(rng.uniform(0.0, 1.0))
        server = faults.start_server()
    assert launcher.wait(timeout=240) == 0, faults.log_of("launcher")

    # Then, once quiet: every run final, one downstream per upstream Completed
    def quiet() -> bool:
        runs = faults.runs()
        ups = [r for r in runs.values() if r.flow == "up"]
        done = sum(1 for r in ups if r.state == "Completed")
        downs = [r for r in runs.values() if r.flow == "down"]
        return (len(ups) == RUNS and len(downs) >= done
                and all(r.state in FINAL for r in runs.values()))

    try:
        wait_until(quiet, timeout=120, interval=1.0, what="all runs final")
    finally:
        counts = check_chain(faults, batches)
    print("fault 1:", counts, faults.log_of("launcher").strip())
    assert counts["up_completed"] == RUNS  # no upstream failed or crashed for good
    assert counts["down_completed"] == RUNS
