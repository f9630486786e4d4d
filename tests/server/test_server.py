"""The server's parts on the in-memory broker and a temp SQLite database: the outbox relay, bad
commands, the dispatch timer and the heartbeat monitor."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import uuid
from pathlib import Path

import pytest

from engine.broker import from_url
from engine.broker.rpc import RpcClient
from engine.broker.topology import Names, QueueSpec
from engine.remote import RemoteEngine
from engine.schemas import DeploymentSpec, Event
from engine.server.app import Server
from engine.service import EngineService
from engine.settings import load_settings
from engine.states import Pending, Running, utcnow


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("FLOWRELAY_DATABASE__URL", f"sqlite+aiosqlite:///{tmp_path / 's.db'}")
    monkeypatch.setenv("FLOWRELAY_BROKER__URL", f"memory://server-{uuid.uuid4().hex[:6]}")
    monkeypatch.setenv("FLOWRELAY_SERVER__HEARTBEAT_TIMEOUT_SECONDS", "0.6")
    return load_settings()


async def _tail(broker, names: Names, pattern: str = "#") -> asyncio.Queue[Event]:
    queue: asyncio.Queue[Event] = asyncio.Queue()
    name = await broker.declare_queue(QueueSpec.temporary(prefix=f"{names.prefix}.t"))
    await broker.bind(name, names.events, pattern)

    async def on(message):
        await message.ack()
        queue.put_nowait(Event.model_validate_json(message.body))

    await broker.consume(name, on, prefetch=100)
    return queue


async def test_events_committed_while_down_are_published_at_start(settings) -> None:
    # Given events committed while no server ran
    service = EngineService(settings.database.url)
    await service.start()
    run = await service.create_flow_run("etl", {"n": 1})
    await service.set_flow_run_state(run.id, Running())
    await service.close()
    # When the server starts with a subscriber in place
    broker = from_url(settings.broker.url)
    await broker.connect()
    names = Names()
    await broker.declare_exchange(names.events, "topic")
    events = await _tail(broker, names, "flow-run.#")
    async with Server(settings, broker=broker):
        got = [await asyncio.wait_for(events.get(), 5) for _ in range(2)]
    # Then both were published, in order, and marked sent
    assert [e.event for e in got] == ["flow-run.Pending", "flow-run.Running"]
    assert [e.resource["seq"] for e in got] == [1, 2]
    service = EngineService(settings.database.url)
    await service.start()
    assert await service.unsent_events() == []
    await service.close()
    await broker.close()


async def test_committed_events_are_published_without_reading_the_outbox(settings) -> None:
    broker = from_url(settings.broker.url)
    await broker.connect()
    names = Names()
    await broker.declare_exchange(names.events, "topic")
    events = await _tail(broker, names, "flow-run.#")
    async with Server(settings, broker=broker) as server:
        await asyncio.sleep(0.1)
        reads = server.relay.reads
        # When runs change state, their events are handed to the relay after the commit
        run = await server.service.create_flow_run("etl", {})
        await server.service.set_flow_run_state(run.id, Running())
        got = [await asyncio.wait_for(events.get(), 5) for _ in range(2)]
        assert [e.event for e in got] == ["flow-run.Pending", "flow-run.Running"]
        # Then they were published (and marked sent) without reading the outbox back
        for _ in range(100):
            if not await server.service.unsent_events():
                break
            await asyncio.sleep(0.02)
        assert await server.service.unsent_events() == []
        assert server.relay.reads == reads
        # and a wake (a failed publish, rows of other processes) reads it
        server.relay.wake()
        for _ in range(100):
            if server.relay.reads > reads:
                break
            await asyncio.sleep(0.02)
        assert server.relay.reads == reads + 1
    await broker.close()


async def test_events_handed_over_but_not_published_are_read_back_and_published(settings) -> None:
    from engine.broker.errors import BrokerUnavailable

    broker = from_url(settings.broker.url)
    await broker.connect()
    names = Names()
    await broker.declare_exchange(names.events, "topic")
    events = await _tail(broker, names, "flow-run.#")
    publish_many = broker.publish_many
    failures = []

    async def flaky(exchange, messages, **kwargs):
        if not failures:
            failures.append(messages)
            return [BrokerUnavailable("the broker hiccups once") for _ in messages]
        return await publish_many(exchange, messages, **kwargs)

    async with Server(settings, broker=broker) as server:
        await asyncio.sleep(0.1)
        reads = server.relay.reads
        broker.publish_many = flaky  # type: ignore[method-assign]
        # When the publish of a handed-over event fails
        run = await server.service.create_flow_run("etl", {})
        got = await asyncio.wait_for(events.get(), 5)
        # Then the relay read the outbox back and published it (still unsent until confirmed)
        assert failures and got.resource["id"] == f"flow-run/{run.id}"
        assert server.relay.reads > reads
        for _ in range(100):
            if not await server.service.unsent_events():
                break
            await asyncio.sleep(0.02)
        assert await server.service.unsent_events() == []
    await broker.close()


async def test_bad_commands_get_error_replies_and_the_server_keeps_serving(settings) -> None:
    async with Server(settings) as server:
        client = RpcClient(server.broker, server.names.commands, timeout=5)
        await client.start()
        from engine.broker.errors import RpcError

        with pytest.raises(RpcError, match="unknown command 'creat_flow_run'.*did you mean 'create_flow_run'"):
            await client.call("creat_flow_run", {})
        with pytest.raises(RpcError, match="bad parameters"):
            await client.call("read_flow_run", {"flow_run_id": "not-a-uuid"})
        with pytest.raises(RpcError, match="ObjectNotFound"):
            await client.call("read_flow_run", {"flow_run_id": str(uuid.uuid4())})
        await server.broker.publish("", server.names.commands, b"not json", reply_to=None)
        remote = RemoteEngine(server.broker, timeout=5)
        run = await remote.create_flow_run("etl", {"x": 1})
        assert (await remote.read_flow_run(run.id)).parameters == {"x": 1}
        from engine.errors import ObjectNotFound

        with pytest.raises(ObjectNotFound):
            await remote.read_flow_run(uuid.uuid4())
        await remote.close()
        await client.close()


async def test_a_command_queue_declared_as_quorum_earlier_is_kept(settings) -> None:
    # Given the command queue of an earlier version (a quorum queue with a delivery limit)
    broker = from_url(settings.broker.url)
    await broker.connect()
    names = Names()
    await broker.declare_queue(QueueSpec(names.commands, quorum=True, delivery_limit=5))
    # When the server starts, it serves commands on that queue as it is
    async with Server(settings, broker=broker):
        remote = RemoteEngine(broker, timeout=5)
        run = await remote.create_flow_run("etl", {"x": 1})
        assert (await remote.read_flow_run(run.id)).parameters == {"x": 1}
        await remote.close()
    await broker.close()


async def test_future_runs_are_dispatched_when_due_by_the_timer(settings, tmp_path: Path) -> None:
    flow_file = tmp_path / "f.py"
    flow_file.write_text("from engine import flow\n@flow\ndef f():\n    return 1\n")
    async with Server(settings) as server:
        await server.service.register_deployment(
            DeploymentSpec(name="d", flow_name="f", entrypoint=f"{flow_file}:f", work_pool="p")
        )
        await server.ensure_pool("p")
        received: asyncio.Queue[dict] = asyncio.Queue()

        async def on(message):
            await message.ack()
            received.put_nowait(json.loads(message.body))

        await server.broker.consume(server.names.pool("p"), on, prefetch=10)
        when = utcnow() + dt.timedelta(seconds=0.5)
        run = await server.service.create_deployment_run("f/d", scheduled_time=when)
        await asyncio.sleep(0.2)
        assert received.empty()
        message = await asyncio.wait_for(received.get(), 5)
        assert message["payload"]["flow_run_id"] == str(run.id)
        assert utcnow() >= when


async def test_runs_of_a_silent_worker_are_crashed(settings) -> None:
    async with Server(settings) as server:
        run = await server.service.create_flow_run("etl", {})
        await server.service.set_flow_run_state(run.id, Pending(worker_id="w-1"))
        await server.service.set_flow_run_state(run.id, Running(worker_id="w-1"))
        await server.heartbeats.beat("w-1", "p", [str(run.id)])
        for _ in range(50):
            await asyncio.sleep(0.1)
            current = await server.service.read_flow_run(run.id)
            if current.state.name == "Crashed":
                break
        assert current.state.name == "Crashed"
        assert "w-1" in current.state.message and "heartbeat" in current.state.message


async def _pool_inbox(broker, names: Names, pool: str) -> list[tuple[float, str]]:
    """(arrival wall time, run id) of each work message the pool's queue receives."""
    got: list[tuple[float, str]] = []

    async def on(message):
        got.append((utcnow().timestamp(), json.loads(message.body)["payload"]["flow_run_id"]))
        await message.ack()

    await broker.consume(names.pool(pool), on, prefetch=100)
    return got


