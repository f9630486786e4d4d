"""The rule engine's management commands (`flowrelay automation ...` over RPC, and the Python
API): validate, apply, read, pause/resume, delete, explain, replay — and how replicas hear of them.

Several servers may run the rule engine against one database (PostgreSQL). Its queue is a
single-active-consumer queue, so exactly one of them evaluates events at a time (windows and
joins are never split between two in-memory evaluators); the others stand by. A change made
through any server is announced as an event (`automation.updated|paused|resumed|deleted`, with
the announcing instance in `payload.origin`); every other instance reloads those automations from
the database. A standby that becomes active reloads all definitions and trigger state first.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pydantic
import structlog
from sqlalchemy import select

from automations import store
from automations.errors import AutomationFileError, AutomationNotFound
from automations.evaluator import Evaluator, Firing, Outcome
from automations.loader import parse_documents
from automations.models import Automation
from engine.broker import Broker, IncomingMessage
from engine.broker.topology import Names, QueueSpec
from engine.db import repository as repo
from engine.db.models import EventRow
from engine.errors import ObjectNotFound
from engine.schemas import Event

if TYPE_CHECKING:
    from engine.service import EngineService

log = structlog.get_logger("flowrelay.automations")

__all__ = ["ANNOUNCEMENTS", "Management"]

#: Events announcing a change of automations (each instance reloads the named ones).
ANNOUNCEMENTS = ("automation.updated", "automation.paused", "automation.resumed", "automation.deleted")


def _resource(name: str) -> dict[str, Any]:
    return {"id": f"automation/{name}", "name": name}


def _has_writes(outcome: Outcome) -> bool:
    return bool(outcome.state or outcome.firings)


class Management:
    """The management half of `AutomationsService` (one level of inheritance: the service's
    state is declared here and set up by the service)."""

    service: EngineService
    broker: Broker
    names: Names
    clock: Callable[[], dt.datetime]
    automations: dict[str, Automation]
    evaluator: Evaluator
    instance: str
    _lock: asyncio.Lock
    _counters: dict[str, dict[str, int]]
    _announcements: Any

    # hooks the service provides
    async def _sync_bindings(self) -> None:
        raise NotImplementedError

    def _reschedule(self) -> None:
        raise NotImplementedError

    def _evaluator(self, now: dt.datetime, state: Any) -> Evaluator:
        raise NotImplementedError

    async def _persist(self, outcome: Outcome) -> list[Firing]:
        raise NotImplementedError

    def _spawn(self, firing: Firing) -> None:
        raise NotImplementedError

    # --- replicas -------------------------------------------------------------------------------
    async def _announce(self, name: str, automations: list[str]) -> None:
        await self.service.emit_event(Event(
            event=name, resource=_resource(automations[0]) if len(automations) == 1 else {"id": "automations"},
            payload={"automations": automations, "origin": self.instance},
        ))

    async def _listen_for_announcements(self) -> None:
        queue = await self.broker.declare_queue(QueueSpec.temporary(prefix=f"{self.names.prefix}.automations"))
        for key in ANNOUNCEMENTS:
            await self.broker.bind(queue, self.names.events, key)
        self._announcements = await self.broker.consume(queue, self._on_announcement, prefetch=16)

    async def _on_announcement(self, message: IncomingMessage) -> None:
        await message.ack()
        try:
            event = Event.model_validate_json(message.body)
        except (pydantic.ValidationError, ValueError):
            return
        if event.payload.get("origin") == self.instance:
            return
        names = [str(n) for n in event.payload.get("automations") or []]
        if names:
            await self.refresh(names)

    async def refresh(self, names: list[str]) -> None:
        """Reload automations `names` from the database (changed through another server)."""
        async with self._lock:
            async with self.service.read_session() as session:
                rows = {row.name: row for row in await store.load_automations(session) if row.name in names}
            now = self.clock()
            for name in names:
                row = rows.get(name)
                if row is None:
                    self.automations.pop(name, None)
                    if name in self.evaluator.names:
                        self.evaluator.remove(name)
                    continue
                try:
                    automation = Automation.model_validate(row.definition)
                except pydantic.ValidationError:
                    log.error("stored automation no longer validates; skipped", automation=name)
                    continue
                automation = automation.model_copy(update={"enabled": row.enabled})
                self.automations[name] = automation
                self.evaluator.upsert(automation, now)
                self.evaluator.set_enabled(name, row.enabled, now)
        await self._sync_bindings()
        self._reschedule()
        log.info("automations reloaded after a change made elsewhere", automations=names)

    async def validate_automations(self, documents: list[dict[str, str]]) -> dict[str, Any]:
        """Validate YAML documents ([{"source", "text"}]) against the live deployments."""
        try:
            loaded = await self._parse(documents)
        except AutomationFileError as exc:
            return {"ok": False, "problems": exc.problems, "automations": []}
        return {"ok": True, "problems": [], "automations": [a.name for a, _ in loaded]}

    async def apply_automations(self, documents: list[dict[str, str]]) -> list[str]:
        """Validate every document, then install all of them or none (AutomationFileError)."""
        loaded = await self._parse(documents)
        await self._install(loaded)
        return [a.name for a, _ in loaded]

    async def _parse(self, documents: list[dict[str, str]]) -> list[tuple[Automation, str]]:
        deployments = await self.service.read_deployments()
        known = {d.full_name: d.flow_name for d in deployments}
        loaded = parse_documents(
            [(doc.get("source") or "<input>", doc.get("text", "")) for doc in documents],
            known_deployments=known,
        )
        return [(item.automation, item.source) for item in loaded]

    async def _install(self, loaded: list[tuple[Automation, str]]) -> None:
        async with self._lock:
            rows = await self.service.write(lambda s: store.upsert_automations(s, loaded), events=False)
            now = self.clock()
            states: dict[tuple[str, str], dict[str, Any] | None] = {}
            for (automation, _), (_, changed) in zip(loaded, rows, strict=True):
                if changed or automation.name not in self.automations:
                    # upsert resets the trigger state itself when the trigger changed
                    self.automations[automation.name] = automation
                    states.update(self.evaluator.upsert(automation, now).state)
            if states:
                await self.service.write(lambda s: store.apply_state(s, states), events=False)
        await self._sync_bindings()
        self._reschedule()
        await self._announce("automation.updated", [a.name for a, _ in loaded])
        if len(loaded) <= 20:
            for automation, source in loaded:
                log.info("automation installed", automation=automation.name, source=source)
        else:
            log.info("automations installed", count=len(loaded),
                     sources=sorted({source.rsplit(":", 1)[0] for _, source in loaded}))

    async def read_automations(self) -> list[dict[str, Any]]:
        async with self.service.read_session() as session:
            rows = await store.load_automations(session)
        return [self._summary(row) for row in rows]

    def _summary(self, row: Any) -> dict[str, Any]:
        counters = {k: int((row.counters or {}).get(k, 0)) for k in store.COUNTERS}
        for key, n in self._counters.get(row.name, {}).items():
            counters[key] = counters.get(key, 0) + n if key != "lag_ms" else n
        return {
            "name": row.name, "enabled": row.enabled, "version": row.version, "source": row.source,
            "description": row.definition.get("description", ""), "trigger": row.definition.get("trigger"),
            "actions": row.definition.get("actions"), "cooldown": row.definition.get("cooldown"),
            "counters": counters, "updated": row.updated.isoformat(), "definition": row.definition,
        }

    async def read_automation(self, name: str) -> dict[str, Any]:
        async with self.service.read_session() as session:
            row = await store.read_automation_row(session, name)
            firings = await store.recent_firings(session, name)
        out = self._summary(row)
        out["pending"] = self.evaluator.pending(name) if name in self.automations else []
        out["firings"] = [
            {"id": f.id, "kind": f.kind, "at": f.at.isoformat(), "status": f.status,
             "bucket": f.bucket, "correlation": f.correlation, "event_ids": f.event_ids,
             "results": f.results}
            for f in firings
        ]
        return out

    async def set_automation_enabled(self, name: str, enabled: bool) -> dict[str, Any]:
        async with self._lock:
            row = await self.service.write(lambda s: store.set_enabled(s, name, enabled), events=False)
            if name in self.automations:
                self.automations[name] = self.automations[name].model_copy(update={"enabled": enabled})
                outcome = self.evaluator.set_enabled(name, enabled, self.clock())
                if outcome.state:
                    await self.service.write(lambda s: store.apply_state(s, outcome.state), events=False)
        self._reschedule()
        await self._announce("automation.resumed" if enabled else "automation.paused", [name])
        return self._summary(row)

    async def delete_automation(self, name: str) -> None:
        async with self._lock:
            await self.service.write(lambda s: store.delete_automation(s, name), events=False)
            self.automations.pop(name, None)
            self.evaluator.remove(name)
        self._reschedule()
        await self._announce("automation.deleted", [name])

    async def explain_automation(self, name: str, event_id: str) -> list[str]:
        """Why the stored event `event_id` did (or did not) count for or fire automation `name`."""
        if name not in self.automations:
            async with self.service.read_session() as session:
                await store.read_automation_row(session, name)  # raises AutomationNotFound
            raise AutomationNotFound(f"automation {name!r} is stored but its definition does not load")
        try:
            key = uuid.UUID(event_id)
        except ValueError:
            raise ObjectNotFound(f"{event_id!r} is not an event id") from None
        async with self.service.read_session() as session:
            row = await session.scalar(select(EventRow).where(EventRow.id == key))
            firings = await store.recent_firings(session, name, limit=500)
        if row is None:
            raise ObjectNotFound(f"event {event_id} not found")
        event = repo.event(row).model_dump(mode="json")
        lines = list(self.evaluator.explain(name, event, self.clock()))
        for firing in firings:
            if str(key) in (firing.event_ids or []):
                lines.append(
                    f"it took part in firing {firing.id} ({firing.kind}) at {firing.at.isoformat()}: {firing.status}"
                )
        return lines

    async def read_events_between(
        self, since: dt.datetime | None = None, until: dt.datetime | None = None, limit: int = 100_000
    ) -> list[Event]:
        async with self.service.read_session() as session:
            return await store.events_between(session, since, until, limit)

    async def replay_events(
        self, since: dt.datetime, until: dt.datetime | None = None, automation: str | None = None
    ) -> dict[str, Any]:
        """Feed the stored events of [since, until) to the rules again, for real, each at its own
        time (so windows mean what they meant). Firing ids make what already fired not fire
        again; `automation` limits the replay to one automation."""
        if automation is not None and automation not in self.automations:
            raise AutomationNotFound(f"automation {automation!r} not found")
        events = await self.read_events_between(since, until)
        fired: list[Firing] = []
        async with self._lock:
            async with self.service.read_session() as session:
                state = await store.load_state(session)
            chosen = [a for n, a in self.automations.items() if automation in (None, n)]
            replay = Evaluator(now=self.clock(), state={k: v for k, v in state.items() if automation in (None, k[0])})
            for item in chosen:
                replay.upsert(item, self.clock())
            for event in events:
                outcome = replay.advance(event.occurred)
                if _has_writes(outcome):
                    fired += await self._persist(outcome)
                outcome = replay.evaluate(event.model_dump(mode="json"), event.occurred)
                if _has_writes(outcome):
                    fired += await self._persist(outcome)
            await self._reload()
        self._reschedule()
        for firing in fired:
            self._spawn(firing)
        return {
            "events": len(events),
            "fired": [{"automation": f.automation, "firing_id": f.id, "kind": f.kind} for f in fired],
        }

    async def _reload(self) -> None:
        """Rebuild definitions and the evaluator from the database (after a replay changed the
        state, or when this standby instance becomes the active consumer). Hold the lock."""
        async with self.service.read_session() as session:
            rows = await store.load_automations(session)
            state = await store.load_state(session)
        now = self.clock()
        evaluator = self._evaluator(now, state)
        automations: dict[str, Automation] = {}
        for row in rows:
            try:
                automation = Automation.model_validate(row.definition)
            except pydantic.ValidationError:
                log.error("stored automation no longer validates; skipped", automation=row.name)
                continue
            automations[row.name] = automation.model_copy(update={"enabled": row.enabled})
            evaluator.upsert(automations[row.name], now)
        self.automations = automations
        self.evaluator = evaluator
