"""Writes that lose a transient conflict (PostgreSQL deadlock 40P01, serialization failure 40001)
run again, whole, in a fresh transaction: the caller sees one outcome, as if the work ran once."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import select, text, update
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession

from engine.db.group_commit import RetryPolicy, is_transient_conflict
from engine.db.models import FlowRunRow
from engine.service import EngineService

FAST = RetryPolicy(attempts=3, backoff_seconds=0.001)


class _Orig(Exception):
    def __init__(self, sqlstate: str) -> None:
        super().__init__(f"sqlstate {sqlstate}")
        self.sqlstate = sqlstate


def conflict(sqlstate: str = "40P01") -> DBAPIError:
    return DBAPIError("UPDATE ...", {}, _Orig(sqlstate))


@pytest.fixture
async def fast_service(db_url: str) -> AsyncIterator[EngineService]:
    svc = await EngineService.open(db_url, conflict_retry=FAST)
    try:
        yield svc
    finally:
        await svc.close()


def test_only_deadlocks_and_serialization_failures_are_transient() -> None:
    assert is_transient_conflict(conflict("40P01"))
    assert is_transient_conflict(conflict("40001"))
    assert not is_transient_conflict(conflict("23505"))  # unique violation: a real answer
    assert not is_transient_conflict(ValueError("no"))
    try:
        try:
            raise conflict()
        except DBAPIError as exc:
            raise RuntimeError("wrapped by a work") from exc
    except RuntimeError as wrapped:
        assert is_transient_conflict(wrapped)


async def test_a_work_that_lost_a_conflict_runs_again_and_commits_once(
    fast_service: EngineService,
) -> None:
    # Given a run, and a work that bumps its counter then loses a deadlock on its first attempt
    run = await fast_service.create_flow_run("retried")
    attempts = 0

    async def work(session: AsyncSession) -> int:
        nonlocal attempts
        attempts += 1
        await session.execute(
            update(FlowRunRow).where(FlowRunRow.id == run.id).values(run_count=FlowRunRow.run_count + 1)
        )
        if attempts == 1:
            raise conflict()
        return attempts

    # When it is written, alongside other writes sharing its transaction
    result, *others = await asyncio.gather(
        fast_service.write(work), *(fast_service.create_flow_run("beside") for _ in range(5))
    )

    # Then the caller gets the second attempt's result, and the first attempt left nothing behind
    assert result == 2 and attempts == 2
    assert (await fast_service.read_flow_run(run.id)).run_count == 1
    assert all(o.flow_name == "beside" for o in others)


async def test_retries_are_bounded(fast_service: EngineService) -> None:
    attempts = 0

    async def work(session: AsyncSession) -> None:
        nonlocal attempts
        attempts += 1
        raise conflict("40001")

    with pytest.raises(DBAPIError):
        await fast_service.write(work)
    assert attempts == 1 + FAST.attempts


async def test_other_errors_are_not_retried(fast_service: EngineService) -> None:
    attempts = 0

    async def work(session: AsyncSession) -> None:
        nonlocal attempts
        attempts += 1
        raise conflict("23505")

    with pytest.raises(DBAPIError):
        await fast_service.write(work)
    assert attempts == 1


@pytest.mark.postgres
async def test_two_services_that_deadlock_on_postgres_both_succeed(postgres_db: str) -> None:
    # Given two services (two servers) on one PostgreSQL database, and two runs X and Y
    a = await EngineService.open(postgres_db, conflict_retry=FAST)
    b = await EngineService.open(postgres_db, conflict_retry=FAST)
    try:
        x, y = (await a.create_flow_run("locked")).id, (await a.create_flow_run("locked")).id
        holds: dict[str, asyncio.Event] = {"a": asyncio.Event(), "b": asyncio.Event()}
        attempts = {"a": 0, "b": 0}

        def locking(me: str, other: str, first: uuid.UUID, second: uuid.UUID):  # type: ignore[no-untyped-def]
            async def work(session: AsyncSession) -> str:
                attempts[me] += 1
                await session.execute(text("SET LOCAL deadlock_timeout = '50ms'"))
                await bump(session, first)
                holds[me].set()
                await holds[other].wait()  # the other holds its first row: lock order crosses
                await bump(session, second)
                return me

            return work

        # When A locks X then Y while B locks Y then X, each in its own service's transaction
        results = await asyncio.wait_for(
            asyncio.gather(a.write(locking("a", "b", x, y)), b.write(locking("b", "a", y, x))),
            timeout=30,
        )

        # Then PostgreSQL picked a victim, whose work ran again in a fresh transaction: both
        # calls succeeded, and each work's effect is there exactly once
        assert results == ["a", "b"]
        assert sorted(attempts.values()) == [1, 2]
        async with a.read_session() as session:
            counts = {run_id: n for run_id, n in (await session.execute(
                    select(FlowRunRow.id, FlowRunRow.run_count).where(FlowRunRow.id.in_([x, y]))
            )).all()}
        assert counts == {x: 2, y: 2}
    finally:
        await a.close()
        await b.close()


async def bump(session: AsyncSession, run_id: uuid.UUID) -> None:
    await session.execute(
        update(FlowRunRow).where(FlowRunRow.id == run_id).values(run_count=FlowRunRow.run_count + 1)
    )