async def test_a_staged_dispatch_is_published_at_its_time_even_across_a_restart(
    settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a server that stages dispatches 3 s ahead, and two runs due in 1.5 s
    monkeypatch.setenv("FLOWRELAY_SERVER__DISPATCH_AHEAD_SECONDS", "3")
    settings = load_settings()
    broker = from_url(settings.broker.url)
    await broker.connect()
    names = Names()
    server = Server(settings, broker=broker)
    await server.start()
    await server.service.register_deployment(DeploymentSpec(
        name="d", flow_name="etl", entrypoint="flows/etl.py:etl", work_pool="staged"))
    await server.ensure_pool("staged")
    inbox = await _pool_inbox(broker, names, "staged")
    when = utcnow() + dt.timedelta(seconds=1.5)
    runs = [await server.service.create_deployment_run("etl/d", scheduled_time=when)
            for _ in range(2)]

    # When the timer has staged them (their database work done) ...
    for _ in range(50):
        stamped = [(await server.service.read_flow_run(r.id)).state_name for r in runs]
        if not await server.service.due_runs():
            break
        await asyncio.sleep(0.05)
    assert await server.service.due_runs() == [] and stamped == ["Scheduled", "Scheduled"]
    # ... the server stops before their time, and another starts
    await server.stop()
    assert inbox == [] and utcnow() < when
    server = Server(settings, broker=broker)
    await server.start()
    try:
        for _ in range(100):
            if len(inbox) >= 2:
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)  # room for a duplicate to show up
    finally:
        await server.stop()
        await broker.close()

    # Then each run's work message reached its pool once, not before its time
    assert sorted(run_id for _, run_id in inbox) == sorted(str(run.id) for run in runs)
    assert all(arrived >= when.timestamp() for arrived, _ in inbox), (inbox, when)
