"""Flows for the fault-injection tests. Each execution appends one line to the file named by
FLOWRELAY_TEST_RECORD, written by the flow itself (never by the engine):

    <kind> <flow run id> <pid> <start> <end> <extra>

`start` is taken when the body begins and the line is written when it ends, so a line means
"this execution finished its body". `<kind>-start` lines (same fields, end = start) mark a body
that began, so a test can see executions that were killed before they finished.
"""

from __future__ import annotations

import os
import time

from engine import flow
from engine.runtime.context import current_flow_run


def _run_id() -> str:
    ctx = current_flow_run()
    return str(ctx.flow_run.id) if ctx else "-"


def record(kind: str, start: float, extra: str = "-") -> None:
    path = os.environ.get("FLOWRELAY_TEST_RECORD")
    if path:
        line = f"{kind} {_run_id()} {os.getpid()} {start:.6f} {time.time():.6f} {extra}\n"
        with open(path, "a") as fh:  # one write() of a short line: appends do not interleave
            fh.write(line)


@flow(name="up", retries=2)
def up(batch_id: str, seconds: float = 0.0) -> dict[str, str]:
    """The upstream of a chain: its result feeds the downstream run's parameter."""
    start = time.time()
    if seconds:
        time.sleep(seconds)
    record("up", start, batch_id)
    return {"batch_id": batch_id}


@flow(name="down", retries=2)
def down(upstream_batch_id: str) -> str:
    start = time.time()
    record("down", start, upstream_batch_id)
    return f"processed {upstream_batch_id}"


@flow(name="slow", retries=1)
def slow(batch_id: str, seconds: float = 2.0) -> str:
    """Long enough to be killed mid-run; retried once when its worker dies."""
    start = time.time()
    record("slow-start", start, batch_id)
    time.sleep(seconds)
    record("slow", start, batch_id)
    return batch_id


@flow(name="joined")
def joined(batch_id: str) -> str:
    """Launched by a join (`tests/faults/test_cluster.py`): one per batch, whatever the faults."""
    start = time.time()
    record("joined", start, batch_id)
    return batch_id


@flow(name="ping")
def ping(n: int = 0) -> int:
    start = time.time()
    record("ping", start, str(n))
    return n


def _tick_for(kind: str, batch_id: str, seconds: float) -> dict[str, str]:
    """Record a tick every 0.1 s while the body runs, so a test sees when each execution really
    ran — also one stopped before it finished (it has ticks but no `<kind>` line)."""
    start = time.time()
    record(f"{kind}-start", start, batch_id)
    while time.time() < start + seconds:
        time.sleep(0.1)
        record("tick", time.time(), batch_id)
    record(kind, start, batch_id)
    return {"batch_id": batch_id}


@flow(name="ticking", retries=1)
def ticking(batch_id: str, seconds: float = 4.0) -> dict[str, str]:
    return _tick_for("ticking", batch_id, seconds)


@flow(name="ticking-once")
def ticking_once(batch_id: str, seconds: float = 4.0) -> dict[str, str]:
    """As `ticking`, without retries: a Crashed state would be final."""
    return _tick_for("ticking-once", batch_id, seconds)
