"""Group commit: concurrent writes share transactions, yet each keeps its own outcome (every
test runs on SQLite and PostgreSQL)."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from engine.db.group_commit import background
from engine.db.models import EventRow, FlowRunRow
from engine.errors import ObjectNotFound
from engine.service import EngineService
from engine.states import Pending, Running


async def count(svc: EngineService, model: type, *where: object) -> int:
    async with svc.engine.connect() as conn:
        return (
            await conn.execute(select(func.count()).select_from(model).where(*where))
        ).scalar_one()


async def test_a_failing_write_among_concurrent_ones_fails_alone(service: EngineService) -> None:
    # Given writes arriving together, some of which fail
    calls = []
    for i in range(30):
        if i % 3 == 0:
            calls.append(service.set_flow_run_state(uuid.uuid4(), Running()))
        else:
            calls.append(service.create_flow_run("grouped", {"i": i}))

    # When they run at once
    outcomes = await asyncio.gather(*calls, return_exceptions=True)

    # Then each failing one gets its own error and every other one is committed with its event
    errors = [o for o in outcomes if isinstance(o, BaseException)]
    runs = [o for o in outcomes if not isinstance(o, BaseException)]
    assert len(errors) == 10 and all(isinstance(e, ObjectNotFound) for e in errors)
    assert len(runs) == 20
    assert await count(service, FlowRunRow, FlowRunRow.flow_name == "grouped") == 20
    for run in runs:
        assert (await service.read_flow_run(run.id)).state_name == "Pending"
        resource = f"flow-run/{run.id}"
        assert await count(service, EventRow, EventRow.resource_id == resource) == 1


async def test_a_duplicate_key_in_a_batch_returns_the_first_run(service: EngineService) -> None:
    # Given many concurrent creates with the same idempotency key (they share batches)
    runs = await asyncio.gather(
        *(service.create_flow_run("keyed", idempotency_key="same") for _ in range(20))
    )

    # Then one run exists and every caller got it
    assert {run.id for run in runs} == {runs[0].id}
    assert await count(service, FlowRunRow, FlowRunRow.idempotency_key == "same") == 1


async def test_concurrent_proposals_on_one_run_are_judged_in_turn(service: EngineService) -> None:
    # Given a Scheduled-free Pending run
    run = await service.create_flow_run("claimed")

    # When several workers propose Running at once, each from a Pending they believe current
    answers = await asyncio.gather(
        *(service.set_flow_run_state(run.id, Running(worker_id=f"w{i}")) for i in range(5))
    )

    # Then the runs' history is consistent: every accepted proposal is in it, in turn
    accepted = [a for a in answers if a.accepted]
    assert accepted, answers
    states = await service.read_flow_run_states(run.id)
    assert states[0].name == "Pending"
    assert [s.details.worker_id for s in states[1:]] == [a.state.details.worker_id for a in accepted]


@pytest.mark.parametrize("n", [1, 50])
async def test_writes_after_close_fail_clearly(db_url: str, n: int) -> None:
    svc = await EngineService.open(db_url)
    await svc.close()
    with pytest.raises(RuntimeError, match="not started"):
        await asyncio.gather(*(svc.create_flow_run("late", state=Pending()) for _ in range(n)))


async def test_exactly_the_committed_outbox_rows_are_handed_over(service: EngineService) -> None:
    # Given a listener for the outbox rows of each commit
    handed: list[tuple[object, str]] = []
    service.add_event_listener(handed.extend)
    calls = []
    for i in range(30):
        if i % 3 == 0:
            calls.append(service.set_flow_run_state(uuid.uuid4(), Running()))  # rolled back
        else:
            calls.append(service.create_flow_run("handed", {"i": i}))

    # When writes, some failing, share transactions
    outcomes = await asyncio.gather(*calls, return_exceptions=True)
    from engine.schemas import Event

    await service.emit_event(Event(event="custom.thing", resource={"id": "thing/1"}))

    # Then the listener got the committed rows, each once, with their routing keys, and nothing
    # of the rolled-back writes; the rows stay unsent until the relay marks them
    unsent = {event.id: key for event, key in await service.unsent_events(100)}
    assert {event.id: key for event, key in handed} == unsent  # type: ignore[attr-defined]
    runs = [o for o in outcomes if not isinstance(o, BaseException)]
    assert len(handed) == len(runs) + 1 == len(unsent)


async def test_background_works_wait_for_every_queued_foreground_work(tmp_path: Path) -> None:
    # Given a group commit whose batches hold two works, and a writer busy with a first batch
    order: list[str] = []
    service = await EngineService.open(f"sqlite+aiosqlite:///{tmp_path / 'bg.db'}")
    group = service._writer  # noqa: SLF001 - the writer under test
    group._max_batch = 2  # noqa: SLF001

    def work(name: str) -> Any:
        async def run(session: AsyncSession) -> str:
            order.append(name)
            return name
        return run

    try:
        # When background works are queued before foreground ones
        with background():
            queued = [asyncio.ensure_future(group.run(work(f"bg{i}"))) for i in range(3)]
        queued += [asyncio.ensure_future(group.run(work(f"fg{i}"))) for i in range(3)]
        results = await asyncio.gather(*queued)
    finally:
        await service.close()

    # Then every foreground work ran first; background works filled the room left
    assert sorted(results) == ["bg0", "bg1", "bg2", "fg0", "fg1", "fg2"]
    assert order == ["fg0", "fg1", "fg2", "bg0", "bg1", "bg2"]
