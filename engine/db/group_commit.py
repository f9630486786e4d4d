"""Group commit: concurrent write commands share one transaction (one BEGIN/COMMIT, one fsync).

The engine service hands every write to `GroupCommit.run(work)`; one writer task takes the
queued works in order and runs each batch in one transaction:

- a batch of one runs as a plain transaction, exactly as before (no extra statements when the
  server is idle, so a lone command pays no latency for batching);
- a larger batch gives each work a SAVEPOINT (`session.begin_nested()`): a work that raises rolls
  back only its own changes, and its caller gets the exception;
- callers get their results only after the COMMIT: nothing is acknowledged before it is durable;
- if the batch's transaction itself fails (COMMIT refused, a deadlock on PostgreSQL), nothing was
  committed, so each work is run again in a transaction of its own and gets its own outcome;
- a work that failed on a *transient conflict* — PostgreSQL's deadlock (``40P01``) or
  serialization failure (``40001``), typically between two servers on one database — had all its
  changes rolled back (its transaction, or its savepoint), so it is queued again, whole, for a
  fresh transaction after a short random pause (`RetryPolicy`), up to `RetryPolicy.attempts`
  times; its caller sees only the final outcome. A work must therefore be re-runnable: it reads
  what it needs inside the transaction and keeps no effect outside it but `after_commit`.

A database that cannot be reached (`is_unavailable`: connections refused or lost, shutting down,
SQLite locked) is an outage, not an answer: the failed batch runs again after a backoff, ahead of
everything queued after it, until it commits or the outage has lasted `outage_timeout`
(``database.unavailable_timeout_seconds``). Callers just wait; writes keep their order, so no
component's in-memory state (the rule engine's windows) runs ahead of a write that is lost.

Background works (queued under `background()`: the scheduler making runs ahead, marking runs
Late) run only in what room a batch has left after every waiting foreground work (commands,
due dispatches): 10,000 runs made for the next cron slot never stand between a command and its
transaction.

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
import contextvars
import random
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

import structlog
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import Session

T = TypeVar("T")
log = structlog.get_logger("flowrelay.db")
Work = Callable[[AsyncSession], Awaitable[Any]]

_AFTER_COMMIT = "flowrelay_after_commit"

#: SQLSTATEs of a transaction that lost a conflict and may simply run again: deadlock detected,
#: serialization failure.
TRANSIENT_SQLSTATES = frozenset({"40P01", "40001"})


_BACKGROUND: contextvars.ContextVar[bool] = contextvars.ContextVar("flowrelay_background", default=False)


@contextlib.contextmanager
def background() -> Iterator[None]:
    """Writes queued inside this block (and by tasks it creates) are background works."""
    token = _BACKGROUND.set(True)
    try:
        yield
    finally:
        _BACKGROUND.reset(token)


def is_transient_conflict(exc: BaseException) -> bool:
    """Whether `exc` (or an exception it was raised from) is a database conflict that a fresh
    transaction may not meet again: PostgreSQL's deadlock or serialization failure."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, DBAPIError):
            orig = current.orig
            code = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
            if code in TRANSIENT_SQLSTATES:
                return True
        current = current.__cause__ or current.__context__
    return False


#: SQLSTATE classes/codes of a database that cannot serve now: connection exceptions (08),
#: insufficient resources (53), operator intervention (57: shutting down, terminated sessions,
#: cannot connect now), and 55000 (``database ... is not currently accepting connections``).
_UNAVAILABLE_CLASSES = ("08", "53", "57")
_UNAVAILABLE_CODES = frozenset({"55000"})
#: SQLite's OperationalErrors that mean "not now" rather than "never" (a missing table is one too).
_SQLITE_UNAVAILABLE = ("database is locked", "unable to open database", "disk i/o error")


def is_unavailable(exc: BaseException) -> bool:
    """Whether `exc` (or an exception it was raised from) means the database cannot be reached
    or cannot serve now (connections refused or lost, shutting down, SQLite locked, the pool
    exhausted): the same work may succeed later, so it is an outage to wait out, not an answer."""
    from sqlalchemy.exc import DisconnectionError, InterfaceError, OperationalError
    from sqlalchemy.exc import TimeoutError as PoolTimeout

    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError | ConnectionError | DisconnectionError | PoolTimeout):
            return True
        if isinstance(current, DBAPIError):
            if current.connection_invalidated or isinstance(current, InterfaceError):
                return True
            code = str(getattr(current.orig, "sqlstate", None) or getattr(current.orig, "pgcode", "") or "")
            if code in _UNAVAILABLE_CODES or code[:2] in _UNAVAILABLE_CLASSES:
                return True
            if isinstance(current, OperationalError) and any(
                text in str(current.orig).lower() for text in _SQLITE_UNAVAILABLE
            ):
                return True
        current = current.__cause__ or current.__context__
    return False


def _connection_lost(jobs: list[_Job]) -> Exception | None:
    for job in jobs:
        if isinstance(job.error, Exception) and is_unavailable(job.error):
            return job.error
    return None


@dataclass(frozen=True)
class RetryPolicy:
    """How a work that lost a transient conflict is run again: up to `attempts` more times,
    each after a random pause of up to ``backoff_seconds * 2**n`` (n = retries so far; "full
    jitter", so two servers that deadlocked do not meet again in step), at most `max_seconds`."""

    attempts: int = 5
    backoff_seconds: float = 0.02
    max_seconds: float = 1.0

    def delay(self, retry: int) -> float:
        return random.uniform(0, min(self.backoff_seconds * 2**retry, self.max_seconds))


def after_commit(session: AsyncSession | Session, fn: Callable[[], None]) -> None:
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
    #: times this work was queued again after a transient conflict
    retries: int = 0
    #: queued under `background()`: runs after the foreground works
    background: bool = False


