"""Server leases (`engine.server.leases`, `engine.db.servers`): several servers on one database
share the partitions fairly, take over those of a server that stops or dies, adopt a dead
server's unsent outbox rows exactly once, and fence themselves when they cannot renew.

Several `EngineService`s on one database stand for several server processes (each has its own
server id, engine and connections); PostgreSQL for what several servers do, SQLite for the one
server it runs."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from engine.schemas import Event
from engine.server.leases import LeaseKeeper, partition_of
from engine.service import EngineService

LEASE = 1.5


@pytest.fixture
async def services(postgres_db: str) -> AsyncIterator[list[EngineService]]:
    made = [EngineService(postgres_db) for _ in range(3)]
    for service in made:
        await service.start()
    yield made
    for service in made:
        await service.close()


def keeper(service: EngineService, *, single: bool = False) -> LeaseKeeper:
    return LeaseKeeper(service, lease_seconds=LEASE, single=single)


def event(name: str) -> Event:
    return Event(event=name, resource={"id": f"thing/{name}"})


def test_partition_of_is_stable_and_spread() -> None:
    assert partition_of("etl/prod") == partition_of("etl/prod")
    spread = {partition_of(f"run-{i}") for i in range(1000)}
    assert len(spread) == 64


@pytest.mark.postgres
async def test_servers_share_partitions_and_take_over_a_dead_ones(services: list[EngineService]) -> None:
    a, b, c = (keeper(s) for s in services)
    await a.tick()
    assert len(a.owned) == 64  # alone: all of them
    await b.tick()
    assert len(b.owned) == 0  # all are leased by a live server
    await a.tick()  # a sees two live servers: gives back what is above its share
    await b.tick()
    assert (len(a.owned), len(b.owned)) == (32, 32)
    assert not set(a.owned) & set(b.owned)
    tokens_b = dict(b.owned)

    await c.tick()
    for k in (a, b, c, a, b, c):
        await k.tick()
    assert sorted(len(k.owned) for k in (a, b, c)) == [20, 22, 22]
    assert set(a.owned) | set(b.owned) | set(c.owned) == set(range(64))

    # b dies (no more ticks): its partitions are taken once its lease has run out, not before
    dead = dict(b.owned)
    await a.tick()
    assert not set(a.owned) & set(dead)
    await asyncio.sleep(LEASE + 0.2)
    first = await a.tick()
    second = await c.tick()
    assert services[1].server_id in first.died
    assert set(dead) <= set(first.gained) | set(second.gained)
    await a.tick()
    await c.tick()
    assert set(a.owned) | set(c.owned) == set(range(64))
    for partition in dead:  # every change of owner grew the fencing token
        now = a.owned.get(partition, c.owned.get(partition))
        assert now is not None and now > tokens_b.get(partition, 0)
    assert not b.valid() and not b.owns("anything")


@pytest.mark.postgres
async def test_a_server_stopping_hands_its_partitions_over_at_once(services: list[EngineService]) -> None:
    a, b = keeper(services[0]), keeper(services[1])
    await a.tick()
    await b.tick()
    released = await a.tick()
    assert len(released.released) == 32 and not released.lost  # given back, not lost
    await b.tick()
    assert len(b.owned) == 32
    await a.stop()  # clean stop: no lease to wait out
    result = await b.tick()
    assert len(b.owned) == 64
    assert len(result.gained) == 32


@pytest.mark.postgres
async def test_a_dead_servers_unsent_rows_are_adopted_once(services: list[EngineService]) -> None:
    a, b, c = (keeper(s) for s in services)
    for k in (a, b, c):
        await k.tick()
    await services[0].emit_event(event("from-a"))
    await services[1].emit_event(event("from-b"))
    # each relay reads only its own rows: b's row is not a's to publish while b lives
    mine_a = await services[0].unsent_events(None, writer=services[0].server_id)
    assert [e.event for e, _ in mine_a] == ["from-a"]
    # a dies; b and c tick after its lease ran out, concurrently: one of them adopts its row
    await asyncio.sleep(LEASE / 2)
    await b.tick()
    await c.tick()
    await asyncio.sleep(LEASE / 2 + 0.2)
    ticks = await asyncio.gather(b.tick(), c.tick())
    assert sum(t.adopted for t in ticks) == 1
    adopter = services[1] if ticks[0].adopted else services[2]
    rows = await adopter.unsent_events(None, writer=adopter.server_id)
    assert sorted(e.event for e, _ in rows) == (["from-a", "from-b"] if adopter is services[1] else ["from-a"])
    # a live server's rows are never adopted
    assert all(t.adopted == 0 for t in await asyncio.gather(b.tick(), c.tick()))


@pytest.mark.postgres
async def test_a_server_that_cannot_renew_stops_acting_before_its_lease_is_taken(
    services: list[EngineService],
) -> None:
    a = keeper(services[0])
    await a.tick()
    run = "0b7c6a4e-1111-4111-8111-000000000001"
    assert a.owns(run)
    time.sleep(LEASE)  # noqa: ASYNC251 - the whole process paused (no tick) for its whole lease: by its own clock it owns nothing
    assert not a.owns(run)
    # resumed before anyone took its partitions: renewing keeps them, with the same tokens
    tokens = dict(a.owned)
    await a.tick()
    assert a.owned == tokens and a.owns(run)


async def test_sqlite_runs_one_server_which_takes_everything_at_start(tmp_path: object) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path}/one.db"
    first = EngineService(url)
    await first.start()
    try:
        await keeper(first, single=True).tick(take_all=True)
        await first.emit_event(event("left-by-a-crash"))
    finally:
        await first.close()  # crashed: no leave, its lease still runs
    second = EngineService(url)
    await second.start()
    try:
        k = keeper(second, single=True)
        result = await k.tick(take_all=True)
        assert len(k.owned) == 64 and len(result.gained) == 64
        assert result.adopted == 1
        rows = await second.unsent_events(None, writer=second.server_id)
        assert [e.event for e, _ in rows] == ["left-by-a-crash"]
    finally:
        await second.close()


@pytest.mark.postgres
async def test_a_dead_servers_staged_dispatch_is_published_at_its_time_by_the_adopter(
    postgres_db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A dispatch staged ahead of its time is an unsent outbox row its relay holds in memory: the
    server that adopts the dead server's rows holds it too and publishes it at its time."""
    import datetime as dt
    import json
    import uuid

    from engine.broker import from_url
    from engine.schemas import DeploymentSpec
    from engine.server.app import Server
    from engine.settings import load_settings
    from engine.states import utcnow

    monkeypatch.setenv("FLOWRELAY_DATABASE__URL", postgres_db)
    monkeypatch.setenv("FLOWRELAY_BROKER__URL", f"memory://adopt-{uuid.uuid4().hex[:6]}")
    monkeypatch.setenv("FLOWRELAY_SERVER__LEASE_SECONDS", "1")
    monkeypatch.setenv("FLOWRELAY_SERVER__DISPATCH_AHEAD_SECONDS", "5")
    monkeypatch.setenv("FLOWRELAY_API__ENABLED", "false")
    settings = load_settings()
    broker = from_url(settings.broker.url)
    await broker.connect()
    dead = Server(settings, broker=broker)
    await dead.start()
    survivor = Server(settings, broker=broker)
    await survivor.start()
    try:
        await dead.service.register_deployment(DeploymentSpec(
            name="d", flow_name="etl", entrypoint="flows/etl.py:etl", work_pool="staged"))
        await dead.ensure_pool("staged")
        inbox: list[float] = []

        async def on(message: object) -> None:
            assert json.loads(message.body)["payload"]["flow_run_id"]  # type: ignore[attr-defined]
            inbox.append(utcnow().timestamp())
            await message.ack()  # type: ignore[attr-defined]

        await broker.consume(dead.names.pool("staged"), on, prefetch=10)
        # Given a run due in 3 s, staged by the server that created it (its timer, its relay) ...
        when = utcnow() + dt.timedelta(seconds=3)
        run = await dead.service.create_deployment_run("etl/d", scheduled_time=when)
        for _ in range(100):
            if run.id not in {r for r, _ in await dead.service.due_runs()} and dead.relay._held:  # noqa: SLF001
                break
            await asyncio.sleep(0.05)
        assert dead.relay._held  # noqa: SLF001 - staged: an unsent row held in memory
        # ... which then dies without a word (its tasks stop; no lease given back)
        for part in (dead.leases, dead.relay, dead.timer, dead.scheduler, dead.heartbeats):
            task = part._task  # noqa: SLF001
            if task is not None:
                task.cancel()
        # Then the survivor adopts the row and publishes it at its time, once
        for _ in range(120):
            if inbox:
                break
            await asyncio.sleep(0.05)
        assert survivor.leases.adopted >= 1
        assert len(inbox) == 1 and inbox[0] >= when.timestamp() - 0.05
        assert inbox[0] - when.timestamp() < 1.0, inbox[0] - when.timestamp()
    finally:
        await survivor.stop()
        await dead.stop()  # (its connections; its tasks are stopped already)
        await broker.close()
