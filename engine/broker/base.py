"""The Broker port: what flowrelay needs from a message broker, and nothing more.

Two implementations pass the same contract suite (tests/contract/test_broker.py):
`engine.broker.memory.MemoryBroker` (in process, embedded mode and fast tests) and
`engine.broker.rabbitmq.RabbitMQBroker` (aio-pika, publisher confirms, manual acks).

Delivery is at least once. A handler gets an `IncomingMessage` and settles it with `ack()`,
`nack(requeue=True)` (try again later) or `reject()` (dead-letter). A handler that raises without
settling gets its message nacked with requeue (a transient error must not drop work); a poison
message then reaches the queue's delivery limit and is dead-lettered. A handler may also return
without settling and settle later (e.g. once a run is claimed in the database).
"""

from __future__ import annotations

import asyncio
import json
import logging
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Mapping, Sequence
from types import TracebackType
from typing import Any, Literal, Protocol, Self

from engine.broker.errors import MessageAlreadySettled
from engine.broker.topology import ExchangeType, QueueSpec, Topology

__all__ = ["Broker", "Consumer", "Handler", "IncomingMessage", "Settle", "run_handler"]

log = logging.getLogger("engine.broker")

DEFAULT_PUBLISH_TIMEOUT = 10.0

SettleAction = Literal["ack", "nack", "reject"]
Settle = Callable[[SettleAction, bool], Awaitable[None]]


class IncomingMessage:
    """One delivery. Settle it exactly once; a second settle raises `MessageAlreadySettled`."""

    __slots__ = (
        "body",
        "headers",
        "exchange",
        "routing_key",
        "message_id",
        "correlation_id",
        "reply_to",
        "content_type",
        "redelivered",
        "delivery_count",
        "_settle",
        "_settled",
    )

    def __init__(
        self,
        *,
        body: bytes,
        headers: Mapping[str, Any],
        exchange: str,
        routing_key: str,
        message_id: str | None,
        correlation_id: str | None,
        reply_to: str | None,
        content_type: str | None,
        redelivered: bool,
        settle: Settle,
    ) -> None:
        self.body = body
        self.headers = dict(headers)
        self.exchange = exchange
        self.routing_key = routing_key
        self.message_id = message_id
        self.correlation_id = correlation_id
        self.reply_to = reply_to
        self.content_type = content_type
        self.redelivered = redelivered
        # Earlier deliveries of this message: exact on quorum queues (`x-delivery-count`),
        # 0 or 1 (from the redelivered flag) on classic queues.
        count = self.headers.get("x-delivery-count")
        self.delivery_count = int(count) if isinstance(count, int) else int(redelivered)
        self._settle = settle
        self._settled = False

    @property
    def settled(self) -> bool:
        return self._settled

    @property
    def death_reason(self) -> str | None:
        """Why this message was dead-lettered last (`rejected`, `delivery_limit`, ...), if it was."""
        deaths = self.headers.get("x-death")
        if isinstance(deaths, list) and deaths and isinstance(deaths[0], Mapping):
            reason = deaths[0].get("reason")
            return str(reason) if reason is not None else None
        return None

    def json(self) -> Any:
        """The body decoded as JSON (raises ValueError on a malformed body)."""
        return json.loads(self.body)

    async def ack(self) -> None:
        """Done: the broker forgets the message."""
        await self._do("ack", False)

    async def nack(self, requeue: bool = True) -> None:
        """Not done: requeue it (redelivered, counted), or with `requeue=False` dead-letter it."""
        await self._do("nack", requeue)

    async def reject(self) -> None:
        """Never processable: dead-letter it now (reason `rejected`)."""
        await self._do("reject", False)

    async def _do(self, action: SettleAction, requeue: bool) -> None:
        if self._settled:
            raise MessageAlreadySettled(
                f"message {self.message_id or '?'} from {self.routing_key!r} was already settled"
            )
        self._settled = True
        await self._settle(action, requeue)

    def __repr__(self) -> str:
        return (
            f"<IncomingMessage exchange={self.exchange!r} routing_key={self.routing_key!r} "
            f"message_id={self.message_id!r} redelivered={self.redelivered} "
            f"delivery_count={self.delivery_count} bytes={len(self.body)}>"
        )


Handler = Callable[[IncomingMessage], Awaitable[None]]


async def run_handler(handler: Handler, message: IncomingMessage, queue: str) -> None:
    """Run one delivery through `handler`; an exception requeues an unsettled message."""
    try:
        await handler(message)
    except Exception:
        log.exception("handler for queue %r failed on %r; requeueing it", queue, message)
        if not message.settled:
            await message.nack(requeue=True)