class GroupCommit:
    """A writer task running queued write works in shared transactions."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        *,
        on_commit: Callable[[], None],
        max_batch: int = 200,
        retry: RetryPolicy | None = None,
        outage_timeout: float = 300.0,
    ) -> None:
        self._sessions = sessions
        self._on_commit = on_commit
        self._max_batch = max_batch
        self._retry = retry or RetryPolicy()
        #: how long a batch waits out a database that is unavailable before failing its works
        self.outage_timeout = outage_timeout
        #: when the current outage began (`time.monotonic()`), None while the database serves
        self._outage_since: float | None = None
        self._queue: collections.deque[_Job] = collections.deque()
        self._background: collections.deque[_Job] = collections.deque()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        #: works waiting out their pause before running again (see `RetryPolicy`)
        self._delayed: dict[asyncio.TimerHandle, _Job] = {}
        #: committed transactions and the works they carried (for tests and benchmarks)
        self.batches = 0
        self.works = 0
        #: works run again after a transient conflict (deadlock, serialization failure)
        self.retried = 0
        #: database outages waited out, and batches run again meanwhile
        self.outages = 0
        self.outage_retries = 0

    @property
    def outage_seconds(self) -> float | None:
        """How long the database has been unavailable to this writer (None: it serves)."""
        return None if self._outage_since is None else time.monotonic() - self._outage_since

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
        for handle, job in list(self._delayed.items()):
            handle.cancel()
            self._queue.append(job)
        self._delayed.clear()
        self._queue.extend(self._background)
        self._background.clear()
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
        job = _Job(work, future, notify, background=_BACKGROUND.get())
        (self._background if job.background else self._queue).append(job)
        self._wake.set()
        return await future

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._queue or self._background:
                jobs: list[_Job] = []
                for queue in (self._queue, self._background):  # foreground first
                    while queue and len(jobs) < self._max_batch:
                        job = queue.popleft()
                        if not job.future.done():  # a caller cancelled before its turn
                            jobs.append(job)
                if jobs:
                    await self._commit(jobs)

    async def _commit(self, jobs: list[_Job]) -> None:
        pause = 0.1
        while True:
            try:
                committed = await self._transaction(jobs)
                failure: Exception | None = None if committed else jobs[0].error  # type: ignore[assignment]
                if committed and (lost := _connection_lost(jobs)) is not None:
                    # A work lost the connection mid-batch: the transaction died with it,
                    # whatever the commit said. Nothing of it counts.
                    committed, failure = False, lost
            except asyncio.CancelledError:
                for job in jobs:
                    if not job.future.done():
                        job.future.set_exception(RuntimeError("the engine service was closed"))
                raise
            except Exception as exc:  # noqa: BLE001 - each caller gets the error (or a retry)
                committed, failure = False, exc
            if failure is None or not is_unavailable(failure) or not self._wait_out(failure):
                break
            # An outage, not an answer: nothing was committed. The same batch runs again, ahead
            # of everything queued after it (the writer waits with it), so writes keep their order.
            self.outage_retries += 1
            await asyncio.sleep(pause)
            pause = min(pause * 2, 2.0)
        if failure is None and self._outage_since is not None:
            log.warning("the database is back: writes go on",
                        unavailable_seconds=round(time.monotonic() - self._outage_since, 2))
            self._outage_since = None
        if not committed and len(jobs) > 1:
            # Nothing of the batch was committed: give every work its own transaction.
            for job in jobs:
                await self._commit([job])
            return
        if not committed:
            jobs[0].error, jobs[0].result = failure, None
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
            if job.error is not None and self._retry_later(job):
                continue
            if job.error is not None:
                job.future.set_exception(job.error)
            else:
                job.future.set_result(job.result)

    def _wait_out(self, failure: BaseException) -> bool:
        """Whether to run a batch again after `failure` (the database unavailable): yes until
        the outage has lasted `outage_timeout`."""
        now = time.monotonic()
        if self._outage_since is None:
            self._outage_since = now
            self.outages += 1
            detail = str(failure).splitlines()[0] if str(failure) else ""
            log.warning("the database is unavailable: writes wait for it",
                        outage_timeout=self.outage_timeout, error=f"{type(failure).__name__}: {detail}")
        return now - self._outage_since < self.outage_timeout

    def _retry_later(self, job: _Job) -> bool:
        """Queue `job` again after a pause if it lost a transient conflict and has attempts
        left (all its changes were rolled back with its transaction or savepoint)."""
        if job.retries >= self._retry.attempts or not is_transient_conflict(job.error or Exception()):
            return False
        delay = self._retry.delay(job.retries)
        job.retries += 1
        self.retried += 1
        log.info("a write lost a database conflict; running it again", retry=job.retries,
                 delay_ms=round(delay * 1000, 1), error=str(getattr(job.error, "orig", job.error)))

        def requeue() -> None:
            self._delayed.pop(handle, None)
            if not job.future.done():  # its caller may have given up meanwhile
                (self._background if job.background else self._queue).append(job)
                self._wake.set()

        handle = asyncio.get_running_loop().call_later(delay, requeue)
        self._delayed[handle] = job
        return True

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
                    job.error, job.result = None, None  # a retried work starts afresh
                    session.info[_AFTER_COMMIT] = job.callbacks = []
                    try:
                        async with session.begin_nested():
                            job.result = await job.work(session)
                    except Exception as exc:  # noqa: BLE001 - its savepoint is rolled back
                        job.error = exc
                    # Flushed by the savepoint's release: the next work loads rows afresh (a
                    # work may have changed rows with Core statements the ORM did not see).
                    session.expunge_all()
            return True
