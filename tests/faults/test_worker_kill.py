"""Fault 2: a worker is SIGKILLed mid-run while a second worker serves the same pool.

The flow `slow` (retries=1) records every execution itself, with its pid and start/end times.
What must hold: the killed worker's runs go Crashed within the heartbeat timeout (3 s here, with
a generous margin for a loaded machine), are retried and complete on the other worker; no run
ever executes on two workers at once; every run completes exactly once.
"""

from __future__ import annotations

import os
import time

import pytest

from tests.faults.conftest import HEARTBEAT_TIMEOUT, FaultCluster, wait_until

pytestmark = pytest.mark.rabbitmq

RUNS = 6
#: slack over the heartbeat timeout: the monitor's check interval, RPC hops, a loaded machine
MARGIN = 7.0


def test_worker_sigkill_mid_run_crashes_retries_never_overlaps(faults: FaultCluster) -> None:
    # Given two workers, warm, and 6 slow runs (4 s each) started on them
    faults.start_server()
    workers = [faults.start_worker(concurrency=3, name=f"w{i}") for i in (1, 2)]
    faults.deploy("slow", "faults", "--param", "seconds=4")
    wait_until(lambda: all(faults.log_of(f"w{i}-{i}").count("warm child ready") == 3 for i in (1, 2)),
               timeout=60, what="warm workers")
    batches = [f"s{i}" for i in range(RUNS)]
    assert faults.launch("slow/faults", batches).wait(timeout=60) == 0
    wait_until(lambda: faults.executions("slow-start"), timeout=60, what="a run started")

    # When the worker of a running run is SIGKILLed mid-run
    time.sleep(1.0)
    started = faults.executions("slow-start")
    group = {e.run_id: os.getpgid(e.pid) for e in started}  # children share their worker's group
    victim = next(w for w in workers if w.pid in group.values())
    killed_at = faults.kill(victim)
    finished_before = {e.run_id for e in faults.executions("slow")}
    victim_runs = {r for r, pgid in group.items() if pgid == victim.pid and r not in finished_before}

    # Then every run completes, the victim's after a Crashed state and a retry
    def all_completed() -> bool:
        runs = faults.runs("slow")
        return len(runs) == RUNS and all(r.state == "Completed" for r in runs.values())

    wait_until(all_completed, timeout=90, interval=0.5, what="every run Completed")
    runs = faults.runs("slow")
    crashed = {r.id for r in runs.values() if "Crashed" in r.state_names}
    assert crashed == victim_runs and victim_runs
    for run_id in crashed:
        crash_at = next(ts for name, ts, _ in runs[run_id].states if name == "Crashed")
        assert crash_at - killed_at < HEARTBEAT_TIMEOUT + MARGIN, (run_id, crash_at - killed_at)
        assert runs[run_id].state_names[-1] == "Completed"

    # executions, as the flow recorded them: one finished execution per run, one killed
    # execution more for each of the victim's runs, never two at once
    finished = faults.executions("slow")
    assert sorted(e.run_id for e in finished) == sorted(runs)
    starts = faults.executions("slow-start")
    for run_id in runs:
        mine = sorted((e for e in starts if e.run_id == run_id), key=lambda e: e.start)
        assert len(mine) == (2 if run_id in victim_runs else 1), (run_id, mine)
        ends = {e.start: e.end for e in finished if e.run_id == run_id}
        intervals = [(e.start, ends.get(e.start, killed_at)) for e in mine]
        for (_, end), (start, _) in zip(intervals, intervals[1:], strict=False):
            assert start >= end, f"run {run_id} executed twice at once: {intervals}"
