"""The live event stream behind ``GET /api/stream`` (Server-Sent Events).

The server's outbox relay calls `EventHub.publish` with every event it has published (its
``on_published`` callback, in memory: no queue, no polling). Each connected client has a
bounded buffer of encoded frames; a client that falls `buffer` frames behind is dropped (its
connection ends with a comment saying why, and the browser's EventSource reconnects), so a slow
reader never makes the server's memory grow. `close` ends every stream at shutdown.

Frames::

    event: flow-run.Completed
    id: 5b0e...
    data: {"id": "5b0e...", "event": "flow-run.Completed", "resource": {...}, ...}

Besides the published events, `LogNotices` says when a run has new log lines: a
``flow-run.logs`` frame (``resource.id`` ``flow-run/<uuid>``, ``payload.count`` the lines stored
since the last one), at most one per run every `LOG_NOTICE_INTERVAL` seconds however many lines
the run writes. These are not events: they never enter the outbox, the broker or the rule
engine, and only the server that stored the lines sends them (the lines themselves are read
with ``GET /api/flow-runs/{id}/logs``).
"""

from __future__ import annotations

import asyncio
import fnmatch
import re
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Sequence

import structlog

from engine.schemas import Event, LogRecord

log = structlog.get_logger("flowrelay.api.stream")

_LINE_BREAKS = re.compile(r"[\r\n]+")

#: The name of the frames saying a run has new log lines.
LOGS_EVENT = "flow-run.logs"
#: The shortest time between two `LOGS_EVENT` frames of one run, in seconds.
LOG_NOTICE_INTERVAL = 0.1


def encode(event: Event) -> bytes:
    name = _LINE_BREAKS.sub(" ", event.event)  # a field value cannot span lines
    return f"event: {name}\nid: {event.id}\ndata: {event.model_dump_json()}\n\n".encode()


class Subscription:
    """One client: its filter and its bounded buffer of frames."""

    def __init__(self, match: str | None, buffer: int) -> None:
        self.match = match
        self.frames: asyncio.Queue[bytes] = asyncio.Queue(maxsize=buffer)
        self.ended: str | None = None
        self._end = asyncio.Event()

    def wants(self, name: str) -> bool:
        return self.match is None or fnmatch.fnmatchcase(name, self.match)

    def offer(self, frame: bytes) -> bool:
        """Queue `frame`; False (and the subscription ended) if the buffer is full."""
        if self.ended is not None:
            return True
        try:
            self.frames.put_nowait(frame)
        except asyncio.QueueFull:
            self.end(f"dropped: more than {self.frames.maxsize} events behind")
            return False
        return True

    def end(self, reason: str) -> None:
        if self.ended is None:
            self.ended = reason
            while not self.frames.empty():  # free the memory now
                self.frames.get_nowait()
            self._end.set()

    async def frames_until_end(self, keepalive: float) -> AsyncIterator[bytes]:
        """The client's frames, a keep-alive comment after `keepalive` seconds of silence, and a
        last comment with the reason when it ends."""
        yield b"retry: 3000\n: connected\n\n"
        ended = asyncio.ensure_future(self._end.wait())
        try:
            while True:
                if self.ended is not None:
                    yield f": {self.ended}\n\n".encode()
                    return
                if not self.frames.empty():
                    yield self.frames.get_nowait()
                    continue
                getter = asyncio.ensure_future(self.frames.get())
                done, _ = await asyncio.wait(
                    {getter, ended}, timeout=keepalive, return_when=asyncio.FIRST_COMPLETED
                )
                if not getter.done():
                    getter.cancel()
                    await asyncio.gather(getter, return_exceptions=True)
                if getter.done() and not getter.cancelled():
                    yield getter.result()
                elif not done:
                    yield b": keep-alive\n\n"
        finally:
            ended.cancel()
            await asyncio.gather(ended, return_exceptions=True)


class EventHub:
    def __init__(self, buffer: int = 1000) -> None:
        self.buffer = buffer
        self._subscriptions: set[Subscription] = set()
        self._closed = False
        #: clients dropped for being too slow (exported as a metric)
        self.dropped = 0

    @property
    def clients(self) -> int:
        return len(self._subscriptions)

    def subscribe(self, match: str | None = None) -> Subscription:
        subscription = Subscription(match, self.buffer)
        if self._closed:
            subscription.end("server shutting down")
        else:
            self._subscriptions.add(subscription)
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        self._subscriptions.discard(subscription)
        subscription.end("closed")

    def publish(self, event: Event) -> None:
        """Hand `event` to every client that wants it (called on the relay's task: never
        blocks, never raises)."""
        frame: bytes | None = None
        for subscription in list(self._subscriptions):
            if not subscription.wants(event.event):
                continue
            if frame is None:
                frame = encode(event)
            if not subscription.offer(frame):
                self._subscriptions.discard(subscription)
                self.dropped += 1
                log.warning("event stream client dropped: too slow", buffer=self.buffer)

    def close(self) -> None:
        """End every stream (server shutdown); new subscriptions end at once."""
        self._closed = True
        for subscription in list(self._subscriptions):
            subscription.end("server shutting down")
        self._subscriptions.clear()


class LogNotices:
    """Turns stored log lines into `LOGS_EVENT` frames on `hub`, coalesced: the first lines
    after a quiet `interval` are told at once, the lines stored during the next `interval` in
    one frame per run at its end. A run logging 10,000 lines in a second gets about ten frames.

    `stored` is the engine service's log listener; it runs on the server's loop."""

    def __init__(self, hub: EventHub, interval: float = LOG_NOTICE_INTERVAL) -> None:
        self.hub = hub
        self.interval = interval
        #: lines stored and not told yet, by flow run
        self._pending: Counter[uuid.UUID] = Counter()
        self._timer: asyncio.TimerHandle | None = None
        self._last = float("-inf")  # loop time of the last flush

    def stored(self, records: Sequence[LogRecord]) -> None:
        if not self.hub.clients:
            return  # nobody to tell: keep nothing
        self._pending.update(r.flow_run_id for r in records if r.flow_run_id is not None)
        if not self._pending or self._timer is not None:
            return
        loop = asyncio.get_running_loop()
        wait = self._last + self.interval - loop.time()
        if wait <= 0:
            self.flush()
        else:
            self._timer = loop.call_later(wait, self.flush)

    def flush(self) -> None:
        """Publish one frame per run with untold lines now."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._last = asyncio.get_running_loop().time()
        pending, self._pending = self._pending, Counter()
        for run_id, count in pending.items():
            self.hub.publish(Event(
                event=LOGS_EVENT, resource={"id": f"flow-run/{run_id}"}, payload={"count": count},
            ))

    def close(self) -> None:
        """Forget what is untold (server shutdown: the streams are ending)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._pending.clear()


__all__ = ["LOGS_EVENT", "LOG_NOTICE_INTERVAL", "EventHub", "LogNotices", "Subscription", "encode"]
