"""SQLite under write contention: 20 concurrent writers (four services in this process, two
other processes) and a long reader, and no "database is locked" (SQLITE_BUSY)."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from sqlalchemy import func, select

from engine.db import read_only
from engine.db.models import FlowRunRow
from engine.schemas import FlowRunFilter
from engine.service import EngineService
from engine.states import Running, State, StateType

RUNS_PER_WRITER = 8

WRITER_PROCESS = """
import asyncio, sys
from engine.service import EngineService
from engine.states import Running, State, StateType

async def main(url, tag, writers, runs):
    svc = await EngineService.open(url)
    try:
        async def write(w):
            for i in range(runs):
                run = await svc.create_flow_run("load", {"w": w, "i": i}, tags=[tag])
                await svc.set_flow_run_state(run.id, Running(worker_id=tag))
                await svc.set_flow_run_state(run.id, State(type=StateType.COMPLETED, data=i))
        await asyncio.gather(*(write(w) for w in range(writers)))
    finally:
        await svc.close()

asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])))
"""


async def test_twenty_writers_and_a_reader(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'busy.db'}"
    services = [await EngineService.open(url, busy_timeout_ms=30_000) for _ in range(4)]
    stop = asyncio.Event()
    snapshots: list[tuple[int, int]] = []

    async def writer(svc: EngineService, w: int) -> None:
        for i in range(RUNS_PER_WRITER):
            run = await svc.create_flow_run("load", {"w": w, "i": i}, tags=["local"])
            await svc.set_flow_run_state(run.id, Running(worker_id=f"w{w}"))
            await svc.set_flow_run_state(run.id, State(type=StateType.COMPLETED, data=i))

    async def reader(svc: EngineService) -> None:
        # A long read transaction: its snapshot must stay stable while writers commit.
        while not stop.is_set():
            async with read_only(svc.engine).connect() as conn:
                query = select(func.count()).select_from(FlowRunRow)
                first = (await conn.execute(query)).scalar_one()
                await asyncio.sleep(0.05)
                again = (await conn.execute(query)).scalar_one()
                snapshots.append((first, again))
            await svc.read_flow_runs(FlowRunFilter(limit=20))

    processes = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            WRITER_PROCESS,
            url,
            f"proc{p}",
            "2",
            str(RUNS_PER_WRITER),
            stderr=asyncio.subprocess.PIPE,
        )
        for p in range(2)
    ]
    try:
        reading = asyncio.create_task(reader(services[0]))
        await asyncio.gather(*(writer(services[w % 4], w) for w in range(16)))
        outcomes = [await proc.communicate() for proc in processes]
        stop.set()
        await reading

        assert [proc.returncode for proc in processes] == [0, 0], [err for _, err in outcomes]
        runs = await services[0].read_flow_runs(FlowRunFilter(limit=1000))
        assert len(runs) == 20 * RUNS_PER_WRITER
        assert {r.state.name for r in runs} == {"Completed"}
        assert all(r.run_count == 1 for r in runs)
        assert len(await services[0].read_events(limit=10_000)) == 3 * 20 * RUNS_PER_WRITER
        assert snapshots and all(first == again for first, again in snapshots)
    finally:
        stop.set()
        for proc in processes:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        for svc in services:
            await svc.close()
