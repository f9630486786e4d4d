"""The RabbitMQ broker: a thin adapter over aio-pika's robust connection.

What it does, and why (see /RELIABILITY.md):
- `connect_robust` with heartbeats: aio-pika reconnects and restores channels, queues, bindings
  and consumers; we write no reconnection logic of our own.
- One publishing channel with publisher confirms and `on_return_raises=True`: `publish` returns
  once RabbitMQ has the message, raises `Unroutable` for a mandatory message no queue took, and
  is bounded by `timeout` (a publish on a broken robust connection can otherwise hang). A second
  one without confirms for `publish(confirm=False)` (RPC replies: the caller's timeout covers a
  lost one), which spares the broker and us a confirm per message.
- One channel per consumer, with its own prefetch (`basic.qos`) and manual acks. Cancelling a
  consumer closes its channel, so its unsettled deliveries are requeued (`redelivered=True`).
- Declarations, purges and deletes run on a short-lived plain channel: a refused declaration
  (404/406) closes that channel, never the publishing or consuming ones.
- Strong references to every channel (robust connections keep theirs in a WeakSet).
- An ack for a delivery from before a reconnect cannot be sent (`ChannelInvalidStateError`): it is
  logged and dropped, RabbitMQ redelivers that message anyway.
- aio-pika/aiormq errors are translated to `engine.broker.errors` here, chained with `from`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any

import aio_pika
import aiormq
from aio_pika.abc import AbstractIncomingMessage, AbstractRobustChannel, AbstractRobustConnection
from aiormq.exceptions import (
    AMQPError,
    ChannelAccessRefused,
    ChannelInvalidStateError,
    ChannelLockedResource,
    ChannelNotFoundEntity,
    ChannelPreconditionFailed,
    DeliveryError,
    PublishError,
)
from yarl import URL

from engine.broker.base import (
    DEFAULT_PUBLISH_TIMEOUT,
    Broker,
    Handler,
    IncomingMessage,
    SettleAction,
    run_handler,
)
from engine.broker.errors import (
    BrokerUnavailable,
    PublishRejected,
    PublishTimeout,
    TopologyError,
    Unroutable,
)
from engine.broker.topology import ExchangeType, QueueSpec

__all__ = ["RabbitMQBroker", "mask_url"]

log = logging.getLogger("engine.broker.rabbitmq")

_TOPOLOGY_ERRORS = (
    ChannelNotFoundEntity,
    ChannelPreconditionFailed,
    ChannelLockedResource,
    ChannelAccessRefused,
)
_CONNECTION_ERRORS = (AMQPError, ChannelInvalidStateError, ConnectionError, OSError)


def mask_url(url: str | URL) -> str:
    """The URL with its password replaced by `***`, for logs and error messages."""
    parsed = URL(str(url))
    if parsed.password:
        parsed = parsed.with_password("***")
    return str(parsed.with_query(None))


class RabbitMQBroker(Broker):
    """The Broker port over RabbitMQ (`amqp://`, or `amqps://` for TLS; URL query options such as
    `heartbeat` override the defaults below)."""

    def __init__(
        self,
        url: str,
        *,
        connection_name: str = "flowrelay",
        heartbeat: int = 30,
        reconnect_interval: float = 1.0,
        operation_timeout: float = 10.0,
    ) -> None:
        query = {"heartbeat": heartbeat, "reconnect_interval": reconnect_interval}
        parsed = URL(url)
        self._url = parsed.update_query({k: v for k, v in query.items() if k not in parsed.query})
        self._connection_name = connection_name
        self._timeout = operation_timeout
        self._connection: AbstractRobustConnection | None = None
        self._connected_at = 0.0
        self._publisher: AbstractRobustChannel | None = None
        self._unconfirmed: AbstractRobustChannel | None = None
        self._publisher_lock = asyncio.Lock()
        self._consumers: set[_RabbitConsumer] = set()
        # What we declared, so a consumer's channel can re-declare an exclusive queue and its
        # bindings after a reconnect (the broker deletes exclusive queues with the connection).
        self._specs: dict[str, QueueSpec] = {}
        self._bindings: dict[str, dict[tuple[str, str], None]] = {}

    def __repr__(self) -> str:
        return f"<RabbitMQBroker {mask_url(self._url)} name={self._connection_name!r}>"

    # -- connection ------------------------------------------------------------------------

    async def connect(self) -> None:
        if self._connection is not None:
            return
        where = mask_url(self._url)
        connection: AbstractRobustConnection | None = None
        try:
            async with asyncio.timeout(self._timeout):
                connection = await aio_pika.connect_robust(
                    str(self._url),
                    timeout=self._timeout,
                    client_properties={"connection_name": self._connection_name},
                )
                self._publisher = await connection.channel(
                    publisher_confirms=True, on_return_raises=True
                )
        except (TimeoutError, *_CONNECTION_ERRORS) as exc:
            if connection is not None:
                with contextlib.suppress(Exception):
                    await connection.close()
            raise BrokerUnavailable(
                f"cannot connect to RabbitMQ at {where}: {exc!r}; is it running and are the "
                "credentials right? (`rabbitmq-server -detached`, or `docker compose up rabbitmq`)"
            ) from exc
        self._connection = connection
        self._connected_at = time.monotonic()
        connection.reconnect_callbacks.add(self._on_reconnect)

    def _on_reconnect(self, *_: Any) -> None:
        self._connected_at = time.monotonic()
        log.info("reconnected to RabbitMQ at %s (%s)", mask_url(self._url), self._connection_name)

    def connected_for(self) -> float:
        connection = self._connection
        if connection is None or connection.is_closed or not connection.connected.is_set():
            return 0.0
        return time.monotonic() - self._connected_at

    async def close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is None:
            return
        for consumer in list(self._consumers):
            await consumer.cancel()
        publisher, self._publisher = self._publisher, None
        unconfirmed, self._unconfirmed = self._unconfirmed, None
        with contextlib.suppress(TimeoutError, *_CONNECTION_ERRORS):
            async with asyncio.timeout(self._timeout):
                for channel in (publisher, unconfirmed):
                    if channel is not None:
                        await channel.close()
                await connection.close()

    def _require(self) -> AbstractRobustConnection:
        if self._connection is None:
            raise BrokerUnavailable(f"{self!r} is not connected: call connect() first")
        return self._connection

    @contextlib.asynccontextmanager
    async def _translated(self, what: str) -> AsyncIterator[None]:
        """Bound an operation by the operation timeout and translate vendor errors."""
        try:
            async with asyncio.timeout(self._timeout):
                yield
        except _TOPOLOGY_ERRORS as exc:
            raise TopologyError(f"{what}: RabbitMQ refused it: {exc}") from exc
        except TimeoutError as exc:
            raise BrokerUnavailable(
                f"{what}: no answer from RabbitMQ at {mask_url(self._url)} within "
                f"{self._timeout:g}s (connection lost or reconnecting?)"
            ) from exc
        except _CONNECTION_ERRORS as exc:
            raise BrokerUnavailable(f"{what}: {exc!r}") from exc

    @contextlib.asynccontextmanager
    async def _admin_channel(self) -> AsyncIterator[aiormq.abc.AbstractChannel]:
        """A plain (not robust) channel for one declaration round, closed afterwards."""
        connection = self._require()
        await connection.ready()
        channel = aio_pika.Channel(connection, publisher_confirms=False)
        await channel.initialize(timeout=self._timeout)
        try:
            yield await channel.get_underlay_channel()
        finally:
            with contextlib.suppress(Exception):
                await channel.close()

    # -- topology --------------------------------------------------------------------------

    async def declare_exchange(
        self, name: str, type: ExchangeType = "topic", *, durable: bool = True
    ) -> None:
        async with self._translated(f"declare exchange {name!r}"):
            async with self._admin_channel() as channel:
                await channel.exchange_declare(
                    name, exchange_type=type, durable=durable, timeout=self._timeout
                )

    async def declare_queue(self, spec: QueueSpec) -> str:
        async with self._translated(f"declare queue {spec.name!r}"):
            async with self._admin_channel() as channel:
                await channel.queue_declare(
                    spec.name,
                    durable=spec.durable,
                    exclusive=spec.exclusive,
                    auto_delete=spec.auto_delete,
                    arguments=spec.arguments(),
                    timeout=self._timeout,
                )
        self._specs[spec.name] = spec
        return spec.name

    async def bind(self, queue: str, exchange: str, routing_key: str) -> None:
        async with self._translated(f"bind queue {queue!r} to {exchange!r} ({routing_key!r})"):
            async with self._admin_channel() as channel:
                await channel.queue_bind(queue, exchange, routing_key, timeout=self._timeout)
        self._bindings.setdefault(queue, {})[(exchange, routing_key)] = None

    async def purge(self, queue: str) -> int:
        async with self._translated(f"purge queue {queue!r}"):
            async with self._admin_channel() as channel:
                result = await channel.queue_purge(queue, timeout=self._timeout)
        return int(result.message_count or 0)

    async def message_count(self, queue: str) -> int:
        async with self._translated(f"count the messages of queue {queue!r}"):
            async with self._admin_channel() as channel:
                result = await channel.queue_declare(queue, passive=True, timeout=self._timeout)
        return int(result.message_count or 0)

    async def delete_queue(self, queue: str) -> None:
        for consumer in [c for c in self._consumers if c.queue == queue]:
            await consumer.cancel()
        async with self._translated(f"delete queue {queue!r}"):
            async with self._admin_channel() as channel:
                await channel.queue_delete(queue, timeout=self._timeout)
        self._specs.pop(queue, None)
        self._bindings.pop(queue, None)

    async def delete_exchange(self, exchange: str) -> None:
        async with self._translated(f"delete exchange {exchange!r}"):
            async with self._admin_channel() as channel:
                await channel.exchange_delete(exchange, timeout=self._timeout)
        for bindings in self._bindings.values():
            for key in [k for k in bindings if k[0] == exchange]:
                del bindings[key]

    # -- publishing ------------------------------------------------------------------------

    async def _publish_channel(self, confirm: bool = True) -> AbstractRobustChannel:
        channel = self._publisher if confirm else self._unconfirmed
        connection = self._require()
        if channel is not None and not channel.is_closed and connection.connected.is_set():
            return channel  # the common case, without the lock
        async with self._publisher_lock:
            await connection.ready()
            channel = self._publisher if confirm else self._unconfirmed
            if channel is None or channel.is_closed:
                # A channel-level error (e.g. a publish to a missing exchange) closes the robust
                # channel for good; a connection loss does not get here (ready() waits for it).
                if channel is not None:
                    with contextlib.suppress(Exception):
                        await channel.close()
                if confirm:
                    channel = self._publisher = await connection.channel(
                        publisher_confirms=True, on_return_raises=True
                    )
                else:
                    channel = self._unconfirmed = await connection.channel(
                        publisher_confirms=False
                    )
            return channel

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
        mandatory = mandatory and confirm  # a return without a confirm has nobody to tell
        message = aio_pika.Message(
            bytes(body),
            headers=dict(headers) if headers else None,
            content_type=content_type,
            delivery_mode=(
                aio_pika.DeliveryMode.PERSISTENT
                if persistent
                else aio_pika.DeliveryMode.NOT_PERSISTENT
            ),
            message_id=message_id,
            correlation_id=correlation_id,
            reply_to=reply_to,
        )
        what = f"publish to exchange {exchange!r} with routing key {routing_key!r}"
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        try:
            async with asyncio.timeout_at(deadline):
                channel = await self._publish_channel(confirm)
                underlay = await channel.get_underlay_channel()
        except TimeoutError as exc:
            raise BrokerUnavailable(
                f"{what}: not connected to RabbitMQ at {mask_url(self._url)} within {timeout:g}s "
                "(reconnecting?)"
            ) from exc
        except _CONNECTION_ERRORS as exc:
            raise BrokerUnavailable(f"{what}: {exc!r}") from exc
        try:
            async with asyncio.timeout_at(deadline):
                result = await underlay.basic_publish(
                    message.body,
                    exchange=exchange,
                    routing_key=routing_key,
                    properties=message.properties,
                    mandatory=mandatory,
                    timeout=max(deadline - loop.time(), 0.001),
                )
        except PublishError as exc:
            raise Unroutable(
                f"{what}: no queue is bound for it ({exc})",
                exchange=exchange,
                routing_key=routing_key,
            ) from exc
        except DeliveryError as exc:
            raise PublishRejected(f"{what}: RabbitMQ refused the message ({exc})") from exc
        except TimeoutError as exc:
            raise PublishTimeout(
                f"{what}: no confirm from RabbitMQ within {timeout:g}s; it may or may not have "
                "the message"
            ) from exc
        except _TOPOLOGY_ERRORS as exc:
            raise TopologyError(f"{what}: {exc}") from exc
        except _CONNECTION_ERRORS as exc:
            raise BrokerUnavailable(f"{what}: {exc!r}") from exc
        if isinstance(result, aiormq.abc.DeliveredMessage):  # returned without raising
            raise Unroutable(
                f"{what}: returned unroutable", exchange=exchange, routing_key=routing_key
            )

    # -- consuming -------------------------------------------------------------------------

    async def consume(
        self, queue: str, handler: Handler, *, prefetch: int = 10, auto_ack: bool = False
    ) -> _RabbitConsumer:
        if prefetch < 0:
            raise ValueError("prefetch must be >= 0 (0 = unlimited)")
        connection = self._require()
        channel: AbstractRobustChannel | None = None
        try:
            async with self._translated(f"consume from queue {queue!r}"):
                await connection.ready()
                channel = await connection.channel(publisher_confirms=False)
                await channel.set_qos(prefetch_count=prefetch)
                # Declared on this (robust) channel so a reconnect restores queue, bindings and
                # consumer in order.
                spec = self._specs.get(queue)
                if spec is None:
                    amqp_queue = await channel.declare_queue(queue, passive=True)
                else:
                    amqp_queue = await channel.declare_queue(
                        spec.name,
                        durable=spec.durable,
                        exclusive=spec.exclusive,
                        auto_delete=spec.auto_delete,
                        arguments=spec.arguments(),
                    )
                    for exchange, routing_key in self._bindings.get(queue, {}):
                        await amqp_queue.bind(exchange, routing_key)
                consumer = _RabbitConsumer(self, queue, channel, amqp_queue, handler, auto_ack)
                consumer.tag = await amqp_queue.consume(consumer.on_message, no_ack=auto_ack)
        except BaseException:
            if channel is not None:
                with contextlib.suppress(Exception):
                    await channel.close()
            raise
        self._consumers.add(consumer)
        return consumer


async def _settled_already(action: SettleAction, requeue: bool) -> None:
    """Settling an auto-acked delivery (`no_ack`): RabbitMQ forgot it when it sent it."""


class _RabbitConsumer:
    def __init__(
        self,
        broker: RabbitMQBroker,
        queue: str,
        channel: AbstractRobustChannel,
        amqp_queue: aio_pika.abc.AbstractRobustQueue,
        handler: Handler,
        auto_ack: bool = False,
    ) -> None:
        self._broker = broker
        self._auto_ack = auto_ack
        self._queue = queue
        self._channel = channel  # strong reference: the robust connection only keeps a weak one
        self._amqp_queue = amqp_queue
        self._handler = handler
        self._inflight: set[asyncio.Task[Any]] = set()
        self._cancelled = False
        self.tag = ""

    @property
    def queue(self) -> str:
        return self._queue

    def __repr__(self) -> str:
        return f"<RabbitMQ consumer {self.tag!r} on {self._queue!r}>"

    async def on_message(self, raw: AbstractIncomingMessage) -> None:
        message = IncomingMessage(
            body=raw.body,
            headers=dict(raw.headers or {}),
            exchange=raw.exchange or "",
            routing_key=raw.routing_key or "",
            message_id=raw.message_id,
            correlation_id=raw.correlation_id,
            reply_to=raw.reply_to,
            content_type=raw.content_type,
            redelivered=bool(raw.redelivered),
            settle=_settled_already if self._auto_ack else functools.partial(self._settle, raw),
        )
        if self._cancelled and not self._auto_ack:  # arrived while cancelling: give it back
            await message.nack(requeue=True)
            return
        task = asyncio.current_task()
        if task is not None:
            self._inflight.add(task)
        try:
            await run_handler(self._handler, message, self._queue)
        finally:
            if task is not None:
                self._inflight.discard(task)

    async def _settle(
        self, raw: AbstractIncomingMessage, action: SettleAction, requeue: bool
    ) -> None:
        try:
            async with asyncio.timeout(self._broker._timeout):
                if action == "ack":
                    await raw.ack()
                elif action == "nack":
                    await raw.nack(requeue=requeue)
                else:
                    await raw.reject(requeue=False)
        except (TimeoutError, *_CONNECTION_ERRORS) as exc:
            log.warning(
                "could not %s a delivery from %r (%r): its channel closed since it was delivered; "
                "RabbitMQ will redeliver it",
                action,
                self._queue,
                exc,
            )

    async def cancel(self, *, grace: float = 10.0) -> None:
        if self._cancelled:
            return
        self._cancelled = True
        try:
            with contextlib.suppress(TimeoutError, *_CONNECTION_ERRORS):
                async with asyncio.timeout(self._broker._timeout):
                    await self._amqp_queue.cancel(self.tag)
            current = asyncio.current_task()
            running = {task for task in self._inflight if task is not current}
            if running:
                _, late = await asyncio.wait(running, timeout=grace)
                for task in late:
                    task.cancel()
                if late:
                    await asyncio.wait(late, timeout=1.0)
        finally:
            # Closing the channel returns every unsettled delivery to the queue.
            with contextlib.suppress(TimeoutError, *_CONNECTION_ERRORS):
                async with asyncio.timeout(self._broker._timeout):
                    await self._channel.close()
            self._broker._consumers.discard(self)
