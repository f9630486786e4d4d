"""The dispatch timer: runs with a future start time are handed to their pool when due.

An in-memory heap loaded at start from the database (`due_runs`) and fed by the relay as future
`Scheduled`/`AwaitingRetry` events go out; one task sleeps until the earliest entry. Nothing
queries the database on a timer.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import heapq
import uuid
from collections.abc import Callable
from typing import Any

import structlog

from engine.states import utcnow

log = structlog.get_logger("flowrelay.timer")


class DispatchTimer:
    def __init__(self, service: Any, *, clock: Callable[[], dt.datetime] = utcnow) -> None:
        self.service = service
        self.clock = clock
        self._heap: list[tuple[dt.datetime, str]] = []
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        for run_id, when in await self.service.due_runs():
            self.schedule(run_id, when)
        self._task = asyncio.create_task(self._run(), name="flowrelay-dispatch-timer")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    def schedule(self, run_id: uuid.UUID | str, when: dt.datetime) -> None:
        if when.tzinfo is None:
            when = when.replace(tzinfo=dt.UTC)
        heapq.heappush(self._heap, (when, str(run_id)))
        self._changed.set()

    def __len__(self) -> int:
        return len(self._heap)

    async def _run(self) -> None:
        while True:
            self._changed.clear()
            if not self._heap:
                await self._changed.wait()
                continue
            when, run_id = self._heap[0]
            delay = (when - self.clock()).total_seconds()
            if delay > 0:
                try:
                    await asyncio.wait_for(self._changed.wait(), min(delay, 3600))
                except TimeoutError:
                    pass
                continue
            heapq.heappop(self._heap)
            try:
                await self.service.dispatch_run(uuid.UUID(run_id))
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - retry later, never die
                log.warning("dispatch failed; retrying in 1 s", flow_run_id=run_id,
                            error=f"{type(exc).__name__}: {exc}")
                self.schedule(run_id, self.clock() + dt.timedelta(seconds=1))
