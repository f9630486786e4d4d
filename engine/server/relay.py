"""The outbox relay: publishes committed events with publisher confirms, then marks them sent.

The engine service hands it the outbox rows of each of its commits, in memory, once committed
(`EngineService.add_event_listener`): it publishes them without reading them back (no polling).
It reads the outbox itself at start (events left unsent by a crash are published again:
at-least-once; consumers drop duplicates by event id and `seq`), after a failed publish (every
event handed over is in the outbox until marked sent), when its server adopts a dead server's
rows, and, while it is busy, at most every `sweep_seconds` (at the end of a backlog of its own,
not in the middle of one, and not while its confirmed rows wait to be marked). It reads only the
rows its server wrote or adopted (`events.writer`): another live server's rows are that server's
to publish, so two relays never publish one row (`engine.server.leases`). A row is marked sent only after the broker's
confirm, whichever way it came; confirmed rows are marked together, `mark_delay` seconds after
the first of them (one write transaction instead of one per publish; a crash in between
publishes them again at start, as for any row not marked yet). Work dispatches (`dispatch.<pool>`) go to a pool queue the relay has declared (once per pool
and process, before its first dispatch), and are published `mandatory`: if the queue was deleted
meanwhile it is declared again and the publish retried, so work is never confirmed into the void.

No work dispatch is published before it occurs: a ``dispatch.<pool>`` row whose ``occurred``
is in the future (a run's dispatch staged ahead of its time by the dispatch timer) is held in memory, its body already
serialised, and published at that time. Outbox reads skip future rows (they never stand in front
of due ones); the held ones are read once at start.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import heapq
import itertools
import uuid
from collections.abc import Callable
from typing import Any

import structlog

from engine.broker import Broker
from engine.broker.errors import BrokerError, Unroutable
from engine.broker.topology import Names
from engine.schemas import Event
from engine.states import utcnow

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
        sweep_seconds: float = 1.0,
        mark_delay: float = 0.05,
    ) -> None:
        self.service = service
        self.broker = broker
        self.names = names
        self.ensure_pool = ensure_pool
        self.on_published = on_published
        self.batch_size = batch_size
        self.publish_timeout = publish_timeout
        self.sweep_seconds = sweep_seconds
        self.mark_delay = mark_delay
        #: confirmed by the broker, not yet marked sent in the outbox
        self._unmarked: dict[uuid.UUID, None] = {}
        self._marker: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        #: committed events handed over by the service, not yet published (insertion order)
        self._handed: dict[uuid.UUID, tuple[Event, str]] = {}
        self._read_outbox = True
        self._read_held = True
        self._last_read = float("-inf")
        #: events that occur in the future, published when they do: id -> (event, key), and
        #: a heap of (occurred, id); their bodies serialised ahead
        self._held: dict[uuid.UUID, tuple[Event, str]] = {}
        self._held_at: list[tuple[dt.datetime, int, uuid.UUID]] = []
        self._held_seq = itertools.count()  # ties broken by an int, not by comparing uuids
        self._bodies: dict[uuid.UUID, bytes] = {}
        #: only this server's rows (written by it or adopted from a dead server): another live
        #: server's relay publishes its own (`engine.server.leases`)
        writer = getattr(service, "server_id", None)
        self._mine: dict[str, str] = {"writer": writer} if writer else {}
        #: pools whose work queue this relay has declared (once per process)
        self._pools: set[str] = set()
        self.published = 0
        #: outbox reads (for tests and benchmarks)
        self.reads = 0

    def wake(self) -> None:
        """Read the outbox and publish what is unsent."""
        self._read_outbox = True
        self._wake.set()

    def adopted(self) -> None:
        """Rows of a dead server became this server's (`engine.server.leases`): read them all,
        its work dispatches staged for later included (held and published at their time)."""
        self._read_held = True
        self.wake()

    def offer(self, events: list[tuple[Event, str]]) -> None:
        """Publish these committed events (handed over by the service after its COMMIT)."""
        for event, routing_key in events:
            self._handed[event.id] = (event, routing_key)
        self._wake.set()

    async def start(self) -> None:
        add_event_listener = getattr(self.service, "add_event_listener", None)
        if add_event_listener is not None:
            add_event_listener(self.offer)
        else:  # a service that cannot hand events over: read the outbox on every commit
            self.service.add_commit_listener(self.wake)
        self.wake()  # publish what a previous run left unsent
        self._task = asyncio.create_task(self._run(), name="flowrelay-outbox-relay")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        if self._marker is not None:
            self._marker.cancel()
            await asyncio.gather(self._marker, return_exceptions=True)
            self._marker = None
        if self._unmarked:  # what is still unmarked is published again at the next start
            try:
                await self.service.mark_sent(list(self._unmarked))
                self._unmarked.clear()
            except Exception as exc:  # noqa: BLE001 - stopping: they are republished later
                log.warning("could not mark confirmed events sent", error=f"{type(exc).__name__}: {exc}")

    def _mark_later(self, event_ids: list[uuid.UUID]) -> None:
        for event_id in event_ids:
            self._unmarked[event_id] = None
        if self._marker is None or self._marker.done():
            self._marker = asyncio.get_running_loop().create_task(
                self._mark(), name="flowrelay-outbox-marker"
            )

    async def _mark(self) -> None:
        await asyncio.sleep(self.mark_delay)  # let confirms gather: one transaction for them all
        for _ in range(20):  # a burst in progress (a cron minute's dispatches): mark after it
            if len(self._handed) < self.batch_size:
                break
            await asyncio.sleep(self.mark_delay)
        while self._unmarked:
            ids = list(self._unmarked)
            try:
                await self.service.mark_sent(ids)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - unmarked rows are unsent: publish again
                log.warning("marking events sent failed; publishing them again",
                            error=f"{type(exc).__name__}: {exc}")
                self._unmarked.clear()
                self.wake()
                return
            for event_id in ids:
                self._unmarked.pop(event_id, None)

    def _hold(self, rows: list[tuple[Event, str]]) -> list[tuple[Event, str]]:
        """Hold the rows that occur in the future; return the others."""
        now = utcnow()
        due = []
        for event, key in rows:
            if event.occurred <= now or not key.startswith(DISPATCH_PREFIX):
                due.append((event, key))
            elif event.id not in self._held:
                self._held[event.id] = (event, key)
                self._bodies[event.id] = event.model_dump_json().encode()
                heapq.heappush(self._held_at, (event.occurred, next(self._held_seq), event.id))
        return due

    def _release(self) -> float | None:
        """Hand over the held events that occur now; seconds until the next one (or None)."""
        now = utcnow()
        while self._held_at:
            when, _, event_id = self._held_at[0]
            if when > now:
                return (when - now).total_seconds()
            heapq.heappop(self._held_at)
            row = self._held.pop(event_id, None)
            if row is not None:
                self._handed[event_id] = row
                self._wake.set()
        return None

    async def _run(self) -> None:
        backoff = 0.1
        while True:
            delay = self._release()
            if delay is not None and not self._wake.is_set():
                try:  # not wait_for: on 3.11 it can swallow a cancel racing a wake-up
                    async with asyncio.timeout(delay):
                        await self._wake.wait()
                except TimeoutError:
                    pass
                continue
            await self._wake.wait()
            self._wake.clear()
            try:
                while await self._publish_batch():
                    pass
                backoff = 0.1
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the relay must outlive broker/db hiccups
                # Everything handed over is committed and unsent in the outbox: read it back.
                self._handed.clear()
                self._read_outbox = True
                self._read_held = True
                log.warning("outbox relay failed; retrying", error=f"{type(exc).__name__}: {exc}",
                            retry_in=backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                self._wake.set()

    async def _next_batch(self) -> list[tuple[Event, str]]:
        if self._read_held:  # at start and after a failure: the staged events, all of them
            self._read_held = False
            self._hold(await self.service.unsent_events(None, after=utcnow(), **self._mine))
            self._release()
        now = asyncio.get_running_loop().time()
        # Sweep for others' rows when this batch is the last of a backlog of our own (during a
        # burst of our own, a sweep would mostly read back the rows we are about to publish).
        # Nor while confirmed rows wait to be marked sent: the read would return those.
        sweep = (0 < len(self._handed) <= self.batch_size and not self._unmarked
                 and now - self._last_read >= self.sweep_seconds)
        if self._read_outbox or sweep:
            self._read_outbox = False
            self._last_read = now
            self.reads += 1
            rows: list[tuple[Event, str]] = await self.service.unsent_events(
                self.batch_size, until=utcnow(), **self._mine
            )
            for event, _ in rows:
                self._handed.pop(event.id, None)
                self._held.pop(event.id, None)  # due now: published from this read
            if len(rows) == self.batch_size:
                self._read_outbox = True  # more unsent rows than one batch
            # confirmed already, only not marked yet: no need to publish them again
            fresh = [row for row in rows if row[0].id not in self._unmarked]
            if len(fresh) < len(rows) == self.batch_size and self._marker is not None:
                await asyncio.wait([self._marker])  # or the next read returns them again
            return fresh
        ids = list(itertools.islice(self._handed, self.batch_size))
        return self._hold([self._handed.pop(event_id) for event_id in ids])

    async def _publish_batch(self) -> bool:
        rows = await self._next_batch()
        if not rows:
            return bool(self._handed) or self._read_outbox
        for pool in {key[len(DISPATCH_PREFIX):] for _, key in rows if key.startswith(DISPATCH_PREFIX)}:
            if pool not in self._pools:
                # Declared before its first work message: `mandatory` alone cannot tell a missing
                # pool queue once anything else is bound to every key (a `#` rule, the API feed
                # of several servers): the message would be confirmed, routed only there.
                await self.ensure_pool(pool)
                self._pools.add(pool)
        messages = [
            (key, self._bodies.pop(event.id, b"") or event.model_dump_json().encode(),
             str(event.id), key.startswith(DISPATCH_PREFIX))  # work is never confirmed unrouted
            for event, key in rows
        ]
        results = await self.broker.publish_many(
            self.names.events, messages, timeout=self.publish_timeout
        )
        for index, result in enumerate(results):
            if isinstance(result, Unroutable) and messages[index][3]:
                key, body, message_id, _ = messages[index]
                try:
                    await self._publish_to_new_pool(key, body, message_id)
                    results[index] = None
                except Exception as exc:  # noqa: BLE001 - raised below, with the others
                    results[index] = exc
        sent = [event.id for (event, _), res in zip(rows, results, strict=True) if res is None]
        if sent:
            self._mark_later(sent)
        self.published += len(sent)
        if self.on_published is not None:
            for (event, key), res in zip(rows, results, strict=True):
                if res is None:
                    self.on_published(event, key)
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            raise errors[0] if isinstance(errors[0], Exception) else RuntimeError(str(errors[0]))
        return bool(self._handed) or self._read_outbox

    async def _publish_to_new_pool(self, routing_key: str, body: bytes, message_id: str) -> None:
        """A work dispatch no queue took: declare its pool's queue, then publish it again."""
        pool = routing_key[len(DISPATCH_PREFIX):]
        log.info("declaring work queue for a new pool", pool=pool)
        await self.ensure_pool(pool)
        await self.broker.publish(
            self.names.events, routing_key, body, message_id=message_id, mandatory=True,
            timeout=self.publish_timeout,
        )


__all__ = ["DISPATCH_PREFIX", "BrokerError", "OutboxRelay"]
