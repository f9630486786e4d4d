"""Schedules at scale: 10,000 cron deployments whose slots fall on the same minute.

    .venv/bin/python bench/schedules.py [--deployments 10000] [--lead 45] [--json bench/results/schedules.json]

What it measures, in one process (the server on the in-memory broker and a temp SQLite file,
as `flowrelay dev` runs it; automations off):

1. registers N deployments, each with the daily cron ``M H * * *`` (UTC) of one minute boundary
   at least `--lead` seconds ahead, all in one pool;
2. starts the server (`engine.server.app.Server`): its scheduler loads every schedule and makes
   each one's next run ahead of time (``scheduled_runs_ahead: 1``), Scheduled for that minute;
3. consumes the pool's queue and records, for each run, when its work message (the
   ``flow-run.dispatched`` event the dispatch timer writes at the slot) reaches the queue.

It prints how long after the slot the first, median, 99th-percentile and last run reached the
pool, the set-up times, and the process's resident memory (RSS now and at its peak: the whole
server, scheduler included) — target: the last within 1 s of the slot, RSS under 300 MB.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import gc
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))


def _rss_mb() -> tuple[float, float]:
    """(current, peak) resident set size of this process, in MB (Linux /proc)."""
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0]) / 1024
    return fields.get("VmRSS", 0.0), fields.get("VmHWM", 0.0)


async def run(count: int, lead: float, workdir: Path) -> dict[str, object]:
    os.environ["FLOWRELAY_DATABASE__URL"] = f"sqlite+aiosqlite:///{workdir / 'bench.db'}"
    os.environ["FLOWRELAY_BROKER__URL"] = f"memory://bench-{uuid.uuid4().hex[:6]}"
    os.environ["FLOWRELAY_SERVER__SCHEDULED_RUNS_AHEAD"] = "1"
    os.environ["FLOWRELAY_AUTOMATIONS__ENABLED"] = "false"
    os.environ["FLOWRELAY_LOGGING__LEVEL"] = "WARNING"
    from engine.broker.topology import Names
    from engine.logging import configure_logging
    from engine.schemas import DeploymentSpec
    from engine.server.app import Server
    from engine.service import EngineService
    from engine.settings import load_settings

    settings = load_settings()
    configure_logging(settings)
    now = dt.datetime.now(dt.UTC)
    slot = (now + dt.timedelta(seconds=lead + 60)).replace(second=0, microsecond=0)
    cron = f"{slot.minute} {slot.hour} * * *"
    pool = "bench"

    t0 = time.perf_counter()
    service = await EngineService.open(settings.database.url)
    for start in range(0, count, 1000):
        await service.register_deployments([
            DeploymentSpec(name=f"d{i:05d}", flow_name="bench", entrypoint="bench/flows.py:noop",
                           work_pool=pool, schedules=[{"cron": cron}])
            for i in range(start, min(start + 1000, count))
        ])
    await service.close()
    register_s = time.perf_counter() - t0

    server = Server(settings, freeze_heap=True)  # as `flowrelay server` and `dev` run it
    t1 = time.perf_counter()
    await server.start()
    start_s = time.perf_counter() - t1
    made = server.scheduler.created
    arrivals: list[float] = []
    published: list[float] = []
    done = asyncio.Event()

    def on_published(event, key: str) -> None:  # noqa: ANN001
        if key == f"dispatch.{pool}":
            published.append(time.time())

    relayed = server.relay.on_published

    def both(event, key: str) -> None:  # noqa: ANN001
        on_published(event, key)
        if relayed is not None:
            relayed(event, key)

    server.relay.on_published = both
    pauses: list[tuple[float, float]] = []  # (start, seconds) of each garbage collection
    started: list[float] = []

    def on_gc(phase: str, info: dict) -> None:  # noqa: ARG001
        if phase == "start":
            started.append(time.perf_counter())
        elif started:
            pauses.append((time.time(), time.perf_counter() - started.pop()))

    gc.callbacks.append(on_gc)

    async def on_work(message) -> None:  # noqa: ANN001
        arrivals.append(time.time())
        await message.ack()
        if len(arrivals) >= count:
            done.set()

    consumer = await server.broker.consume(Names().pool(pool), on_work, prefetch=0)
    to_slot = (slot - dt.datetime.now(dt.UTC)).total_seconds()
    if to_slot < 0:
        raise SystemExit(f"set-up took longer than --lead allowed ({-to_slot:.1f} s after the slot)")
    rss_before, _ = _rss_mb()
    try:
        await asyncio.wait_for(done.wait(), to_slot + 60)
    except TimeoutError:
        pass
    rss_after, rss_peak = _rss_mb()
    await consumer.cancel(grace=1.0)
    await server.stop()

    gc.callbacks.remove(on_gc)
    slot_epoch = slot.timestamp()
    lags = sorted(arrival - slot_epoch for arrival in arrivals)
    confirmed = sorted(at - slot_epoch for at in published)
    window = [seconds for at, seconds in pauses if slot_epoch - 1 <= at <= slot_epoch + 10]
    result: dict[str, object] = {
        "deployments": count,
        "cron": cron,
        "slot_utc": slot.isoformat(),
        "register_seconds": round(register_s, 2),
        "server_start_seconds": round(start_s, 2),
        "runs_made_at_start": made,
        "slack_before_slot_seconds": round(to_slot, 1),
        "handed_over": len(lags),
        "first_after_slot_s": round(lags[0], 3) if lags else None,
        "median_after_slot_s": round(statistics.median(lags), 3) if lags else None,
        "p99_after_slot_s": round(lags[int(len(lags) * 0.99) - 1], 3) if lags else None,
        "last_after_slot_s": round(lags[-1], 3) if lags else None,
        "last_published_after_slot_s": round(confirmed[-1], 3) if confirmed else None,
        "gc_pauses_in_hand_over": len(window),
        "gc_pause_total_s": round(sum(window), 3),
        "rss_mb_before_slot": round(rss_before, 1),
        "rss_mb_after": round(rss_after, 1),
        "rss_mb_peak": round(rss_peak, 1),
    }
    result["target_met"] = bool(
        lags and len(lags) == count and lags[-1] <= 1.0 and rss_peak < 300
    )
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--deployments", type=int, default=10_000)
    parser.add_argument("--lead", type=float, default=45.0,
                        help="seconds of set-up to allow before the slot's minute")
    parser.add_argument("--json", default=str(HERE / "results" / "schedules.json"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        result = asyncio.run(run(args.deployments, args.lead, Path(tmp)))
    width = max(len(key) for key in result)
    for key, value in result.items():
        print(f"{key:<{width}}  {value}")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.json}")
    return 0 if result["target_met"] else 1


if __name__ == "__main__":
    sys.exit(main())
