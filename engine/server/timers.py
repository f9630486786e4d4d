"""The dispatch timer: runs with a future start time are handed to their pool when due.

An in-memory heap loaded at start from the database (`due_runs`) and fed by the relay as future
`Scheduled`/`AwaitingRetry` events go out; one task sleeps until the earliest entry. Nothing
queries the database on a timer.

Staging: runs due within `ahead` seconds are dispatched *ahead*, at their time
(`EngineService.dispatch_due(..., at=...)`): the database work is done before the time and the
relay publishes each work message when its time comes (it publishes no event before it occurs),
so a cron minute of 10,000 runs costs only its publishes at the minute. Runs of deployments with
a concurrency limit are not staged (they come back `deferred`) and are dispatched at their time.
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
#: Due runs taken from the heap in one step.
_MAX_AT_ONCE = 50_000
#: Due runs dispatched in one transaction (`EngineService.dispatch_due`).
CHUNK = 500


class DispatchTimer:
    def __init__(
        self, service: Any, *, clock: Callable[[], dt.datetime] = utcnow, ahead: float = 0.0
    ) -> None:
        self.service = service
        self.clock = clock
        self.ahead = dt.timedelta(seconds=max(ahead, 0.0))
        #: runs not to stage (limited deployments): taken from the heap at their time only
        self._exact: set[str] = set()
        self._heap: list[tuple[dt.datetime, str]] = []
        #: each run's current due time: a heap entry of another time is stale (the run was fed
        #: twice — loaded at start and seen in the relay's events — or rescheduled)
        self._due: dict[str, dt.datetime] = {}
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self, owns: Callable[[uuid.UUID], bool] | None = None) -> None:
        await self.load(owns)
        self._task = asyncio.create_task(self._run(), name="flowrelay-dispatch-timer")

    async def load(self, owns: Callable[[uuid.UUID], bool] | None = None) -> int:
        """Add the database's due runs (those of the partitions this server owns, if `owns`) to
        the heap: at start, and when this server takes partitions over (`engine.server.leases`).
        Runs already in the heap for the same time are not added twice. Returns how many."""
        loaded = 0
        for run_id, when in await self.service.due_runs():
            if owns is None or owns(run_id):
                self.schedule(run_id, when)
                loaded += 1
        return loaded

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    def schedule(self, run_id: uuid.UUID | str, when: dt.datetime, *, exact: bool = False) -> None:
        """Dispatch run `run_id` at `when` (staged up to `ahead` before it unless `exact`)."""
        if when.tzinfo is None:
            when = when.replace(tzinfo=dt.UTC)
        key = str(run_id)
        if exact:
            self._exact.add(key)
        if self._due.get(key) == when:
            return
        self._due[key] = when
        heapq.heappush(self._heap, (when, key))
        self._changed.set()

    def _taken_at(self, when: dt.datetime, run_id: str) -> dt.datetime:
        """When a run due at `when` is taken from the heap: `ahead` before, unless exact."""
        return when if run_id in self._exact else when - self.ahead

    def __len__(self) -> int:
        return len(self._due)

    async def _run(self) -> None:
        while True:
            self._changed.clear()
            if not self._heap:
                await self._changed.wait()
                continue
            when, run_id = self._heap[0]
            delay = (self._taken_at(when, run_id) - self.clock()).total_seconds()
            if delay > 0:
                try:  # not wait_for: on 3.11 it can swallow a cancel racing a wake-up
                    async with asyncio.timeout(min(delay, 3600)):
                        await self._changed.wait()
                except TimeoutError:
                    pass
                continue
            # Due runs in bulk, `CHUNK` per transaction (10,000 runs of one cron minute are not
            # dispatched one transaction, nor one ORM unit of work, at a time).
            now, due = self.clock(), dict[str, dt.datetime]()
            while self._heap and len(due) < _MAX_AT_ONCE:
                at, run_id = self._heap[0]
                if self._taken_at(at, run_id) > now:
                    break
                heapq.heappop(self._heap)
                if self._due.get(run_id) == at:  # not a stale entry
                    del self._due[run_id]
                    self._exact.discard(run_id)
                    due[run_id] = at
            items = list(due.items())
            chunks = [dict(items[i:i + CHUNK]) for i in range(0, len(items), CHUNK)]
            await asyncio.gather(*(self._dispatch_chunk(chunk) for chunk in chunks))

    async def _dispatch_chunk(self, runs: dict[str, dt.datetime]) -> None:
        at = {uuid.UUID(run_id): when for run_id, when in runs.items()}
        try:
            done = await self.service.dispatch_due(list(at), at=at if self.ahead else None)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - one run at a time, so one bad run fails alone
            log.warning("bulk dispatch failed; dispatching one by one", runs=len(runs),
                        error=f"{type(exc).__name__}: {exc}")
            await asyncio.gather(*(self._dispatch(run_id, when) for run_id, when in runs.items()))
            return
        retry_at = self.clock() + dt.timedelta(seconds=1)
        for run_id in done.busy:  # locked by another transaction (another server): look again
            self.schedule(run_id, max(retry_at, at[run_id]))
        for run_id in done.deferred:  # a limited deployment's run: dispatched at its time
            self.schedule(run_id, at[run_id], exact=True)

    async def _dispatch(self, run_id: str, when: dt.datetime) -> None:
        if when > self.clock():  # the per-run path does not stage: wait for the run's time
            self.schedule(run_id, when, exact=True)
            return
        try:
            await self.service.dispatch_run(uuid.UUID(run_id))
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - retry later, never die
            log.warning("dispatch failed; retrying in 1 s", flow_run_id=run_id,
                        error=f"{type(exc).__name__}: {exc}")
            self.schedule(run_id, self.clock() + dt.timedelta(seconds=1))
