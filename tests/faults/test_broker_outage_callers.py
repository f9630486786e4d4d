"""RabbitMQ stopped for 30 s (`rabbitmqctl stop_app` ... `start_app`) while callers wait on
`run_deployment` and create runs (issue 11).

The runs finish while the broker is down (their final states are sent again until it is back);
their final events may be published before a waiter's temporary queue is declared again, so a
waiter reads its run once more when its connection comes back. A create sent again after a lost
reply carries the same run id. What must hold: every waiter returns soon after its run's
completion (not at its timeout), and no run is created twice.

Restarts the machine's broker: like test_broker_restart, it always leaves it started.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.faults.conftest import FaultCluster, wait_until
from tests.faults.test_broker_restart import rabbitmqctl

pytestmark = pytest.mark.rabbitmq

CALLERS = Path(__file__).parent / "callers.py"
OUTAGE = 30.0
#: a waiter returns this soon after its run completed, or after the broker is back if the run
#: completed while it was down (reconnects, and the runs' own final reports sent again, included)
PROMPT = 15.0


def start_callers(c: FaultCluster, name: str, batches: list[str]) -> subprocess.Popen[str]:
    spec = c.workdir / f"{name}.json"
    spec.write_text(json.dumps({"deployment": "slow/faults", "batches": batches, "timeout": 600,
                                "out": str(c.workdir / f"{name}.out")}))
    log = open(c.workdir / f"{name}.log", "w")  # noqa: SIM115 - closed with the process
    proc = subprocess.Popen([sys.executable, str(CALLERS), str(spec)], env=c.env, cwd=c.workdir,
                            stdout=log, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    proc._flowrelay_log = log  # type: ignore[attr-defined]
    c.procs.append(proc)
    return proc


def returned(c: FaultCluster, name: str) -> dict[str, tuple[str, str, float]]:
    rows = (c.workdir / f"{name}.out").read_text().split("\n")
    return {b: (run_id, state, float(at)) for b, run_id, state, at in (r.split() for r in rows if r)}


@pytest.mark.timeout(420)
def test_waiters_and_creators_ride_out_a_broker_outage(faults: FaultCluster) -> None:
    # Given a heartbeat timeout longer than the outage (leases of 48 s: the runs keep going),
    # a server, a worker, and callers waiting on four 6-second runs
    faults.env["FLOWRELAY_SERVER__HEARTBEAT_TIMEOUT_SECONDS"] = "60"
    faults.start_server()
    faults.start_worker(concurrency=8, name="w")
    faults.deploy("slow", "faults", "--param", "seconds=6")
    wait_until(lambda: faults.log_of("w-1").count("warm child ready") == 8, timeout=60,
               what="warm worker")
    waiting = start_callers(faults, "waiters", [f"w{i}" for i in range(4)])
    wait_until(lambda: len(faults.executions("slow-start")) == 4, timeout=60, what="runs started")

    # When the broker is stopped for 30 s, with more callers creating runs meanwhile
    try:
        rabbitmqctl("stop_app")
        creating = start_callers(faults, "creators", [f"c{i}" for i in range(4)])
        time.sleep(OUTAGE)
    finally:
        rabbitmqctl("start_app")
        rabbitmqctl("await_startup")
    back = time.time()

    # Then every caller returns with its run Completed, soon after the run finished
    assert waiting.wait(timeout=300) == 0, faults.log_of("waiters")
    assert creating.wait(timeout=300) == 0, faults.log_of("creators")
    runs = faults.runs("slow")
    by_batch: dict[str, list[str]] = {}
    for run in runs.values():
        by_batch.setdefault(run.parameters["batch_id"], []).append(run.id)
    # no run created twice
    assert sorted(by_batch) == sorted([f"w{i}" for i in range(4)] + [f"c{i}" for i in range(4)])
    assert all(len(ids) == 1 for ids in by_batch.values()), by_batch
    for name in ("waiters", "creators"):
        for batch, (run_id, state, at) in returned(faults, name).items():
            run = runs[run_id]
            assert state == "Completed" and run.state == "Completed", (batch, run.state_names)
            # a run that finished while the broker was down is known to be complete once it is back
            completed_at = max(back, next(ts for s, ts, _ in run.states if s == "Completed"))
            assert at - completed_at < PROMPT, (batch, at - completed_at)
