"""Group commit: concurrent write commands share one transaction (one BEGIN/COMMIT, one fsync).

The engine service hands every write to `GroupCommit.run(work)`; one writer task takes the
queued works in order and runs each batch in one transaction:

- a batch of one runs as a plain transaction, exactly as before (no extra statements when the
  server is idle, so a lone command pays no latency for batching);
- a larger batch gives each work a SAVEPOINT (`session.begin_nested()`): a work that raises rolls
  back only its own changes, and its caller gets the exception;
- callers get their results only after the COMMIT: nothing is acknowledged before it is durable;
- if the batch's transaction itself fails (COMMIT refused, a deadlock on PostgreSQL), nothing was
  committed, so each work is run again in a transaction of its own and gets its own outcome.

Works run one after another on the writer's single session, so they see each other's changes
and need no lock between them; on SQLite the writer is also the only in-process writer, so it
never waits on SQLite's lock for a sibling. `after_commit(session, fn)` lets a work act once its
changes are committed (fill a cache), and never if they were rolled back.

    group = GroupCommit(sessions, on_commit=relay.wake)
    await group.start()
    run = await group.run(lambda session: create(session, ...))
    await group.stop()
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

T = TypeVar("T")
Work = Callable[[AsyncSession], Awaitable[Any]]

_AFTER_COMMIT = "flowrelay_after_commit"


def after_commit(session: AsyncSession, fn: Callable[[], None]) -> None:
    """Call `fn()` once the current work's changes are committed (never if rolled back)."""
    session.info[_AFTER_COMMIT].append(fn)


@dataclass
class _Job:
    work: Work
    future: asyncio.Future[Any]
    notify: bool = True
    result: Any = None
    error: BaseException | None = None
    callbacks: list[Callable[[], None]] = field(default_factory=list)


class GroupCommit:
    """A writer task running queued write works in shared transactions."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        *,
        on_commit: Callable[[], None],
        max_batch: int = 200,
    ) -> None:
        self._sessions = sessions
        self._on_commit = on_commit
        self._max_batch = max_batch
        self._queue: collections.deque[_Job] = collections.deque()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        #: committed transactions and the works they carried (for tests and benchmarks)
        self.batches = 0
        self.works = 0

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="flowrelay-group-commit")

    async def stop(self) -> None:
        """Stop the writer after the batch in progress; queued works fail."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        while self._queue:
            job = self._queue.popleft()
            if not job.future.done():
                job.future.set_exception(RuntimeError("the engine service was closed"))

    async def run(self, work: Callable[[AsyncSession], Awaitable[T]], *, notify: bool = True) -> T:
        """`work(session)` in a write transaction; its result once committed. `notify=False`:
        this work alone is no reason to call `on_commit` (it writes no outbox event)."""
        if self._task is None:
            raise RuntimeError("EngineService is not started: call `await service.start()`")
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._queue.append(_Job(work, future, notify))
        self._wake.set()
        return await future

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._queue:
                jobs: list[_Job] = []
                while self._queue and len(jobs) < self._max_batch:
                    job = self._queue.popleft()
                    if not job.future.done():  # a caller cancelled before its turn
                        jobs.append(job)
                if jobs:
                    await self._commit(jobs)

    async def _commit(self, jobs: list[_Job]) -> None:
        try:
            committed = await self._transaction(jobs)
        except asyncio.CancelledError:
            for job in jobs:
                if not job.future.done():
                    job.future.set_exception(RuntimeError("the engine service was closed"))
            raise
        except Exception as exc:  # noqa: BLE001 - each caller gets the error (or a retry)
            if len(jobs) == 1:
                jobs[0].error, jobs[0].result = exc, None
                committed = False
            else:
                # Nothing of the batch was committed: give every work its own transaction.
                for job in jobs:
                    await self._commit([job])
                return
        if committed:
            self.batches += 1
            self.works += len(jobs)
            for job in jobs:
                if job.error is None:
                    for fn in job.callbacks:
                        fn()
            if any(job.notify for job in jobs):
                self._on_commit()
        for job in jobs:
            if job.future.done():
                continue
            if job.error is not None:
                job.future.set_exception(job.error)
            else:
                job.future.set_result(job.result)

    async def _transaction(self, jobs: list[_Job]) -> bool:
        """Run the batch and commit it; False if a lone work failed (rolled back)."""
        async with self._sessions() as session:
            if len(jobs) == 1:
                job = jobs[0]
                job.error, job.callbacks = None, []  # a retry after a failed batch starts afresh
                session.info[_AFTER_COMMIT] = job.callbacks
                try:
                    async with session.begin():
                        job.result = await job.work(session)
                except Exception as exc:  # noqa: BLE001 - rolled back; the caller gets it
                    job.error = exc
                    return False
                return True
            async with session.begin():
                for job in jobs:
                    session.info[_AFTER_COMMIT] = job.callbacks = []
                    try:
                        async with session.begin_nested():
                            job.result = await job.work(session)
                    except Exception as exc:  # noqa: BLE001 - its savepoint is rolled back
                        job.error = exc
            return True
