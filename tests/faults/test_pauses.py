"""Pauses, not crashes (issue 11): a worker or the server stopped with SIGSTOP, then resumed.

Ownership is fenced (docs/protocol.md, "Attempts and leases"), so a pause is safe whichever side
it hits:
- a worker paused past the heartbeat timeout loses its runs: its children stop them when its lease
  runs out (before the server may judge it), the server crashes and retries them elsewhere, and
  the frozen worker's late reports are refused as a superseded attempt's. No body runs twice at
  once; downstream rules fire once, on the real final state;
- a server paused for less than the lease (80 % of the heartbeat timeout) costs nothing: it
  judges nobody for one timeout after it wakes (its own silence is not the workers'), no healthy
  run is Crashed, none runs twice, none is stuck.

Executions are read from ticks the flows record every 0.1 s while their body runs, so an execution
stopped mid-body is seen too; states from the database.
"""

from __future__ import annotations

import os
import signal
import time
from collections import defaultdict

import pytest

from tests.faults.conftest import FaultCluster, Run, chain_rules, wait_until

pytestmark = pytest.mark.rabbitmq

#: how long the process stays stopped (the issue's figure)
PAUSE = 15.0



def executions_by_run(faults: FaultCluster) -> dict[str, dict[int, tuple[float, float]]]:
    """run id -> {pid of an execution: (first tick, last tick)}."""
    spans: dict[str, dict[int, tuple[float, float]]] = defaultdict(dict)
    for tick in faults.executions("tick"):
        first, last = spans[tick.run_id].get(tick.pid, (tick.end, tick.end))
        spans[tick.run_id][tick.pid] = (min(first, tick.end), max(last, tick.end))
    return spans


def assert_never_twice_at_once(faults: FaultCluster) -> None:
    for run_id, by_pid in executions_by_run(faults).items():
        spans = sorted(by_pid.values())
        for (_, end), (start, _) in zip(spans, spans[1:], strict=False):
            assert start > end, f"run {run_id} executed twice at once: {spans}"


def attempts_in_order(run: Run) -> list[int]:
    """The attempts the run's states carry, in history order (engine-written states carry none)."""
    return [details["attempt"] for _, _, details in run.states if details.get("attempt") is not None]


def test_a_worker_paused_past_its_lease_is_fenced(faults: FaultCluster) -> None:
    # Given two workers and six 5-second runs of `ticking` (one retry), chained to `down`
    faults.start_server()
    workers = [faults.start_worker(concurrency=3, name=f"w{i}") for i in (1, 2)]
    faults.deploy("ticking", "faults", "--param", "seconds=5")
    faults.deploy("down", "faults")
    faults.apply(chain_rules("ticking", name="after-ticking"))
    wait_until(lambda: all(faults.log_of(f"w{i}-{i}").count("warm child ready") == 3 for i in (1, 2)),
               timeout=60, what="warm workers")
    batches = [f"t{i}" for i in range(6)]
    assert faults.launch("ticking/faults", batches).wait(timeout=60) == 0
    wait_until(lambda: len(faults.executions("ticking-start")) >= 2, timeout=60, what="runs started")
    time.sleep(0.5)

    # When one worker with runs is stopped (its process only: its children keep going) for 15 s
    started = faults.executions("ticking-start")
    victim = next(w for w in workers if w.pid in {os.getpgid(e.pid) for e in started})
    victim_runs = {e.run_id for e in started if os.getpgid(e.pid) == victim.pid}
    os.kill(victim.pid, signal.SIGSTOP)
    try:
        time.sleep(PAUSE)
    finally:
        os.kill(victim.pid, signal.SIGCONT)

    # Then every run completes, and each downstream run exists once
    def quiet() -> bool:
        runs = faults.runs()
        ticking = [r for r in runs.values() if r.flow == "ticking"]
        downs = [r for r in runs.values() if r.flow == "down"]
        return (len(ticking) == 6 and all(r.state == "Completed" for r in ticking)
                and len(downs) == 6 and all(r.state == "Completed" for r in downs))

    wait_until(quiet, timeout=120, interval=0.5, what="every run and its downstream Completed")
    time.sleep(1.0)  # the thawed worker's late reports have arrived
    runs = faults.runs()
    ticking = {r.id: r for r in runs.values() if r.flow == "ticking"}

    # no body ever ran twice at once, and each finished exactly once
    assert_never_twice_at_once(faults)
    finished = sorted(e.run_id for e in faults.executions("ticking"))
    assert finished == sorted(ticking), "a run's body finished twice, or never"
    # the victim's runs were judged lost and retried on the other worker: attempt 2 completed
    for run_id in victim_runs:
        run = ticking[run_id]
        assert "Crashed" in run.state_names, run.state_names
        assert run.states[-1][2].get("attempt") == 2, run.states[-1]
    # the superseded attempts' late reports were refused: attempts never go back in any history
    for run in ticking.values():
        seen = attempts_in_order(run)
        assert seen == sorted(seen), (run.id, run.state_names, seen)
    # downstream rules fired once per upstream run, on its one Completed
    downs = [r for r in runs.values() if r.flow == "down"]
    assert sorted(r.parameters["upstream_batch_id"] for r in downs) == sorted(batches)
    assert all(run.state_names.count("Completed") == 1 for run in ticking.values())


def test_a_paused_server_crashes_no_healthy_run(faults: FaultCluster) -> None:
    # Given the default heartbeat timeout (30 s: leases of 24 s), one worker, and four
    # 8-second runs of `ticking-once` (no retries) under way
    faults.env["FLOWRELAY_SERVER__HEARTBEAT_TIMEOUT_SECONDS"] = "30"
    server = faults.start_server()
    faults.start_worker(concurrency=4, name="w")
    faults.deploy("ticking_once", "faults", "--param", "seconds=8")
    wait_until(lambda: faults.log_of("w-1").count("warm child ready") == 4, timeout=60,
               what="warm worker")
    first = [f"a{i}" for i in range(4)]
    assert faults.launch("ticking-once/faults", first).wait(timeout=60) == 0
    wait_until(lambda: len(faults.executions("ticking-once-start")) == 4, timeout=60,
               what="runs started")

    # When the server is stopped for 15 s (runs finish meanwhile; more are launched)
    os.kill(server.pid, signal.SIGSTOP)
    try:
        later = faults.launch("ticking-once/faults", [f"b{i}" for i in range(4)], key_prefix="late",
                              out="late")
        time.sleep(PAUSE)
    finally:
        os.kill(server.pid, signal.SIGCONT)
    assert later.wait(timeout=120) == 0

    # Then all eight complete, none was ever Crashed, each body ran once
    def done() -> bool:
        runs = faults.runs("ticking-once")
        return len(runs) == 8 and all(r.state in ("Completed", "Failed", "Crashed", "Cancelled")
                                      for r in runs.values())

    wait_until(done, timeout=120, interval=0.5, what="all eight runs final")
    runs = faults.runs("ticking-once")
    crashed = {r.id: r.state_names for r in runs.values() if "Crashed" in r.state_names}
    assert not crashed, crashed
    assert all(r.state == "Completed" for r in runs.values())
    starts = sorted(e.run_id for e in faults.executions("ticking-once-start"))
    assert starts == sorted(runs), "a body started twice, or never"
    assert_never_twice_at_once(faults)
    assert "this server stalled" in faults.log_of("server-0")
