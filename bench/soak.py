"""Soak: chained runs (up → automation → down) on a real cluster under repeated faults.

One `flowrelay server`, two `flowrelay worker` processes, SQLite, RabbitMQ. Upstream runs are
launched continuously (one per batch id, with an idempotency key); every few seconds one fault is
injected at random: the server SIGKILLed and restarted, a worker SIGKILLed and replaced, or every
broker connection closed (`rabbitmqctl close_all_connections`). At the end, once quiet:

    runs completed    up and down runs in Completed
    faults injected   by kind
    lost              launched batches without a Completed upstream or without exactly one
                      Completed downstream
    duplicated        batches with more than one downstream run + runs whose body finished twice
    max recovery      the longest time from a fault to the next run completing (faults that hit
                      while no work was in flight are counted apart: nothing could complete)

    .venv/bin/python bench/soak.py [--minutes 2] [--backlog 0] [--json bench/results/soak.json]

`--minutes 10` is the full run. `--backlog 50000` adds the back-pressure check of
tests/faults/test_backpressure.py at full size after the soak (events published while the server
is stopped, then drained: firings must equal events).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.faults.conftest import (  # noqa: E402
    FINAL,
    FLOWS,
    FaultCluster,
    fault_env,
    publish_many,
    setup_chain,
)
from tests.integration.conftest import _delete_topology  # noqa: E402

AMQP = os.environ.get("FLOWRELAY_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")


def completed_count(c: FaultCluster) -> int:
    return sum(1 for r in c.runs().values() if r.state == "Completed")


def inject(c: FaultCluster, kind: str, state: dict[str, object]) -> None:
    if kind == "server-kill":
        c.kill(state["server"])  # type: ignore[arg-type]
        time.sleep(random.uniform(0.0, 1.0))
        state["server"] = c.start_server()
    elif kind == "worker-kill":
        workers: list[subprocess.Popen[str]] = state["workers"]  # type: ignore[assignment]
        victim = workers.pop(random.randrange(len(workers)))
        c.kill(victim)
        workers.append(c.start_worker(concurrency=4, name=f"w{uuid.uuid4().hex[:4]}"))
    else:
        subprocess.run(["rabbitmqctl", "close_all_connections", "flowrelay soak"], check=True,
                       capture_output=True, timeout=120)


def soak(minutes: float, seed: int) -> dict[str, object]:
    random.seed(seed)
    tmp = Path(tempfile.mkdtemp(prefix="flowrelay-soak-"))
    c = FaultCluster(fault_env(AMQP, tmp), tmp, flows=FLOWS)
    faults: Counter[str] = Counter()
    recoveries: list[float] = []
    idle_faults = 0
    batches: list[str] = []
    try:
        state: dict[str, object] = {"server": c.start_server()}
        state["workers"] = [c.start_worker(concurrency=4, name=f"w{i}") for i in (1, 2)]
        setup_chain(c)
        deadline = time.monotonic() + minutes * 60
        launchers = []
        while time.monotonic() < deadline:
            chunk = [f"s{len(batches) + i:06d}" for i in range(100)]
            batches += chunk
            launchers.append(c.launch("up/faults", chunk, pace=0.04, out=f"launcher-{len(launchers)}"))
            time.sleep(random.uniform(2.0, 5.0))
            kind = random.choice(["server-kill", "worker-kill", "close-connections"])
            runs = c.runs()
            before = sum(1 for r in runs.values() if r.state == "Completed")
            # Recovery is only measurable when work is in flight: a fault hitting an idle
            # cluster has no "next run" to complete until the next chunk is launched.
            busy = len(runs) < 2 * len(batches) or any(r.state not in FINAL for r in runs.values())
            at = time.monotonic()
            inject(c, kind, state)
            faults[kind] += 1
            if not busy:
                idle_faults += 1
                continue
            while completed_count(c) <= before and time.monotonic() - at < 120:
                time.sleep(0.2)
            recoveries.append(time.monotonic() - at)
        for launcher in launchers:
            launcher.wait(timeout=600)
        quiet_by = time.monotonic() + 300
        while time.monotonic() < quiet_by:
            runs = c.runs()
            ups_done = sum(1 for r in runs.values() if r.flow == "up" and r.state in FINAL)
            if ups_done >= len(batches) and all(r.state in FINAL for r in runs.values()):
                downs = sum(1 for r in runs.values() if r.flow == "down")
                if downs >= sum(1 for r in runs.values() if r.flow == "up" and r.state == "Completed"):
                    break
            time.sleep(1.0)
        return {**tally(c, batches), "minutes": minutes, "faults": dict(faults),
                "faults_injected": sum(faults.values()),
                "max_recovery_seconds": round(max(recoveries, default=0.0), 2),
                "faults_while_idle": idle_faults,
                "workdir": str(tmp)}
    finally:
        c.stop()
        _delete_topology(AMQP, c.env["FLOWRELAY_BROKER__PREFIX"], [c.pool, "default"])


def tally(c: FaultCluster, batches: list[str]) -> dict[str, object]:
    runs = c.runs()
    ups: dict[str, list[str]] = {}
    downs: dict[str, list[str]] = {}
    for r in runs.values():
        if r.flow == "up":
            ups.setdefault(r.parameters["batch_id"], []).append(r.state or "")
        elif r.flow == "down":
            downs.setdefault(r.parameters["upstream_batch_id"], []).append(r.state or "")
    lost = [b for b in batches
            if ups.get(b, []) != ["Completed"] or downs.get(b, []) != ["Completed"]]
    finished = Counter(e.run_id for e in c.executions() if e.kind in ("up", "down"))
    # a body that finished twice is a duplicate unless its run Crashed in between (its worker
    # died after the body, before the report: at-least-once execution, retried by design)
    duplicated = (sum(1 for b in batches if len(downs.get(b, [])) > 1)
                  + sum(1 for b in batches if len(ups.get(b, [])) > 1)
                  + sum(1 for run_id, n in finished.items()
                        if n > 1 and "Crashed" not in runs[run_id].state_names))
    reexecuted = sum(1 for n in finished.values() if n > 1)
    stuck = sum(1 for r in runs.values() if r.state not in FINAL)
    return {"batches": len(batches),
            "runs_completed": sum(1 for r in runs.values() if r.state == "Completed"),
            "lost": len(lost), "lost_examples": lost[:5], "duplicated": duplicated,
            "reexecuted_after_crash": reexecuted,
            "crashed_before_running": sum(1 for r in runs.values()
                                          if r.state_names[-2:] == ["Pending", "Crashed"]),
            "stuck": stuck}


def backlog(events: int) -> dict[str, object]:
    """Publish `events` while the server is stopped, start it, wait for one firing each."""
    from engine.broker.topology import Names
    from tests.faults.test_backpressure import RULES

    tmp = Path(tempfile.mkdtemp(prefix="flowrelay-soak-backlog-"))
    c = FaultCluster(fault_env(AMQP, tmp), tmp, flows=FLOWS)
    try:
        server = c.start_server()
        c.apply(RULES)
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
        names = Names(c.env["FLOWRELAY_BROKER__PREFIX"])
        bodies = [json.dumps({"id": str(uuid.uuid4()), "event": "bp.tick",
                              "resource": {"id": "bp/1"}}).encode() for _ in range(events)]
        publish_many(AMQP, names.events, "bp.tick", bodies)
        started = time.monotonic()
        server = c.start_server()
        fired = 0
        while time.monotonic() - started < 1800:
            fired = c.cli_json("automation", "inspect", "count-ticks")["counters"]["fired"]  # type: ignore[index]
            if fired >= events:
                break
            time.sleep(2.0)
        from tests.faults.conftest import peak_rss_mb

        return {"backlog_events": events, "backlog_fired": fired,
                "backlog_seconds": round(time.monotonic() - started, 1),
                "backlog_peak_rss_mb": round(peak_rss_mb(server.pid))}
    finally:
        c.stop()
        _delete_topology(AMQP, c.env["FLOWRELAY_BROKER__PREFIX"], ["default"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=2.0)
    parser.add_argument("--backlog", type=int, default=0, help="events for the back-pressure check")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    result = soak(args.minutes, args.seed)
    if args.backlog:
        result.update(backlog(args.backlog))
    rows = [("batches launched", result["batches"]), ("runs completed", result["runs_completed"]),
            ("faults injected", f"{result['faults_injected']} {result['faults']}"),
            ("lost", f"{result['lost']} ({result['crashed_before_running']} crashed before Running)"),
            ("duplicated", result["duplicated"]),
            ("re-executed after a crash", result["reexecuted_after_crash"]),
            ("stuck (not final)", result["stuck"]),
            ("max recovery", f"{result['max_recovery_seconds']} s"
             f" ({result['faults_while_idle']} fault(s) hit an idle cluster, not timed)")]
    if args.backlog:
        rows += [("backlog fired / events", f"{result['backlog_fired']} / {result['backlog_events']}"),
                 ("backlog drain", f"{result['backlog_seconds']} s, peak RSS {result['backlog_peak_rss_mb']} MB")]
    width = max(len(k) for k, _ in rows)
    print(f"soak: {args.minutes:g} min")
    for key, value in rows:
        print(f"  {key:<{width}}  {value}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))
    ok = result["lost"] == 0 and result["duplicated"] == 0 and result["stuck"] == 0
    if args.backlog:
        ok = ok and result["backlog_fired"] == result["backlog_events"]
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
