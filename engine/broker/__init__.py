"""The broker port and its implementations.

from engine.broker import from_url, build_topology
broker = from_url("amqp://guest:guest@127.0.0.1:5672/")   # or "memory://"
async with broker:
    await broker.declare_topology(build_topology(pools=["default"]))
    await broker.publish(EVENTS_EXCHANGE, "flow-run.x.Completed", b"{}")
"""

from __future__ import annotations

from engine.broker.base import Broker, Consumer, Handler, IncomingMessage
from engine.broker.errors import (
    BrokerError,
    BrokerUnavailable,
    MessageAlreadySettled,
    PublishRejected,
    PublishTimeout,
    RpcError,
    RpcTimeout,
    TopologyError,
    Unroutable,
)
from engine.broker.rpc import RpcClient, RpcHandler, RpcServer
from engine.broker.topology import (
    COMMANDS_QUEUE,
    DEAD_LETTER_EXCHANGE,
    DEAD_LETTER_QUEUE,
    EVENTS_EXCHANGE,
    Binding,
    ExchangeSpec,
    Names,
    QueueSpec,
    Topology,
    build_topology,
    pool_queue,
)

__all__ = [
    "COMMANDS_QUEUE",
    "DEAD_LETTER_EXCHANGE",
    "DEAD_LETTER_QUEUE",
    "EVENTS_EXCHANGE",
    "Binding",
    "Broker",
    "BrokerError",
    "BrokerUnavailable",
    "Consumer",
    "ExchangeSpec",
    "Handler",
    "IncomingMessage",
    "MessageAlreadySettled",
    "Names",
    "PublishRejected",
    "PublishTimeout",
    "QueueSpec",
    "RpcClient",
    "RpcError",
    "RpcHandler",
    "RpcServer",
    "RpcTimeout",
    "Topology",
    "TopologyError",
    "Unroutable",
    "build_topology",
    "from_url",
    "pool_queue",
]


def from_url(url: str, *, connection_name: str = "flowrelay") -> Broker:
    """A (not yet connected) broker for `url`: `memory://` (private in-memory node),
    `memory://<name>` (a named node shared in this process), `amqp://...` or `amqps://...`
    (RabbitMQ, TLS for amqps)."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise ValueError(f"broker URL {url!r} has no scheme: use memory://, amqp:// or amqps://")
    scheme = scheme.lower()
    if scheme == "memory":
        from engine.broker.memory import MemoryBroker, MemoryServer

        name = rest.strip("/")
        return MemoryBroker(MemoryServer.named(name) if name else None)
    if scheme in ("amqp", "amqps"):
        from engine.broker.rabbitmq import RabbitMQBroker

        return RabbitMQBroker(url, connection_name=connection_name)
    raise ValueError(
        f"unsupported broker URL scheme {scheme!r}: use memory://, amqp:// or amqps://"
    )
