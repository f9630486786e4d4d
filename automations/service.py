"""The rule engine service: events in, durable trigger state, firings out, actions run once.

Runs inside `flowrelay server` (and the embedded mode), beside the engine service whose write
transaction it shares. Per event from its durable queue `<prefix>.sub.automations`:

    decode ─▶ evaluate (pure, `automations.evaluator`, under one lock: events in order)
           ─▶ commit trigger state + new firings + `automation.triggered` events (one transaction)
           ─▶ run each new firing's actions, and ack ─▶ commit the results + `automation.action.*`
              + the counters (`FINISH_DELAY` later)

An event that matches nothing (most of them) costs the index's lookups and an ack: no write, no
log line. The firing's transaction is on the path from the event to the run it launches, so it
holds nothing else (no counters, no reads before its writes).

- The queue is bound only to the routing keys the loaded automations can use (an engine with no
  automation receives nothing), and is a quorum queue with a delivery limit dead-lettering to
  `<prefix>.dlx`: an event that cannot be decoded is dead-lettered at once with an
  `x-flowrelay-reason` header, and counted.
- Redelivery (a crash before the ack) re-evaluates an event the state has already counted: the
  evaluator drops duplicates by event id, and a firing's id is derived from its events, so the
  firing row (primary key) and the run's idempotency key stop a second launch.
- A crash after the firing is committed but before its actions finished leaves it `pending`;
  start-up runs pending firings again (their effects are keyed by the firing: no duplicates).
- Windows and proactive timers are in memory (`Evaluator.next_deadline`), restored from the
  stored state at start; one timer task sleeps until the next deadline. Nothing polls.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import json
import uuid
import zlib
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import pydantic
import structlog

from automations import store
from automations.actions import ActionRunner, firing_uuid
from automations.errors import AutomationFileError
from automations.evaluator import Evaluator, Firing, Outcome
from automations.loader import load_paths
from automations.manage import Management
from automations.models import Automation, CompoundTrigger, SequenceTrigger
from automations.routing import routing_keys
from engine.broker import Broker, IncomingMessage
from engine.broker.errors import TopologyError
from engine.broker.topology import Binding, Names, QueueSpec, Topology
from engine.schemas import Event
from engine.service import EngineService
from engine.settings import Settings
from engine.states import utcnow

log = structlog.get_logger("flowrelay.automations")

__all__ = ["AUTOMATION_COMMANDS", "AutomationsService", "rule_partition", "rule_partitions", "rule_queue"]

#: Methods reachable over the broker's RPC (the CLI's `flowrelay automation ...`).
AUTOMATION_COMMANDS = (
    "apply_automations", "validate_automations", "read_automations", "read_automation",
    "set_automation_enabled", "delete_automation", "explain_automation", "replay_events",
    "read_events_between",
)

SUBSCRIPTION = "automations"
REASON_HEADER = "x-flowrelay-reason"
#: How long a firing's results wait before they are recorded: the run its action launched is
#: then being dispatched and claimed, writes that its start waits for; the results need not
#: overtake them (a crash meanwhile leaves the firing pending: it is run again, keyed, at start).
FINISH_DELAY = 0.05
#: How long a rule partition's consumer, given up, may finish the events it holds; a server
#: taking a partition over restores its timers' state this long after, if no event came first.
CANCEL_GRACE = 5.0


def rule_partitions(settings: Settings) -> int:
    """The number of rule partitions (`automations.partitions`, 1 by default). Several spread
    the rules over the servers, at a price: an event that automations of several partitions can
    match is delivered to each of their queues (bench/automations.py: 8 partitions on one server
    evaluate 10,000 rules at ~700 events/s, one partition at ~3,100)."""
    if settings.database.url.startswith("sqlite"):
        return 1  # one server
    return settings.automations.partitions


def rule_partition(name: str, partitions: int) -> int:
    """The rule partition of automation `name` (the same in every process: CRC-32)."""
    return zlib.crc32(name.encode()) % partitions if partitions > 1 else 0


def rule_queue(names: Names, partition: int) -> str:
    """The queue of rule partition `partition` (partition 0 keeps the one-queue name)."""
    return names.subscription(SUBSCRIPTION if partition == 0 else f"{SUBSCRIPTION}.{partition}")


def _resource(name: str) -> dict[str, Any]:
    return {"id": f"automation/{name}", "name": name}


class AutomationsService(Management):
    """The rule engine: life cycle, events, timers and actions here; the management commands in
    `automations.manage.Management`."""

    def __init__(
        self,
        service: EngineService,
        broker: Broker,
        names: Names,
        settings: Settings,
        *,
        clock: Callable[[], dt.datetime] = utcnow,
        owns_partition: Callable[[int], bool] | None = None,
    ) -> None:
        self.service = service
        self.broker = broker
        self.names = names
        self.settings = settings
        self.clock = clock
        #: rule partitions: each automation is in `rule_partition(name)`, whose queue brings the
        #: events it can match; this server evaluates the partitions `owns_partition` gives it
        self.partitions = rule_partitions(settings)
        self.queues = [rule_queue(names, r) for r in range(self.partitions)]
        self.owns_partition: Callable[[int], bool] = owns_partition or (lambda r: True)
        #: partitions consumed here; of them, those whose state is restored (`_live`: the
        #: evaluator acts on their automations) and those still to restore (`_fresh`)
        self._consumers: dict[int, Any] = {}
        self._live: set[int] = set()
        self._fresh: set[int] = set()
        self._restorers: dict[int, asyncio.Task[None]] = {}
        self.automations: dict[str, Automation] = {}
        self.evaluator = Evaluator(now=clock())
        self.runner = ActionRunner(
            service,
            set_automation_enabled=self.set_automation_enabled,
            webhook_allow_hosts=settings.automations.webhook_allow_hosts,
            timeout=settings.automations.action_timeout_seconds,
            outage_timeout=settings.database.unavailable_timeout_seconds,
        )
        self._lock = asyncio.Lock()
        self._bound: dict[str, set[str]] = {queue: set() for queue in self.queues}
        self._timer: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._sleeping_until: dt.datetime | None = None
        self._actions: set[asyncio.Task[None]] = set()
        self._counters: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        self.dead_lettered = 0
        #: events evaluated against the rules since start (the API's /metrics reads it)
        self.evaluated = 0
        self._running = False
        #: This process's rule engine, as named in its announcements to the other servers.
        self.instance = uuid.uuid4().hex[:12]
        self._announcements: Any = None
        #: Whether this instance has received events since it last loaded the stored state:
        #: a standby that becomes the active consumer reloads first.
        self._active = False

    # --- life cycle -----------------------------------------------------------------------------
    async def start(self) -> None:
        now = self.clock()
        async with self.service.read_session() as session:
            rows = await store.load_automations(session)
            state = await store.load_state(session)
        self.evaluator = self._evaluator(now, state)
        changes: dict[tuple[str, str], dict[str, Any] | None] = {}
        for row in rows:
            try:
                automation = Automation.model_validate(row.definition)
            except pydantic.ValidationError as exc:
                log.error("stored automation no longer validates; skipped", automation=row.name, error=str(exc))
                continue
            if automation.enabled != row.enabled:
                automation = automation.model_copy(update={"enabled": row.enabled})
            self.automations[row.name] = automation
            changes.update(self.evaluator.upsert(automation, now).state)
        for name in self.evaluator.unloaded():  # state of automations deleted meanwhile
            changes.update(self.evaluator.remove(name).state)
        if changes:
            await self.service.write(lambda s: store.apply_state(s, changes), events=False)
        if self.settings.automations.paths:
            await self._load_configured()
        await self._declare_queue()
        await self._sync_bindings()
        self._running = True
        async with self.service.read_session() as session:
            pending = await store.pending_firings(session)
        for stored in pending:  # a previous process committed these but did not finish their actions
            firing = _firing_from_row(stored)
            if firing is not None:
                self._spawn(firing)
        await self._listen_for_announcements()
        # What start loaded is as stored: the partitions this server owns now are live at once.
        self._live = {r for r in range(self.partitions) if self.owns_partition(r)}
        await self.rebalance()
        self._timer = asyncio.create_task(self._timer_loop(), name="automations-timer")
        log.debug("automations started", automations=len(self.automations), queues=self.queues,
                  partitions=sorted(self._consumers))

    async def stop(self) -> None:
        self._running = False
        for task in self._restorers.values():
            task.cancel()
        await asyncio.gather(*self._restorers.values(), return_exceptions=True)
        self._restorers.clear()
        consumers, self._consumers = self._consumers, {}
        await asyncio.gather(*(c.cancel(grace=CANCEL_GRACE) for c in consumers.values()))
        self._live.clear()
        if self._announcements is not None:
            announcements, self._announcements = self._announcements, None
            await announcements.cancel(grace=1.0)
        if self._timer is not None:
            timer, self._timer = self._timer, None
            timer.cancel()
            await asyncio.gather(timer, return_exceptions=True)
        if self._actions:
            await asyncio.wait(set(self._actions), timeout=self.settings.automations.action_timeout_seconds)
        for task in set(self._actions):
            task.cancel()
        await asyncio.gather(*self._actions, return_exceptions=True)
        await self._flush_counters()

    def _queue_spec(self, queue: str, single_active: bool = True) -> QueueSpec:
        return QueueSpec(
            queue, quorum=True, delivery_limit=self.settings.broker.delivery_limit,
            dead_letter_exchange=self.names.dlx, single_active_consumer=single_active,
        )

    async def _declare_queue(self) -> None:
        for queue in self.queues:
            try:
                await self.broker.declare_queue(self._queue_spec(queue))
            except TopologyError as exc:
                # Declared by an earlier version without single-active-consumer: keep it (fine
                # for one server), say how to get replicas right.
                log.warning(
                    "keeping the rule engine's queue as it was declared (not single-active-consumer); "
                    "delete it while no server runs before running several servers", queue=queue,
                    error=str(exc),
                )
                await self.broker.declare_queue(self._queue_spec(queue, single_active=False))

    def _partition_of(self, name: str) -> int:
        return rule_partition(name, self.partitions)

    def _owns_automation(self, name: str) -> bool:
        return self._partition_of(name) in self._live

    def _evaluator(self, now: dt.datetime, state: Any) -> Evaluator:
        evaluator = Evaluator(now=now, state=state)
        evaluator.owns = self._owns_automation
        return evaluator

    async def _sync_bindings(self) -> None:
        """Bind each partition's queue to what its enabled automations can match (bindings are
        only added: an extra binding costs a few ignored messages, never a lost one)."""
        bindings = []
        for r, queue in enumerate(self.queues):
            mine = (a for a in self.automations.values() if self._partition_of(a.name) == r)
            new = sorted(routing_keys(mine) - self._bound[queue])
            bindings += [Binding(queue, self.names.events, k) for k in new]
        if bindings:
            await self.broker.declare_topology(Topology(bindings=tuple(bindings)))
            for binding in bindings:
                self._bound[binding.queue].add(binding.routing_key)

    # --- partitions -------------------------------------------------------------------------------
    async def rebalance(self) -> None:
        """Consume the queues of the rule partitions this server owns now, and only those. A
        partition taken over is restored from the database (its state as the previous owner
        committed it) at its first delivery — the queue is single-active-consumer, so that
        comes once the previous owner's consumer is gone and its last event committed — or
        `CANCEL_GRACE` seconds later if no event comes first (its timers: windows, proactive
        triggers). A partition given up is no longer evaluated here, its timers included."""
        if not self._running:
            return
        owned = {r for r in range(self.partitions) if self.owns_partition(r)}
        for r in sorted(set(self._consumers) - owned):
            consumer = self._consumers.pop(r)
            self._live.discard(r)
            self._fresh.discard(r)
            task = self._restorers.pop(r, None)
            if task is not None:
                task.cancel()
            await consumer.cancel(grace=CANCEL_GRACE)
            log.info("rule partition given up", partition=r, queue=self.queues[r])
        for r in sorted(owned - set(self._consumers)):
            if r not in self._live:
                self._fresh.add(r)
                self._restorers[r] = asyncio.create_task(
                    self._restore_later(r), name=f"automations-restore-{r}"
                )
            self._consumers[r] = await self.broker.consume(
                self.queues[r], functools.partial(self._on_message, partition=r),
                prefetch=self.settings.automations.prefetch,
            )
            log.info("rule partition taken", partition=r, queue=self.queues[r])
        self._reschedule()

    async def _restore_later(self, partition: int) -> None:
        await asyncio.sleep(CANCEL_GRACE)
        async with self._lock:
            if partition in self._fresh:
                await self._restore(partition)
        self._restorers.pop(partition, None)

    async def _restore(self, partition: int) -> None:
        """Reload partition `partition`'s automations with their stored state. Hold the lock."""
        mine = [a for name, a in self.automations.items() if self._partition_of(name) == partition]
        async with self.service.read_session() as session:
            state = await store.load_state(session, [a.name for a in mine])
        self._live.add(partition)
        self._fresh.discard(partition)
        outcome = self.evaluator.restore(mine, state, self.clock())
        if outcome.state:
            await self.service.write(lambda s: store.apply_state(s, outcome.state), events=False)
        self._reschedule()

    async def _load_configured(self) -> None:
        deployments = await self.service.read_deployments()
        known = {d.full_name: d.flow_name for d in deployments}
        try:
            loaded = load_paths(self.settings.automations.paths, known_deployments=known)
        except AutomationFileError as exc:
            log.error(
                "automation files refused; the automations already loaded keep running",
                problems=exc.problems,
            )
            return
        await self._install([(item.automation, item.source) for item in loaded])

    # --- events -----------------------------------------------------------------------------------
    async def _on_message(self, message: IncomingMessage, partition: int = 0) -> None:
        if message.routing_key.startswith("dispatch."):  # work for pools, not an event
            await message.ack()
            return
        if not self._active:  # the first delivery: this instance is (now) the active consumer
            async with self._lock:
                if not self._active:
                    await self._reload()
                    self._active = True
            await self._sync_bindings()
            self._reschedule()
        if partition in self._fresh:  # the first delivery of a partition taken over
            async with self._lock:
                if partition in self._fresh:
                    await self._restore(partition)
        try:
            event = Event.model_validate_json(message.body).model_dump(mode="json")
        except (pydantic.ValidationError, ValueError) as exc:
            await self._dead_letter(message, f"not a flowrelay event: {_first_line(exc)}", partition)
            return
        self.evaluated += 1
        try:
            async with self._lock:
                now = self.clock()
                outcome = self.evaluator.evaluate(
                    event, now, only=(lambda name: self._partition_of(name) == partition)
                    if self.partitions > 1 else None,
                )
                written = None
                if outcome.matched or outcome.errors:  # most events match nothing: no more work
                    self._count(outcome, event, now)
                if _has_writes(outcome):
                    self._check_deadline()  # only a state change can set an earlier deadline
                    written = self._submit(outcome)
        except Exception as exc:  # a rule that cannot evaluate this event: keep it, with the reason
            log.exception("rule evaluation failed", event_id=event.get("id"), event=event.get("event"))
            await self._dead_letter(message, f"rule evaluation failed: {type(exc).__name__}: {exc}", partition)
            return
        try:
            new = await written if written is not None else []
        except Exception as exc:  # noqa: BLE001 - the database stayed unavailable past its bound
            # The evaluator counted this event, but nothing of it was committed: rebuild the
            # evaluator from the database before the next event (in-memory state never runs
            # ahead of what is committed), and let the broker deliver this one again.
            self._active = False
            log.error("could not commit an event's trigger state; it will be evaluated again",
                      event_id=event.get("id"), error=f"{type(exc).__name__}: {exc}")
            await message.nack(requeue=True)
            return
        for firing in new:  # committed: its actions may start (before the ack, which they need not wait for)
            self._spawn(firing)
        await message.ack()

    def _count(self, outcome: Outcome, event: dict[str, Any], now: dt.datetime) -> None:
        for name, n in outcome.matched.items():
            self._counters[name]["matched"] += n
            try:
                occurred = dt.datetime.fromisoformat(str(event.get("occurred")))
                self._counters[name]["lag_ms"] = max(0, int((now - occurred).total_seconds() * 1000))
            except ValueError:
                pass
        for name, message in outcome.errors:
            self._counters[name]["errors"] += 1
            log.warning("automation could not evaluate an event", automation=name, error=message,
                        event_id=event.get("id"))

    def _submit(self, outcome: Outcome) -> asyncio.Future[list[Firing]]:
        """Queue the outcome's write now (in evaluation order); await the result later."""
        return asyncio.ensure_future(self._persist(outcome))

    async def _persist(self, outcome: Outcome) -> list[Firing]:
        """Commit the outcome's state and firings. A firing's transaction is on the path from the
        event to the run it launches, so it carries nothing else: the counters go with the
        firing's results (`_act`), those of a state-only outcome with it."""
        counters = self._take_counters() if not outcome.firings else None
        events: dict[str, list[Event]] = {f.id: [self._firing_event(f)] for f in outcome.firings}

        async def work(session: Any) -> list[Firing]:
            await store.apply_state(session, outcome.state)
            fresh = []
            for firing in outcome.firings:
                if await store.insert_firing(
                    session, firing_id=firing.id, automation=firing.automation, kind=firing.kind,
                    at=firing.at, bucket=firing.bucket, correlation=firing.correlation,
                    event_ids=[str(e.get("id")) for e in firing.events.values() if e],
                    context=_jsonable(firing.template_context()), events=events[firing.id],
                ):
                    fresh.append(firing)
            if counters:
                await store.bump_counters(session, counters)
            return fresh

        return await self.service.write(work, events=bool(outcome.firings))

    def _take_counters(self) -> dict[str, dict[str, int]]:
        taken: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        lags: dict[str, int] = {}
        for name, counts in self._counters.items():
            for key, n in counts.items():
                if key == "lag_ms":
                    lags[name] = n
                else:
                    taken[name][key] += n
        self._counters.clear()
        for name, lag in lags.items():
            self._counters[name]["lag_ms"] = lag  # a gauge, kept in memory
        return taken

    async def _flush_counters(self) -> None:
        counters = self._take_counters()
        if any(any(v for v in c.values()) for c in counters.values()):
            await self.service.write(lambda session: store.bump_counters(session, counters), events=False)

    def _firing_event(self, firing: Firing) -> Event:
        related = [
            {"id": str((e.get("resource") or {}).get("id", "")), "role": "triggering-event",
             "event_id": str(e.get("id")), "event": e.get("event"), "child": child}
            for child, e in firing.events.items() if e
        ]
        name = "automation.triggered" if firing.kind == "fired" else "automation.join.expired"
        payload: dict[str, Any] = {
            "firing_id": firing.id, "bucket": firing.bucket, "correlation": firing.correlation,
            "proactive": firing.proactive,
        }
        if firing.kind == "expired":
            payload["awaited"] = list(firing.awaited)
            payload["arrived"] = sorted(firing.events)
        return Event(
            id=firing_uuid(firing.id, 0, name), occurred=firing.at, event=name,
            resource=_resource(firing.automation), related=related, payload=payload,
        )

    async def _dead_letter(self, message: IncomingMessage, reason: str, partition: int = 0) -> None:
        """Copy the message to the dead-letter exchange with the reason, then drop it here."""
        self.dead_lettered += 1
        queue = self.queues[partition]
        headers = dict(message.headers)
        headers[REASON_HEADER] = reason[:1000]
        headers["x-flowrelay-queue"] = queue
        try:
            await self.broker.publish(
                self.names.dlx, message.routing_key, message.body, headers=headers,
                message_id=message.message_id, content_type=message.content_type or "application/octet-stream",
                mandatory=False,
            )
        except Exception:
            log.exception("could not dead-letter with a reason; rejecting instead", queue=queue)
            await message.reject()
            return
        log.warning("event dead-lettered", queue=queue, reason=reason, routing_key=message.routing_key)
        await message.ack()

    # --- timers -----------------------------------------------------------------------------------
    async def _timer_loop(self) -> None:
        while self._running:
            deadline = self.evaluator.next_deadline()
            self._sleeping_until = deadline
            timeout = None if deadline is None else max(0.0, (deadline - self.clock()).total_seconds())
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=timeout)
                continue  # woken: definitions changed, compute the deadline again
            except TimeoutError:
                pass
            await self.advance()

    async def advance(self, now: dt.datetime | None = None) -> list[Firing]:
        """Close due windows and fire due proactive triggers (the timer calls it; tests too)."""
        async with self._lock:
            outcome = self.evaluator.advance(now or self.clock())
            written = self._submit(outcome) if _has_writes(outcome) else None
        try:
            new = await written if written is not None else []
        except Exception as exc:  # noqa: BLE001 - the database stayed unavailable past its bound
            # Windows closed in memory only: rebuild the evaluator from the database before the
            # next event; the restored deadlines fire these again.
            self._active = False
            log.error("could not commit the closing of due windows; they will close again",
                      error=f"{type(exc).__name__}: {exc}")
            return []
        for firing in new:
            self._spawn(firing)
        return new

    def _reschedule(self) -> None:
        self._wake.set()

    def _check_deadline(self) -> None:
        """Wake the timer if evaluating set a deadline earlier than the one it sleeps until."""
        deadline = self.evaluator.next_deadline()
        if deadline is not None and (self._sleeping_until is None or deadline < self._sleeping_until):
            self._wake.set()

    # --- actions ----------------------------------------------------------------------------------
    def _spawn(self, firing: Firing) -> None:
        task = asyncio.create_task(self._act(firing), name=f"automation-{firing.automation}")
        self._actions.add(task)
        task.add_done_callback(self._actions.discard)

    async def _act(self, firing: Firing) -> None:
        automation = self.automations.get(firing.automation)
        if automation is None:
            return
        if firing.kind == "expired":
            trigger = automation.trigger
            actions = list(trigger.on_expire) if isinstance(trigger, CompoundTrigger | SequenceTrigger) else []
        else:
            actions = list(automation.actions)
        context = dict(firing.template_context())
        context["automation"] = {"name": automation.name, "description": automation.description}
        caused_by = {
            "automation": automation.name, "firing_id": firing.id, "kind": firing.kind,
            "event_id": firing.event.get("id"), "event": firing.event.get("event"),
            "events": {child: e.get("id") for child, e in firing.events.items() if e},
        }
        results = await self.runner.run_all(automation.name, firing.id, actions, context, caused_by=caused_by)
        events = [
            Event(
                id=firing_uuid(firing.id, r.index, "result"),
                event="automation.action.executed" if r.ok else "automation.action.failed",
                resource=_resource(automation.name),
                related=[{"id": f"automation-firing/{firing.id}", "role": "firing"}],
                payload={"firing_id": firing.id, **r.as_dict()},
            )
            for r in results
        ]
        failed = sum(1 for r in results if not r.ok)
        for r in results:
            if not r.ok:
                log.warning("automation action failed", automation=automation.name, error=r.error)
        status = "failed" if failed else "done"
        await asyncio.sleep(FINISH_DELAY)
        # Counted with the status change: once per firing, even if it is resumed after a crash.
        counters = self._take_counters()
        counters[automation.name]["fired" if firing.kind == "fired" else "expired"] += 1
        counters[automation.name]["failed"] += failed

        async def work(session: Any) -> None:
            await store.finish_firing(
                session, firing.id, status=status, results=[r.as_dict() for r in results], events=events
            )
            await store.bump_counters(session, counters)

        await self.service.write(work)

def _has_writes(outcome: Outcome) -> bool:
    return bool(outcome.state or outcome.firings)


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def _firing_from_row(row: Any) -> Firing | None:
    context = row.context or {}
    try:
        return Firing(
            automation=row.automation, id=row.id, kind=row.kind, at=row.at,
            event=context.get("event") or {}, events=context.get("events") or {},
            bucket=row.bucket or "", correlation=row.correlation,
            awaited=tuple((context.get("firing") or {}).get("awaited") or ()),
            proactive=bool((context.get("firing") or {}).get("proactive", False)),
        )
    except TypeError:
        log.error("cannot resume a stored firing", firing_id=row.id)
        return None
