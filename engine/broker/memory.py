"""The in-memory broker: a real implementation of the Broker port, in process, on asyncio.

It behaves like RabbitMQ 3.10 where flowrelay relies on it: topic routing (`*`, `#`), the default
exchange, prefetch (at most N unsettled deliveries per consumer), requeue with `redelivered=True`
on nack or when a consumer goes away, quorum-queue delivery counting (`x-delivery-count`) with
`delivery_limit`, dead-lettering with `x-death`/`x-first-death-*` headers, exclusive and
auto-delete queues, and `Unroutable` for a mandatory publish that reaches no queue.

Several `MemoryBroker`s ("connections") can share one `MemoryServer` ("node"):
`from_url("memory://")` gets a private node, `from_url("memory://<name>")` a named one shared
in the process. Nothing is persisted.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import functools
import logging
import time
from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar
from weakref import WeakValueDictionary

from engine.broker.base import (
    DEFAULT_PUBLISH_TIMEOUT,
    Broker,
    Handler,
    IncomingMessage,
    SettleAction,
    run_handler,
)
from engine.broker.errors import BrokerUnavailable, TopologyError, Unroutable
from engine.broker.topology import ExchangeSpec, ExchangeType, QueueSpec

__all__ = ["MemoryBroker", "MemoryServer", "topic_matches"]

log = logging.getLogger("engine.broker.memory")


def topic_matches(pattern: str, routing_key: str) -> bool:
    """AMQP topic matching: words split on '.', `*` is exactly one word, `#` zero or more."""
    return _match(tuple(pattern.split(".")), 0, tuple(routing_key.split(".")), 0)


@functools.lru_cache(maxsize=4096)
def _match(pattern: tuple[str, ...], i: int, key: tuple[str, ...], j: int) -> bool:
    while i < len(pattern):
        word = pattern[i]
        if word == "#":
            return any(_match(pattern, i + 1, key, k) for k in range(j, len(key) + 1))
        if j >= len(key) or (word != "*" and word != key[j]):
            return False
        i += 1
        j += 1
    return j == len(key)


@dataclasses.dataclass
class _Envelope:
    body: bytes
    headers: dict[str, Any]
    exchange: str
    routing_key: str
    message_id: str | None
    correlation_id: str | None
    reply_to: str | None
    content_type: str | None
    delivery_count: int = 0
    redelivered: bool = False

    def copy(self) -> _Envelope:
        return dataclasses.replace(self, headers=dict(self.headers))


class _Exchange:
    def __init__(self, spec: ExchangeSpec) -> None:
        self.spec = spec
        self.bindings: dict[tuple[str, str], None] = {}  # (queue, key), insertion-ordered set
        #: routing key -> queues, until the bindings change (`bind` / `unbind`)
        self._routes: dict[str, list[str]] = {}

    def bind(self, queue: str, key: str) -> None:
        self.bindings[(queue, key)] = None
        self._routes.clear()

    def unbind_queue(self, queue: str) -> None:
        for key in [k for k in self.bindings if k[0] == queue]:
            del self.bindings[key]
        self._routes.clear()

    def route(self, routing_key: str) -> list[str]:
        routes = self._routes.get(routing_key)
        if routes is None:
            routes = self._routes[routing_key] = self._route(routing_key)
            if len(self._routes) > 4096:  # keys with ids in them: keep it bounded
                self._routes.clear()
        return routes

    def _route(self, routing_key: str) -> list[str]:
        matched: dict[str, None] = {}
        for queue, key in self.bindings:
            if (
                self.spec.type == "fanout"
                or (self.spec.type == "direct" and key == routing_key)
                or (self.spec.type == "topic" and topic_matches(key, routing_key))
            ):
                matched[queue] = None
        return list(matched)


class _Queue:
    def __init__(self, server: MemoryServer, spec: QueueSpec, owner: MemoryBroker | None) -> None:
        self.server = server
        self.spec = spec
        self.owner = owner  # the connection an exclusive queue belongs to
        self.ready: deque[_Envelope] = deque()
        self.consumers: list[_MemoryConsumer] = []
        self.had_consumer = False
        self._next = 0

    @property
    def name(self) -> str:
        return self.spec.name

    def put(self, envelope: _Envelope) -> None:
        self.ready.append(envelope)
        self.dispatch()

    def dispatch(self) -> None:
        """Hand ready messages to consumers with spare prefetch, round robin (only to the
        oldest consumer on a single-active-consumer queue)."""
        if self.spec.single_active_consumer:
            while self.ready and self.consumers and self.consumers[0].has_capacity():
                self.consumers[0].deliver(self.ready.popleft())
            return
        while self.ready and self.consumers:
            count = len(self.consumers)
            for offset in range(count):
                consumer = self.consumers[(self._next + offset) % count]
                if consumer.has_capacity():
                    break
            else:
                return
            self._next = (self._next + offset + 1) % count
            consumer.deliver(self.ready.popleft())

    def requeue(self, envelopes: list[_Envelope]) -> None:
        """Return deliveries to the head of the queue, in order, counting the attempt."""
        if self.server.queues.get(self.name) is not self:
            return  # deleted meanwhile: the messages go with it
        for envelope in reversed(envelopes):
            envelope.delivery_count += 1
            envelope.redelivered = True
            limit = self.spec.delivery_limit
            if limit is not None and envelope.delivery_count > limit:
                self.server.dead_letter(self, envelope, "delivery_limit")
            else:
                self.ready.appendleft(envelope)
        self.dispatch()

    def remove_consumer(self, consumer: _MemoryConsumer) -> None:
        if consumer in self.consumers:
            self.consumers.remove(consumer)
            self._next = 0

    def maybe_auto_delete(self) -> None:
        if self.spec.auto_delete and self.had_consumer and not self.consumers:
            self.server.remove_queue(self.name)


class MemoryServer:
    """The in-process "node": exchanges and queues shared by the brokers attached to it."""

    _named: ClassVar[WeakValueDictionary[str, MemoryServer]] = WeakValueDictionary()

    def __init__(self) -> None:
        self.exchanges: dict[str, _Exchange] = {}
        self.queues: dict[str, _Queue] = {}

    @classmethod
    def named(cls, name: str) -> MemoryServer:
        """The process-wide node called `name` (alive while a broker uses it)."""
        server = cls._named.get(name)
        if server is None:
            server = cls._named[name] = cls()
        return server

    def route(self, exchange: str, routing_key: str) -> list[_Queue]:
        if exchange == "":
            queue = self.queues.get(routing_key)
            return [queue] if queue is not None else []
        target = self.exchanges.get(exchange)
        if target is None:
            raise TopologyError(
                f"no exchange {exchange!r} on the in-memory broker: declare the topology first "
                "(Broker.declare_topology)"
            )
        return [self.queues[name] for name in target.route(routing_key) if name in self.queues]

    def dead_letter(self, queue: _Queue, envelope: _Envelope, reason: str) -> None:
        """Republish to the queue's dead-letter exchange with RabbitMQ's `x-death` bookkeeping."""
        dlx = queue.spec.dead_letter_exchange
        if dlx is None or dlx not in self.exchanges:
            log.debug("dropping message from %r (%s): no dead-letter exchange", queue.name, reason)
            return
        headers = dict(envelope.headers)
        headers.pop("x-delivery-count", None)
        now = dt.datetime.now(dt.UTC).replace(microsecond=0)
        deaths: list[dict[str, Any]] = [dict(d) for d in headers.get("x-death") or []]
        for index, death in enumerate(deaths):
            if death.get("queue") == queue.name and death.get("reason") == reason:
                entry = deaths.pop(index)
                entry["count"] = int(entry.get("count", 0)) + 1
                entry["time"] = now
                break
        else:
            entry = {
                "count": 1,
                "reason": reason,
                "queue": queue.name,
                "time": now,
                "exchange": envelope.exchange,
                "routing-keys": [envelope.routing_key],
            }
        headers["x-death"] = [entry, *deaths]
        headers.setdefault("x-first-death-exchange", envelope.exchange)
        headers.setdefault("x-first-death-queue", queue.name)
        headers.setdefault("x-first-death-reason", reason)
        dead = dataclasses.replace(
            envelope, headers=headers, exchange=dlx, delivery_count=0, redelivered=False
        )
        for target in self.route(dlx, envelope.routing_key):
            target.put(dead.copy())

    def remove_queue(self, name: str) -> None:
        queue = self.queues.pop(name, None)
        if queue is None:
            return
        for exchange in self.exchanges.values():
            exchange.unbind_queue(name)
        for consumer in list(queue.consumers):
            consumer.detach()  # like basic.cancel from the server: unsettled messages go too
        queue.consumers.clear()
        queue.ready.clear()


async def _settled_already(action: SettleAction, requeue: bool) -> None:
    """Settling an auto-acked delivery: nothing to do."""


class _MemoryConsumer:
    def __init__(
        self,
        broker: MemoryBroker,
        queue: _Queue,
        handler: Handler,
        prefetch: int,
        auto_ack: bool = False,
    ) -> None:
        self._broker = broker
        self._queue = queue
        self._handler = handler
        self._prefetch = 0 if auto_ack else prefetch
        self._auto_ack = auto_ack
        self._unacked: dict[int, _Envelope] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._tag = 0
        self._active = True
        self._cancelled = False

    @property
    def queue(self) -> str:
        return self._queue.name

    def has_capacity(self) -> bool:
        return self._active and (self._prefetch == 0 or len(self._unacked) < self._prefetch)

    def deliver(self, envelope: _Envelope) -> None:
        self._tag += 1
        if not self._auto_ack:
            self._unacked[self._tag] = envelope
        headers = dict(envelope.headers)
        if self._queue.spec.quorum:
            headers["x-delivery-count"] = envelope.delivery_count
        message = IncomingMessage(
            body=envelope.body,
            headers=headers,
            exchange=envelope.exchange,
            routing_key=envelope.routing_key,
            message_id=envelope.message_id,
            correlation_id=envelope.correlation_id,
            reply_to=envelope.reply_to,
            content_type=envelope.content_type,
            redelivered=envelope.redelivered,
            settle=_settled_already if self._auto_ack else functools.partial(self._settle, self._tag),
        )
        task = asyncio.get_running_loop().create_task(
            run_handler(self._handler, message, self.queue), name=f"memory-consumer:{self.queue}"
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _settle(self, tag: int, action: SettleAction, requeue: bool) -> None:
        envelope = self._unacked.pop(tag, None)
        if envelope is None:
            # Like an ack on a channel closed since the delivery: it was requeued already.
            log.debug(
                "settle ignored on %r: the consumer is gone, the message was requeued", self.queue
            )
            return
        if action == "nack" and requeue:
            self._queue.requeue([envelope])
        elif action != "ack":
            self._queue.server.dead_letter(self._queue, envelope, "rejected")
        self._queue.dispatch()

    def detach(self) -> None:
        """Stop deliveries and forget unsettled ones (their queue is gone)."""
        self._active = False
        self._unacked.clear()

    async def cancel(self, *, grace: float = 10.0) -> None:
        if self._cancelled:
            return
        self._cancelled = True
        self._active = False
        self._queue.remove_consumer(self)
        current = asyncio.current_task()
        running = {task for task in self._tasks if task is not current}
        if running:
            _, late = await asyncio.wait(running, timeout=grace)
            for task in late:
                task.cancel()
            if late:
                await asyncio.wait(late, timeout=1.0)
        returned = [self._unacked.pop(tag) for tag in sorted(self._unacked)]
        if returned:
            self._queue.requeue(returned)
        self._queue.dispatch()
        self._queue.maybe_auto_delete()
        self._broker._consumers.discard(self)


class MemoryBroker(Broker):
    """One connection to a `MemoryServer` (a private one by default)."""

    def __init__(self, server: MemoryServer | None = None) -> None:
        self.server = server if server is not None else MemoryServer()
        self._open = False
        self._opened_at = 0.0
        self._consumers: set[_MemoryConsumer] = set()

    def __repr__(self) -> str:
        return f"<MemoryBroker open={self._open} queues={len(self.server.queues)}>"

    async def connect(self) -> None:
        if not self._open:
            self._opened_at = time.monotonic()
        self._open = True

    def connected_for(self) -> float:
        return time.monotonic() - self._opened_at if self._open else 0.0

    async def close(self) -> None:
        if not self._open:
            return
        for consumer in list(self._consumers):
            await consumer.cancel()
        for name, queue in list(self.server.queues.items()):
            if queue.owner is self:
                self.server.remove_queue(name)
        self._open = False

    def _check_open(self) -> None:
        if not self._open:
            raise BrokerUnavailable(
                "the in-memory broker is not connected: call connect() first (or use `async with`)"
            )

    def _queue(self, name: str) -> _Queue:
        queue = self.server.queues.get(name)
        if queue is None:
            raise TopologyError(f"no queue {name!r} on the in-memory broker: declare it first")
        if queue.owner is not None and queue.owner is not self:
            raise TopologyError(f"queue {name!r} is exclusive to another connection")
        return queue

    async def declare_exchange(
        self, name: str, type: ExchangeType = "topic", *, durable: bool = True
    ) -> None:
        self._check_open()
        spec = ExchangeSpec(name, type, durable)
        existing = self.server.exchanges.get(name)
        if existing is None:
            self.server.exchanges[name] = _Exchange(spec)
        elif existing.spec != spec:
            raise TopologyError(
                f"exchange {name!r} exists as {existing.spec}, not {spec}: "
                "delete it or declare it the same way"
            )

    async def declare_queue(self, spec: QueueSpec) -> str:
        self._check_open()
        existing = self.server.queues.get(spec.name)
        if existing is None:
            self.server.queues[spec.name] = _Queue(
                self.server, spec, self if spec.exclusive else None
            )
            return spec.name
        self._queue(spec.name)  # exclusive to another connection?
        if existing.spec != spec:
            raise TopologyError(
                f"queue {spec.name!r} exists as {existing.spec}, not {spec}: "
                "delete it or declare it the same way"
            )
        return spec.name

    async def bind(self, queue: str, exchange: str, routing_key: str) -> None:
        self._check_open()
        self._queue(queue)
        target = self.server.exchanges.get(exchange)
        if target is None:
            raise TopologyError(f"cannot bind {queue!r} to {exchange!r}: no such exchange")
        target.bind(queue, routing_key)

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
        self._check_open()
        self._put(exchange, routing_key, body, headers=headers, message_id=message_id,
                  correlation_id=correlation_id, reply_to=reply_to, content_type=content_type,
                  mandatory=mandatory and confirm)  # unconfirmed: an unroutable one is dropped
        await asyncio.sleep(0)  # a publish is I/O elsewhere: let consumers run

    async def publish_many(
        self,
        exchange: str,
        messages: Sequence[tuple[str, bytes, str | None, bool]],
        *,
        timeout: float = DEFAULT_PUBLISH_TIMEOUT,  # noqa: ASYNC109 - the same as publish's
    ) -> list[BaseException | None]:
        self._check_open()
        outcomes: list[BaseException | None] = []
        for routing_key, body, message_id, mandatory in messages:
            try:
                self._put(exchange, routing_key, body, message_id=message_id, mandatory=mandatory)
            except (Unroutable, TopologyError, TypeError) as exc:
                outcomes.append(exc)
            else:
                outcomes.append(None)
        await asyncio.sleep(0)
        return outcomes

    def _put(
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
        mandatory: bool,
    ) -> None:
        if not isinstance(body, bytes | bytearray | memoryview):
            raise TypeError(f"message body must be bytes, not {type(body).__name__}")
        queues = self.server.route(exchange, routing_key)
        if not queues and mandatory:
            raise Unroutable(
                f"no queue is bound to exchange {exchange!r} for routing key {routing_key!r}",
                exchange=exchange,
                routing_key=routing_key,
            )
        envelope = _Envelope(
            body=bytes(body),
            headers=dict(headers or {}),
            exchange=exchange,
            routing_key=routing_key,
            message_id=message_id,
            correlation_id=correlation_id,
            reply_to=reply_to,
            content_type=content_type,
        )
        for queue in queues:
            queue.put(envelope.copy())

    async def consume(
        self, queue: str, handler: Handler, *, prefetch: int = 10, auto_ack: bool = False
    ) -> _MemoryConsumer:
        self._check_open()
        if prefetch < 0:
            raise ValueError("prefetch must be >= 0 (0 = unlimited)")
        target = self._queue(queue)
        consumer = _MemoryConsumer(self, target, handler, prefetch, auto_ack)
        self._consumers.add(consumer)
        target.consumers.append(consumer)
        target.had_consumer = True
        target.dispatch()
        return consumer

    async def purge(self, queue: str) -> int:
        self._check_open()
        target = self._queue(queue)
        count = len(target.ready)
        target.ready.clear()
        return count

    async def message_count(self, queue: str) -> int:
        self._check_open()
        return len(self._queue(queue).ready)

    async def delete_queue(self, queue: str) -> None:
        self._check_open()
        if queue in self.server.queues:
            self._queue(queue)
            self.server.remove_queue(queue)

    async def delete_exchange(self, exchange: str) -> None:
        self._check_open()
        self.server.exchanges.pop(exchange, None)
