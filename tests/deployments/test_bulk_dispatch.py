"""Bulk dispatch of due runs (`EngineService.dispatch_due`, `engine.deployments.bulk`) and the
dispatch timer using it; every test runs on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from collections import Counter
from typing import Any

from sqlalchemy import select

from engine.db.models import EventRow, FlowRunRow
from engine.schemas import FlowRun
from engine.server.timers import DispatchTimer
from engine.service import EngineService, OutboxEvents


async def dispatch_counts(svc: EngineService) -> Counter[str]:
    """Committed ``flow-run.dispatched`` outbox rows per run id."""
    query = select(EventRow.resource_id, EventRow.routing_key).where(
        EventRow.event == "flow-run.dispatched"
    )
    async with svc.read_session() as session:
        found = (await session.execute(query)).all()
    return Counter(str(resource).removeprefix("flow-run/") for resource, _ in found)


async def future_runs(svc: EngineService, deployment: str, count: int) -> list[FlowRun]:
    when = dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)
    return list(await asyncio.gather(*(
        svc.create_deployment_run(deployment, scheduled_time=when) for _ in range(count)
    )))


async def test_many_due_runs_get_exactly_one_dispatch_each(
    service: EngineService, deploy: Any
) -> None:
    await deploy("a")
    await deploy("b", work_pool="pool-b")
    runs = await future_runs(service, "etl/a", 300) + await future_runs(service, "etl/b", 50)
    handed: list[OutboxEvents] = []
    service.add_event_listener(handed.append)

    done = await service.dispatch_due([run.id for run in runs] + [uuid.uuid4()])

    assert sorted(done.dispatched) == sorted(run.id for run in runs)
    assert done.waiting == [] and done.busy == []
    assert await dispatch_counts(service) == Counter({str(run.id): 1 for run in runs})
    # Handed to the relay once committed, each once, to its pool's queue
    sent = [(event, key) for batch in handed for event, key in batch
            if event.event == "flow-run.dispatched"]
    assert len(sent) == 350
    assert Counter(key for _, key in sent) == {"dispatch.pool-a": 300, "dispatch.pool-b": 50}
    first = next(event for event, _ in sent if event.payload["flow_run_id"] == str(runs[0].id))
    assert first.payload["entrypoint"] == "flows/etl.py:etl"
    assert first.resource["deployment"] == "etl/a"
    async with service.read_session() as session:
        stamped = await session.scalars(select(FlowRunRow.dispatched_at))
        assert all(at is not None for at in stamped)
    assert await service.due_runs() == []


async def test_already_dispatched_runs_are_skipped(service: EngineService, deploy: Any) -> None:
    await deploy()
    runs = await future_runs(service, "etl/nightly", 20)
    plain = await service.create_flow_run("etl")
    assert await service.dispatch_run(runs[0].id) is True

    done = await service.dispatch_due([run.id for run in runs] + [plain.id])
    again = await service.dispatch_due([run.id for run in runs])

    assert sorted(done.dispatched) == sorted(run.id for run in runs[1:])
    assert again.dispatched == [] and again.busy == []
    assert await dispatch_counts(service) == Counter({str(run.id): 1 for run in runs})


async def test_concurrent_bulk_dispatches_and_two_servers_dispatch_once(
    service: EngineService, deploy: Any, db_url: str
) -> None:
    await deploy()
    runs = await future_runs(service, "etl/nightly", 200)
    ids = [run.id for run in runs]
    other = await EngineService.open(db_url)  # a second server on the same database
    try:
        results = await asyncio.gather(
            service.dispatch_due(ids), service.dispatch_due(ids[::-1]),
            other.dispatch_due(ids), other.dispatch_due(ids[50:150]),
        )
        # Runs skipped as locked are looked at again, as the timer does
        for done in results:
            if done.busy:
                await service.dispatch_due(done.busy)
    finally:
        await other.close()

    assert sum(len(done.dispatched) for done in results) <= 200
    assert await dispatch_counts(service) == Counter({str(run_id): 1 for run_id in ids})


async def test_limited_deployments_keep_their_slots(service: EngineService, deploy: Any) -> None:
    await deploy("limited", concurrency_limit=2)
    await deploy("free")
    limited = await future_runs(service, "etl/limited", 5)
    free = await future_runs(service, "etl/free", 10)

    done = await service.dispatch_due([run.id for run in limited + free])

    assert len(done.waiting) == 3 and set(done.waiting) <= {run.id for run in limited}
    assert len(done.dispatched) == 12
    counts = await dispatch_counts(service)
    assert sum(counts[str(run.id)] for run in limited) == 2
    names = [(await service.read_flow_run(run.id)).state_name for run in limited]
    assert Counter(names) == {"Scheduled": 2, "AwaitingConcurrencySlot": 3}
    # Waiting runs are no longer due; dispatching again changes nothing
    again = await service.dispatch_due([run.id for run in limited + free])
    assert again.dispatched == [] and again.waiting == []
    assert await dispatch_counts(service) == counts


async def test_a_redeployed_deployment_sends_its_runs_to_its_new_pool(
    service: EngineService, deploy: Any
) -> None:
    await deploy()
    runs = await future_runs(service, "etl/nightly", 3)
    await deploy(work_pool="pool-z", entrypoint="flows/etl.py:etl2")

    await service.dispatch_due([run.id for run in runs])

    async with service.read_session() as session:
        keys = set(await session.scalars(
            select(EventRow.routing_key).where(EventRow.event == "flow-run.dispatched")
        ))
    assert keys == {"dispatch.pool-z"}
    read = await service.read_flow_run(runs[0].id)
    assert read.work_pool == "pool-z"


async def test_the_timer_dispatches_due_runs_in_chunks(service: EngineService, deploy: Any) -> None:
    await deploy()
    runs = await future_runs(service, "etl/nightly", 1100)
    now = dt.datetime.now(dt.UTC) + dt.timedelta(hours=2)  # every run is due on this clock
    timer = DispatchTimer(service, clock=lambda: now)
    calls: list[int] = []
    dispatch_due = service.dispatch_due

    async def counting(run_ids: list[uuid.UUID], **kwargs: Any) -> Any:
        calls.append(len(run_ids))
        return await dispatch_due(run_ids, **kwargs)

    service.dispatch_due = counting  # type: ignore[method-assign]
    await timer.start()
    try:
        for _ in range(200):
            if len(await dispatch_counts(service)) == len(runs):
                break
            await asyncio.sleep(0.05)
    finally:
        await timer.stop()

    assert await dispatch_counts(service) == Counter({str(run.id): 1 for run in runs})
    assert sorted(calls) == [100, 500, 500]


async def test_staged_runs_are_stamped_with_their_time_and_limited_ones_deferred(
    service: EngineService, deploy: Any
) -> None:
    # Given runs of a free and of a limited deployment, due in three seconds
    await deploy("free")
    await deploy("limited", concurrency_limit=1)
    free = await future_runs(service, "etl/free", 3)
    limited = await future_runs(service, "etl/limited", 2)
    when = dt.datetime.now(dt.UTC).replace(microsecond=0) + dt.timedelta(seconds=3)
    at = {run.id: when for run in free + limited}

    # When the timer stages them (their database work done ahead of their time)
    done = await service.dispatch_due(list(at), at=at)

    # Then the free runs are dispatched *at* their time: stamped with it, their work events
    # occurring then (the relay holds them until then); the limited ones are left for their time
    assert sorted(done.dispatched) == sorted(run.id for run in free)
    assert sorted(done.deferred) == sorted(run.id for run in limited) and done.waiting == []
    assert {event.occurred for event, _ in done.events} == {when}
    async with service.read_session() as session:
        stamped = dict((await session.execute(
            select(FlowRunRow.id, FlowRunRow.dispatched_at)
            .where(FlowRunRow.id.in_([run.id for run in free + limited]))
        )).all())
    assert {stamped[run.id] for run in free} == {when}
    assert {stamped[run.id] for run in limited} == {None}
    # ... and they are still the schedule's to cancel until their time (a pause cancels them)
    unsent = await service.unsent_events(None, after=dt.datetime.now(dt.UTC))
    assert sorted(event.payload["flow_run_id"] for event, _ in unsent) == sorted(
        str(run.id) for run in free
    )
    assert all(
        event.payload.get("flow_run_id") not in {str(run.id) for run in free}
        for event, _ in await service.unsent_events(None, until=dt.datetime.now(dt.UTC))
    )