class Consumer(Protocol):
    """A running subscription to one queue."""

    @property
    def queue(self) -> str: ...

    async def cancel(self, *, grace: float = 10.0) -> None:
        """Stop deliveries, give running handlers up to `grace` seconds to finish, then return every
        unsettled delivery to the queue (redelivered). Idempotent."""
        ...


class Broker(ABC):
    """The port. Every method is bounded in time and raises `engine.broker.errors` only."""

    @abstractmethod
    async def connect(self) -> None: ...

    @abstractmethod
    async def close(self) -> None:
        """Cancel this broker's consumers (unsettled deliveries are requeued) and disconnect."""

    @abstractmethod
    def connected_for(self) -> float:
        """Seconds this broker has been connected without a break (since `connect()` or the last
        reconnect); 0.0 while it is not connected. A process that judges others by what it
        hears from them (heartbeats) judges nobody for the time it could hear nothing."""

    @abstractmethod
    async def declare_exchange(
        self, name: str, type: ExchangeType = "topic", *, durable: bool = True
    ) -> None: ...

    @abstractmethod
    async def declare_queue(self, spec: QueueSpec) -> str:
        """Declare (idempotently) and return the queue name. A queue that exists with other
        arguments raises `TopologyError`."""

    @abstractmethod
    async def bind(self, queue: str, exchange: str, routing_key: str) -> None:
        """Route messages of `exchange` whose key matches `routing_key` (`*` one word, `#` any
        number of words, on topic exchanges) into `queue`."""

    async def declare_topology(self, topology: Topology) -> None:
        """Declare every exchange, queue and binding of `topology` (idempotent)."""
        for exchange in topology.exchanges:
            await self.declare_exchange(exchange.name, exchange.type, durable=exchange.durable)
        for queue in topology.queues:
            await self.declare_queue(queue)
        for binding in topology.bindings:
            await self.bind(binding.queue, binding.exchange, binding.routing_key)

    @abstractmethod
    async def publish(
        self,
        exchange: str,
        routing_key: str,
        body: bytes,
        *,
        headers: Mapping[str, Any] | None = None,
        message_id: str | None = None,
        correlation_id: str | None = None,
        reply_to: str | None = None,
        content_type: str = "application/json",
        persistent: bool = True,
        mandatory: bool = True,
        confirm: bool = True,
        timeout: float = DEFAULT_PUBLISH_TIMEOUT,  # noqa: ASYNC109 - bounds the confirm wait
    ) -> None:
        """Publish and return once the broker has confirmed. `exchange=""` is the default
        exchange (routing key = queue name). Raises `Unroutable` (mandatory, no queue took it),
        `PublishTimeout`, `PublishRejected`, `TopologyError` (no such exchange) or
        `BrokerUnavailable`.

        `confirm=False` returns once the message is written, without the broker's confirm (and
        so without `Unroutable`): only for messages whose loss the receiver notices by itself,
        such as RPC replies (the caller times out)."""

    async def publish_many(
        self,
        exchange: str,
        messages: Sequence[tuple[str, bytes, str | None, bool]],
        *,
        timeout: float = DEFAULT_PUBLISH_TIMEOUT,  # noqa: ASYNC109 - bounds the confirm waits
    ) -> list[BaseException | None]:
        """Publish `(routing key, body, message id, mandatory)` messages, persistent and
        confirmed, all at once; each one's outcome in order: None (confirmed) or the error
        `publish` would have raised for it."""
        return list(await asyncio.gather(
            *(self.publish(exchange, key, body, message_id=message_id, mandatory=mandatory,
                           timeout=timeout)
              for key, body, message_id, mandatory in messages),
            return_exceptions=True,
        ))

    @abstractmethod
    async def consume(
        self, queue: str, handler: Handler, *, prefetch: int = 10, auto_ack: bool = False
    ) -> Consumer:
        """Deliver messages of `queue` to `handler`, at most `prefetch` unsettled at a time
        (0 = unlimited). Each delivery runs in its own task.

        `auto_ack=True`: the broker forgets each message as it delivers it (no prefetch limit,
        settling is a no-op, nothing is redelivered): only for a process's own temporary queues
        (RPC replies, a waiter's events), which die with it anyway."""

    @abstractmethod
    async def purge(self, queue: str) -> int:
        """Drop the ready messages of `queue`; return how many."""

    @abstractmethod
    async def message_count(self, queue: str) -> int:
        """How many messages of `queue` are ready (not delivered and unsettled); TopologyError
        if there is no such queue."""

    @abstractmethod
    async def delete_queue(self, queue: str) -> None:
        """Delete `queue` (no error if it does not exist); its consumers are cancelled."""

    @abstractmethod
    async def delete_exchange(self, exchange: str) -> None:
        """Delete `exchange` and its bindings (no error if it does not exist)."""

    async def __aenter__(self) -> Self:
        await self.connect()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
