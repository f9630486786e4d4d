"""A Scheduled run whose dispatch message is gone is dispatched again (`Server.redispatch_lost`)
when a server starts — and not while its message still waits in the pool's queue. In-process
servers on RabbitMQ (its queues outlive a server; the in-memory broker's do not) and SQLite."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.broker.errors import TopologyError
from engine.schemas import DeploymentSpec
from engine.server.app import Server
from engine.settings import Settings, load_settings
from tests.integration.conftest import _delete_topology

pytestmark = pytest.mark.rabbitmq

TIMEOUT = 0.5


@pytest.fixture
def settings(tmp_path: Path, amqp_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Settings]:
    prefix = f"frtest-{uuid.uuid4().hex[:10]}"
    monkeypatch.setenv("FLOWRELAY_DATABASE__URL", f"sqlite+aiosqlite:///{tmp_path / 's.db'}")
    monkeypatch.setenv("FLOWRELAY_BROKER__URL", amqp_url)
    monkeypatch.setenv("FLOWRELAY_BROKER__PREFIX", prefix)
    monkeypatch.setenv("FLOWRELAY_SERVER__HEARTBEAT_TIMEOUT_SECONDS", str(TIMEOUT))
    monkeypatch.setenv("FLOWRELAY_API__ENABLED", "false")
    yield load_settings()
    _delete_topology(amqp_url, prefix, ["p"])


async def _deploy(server: Server, tmp_path: Path) -> None:
    """Deployment `f/d` of a trivial flow on pool `p` (its queue not declared yet)."""
    flow_file = tmp_path / "f.py"
    flow_file.write_text("from engine import flow\n@flow\ndef f():\n    return 1\n")
    await server.service.register_deployment(
        DeploymentSpec(name="d", flow_name="f", entrypoint=f"{flow_file}:f", work_pool="p")
    )


async def _holds_one(server: Server) -> None:
    """Pool `p`'s queue comes to hold one work message (a queue not declared yet holds none)."""
    queue = server.names.pool("p")
    for _ in range(100):
        try:
            if await server.broker.message_count(queue) == 1:
                break
        except TopologyError:
            pass
        await asyncio.sleep(0.05)
    assert await server.broker.message_count(queue) == 1


async def _one_dispatched_run(settings: Settings, tmp_path: Path) -> str:
    async with Server(settings, prefix=settings.broker.prefix) as server:
        await _deploy(server, tmp_path)
        await server.ensure_pool("p")
        run = await server.service.create_deployment_run("f/d")
        await _holds_one(server)  # published (no worker takes it)
    return str(run.id)


async def test_a_run_whose_dispatch_message_is_gone_is_dispatched_again_at_start(
    settings: Settings, tmp_path: Path
) -> None:
    # Given a run dispatched to its pool, whose message was then lost (purged here)
    run_id = await _one_dispatched_run(settings, tmp_path)
    async with Server(settings, prefix=settings.broker.prefix) as server:
        await server.broker.purge(server.names.pool("p"))
    await asyncio.sleep(TIMEOUT + 0.1)  # dispatched over a heartbeat timeout ago
    # When a server starts
    async with Server(settings, prefix=settings.broker.prefix) as server:
        # Then the run is dispatched again: its work message is back in the pool's queue
        assert server.redispatched == 1
        await _holds_one(server)
        run = await server.service.read_flow_run(uuid.UUID(run_id))
        assert run.state is not None and run.state.name == "Scheduled"


async def test_a_run_whose_message_still_waits_is_not_dispatched_twice(
    settings: Settings, tmp_path: Path
) -> None:
    await _one_dispatched_run(settings, tmp_path)
    await asyncio.sleep(TIMEOUT + 0.1)
    async with Server(settings, prefix=settings.broker.prefix) as server:
        assert server.redispatched == 0
        assert await server.broker.message_count(server.names.pool("p")) == 1


async def test_a_first_dispatch_reaches_its_pool_although_a_queue_takes_every_key(
    settings: Settings, tmp_path: Path
) -> None:
    """`mandatory` cannot tell a missing pool queue when a queue is bound to `#` (a rule matching
    every event, the API feed of several servers): the relay declares the pool's queue first."""
    from engine.broker.topology import QueueSpec

    async with Server(settings, prefix=settings.broker.prefix) as server:
        everything = await server.broker.declare_queue(QueueSpec.temporary(prefix=f"{settings.broker.prefix}.all"))
        await server.broker.bind(everything, server.names.events, "#")
        await _deploy(server, tmp_path)
        await server.service.create_deployment_run("f/d")  # no pool queue declared yet
        await _holds_one(server)


async def test_a_dispatch_lost_while_the_server_runs_is_found_after_a_broker_reconnect(
    settings: Settings, tmp_path: Path
) -> None:
    async with Server(settings, prefix=settings.broker.prefix) as server:
        await _deploy(server, tmp_path)
        await server.ensure_pool("p")
        await server.service.create_deployment_run("f/d")
        await _holds_one(server)
        # Given its work message lost (purged here, as a broker restart can lose it)
        assert await server.broker.purge(server.names.pool("p")) == 1
        await asyncio.sleep(TIMEOUT + 0.1)
        # When, after a lease renewal, the broker connection is younger than at the last look
        server._connected_for = server.broker.connected_for() + 3600  # noqa: SLF001
        await server._after_outage()  # noqa: SLF001
        # Then the run is dispatched again
        assert server.redispatched == 1
        await _holds_one(server)
        # and a renewal with no reconnect in between looks for nothing
        await server._after_outage()  # noqa: SLF001
        assert server.redispatched == 1
