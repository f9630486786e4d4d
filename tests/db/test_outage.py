"""A database that refuses connections is an outage to wait out, not an answer (issue 11).

PostgreSQL: the test database stops accepting connections (``ALTER DATABASE ... ALLOW_CONNECTIONS
false`` and its sessions terminated, as an operator or a failover does) for a few seconds while
writes are under way. SQLite: another process holds the write lock past ``busy_timeout``.
The writes wait, in order, and commit once the database is back; past
``database.unavailable_timeout_seconds`` they fail."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from engine.db.group_commit import is_unavailable
from engine.service import EngineService
from engine.states import Completed, Running
from tests.conftest import (
    POSTGRES_URL,
    allow_connections,
    fresh_postgres_database,
    refuse_connections,
    require_service,
)


@pytest.fixture
def pg_database() -> tuple[str, str]:
    require_service("PostgreSQL", POSTGRES_URL, 5432)
    with fresh_postgres_database("flowrelay_outage") as url:
        yield url, url.rsplit("/", 1)[1]


@pytest.mark.postgres
async def test_writes_wait_out_a_postgres_outage_in_order(pg_database: tuple[str, str]) -> None:
    # Given a service with runs under way
    url, dbname = pg_database
    service = await EngineService.open(url)
    try:
        runs = [await service.create_flow_run("etl") for _ in range(5)]

        # When the database refuses connections for 3 s while the runs report their states
        await refuse_connections(dbname)
        writes = [asyncio.ensure_future(service.set_flow_run_state(r.id, Running())) for r in runs]
        writes += [asyncio.ensure_future(service.set_flow_run_state(r.id, Completed())) for r in runs]
        await asyncio.sleep(1.0)
        during = service.unavailable_for
        assert not any(w.done() for w in writes), "a write was answered during the outage"
        await asyncio.sleep(2.0)
        await allow_connections(dbname)
        answers = await asyncio.wait_for(asyncio.gather(*writes), 60)

        # Then every write was applied once, in the order it was made, and the outage is over
        assert during is not None and during > 0
        assert all(a.accepted for a in answers)
        for run in runs:
            history = [s.name for s in await service.read_flow_run_states(run.id)]
            assert history == ["Pending", "Running", "Completed"]
        assert service.unavailable_for is None
    finally:
        await allow_connections(dbname)
        await service.close()


@pytest.mark.postgres
async def test_past_its_bound_an_outage_fails_the_write(pg_database: tuple[str, str]) -> None:
    url, dbname = pg_database
    service = EngineService(url, unavailable_timeout=1.0)
    await service.start()
    try:
        await refuse_connections(dbname)
        with pytest.raises(Exception) as failure:  # noqa: PT011 - the driver's error, whatever it is
            await asyncio.wait_for(service.create_flow_run("etl"), 30)
        assert is_unavailable(failure.value)
        await allow_connections(dbname)
        assert (await service.create_flow_run("etl")).state.name == "Pending"
    finally:
        await allow_connections(dbname)
        await service.close()


async def test_writes_wait_out_sqlite_locked_past_busy_timeout(tmp_path: Path) -> None:
    # Given a service whose busy timeout is 200 ms
    path = tmp_path / "locked.db"
    service = EngineService(f"sqlite+aiosqlite:///{path}", busy_timeout_ms=200)
    await service.start()
    try:
        run = await service.create_flow_run("etl")

        # When another process holds the write lock for 2 s
        locked, release = threading.Event(), threading.Event()

        def hold() -> None:
            conn = sqlite3.connect(path, isolation_level=None)
            conn.execute("BEGIN EXCLUSIVE")
            locked.set()
            release.wait(10)
            conn.execute("COMMIT")
            conn.close()

        holder = threading.Thread(target=hold)
        holder.start()
        await asyncio.to_thread(locked.wait, 10)
        began = time.monotonic()
        write = asyncio.ensure_future(service.set_flow_run_state(run.id, Running()))
        await asyncio.sleep(2.0)
        still_waiting = not write.done()
        release.set()
        answer = await asyncio.wait_for(write, 30)
        await asyncio.to_thread(holder.join, 10)

        # Then the write waited (instead of failing with "database is locked") and was applied
        assert still_waiting and time.monotonic() - began >= 2.0
        assert answer.accepted
        assert (await service.read_flow_run(run.id)).state.name == "Running"
    finally:
        await service.close()
