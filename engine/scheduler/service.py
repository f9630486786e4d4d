"""The scheduler: makes each schedule's runs ahead of time, catches up after downtime, marks
late runs Late. Part of `flowrelay server` (`engine.server.app`), beside the dispatch timer.

- **Ahead of time.** Each active schedule of an unpaused deployment keeps its next
  ``server.scheduled_runs_ahead`` slots as Scheduled runs, made through
  `EngineService.create_deployment_run` with the idempotency key
  ``schedule:<FLOW/DEPLOYMENT>:<schedule id>:<slot UTC>``: two schedulers, or a restart, get the
  slot's existing run back instead of making a second one. The server's dispatch timer hands
  each run to its pool at its time (it learns of them from their ``flow-run.Scheduled`` events).
- **No polling.** An in-memory heap holds, per schedule, the moment of its next slot (when one
  more run is made) and, per run, the moment it would be late. It is loaded at start and
  updated from ``deployment.*`` events (registered, paused, resumed, schedule-paused, ...), to
  which every scheduler subscribes with a queue of its own: a change made through any server
  reaches them all. One task sleeps until the earliest entry or the next event.
- **Late.** A run still Scheduled ``server.late_after_seconds`` after its slot (its pool had no
  worker, say) goes Late and still runs when a worker takes it.
- **Catch-up** at start, per schedule (`engine.scheduler.catchup`): skip, all or latest.
- **Pause.** Pausing a deployment or one schedule cancels the pending runs in the pausing
  transaction (`engine.scheduler.store`); resuming makes them again (from the event).

Each step (events, then due entries) runs its database work concurrently, so group commit
batches it, and steps run one after another: a run being made is committed before the next
event about its deployment is looked at, and that event's reconciliation cancels it if its
deployment was paused meanwhile.

Time comes from `clock`; tests call `run_due()` after moving it (``start(background=False)``).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import heapq
import itertools
import random
import uuid
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

import structlog
from sqlalchemy.exc import DBAPIError

from engine.broker.topology import Names, QueueSpec
from engine.db.group_commit import background as low_priority
from engine.errors import ObjectNotFound
from engine.scheduler import store
from engine.scheduler.catchup import plan_catchup
from engine.scheduler.specs import catchup_of, schedule_id
from engine.scheduler.timing import Timing, fire_times_between, next_fire_times
from engine.schemas import Deployment, Event, FlowRun
from engine.states import utcnow

__all__ = ["SCHEDULER_COMMANDS", "Scheduler"]

log = structlog.get_logger("flowrelay.scheduler")

#: The scheduler's commands reachable over the broker (`engine.server.commands`).
SCHEDULER_COMMANDS = ("set_schedule_active",)
_CHUNK = 256  # deployments reconciled at once (their runs are made concurrently)
_RETRY = dt.timedelta(seconds=5)
_MAKING_AT_ONCE = 64
_TOP_UP_DELAY = dt.timedelta(seconds=5)
_PLAIN_EVENTS = frozenset({"deployment.registered", "deployment.paused", "deployment.resumed"})
T = TypeVar("T")


@dataclass
class _Tracked:
    """An active schedule of an unpaused deployment, as the heap knows it."""

    deployment: str
    schedule: dict[str, Any]
    sid: str
    timing: Timing
    generation: int
    #: The latest slot known to have a run.
    frontier: dt.datetime | None = None


class Scheduler:
    def __init__(
        self,
        service: Any,
        *,
        broker: Any = None,
        names: Names | None = None,
        late_after: float = 15.0,
        runs_ahead: int = 3,
        clock: Callable[[], dt.datetime] = utcnow,
        owns: Callable[[str], bool] | None = None,
    ) -> None:
        self.service = service
        #: whether this server makes deployment NAME's runs (its partition's lease: several
        #: servers share the schedules, `engine.server.leases`); None: all of them
        self.owns = owns
        self._rebalance = False
        self.broker = broker
        self.names = names or Names()
        self.grace = dt.timedelta(seconds=late_after)
        self.runs_ahead = runs_ahead
        self.clock = clock
        #: (when, sequence, kind, key, generation); kind "slot": key is (deployment, schedule id),
        #: kind "late": key is (run id, slot)
        self._heap: list[tuple[dt.datetime, int, str, Any, int]] = []
        self._seq = itertools.count()
        self._tracked: dict[tuple[str, str], _Tracked] = {}
        #: the schedule ids tracked per deployment (forgetting one is not a scan of them all)
        self._sids: dict[str, set[str]] = {}
        self._generation: dict[str, int] = {}
        #: what each deployment looked like when last reconciled: skip no-op events
        self._seen: dict[str, tuple[Any, ...]] = {}
        self._dirty: set[str] = set()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._consumer: Any = None
        self._queue: str | None = None
        #: counters for the log and the bench (runs made or found made by another scheduler)
        self.created = 0
        self.marked_late = 0
        #: runs being made at once (one group-commit batch's worth)
        self._making = asyncio.Semaphore(_MAKING_AT_ONCE)

    # --- life cycle -----------------------------------------------------------------------------
    async def start(self, *, background: bool = True) -> None:
        """Subscribe to deployment events, load every schedule (catching up), then run."""
        if self.broker is not None:
            await self._subscribe()
        with low_priority():  # its writes yield to commands and due dispatches (group commit)
            await self._load()
        if background:
            self._task = asyncio.create_task(self._run(), name="flowrelay-scheduler")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        if self._consumer is not None:
            consumer, self._consumer = self._consumer, None
            await consumer.cancel(grace=1.0)
        if self._queue is not None and self.broker is not None:
            queue, self._queue = self._queue, None
            try:
                await self.broker.delete_queue(queue)
            except Exception:  # noqa: BLE001 - the queue is auto-delete anyway
                pass

    def __len__(self) -> int:
        """Entries in the heap (stale ones included until they come up)."""
        return len(self._heap)

    @property
    def schedules(self) -> int:
        """Schedules being followed."""
        return len(self._tracked)

    def changed(self, deployment: str) -> None:
        """Deployment ``FLOW/DEPLOYMENT`` changed: reconcile it at the next step."""
        self._dirty.add(deployment)
        self._wake.set()

    def rebalance(self) -> None:
        """The partitions this server owns changed: follow the schedules it now owns (catching
        up what their previous owner missed), forget the others, at the next step."""
        self._rebalance = True
        self._wake.set()

    def _mine(self, name: str) -> bool:
        return self.owns is None or self.owns(name)

    def next_wake(self) -> dt.datetime | None:
        return self._heap[0][0] if self._heap else None

    # --- commands -------------------------------------------------------------------------------
    async def set_schedule_active(
        self, name: str, active: bool, schedule: str | None = None
    ) -> dict[str, Any]:
        """Pause or resume schedule `schedule` (id or 1-based position; None: all) of deployment
        `name`. A pause cancels the schedule's runs not yet handed to a pool."""
        now = self.clock()
        deployment, changed = await self.service.write(
            lambda session: store.set_schedule_active(session, name, schedule, active, now=now)
        )
        self.changed(deployment.full_name)
        return {"deployment": deployment.model_dump(mode="json"), "changed": changed}

    # --- the loop -------------------------------------------------------------------------------
    async def _run(self) -> None:
        with low_priority():
            await self._loop()

    async def _loop(self) -> None:
        while True:
            self._wake.clear()
            try:
                await self.run_due()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - never die; retry shortly
                log.warning("scheduler step failed; retrying", error=f"{type(exc).__name__}: {exc}")
                await asyncio.sleep(1.0)
                continue
            if self._dirty:
                continue
            wake = self.next_wake()
            timeout = None if wake is None else max((wake - self.clock()).total_seconds(), 0)
            if timeout is not None and timeout <= 0:
                continue
            try:  # not wait_for: on 3.11 it can swallow a cancel racing a wake-up
                async with asyncio.timeout(min(timeout or 3600, 3600)):
                    await self._wake.wait()
            except TimeoutError:
                pass

    async def run_due(self) -> int:
        """One step: reconcile changed deployments, then handle every entry due by the clock.
        Returns how many entries were handled."""
        if self._rebalance:
            self._rebalance = False
            await self._load(takeover=True)
        if self._dirty:
            dirty, self._dirty = self._dirty, set()
            await self._reconcile_names(sorted(dirty))
        now = self.clock()
        due = []
        while self._heap and self._heap[0][0] <= now:
            due.append(heapq.heappop(self._heap))
        work: list[Awaitable[None]] = []
        late: list[tuple[uuid.UUID, dt.datetime]] = []
        # The same order in every replica: their transactions lock rows in one order.
        for _, _, kind, key, generation in sorted(due, key=lambda e: (e[2], str(e[3]))):
            if kind == "slot":
                tracked = self._tracked.get(key)
                if tracked is not None and tracked.generation == generation:
                    work.append(self._top_up(tracked, now))
            else:
                late.append(key)
        work.extend(self._mark_late(chunk) for chunk in _chunks(late, _CHUNK))
        await _gather(work)
        return len(due)

    # --- loading and reconciling ----------------------------------------------------------------
    async def _load(self, *, takeover: bool = False) -> None:
        """Follow every schedule of the deployments this server owns (catching up missed slots);
        `takeover`: only those not followed yet, and forget those it no longer owns."""
        deployments = [dep for dep in await self.service.read_deployments() if self._mine(dep.full_name)]
        if takeover:
            mine = {dep.full_name for dep in deployments}
            for name in [name for name in self._seen if name not in mine]:
                self._forget(name)
            deployments = [dep for dep in deployments if dep.full_name not in self._seen]
            if not deployments:
                return
        async with self.service.read_session() as session:
            pending = await store.pending_runs(session)
            last = await store.last_slots(session)
        by_deployment: dict[str, list[store.PendingRun]] = {}
        for run in pending:
            by_deployment.setdefault(run.deployment, []).append(run)
        for chunk in _chunks(deployments, _CHUNK):
            await _gather(
                self._reconcile(dep, by_deployment.get(dep.full_name, []), last=last)
                for dep in chunk
            )
        log.debug("scheduler loaded", schedules=len(self._tracked), runs_made=self.created)

    async def _reconcile_names(self, names: list[str]) -> None:
        if len(names) > 20:  # one read for many (a file of deployments registered at once)
            wanted = set(names)
            found = {d.full_name: d for d in await self.service.read_deployments()
                     if d.full_name in wanted}
        else:
            found = {}
            for name in names:
                try:
                    found[name] = await self.service.read_deployment(name)
                except ObjectNotFound:
                    pass
        for name in names:
            if name not in found or not self._mine(name):
                found.pop(name, None)
                self._forget(name)
        changed = [dep for dep in found.values() if self._seen.get(dep.full_name) != _look(dep)]
        for chunk in _chunks(changed, _CHUNK):
            pending: dict[str, list[store.PendingRun]] = {}
            async with self.service.read_session() as session:
                for dep in chunk:
                    pending[dep.full_name] = await store.pending_runs(session, dep.full_name)
            await _gather(self._reconcile(dep, pending[dep.full_name]) for dep in chunk)

    def _forget(self, name: str) -> int:
        generation = self._generation.get(name, 0) + 1
        self._generation[name] = generation
        self._seen.pop(name, None)
        for sid in self._sids.pop(name, ()):
            self._tracked.pop((name, sid), None)
        return generation

    async def _reconcile(
        self,
        dep: Deployment,
        pending: list[store.PendingRun],
        *,
        last: dict[tuple[str, str], dt.datetime] | None = None,
    ) -> None:
        """Follow `dep`'s active schedules (none if paused): cancel the pending runs of the
        others, catch up (`last` given: at start), make the runs ahead."""
        name = dep.full_name
        generation = self._forget(name)
        self._seen[name] = _look(dep)
        active = {} if dep.paused else {
            schedule_id(item): item for item in dep.schedules if item.get("active", True)
        }
        stale = [run.id for run in pending if run.schedule not in active and not run.dispatched]
        if stale:
            why = f"deployment '{name}' is paused" if dep.paused else (
                f"its schedule is no longer active on deployment '{name}'"
            )
            await self.service.write(
                lambda session: store.cancel_pending(session, run_ids=stale, message=why)
            )
        now = self.clock()
        for sid, schedule in active.items():
            tracked = _Tracked(name, schedule, sid, Timing.of(schedule), generation)
            mine = [run for run in pending if run.schedule == sid]
            if mine:
                tracked.frontier = mine[-1].slot
            if last is not None:
                await self._catch_up(dep, tracked, mine, last.get((name, sid)), now)
            for run in mine:
                if run.state_name == "Scheduled":  # (a cancelled one is left as it is)
                    self._push(run.slot + self.grace, "late", (run.id, run.slot), 0)
            self._tracked[(name, sid)] = tracked
            self._sids.setdefault(name, set()).add(sid)
            await self._top_up(tracked, now)

    async def _catch_up(
        self,
        dep: Deployment,
        tracked: _Tracked,
        mine: list[store.PendingRun],
        last: dt.datetime | None,
        now: dt.datetime,
    ) -> None:
        if last is None:
            return  # a schedule that never made a run starts with its next slot
        plan = plan_catchup(
            tracked.timing, catchup_of(tracked.schedule), now=now, grace=self.grace, since=last,
            pending={run.slot: run.id for run in mine if not run.dispatched},
        )
        if not plan.missed:
            return
        policy = catchup_of(tracked.schedule)
        log.info("schedule missed slots while no scheduler ran", deployment=dep.full_name,
                 schedule=tracked.sid, catchup=policy, missed=len(plan.missed),
                 created=len(plan.create), cancelled=len(plan.cancel))
        if plan.cancel:
            ids = [run for run, _ in plan.cancel]
            message = f"slot missed while no scheduler ran (catchup: {policy})"
            await self.service.write(
                lambda session: store.cancel_pending(session, run_ids=ids, message=message)
            )
        await _gather(self._make(tracked, slot) for slot in plan.create)
        if plan.create:
            tracked.frontier = max(tracked.frontier or plan.create[-1], plan.create[-1])

    # --- making runs ----------------------------------------------------------------------------
    async def _top_up(self, tracked: _Tracked, now: dt.datetime) -> None:
        """Make the runs of slots due within the grace and of the next `runs_ahead` slots that
        have none yet; come back at the next slot."""
        wanted = fire_times_between(tracked.timing, now - self.grace, now)
        upcoming = next_fire_times(tracked.timing, now, self.runs_ahead)
        wanted += upcoming
        if tracked.frontier is not None:
            wanted = [slot for slot in wanted if slot > tracked.frontier]
        try:
            await _gather(self._make(tracked, slot) for slot in wanted)
        except Exception as exc:  # noqa: BLE001 - try again soon; keys make it safe
            log.warning("making scheduled runs failed; retrying", deployment=tracked.deployment,
                        schedule=tracked.sid, error=f"{type(exc).__name__}: {exc}")
            self._push(now + _RETRY, "slot", (tracked.deployment, tracked.sid), tracked.generation)
            return
        if wanted:
            tracked.frontier = max(wanted[-1], tracked.frontier or wanted[-1])
        if upcoming:
            self._push(self._top_up_time(tracked, upcoming[0]), "slot",
                       (tracked.deployment, tracked.sid), tracked.generation)

    def _top_up_time(self, tracked: _Tracked, slot: dt.datetime) -> dt.datetime:
        """When to make one more run once `slot` comes: a little after it (halfway to the next
        slot, at most 5 s), so the database's work at the slot is its runs' dispatch."""
        following = next_fire_times(tracked.timing, slot, 1)
        if not following:
            return slot
        return slot + min((following[0] - slot) / 2, _TOP_UP_DELAY)

    async def _make(self, tracked: _Tracked, slot: dt.datetime) -> None:
        async with self._making:  # 10,000 at once would queue on the read pool, not go faster
            await self._make_one(tracked, slot)

    async def _make_one(self, tracked: _Tracked, slot: dt.datetime) -> None:
        key = store.run_key(tracked.deployment, tracked.sid, slot)
        run: FlowRun = await _transient_retries(
            lambda: self.service.create_deployment_run(
                tracked.deployment,
                dict(tracked.schedule.get("parameters") or {}),
                idempotency_key=key,
                scheduled_time=slot,
                caused_by={"schedule": tracked.sid, "slot": store.slot_text(slot)},
            )
        )
        if run.idempotency_key == key and run.state is not None and run.state.name == "Scheduled":
            self.created += 1
            self._push(slot + self.grace, "late", (run.id, slot), 0)

    async def _mark_late(self, entries: list[tuple[uuid.UUID, dt.datetime]]) -> None:
        """Move these (run, slot) entries' runs to Late if still plainly Scheduled, in one
        transaction (a whole cron minute's runs at once)."""
        message = f"not started {self.grace.total_seconds():g} s after its scheduled time"
        slots = dict(entries)
        try:
            moved, busy = await _transient_retries(
                lambda: self.service.write(
                    lambda session: store.mark_late_many(session, list(slots), message=message)
                )
            )
        except Exception as exc:  # noqa: BLE001 - try again soon
            log.warning("marking runs Late failed; retrying", runs=len(entries),
                        error=f"{type(exc).__name__}: {exc}")
            for run_id, slot in entries:
                self._push(self.clock() + _RETRY, "late", (run_id, slot), 0)
            return
        for run_id in busy:  # another transaction holds the run (a claim, another scheduler)
            self._push(self.clock() + dt.timedelta(seconds=1), "late", (run_id, slots[run_id]), 0)
        self.marked_late += len(moved)

    def _push(self, when: dt.datetime, kind: str, key: Any, generation: int) -> None:
        heapq.heappush(self._heap, (when, next(self._seq), kind, key, generation))
        self._wake.set()

    # --- events ---------------------------------------------------------------------------------
    async def _subscribe(self) -> None:
        spec = QueueSpec.temporary(prefix=f"{self.names.prefix}.scheduler")
        self._queue = await self.broker.declare_queue(spec)
        await self.broker.bind(self._queue, self.names.events, "deployment.#")
        self._consumer = await self.broker.consume(self._queue, self._on_message, prefetch=256)

    async def _on_message(self, message: Any) -> None:
        try:
            event = Event.model_validate_json(message.body)
        except ValueError:
            await message.ack()
            return
        name = event.resource.get("name")
        if event.event.startswith("deployment.") and isinstance(name, str):
            seen = self._seen.get(name)
            known = (event.payload.get("version"), event.payload.get("paused"))
            # A deployment's own events say its version and pause flag: one the scheduler has
            # already seen (its load read it) needs no database read.
            if not (event.event in _PLAIN_EVENTS and seen is not None and seen[:2] == known):
                self.changed(name)
        await message.ack()


async def _transient_retries(call: Callable[[], Awaitable[T]], attempts: int = 5) -> T:
    """`call()`, again after a short random pause when the database reports a transient
    conflict: PostgreSQL's deadlock (40P01) or serialization failure (40001) between two
    servers' group-commit transactions (each other error is raised at once)."""
    for attempt in range(attempts):
        try:
            return await call()
        except DBAPIError as exc:
            code = getattr(exc.orig, "sqlstate", None) or getattr(exc.orig, "pgcode", None)
            transient = code in ("40P01", "40001") or "deadlock detected" in str(exc)
            if not transient or attempt == attempts - 1:
                raise
            await asyncio.sleep(random.uniform(0.01, 0.1) * (attempt + 1))
    raise AssertionError("unreachable")


def _look(dep: Deployment) -> tuple[Any, ...]:
    return (dep.version, dep.paused, dep.updated, repr(dep.schedules))


def _chunks(items: list[Any], size: int) -> Iterable[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


async def _gather(work: Iterable[Awaitable[Any]]) -> None:
    """Await all of `work` concurrently; raise the first error once all are done."""
    results = await asyncio.gather(*work, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result
