"""The outbox relay: publishes committed events with publisher confirms, then marks them sent.

It wakes on every commit of the engine service (no polling) and once at start, so events left
unsent by a crash are published again (at-least-once; consumers drop duplicates by event id and
`seq`). Work dispatches (`dispatch.<pool>`) are published `mandatory`: if their pool queue is
missing it is declared and the publish retried, so work is never confirmed into the void.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import structlog

from engine.broker import Broker
from engine.broker.errors import BrokerError, Unroutable
from engine.broker.topology import Names
from engine.schemas import Event

log = structlog.get_logger("flowrelay.relay")

DISPATCH_PREFIX = "dispatch."


class OutboxRelay:
    def __init__(
        self,
        service: Any,
        broker: Broker,
        names: Names,
        *,
        ensure_pool: Callable[[str], Any],
        on_published: Callable[[Event, str], None] | None = None,
        batch_size: int = 500,
        publish_timeout: float = 10.0,
    ) -> None:
        self.service = service
        self.broker = broker
        self.names = names
        self.ensure_pool = ensure_pool
        self.on_published = on_published
        self.batch_size = batch_size
        self.publish_timeout = publish_timeout
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.published = 0

    def wake(self) -> None:
        self._wake.set()

    async def start(self) -> None:
        self.service.add_commit_listener(self.wake)
        self._wake.set()  # publish what a previous run left unsent
        self._task = asyncio.create_task(self._run(), name="flowrelay-outbox-relay")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _run(self) -> None:
        backoff = 0.1
        while True:
            await self._wake.wait()
            self._wake.clear()
            try:
                while await self._publish_batch():
                    pass
                backoff = 0.1
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the relay must outlive broker/db hiccups
                log.warning("outbox relay failed; retrying", error=f"{type(exc).__name__}: {exc}",
                            retry_in=backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                self._wake.set()

    async def _publish_batch(self) -> bool:
        rows = await self.service.unsent_events(self.batch_size)
        if not rows:
            return False
        results = await asyncio.gather(*(self._publish(e, k) for e, k in rows), return_exceptions=True)
        sent = [event.id for (event, _), res in zip(rows, results, strict=True) if res is None]
        if sent:
            await self.service.mark_sent(sent)
        self.published += len(sent)
        if self.on_published is not None:
            for (event, key), res in zip(rows, results, strict=True):
                if res is None:
                    self.on_published(event, key)
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            raise errors[0] if isinstance(errors[0], Exception) else RuntimeError(str(errors[0]))
        return len(rows) == self.batch_size

    async def _publish(self, event: Event, routing_key: str) -> None:
        body = event.model_dump_json().encode()
        dispatch = routing_key.startswith(DISPATCH_PREFIX)
        try:
            await self.broker.publish(
                self.names.events, routing_key, body, message_id=str(event.id),
                mandatory=dispatch, timeout=self.publish_timeout,
            )
        except Unroutable:
            if not dispatch:
                raise
            pool = routing_key[len(DISPATCH_PREFIX):]
            log.info("declaring work queue for a new pool", pool=pool)
            await self.ensure_pool(pool)
            await self.broker.publish(
                self.names.events, routing_key, body, message_id=str(event.id),
                mandatory=True, timeout=self.publish_timeout,
            )


__all__ = ["DISPATCH_PREFIX", "BrokerError", "OutboxRelay"]
