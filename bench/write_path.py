"""The run-state write path alone (no broker, no relay): what one deployment run's database work
costs in the engine service — create (dispatched with it), claim (Pending), Running, Completed —
in CPU milliseconds of this process, SQL statements and commits per run.

    .venv/bin/python bench/write_path.py                      # SQLite, a fresh file
    .venv/bin/python bench/write_path.py --database-url postgresql+asyncpg://.../empty_db

Two phases: `sequential` (one run at a time: the latency path) and `concurrent` (`--batch` runs'
steps in flight at once, as a busy server sees them: what group commit shares). The target of
issue 13 is <= 1.5 ms of CPU per run. Prints a table and writes JSON (bench/results/).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import event  # noqa: E402

from engine.schemas import DeploymentSpec  # noqa: E402
from engine.service import EngineService  # noqa: E402
from engine.states import Completed, Pending, Running  # noqa: E402

HERE = Path(__file__).resolve().parent


async def one_run(service: EngineService, worker: str) -> None:
    """One run's life as the engine sees it: created (and dispatched), claimed, Running, done."""
    run = await service.create_deployment_run("bench/write", {"i": 1})
    claim = await service.set_flow_run_state(run.id, Pending(worker_id=worker))
    assert claim.accepted, claim.reason
    attempt = claim.state.details.attempt if claim.state is not None else None
    running = Running(worker_id=worker)
    running.details.attempt = attempt
    assert (await service.set_flow_run_state(run.id, running)).accepted
    done = Completed(data={"ok": True})
    done.details.attempt = attempt
    assert (await service.set_flow_run_state(run.id, done)).accepted


async def measure(service: EngineService, runs: int, batch: int, statements: list[int]) -> dict[str, float]:
    writer: Any = service._writer  # noqa: SLF001 - the group commit's own counter of commits
    commits0, statements0 = writer.batches, statements[0]
    cpu0, wall0 = time.process_time(), time.perf_counter()
    done = 0
    while done < runs:
        size = min(batch, runs - done)
        await asyncio.gather(*(one_run(service, f"w{(done + i) % 8}") for i in range(size)))
        done += size
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    return {
        "runs": runs, "batch": batch,
        "cpu_ms_per_run": cpu * 1000 / runs, "wall_ms_per_run": wall * 1000 / runs,
        "runs_per_second": runs / wall,
        "statements_per_run": (statements[0] - statements0) / runs,
        "commits_per_run": (writer.batches - commits0) / runs,
    }


async def main(args: argparse.Namespace) -> dict[str, Any]:
    url = args.database_url or f"sqlite+aiosqlite:///{Path(tempfile.mkdtemp(prefix='flowrelay-wp-')) / 'wp.db'}"
    service = await EngineService.open(url)
    statements = [0]

    def count(*_: Any) -> None:
        statements[0] += 1

    event.listen(service.engine.sync_engine, "before_cursor_execute", count)
    try:
        await service.register_deployment(DeploymentSpec(
            name="write", flow_name="bench", entrypoint="flows.py:trivial", work_pool="bench"))
        for _ in range(20):  # warm up: statement caches, the flow row, the connection
            await one_run(service, "warm")
        sequential = await measure(service, args.runs, 1, statements)
        concurrent = await measure(service, args.runs, args.batch, statements)
    finally:
        await service.close()
    return {"database": url.split(":")[0], "sequential": sequential, "concurrent": concurrent,
            "target_cpu_ms_per_run": 1.5}


def cli() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=500)
    parser.add_argument("--batch", type=int, default=50)
    parser.add_argument("--database-url", default="")
    parser.add_argument("--json", default=str(HERE / "results" / "write_path.json"))
    parser.add_argument("--profile", action="store_true",
                        help="also print where the CPU goes (cProfile, by own time, top 20)")
    args = parser.parse_args()
    if args.profile:
        import cProfile
        import pstats

        profiler = cProfile.Profile()
        result = profiler.runcall(asyncio.run, main(args))
        stats = pstats.Stats(profiler)
        stats.sort_stats("tottime").print_stats(20)
        by_package: dict[str, float] = {}
        for (file, _, _), (_, _, own, _, _) in stats.stats.items():  # type: ignore[attr-defined]
            key = next((k for k in ("sqlalchemy", "aiosqlite", "asyncpg", "pydantic", "engine/",
                                    "asyncio", "sqlite3", "json") if k in file), "other")
            by_package[key] = by_package.get(key, 0.0) + own
        total = sum(by_package.values()) or 1.0
        result["cpu_share_by_package"] = {k: round(v / total, 3) for k, v in
                                          sorted(by_package.items(), key=lambda kv: -kv[1])}
        print("CPU share by package:", result["cpu_share_by_package"])
    else:
        result = asyncio.run(main(args))
    print(f"write path on {result['database']} (target: <= {result['target_cpu_ms_per_run']} ms CPU per run)")
    print(f"{'phase':<12}{'runs':>6}{'CPU ms/run':>12}{'wall ms/run':>13}{'runs/s':>9}{'SQL/run':>9}{'commits/run':>13}")
    for phase in ("sequential", "concurrent"):
        r = result[phase]
        print(f"{phase:<12}{r['runs']:>6}{r['cpu_ms_per_run']:>12.2f}{r['wall_ms_per_run']:>13.2f}"
              f"{r['runs_per_second']:>9.1f}{r['statements_per_run']:>9.1f}{r['commits_per_run']:>13.2f}")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2))
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(cli())
