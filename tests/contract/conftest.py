"""Contract fixtures: one `broker` fixture over every implementation of the Broker port.

Each test gets its own topology prefix (`flowrelay-test-<hex>`), so its exchanges and queues
never meet another test's, and they are deleted at the end (exclusive queues go with the
connection).
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator

import pytest

from engine.broker import Broker, Names, Topology, build_topology
from engine.broker.memory import MemoryBroker, MemoryServer
from engine.broker.rabbitmq import RabbitMQBroker

DELIVERY_LIMIT = 2
POOL = "default"


class Connector:
    """Opens connections to the test's broker: memory nodes are shared, RabbitMQ is real."""

    def __init__(self, kind: str, url: str, prefix: str) -> None:
        self.kind = kind
        self.url = url
        self.prefix = prefix
        self.server = MemoryServer()
        self.opened: list[Broker] = []

    async def __call__(self) -> Broker:
        broker: Broker
        if self.kind == "memory":
            broker = MemoryBroker(self.server)
        else:
            name = f"{self.prefix}-{len(self.opened)}"
            broker = RabbitMQBroker(self.url, connection_name=name)
        await broker.connect()
        self.opened.append(broker)
        return broker


@pytest.fixture
def names() -> Names:
    return Names(f"flowrelay-test-{uuid.uuid4().hex[:12]}")


@pytest.fixture
def work_queue(names: Names) -> str:
    """The work queue of the test's pool (a quorum queue with the delivery limit below)."""
    return names.pool(POOL)


@pytest.fixture
def delivery_limit() -> int:
    return DELIVERY_LIMIT


@pytest.fixture
def topology(names: Names) -> Topology:
    return build_topology(
        prefix=names.prefix,
        pools=[POOL],
        subscriptions={"tail": ["#"]},
        delivery_limit=DELIVERY_LIMIT,
    )


@pytest.fixture(params=["memory", pytest.param("rabbitmq", marks=pytest.mark.rabbitmq)])
def broker_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def connect_another(request: pytest.FixtureRequest, broker_kind: str, names: Names) -> Connector:
    """Open another connection to the same broker (another process, as far as it can tell)."""
    url = request.getfixturevalue("amqp_url") if broker_kind == "rabbitmq" else ""
    return Connector(broker_kind, url, names.prefix)


@pytest.fixture
async def broker(connect_another: Connector, topology: Topology) -> AsyncIterator[Broker]:
    """A connected broker with the test's topology declared; everything deleted afterwards."""
    broker = await connect_another()
    await broker.declare_topology(topology)
    try:
        yield broker
    finally:
        for other in reversed(connect_another.opened):
            if other is not broker:
                await other.close()
        with contextlib.suppress(Exception):
            for queue in topology.queues:
                await broker.delete_queue(queue.name)
            for exchange in topology.exchanges:
                await broker.delete_exchange(exchange.name)
        await broker.close()
        await _no_leftover_tasks()


async def _no_leftover_tasks() -> None:
    """Give cancelled work a moment to finish, then fail on tasks we left running."""
    current = asyncio.current_task()
    for _ in range(50):
        left = [t for t in asyncio.all_tasks() if t is not current and _ours(t)]
        if not left:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"tasks left running: {left}")


def _ours(task: asyncio.Task[object]) -> bool:
    return task.get_name().startswith("memory-consumer:")
