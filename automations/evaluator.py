"""The trigger evaluator: events and the passing of time in, firings and state rows out.

Pure and synchronous: no I/O, no clock of its own (every call takes `now`), no background task.
The service feeds it each event (`evaluate`), sleeps until `next_deadline()` and then calls
`advance`, persists `Outcome.state` and runs the actions of `Outcome.firings`.

    ev = Evaluator(now=now, state=rows_from_the_database)
    ev.upsert(automation, now)                    # for each automation
    out = ev.evaluate(event, now)                 # out.firings, out.state (to persist) ...
    out = ev.advance(now)                         # windows closed, proactive deadlines passed

Guarantees it keeps:

- Durable: every change to trigger state is in `Outcome.state`; an Evaluator rebuilt from the
  persisted rows continues where the old one stopped (a half-done join completes once, an armed
  timer fires on time).
- At-least-once delivery is harmless: an event id an automation already used is ignored (for
  `dedup_for`, or the trigger's window if longer), and a firing's id is derived from its events,
  so even past that horizon a second firing carries the same idempotency key.
- Cheap when nothing matches: an event costs the index's dict lookups; automations that cannot
  match it are never looked at.

Semantics of each trigger kind are in `automations.windows`; matching in `automations.triggers`.
"""

from __future__ import annotations

import datetime as dt
import heapq
from collections.abc import Callable, Mapping
from typing import Any

from automations.errors import AutomationNotFound, TemplateError
from automations.firing import Firing, Outcome, StateKey, StateRow
from automations.index import TriggerIndex
from automations.models import Automation
from automations.windows import BUCKET, COOLDOWN, JOIN, Loaded, Tx, arm_proactive, on_event, on_time

__all__ = ["Evaluator", "Firing", "Outcome"]

#: How long an automation remembers the id of an event it used, to ignore a redelivery.
DEFAULT_DEDUP_FOR = dt.timedelta(minutes=15)


def _aware(now: dt.datetime) -> dt.datetime:
    if now.tzinfo is None:
        raise ValueError(f"`now` must be timezone-aware (got {now.isoformat()})")
    return now


def _check_event(event: Any) -> None:
    if (
        type(event) is dict and type(event.get("event")) is str and type(event.get("id")) is str
        and event["event"] and event["id"] and type(event.get("resource", {})) is dict
    ):
        return  # the usual shape, decided without the slower Mapping checks below
    if not isinstance(event, Mapping):
        raise ValueError(f"an event must be a JSON object, not {type(event).__name__}")
    if not isinstance(event.get("event"), str) or not event["event"]:
        raise ValueError("the event has no `event` name")
    if not isinstance(event.get("id"), str) or not event["id"]:
        raise ValueError(f"event {event['event']!r} has no `id`")
    if not isinstance(event.get("resource", {}), Mapping):
        raise ValueError(f"event {event['id']}: `resource` must be an object")


class Evaluator:
    """Trigger state of every loaded automation, with an index to find the ones an event concerns."""

    def __init__(
        self,
        *,
        now: dt.datetime,
        state: Mapping[StateKey, StateRow] | None = None,
        dedup_for: dt.timedelta = DEFAULT_DEDUP_FOR,
    ) -> None:
        """`state`: rows persisted from earlier Outcomes. They stay inert until their
        automation is `upsert`ed (rows of another definition of it are then deleted)."""
        self._now = _aware(now)
        self._dedup_for = dedup_for
        self._loaded: dict[str, Loaded] = {}
        self._rows: dict[str, dict[str, StateRow]] = {}
        self._index = TriggerIndex()
        # Timers: the heap may hold stale entries; `_wake` holds the live time of each row.
        self._wake: dict[StateKey, dt.datetime] = {}
        self._heap: list[tuple[dt.datetime, str, str]] = []
        for (name, key), row in (state or {}).items():
            if row is not None:
                self._rows.setdefault(name, {})[key] = dict(row)
        #: which automations this evaluator may act on (their rule partition is this server's:
        #: `automations.service`); the others are loaded, but neither evaluated nor timed here
        self.owns: Callable[[str], bool] = lambda name: True

    # --- the automations ------------------------------------------------------------------------
    @property
    def names(self) -> list[str]:
        return list(self._loaded)

    def get(self, name: str) -> Automation:
        """The automation as loaded (with its current enabled flag)."""
        return self._loaded_or_raise(name).automation

    def _loaded_or_raise(self, name: str) -> Loaded:
        loaded = self._loaded.get(name)
        if loaded is None:
            raise AutomationNotFound(f"automation {name!r} is not loaded")
        return loaded

    def upsert(self, automation: Automation, now: dt.datetime) -> Outcome:
        """Add or replace an automation. A changed trigger or cooldown resets its state (the
        old rows come back as deletions); changed actions keep it. A proactive trigger without
        `after` or `for_each` is armed at `now` unless a restored timer is already running."""
        now = _aware(now)
        out = Outcome()
        new = Loaded.build(automation)
        old = self._loaded.get(automation.name)
        if old is not None and old.fingerprint == new.fingerprint:
            new.enabled = old.enabled
            self._loaded[automation.name] = new
            if automation.enabled != old.enabled:
                out.merge(self.set_enabled(automation.name, automation.enabled, now))
            return out
        rows = self._rows.setdefault(automation.name, {})
        tx = self._tx(new, now)
        for key, row in rows.items():
            if row.get("def") != new.fingerprint or (not new.enabled and self._is_timer(new, key)):
                tx.put(key, None)
        self._loaded[automation.name] = new
        self._index.add(automation.name, new.children.items())
        for key, row in rows.items():
            if key not in tx.writes and row.get("wake"):
                self._set_wake(automation.name, key, dt.datetime.fromisoformat(row["wake"]))
        if new.enabled and new.armed_at_load() and tx.get(BUCKET) is None:
            arm_proactive(tx, "", None)
        self._commit(tx, out)
        return out

    def remove(self, name: str) -> Outcome:
        """Forget an automation and delete its state (unknown names: nothing to do)."""
        out = Outcome()
        self._loaded.pop(name, None)
        self._index.remove(name)
        for key in self._rows.pop(name, {}):
            out.state[(name, key)] = None
            self._wake.pop((name, key), None)
        return out

    def restore(
        self, automations: list[Automation], state: Mapping[StateKey, StateRow], now: dt.datetime
    ) -> Outcome:
        """Load these automations again with their state as stored (this server takes their
        partition over: another server evaluated them meanwhile); the rest is untouched."""
        names = {a.name for a in automations}
        for name in names:
            self._loaded.pop(name, None)
            self._index.remove(name)
            self._rows.pop(name, None)
        for wake in [w for w in self._wake if w[0] in names]:
            del self._wake[wake]
        for (owner, key), row in state.items():
            if owner in names and row is not None:
                self._rows.setdefault(owner, {})[key] = dict(row)
        out = Outcome()
        for automation in automations:
            out.state.update(self.upsert(automation, now).state)
        return out

    def unloaded(self) -> list[str]:
        """Names with restored state but no loaded definition (deleted while the service was
        down); `remove` each to delete its rows."""
        return sorted(n for n, rows in self._rows.items() if rows and n not in self._loaded)

    def set_enabled(self, name: str, enabled: bool, now: dt.datetime) -> Outcome:
        """Pause or resume. A paused automation neither counts nor fires: its proactive timers
        are dropped, its open windows and joins stay and lapse silently. Resuming re-arms a
        proactive trigger without `after`/`for_each` from `now`; with `after`, the next arming
        event arms it."""
        now = _aware(now)
        loaded = self._loaded_or_raise(name)
        out = Outcome()
        if loaded.enabled == enabled:
            return out
        loaded.enabled = enabled
        loaded.automation = loaded.automation.model_copy(update={"enabled": enabled})
        tx = self._tx(loaded, now)
        if not enabled:
            for key in self._rows.get(name, {}):
                if self._is_timer(loaded, key):
                    tx.put(key, None)
        elif loaded.armed_at_load():
            arm_proactive(tx, "", None)
        self._commit(tx, out)
        return out

    @staticmethod
    def _is_timer(loaded: Loaded, key: str) -> bool:
        return loaded.proactive() and key.startswith(BUCKET)

    # --- events and time ------------------------------------------------------------------------
    def candidates(self, event: Mapping[str, Any]) -> list[str]:
        """The automations the index offers for the event (a superset of those it matches)."""
        return list(self._index.candidates(event))

    def evaluate(
        self, event: dict[str, Any], now: dt.datetime, only: Callable[[str], bool] | None = None
    ) -> Outcome:
        """Count the event for every automation it matches; fire those it completes.

        Time first passes to `now` (as `advance` does, and in the same Outcome), so a deadline
        or a window that closed before the event was evaluated is not mistaken for an open one.

        Raises ValueError for an event that is not an event (no id, no name): the service
        dead-letters it. A `correlate` template failing for one automation is reported in
        `Outcome.errors`; the others are still evaluated."""
        _check_event(event)
        now = _aware(now)
        out = self.advance(now) if self._heap and self._heap[0][0] <= now else Outcome()
        for name, children in self._index.candidates(event).items():
            loaded = self._loaded.get(name)
            if loaded is None or not loaded.enabled or not self.owns(name):
                continue
            if only is not None and not only(name):  # (another partition's queue brings it)
                continue
            tx = self._tx(loaded, now)
            try:
                on_event(tx, event, children)
            except TemplateError as exc:
                out.errors.append((name, str(exc)))
                continue
            if tx.counted:
                out.matched[name] = tx.counted
            self._commit(tx, out)
        return out

    def advance(self, now: dt.datetime) -> Outcome:
        """Let time pass to `now`: counts drop events that left their window, joins whose
        window closed expire (a partial join gives an `expired` firing), proactive deadlines
        that passed fire, cooldowns and dedup memories end."""
        now = _aware(now)
        out = Outcome()
        while self._heap and self._heap[0][0] <= now:
            when, name, key = heapq.heappop(self._heap)
            if self._wake.get((name, key)) != when:
                continue
            del self._wake[(name, key)]
            loaded = self._loaded.get(name)
            row = self._rows.get(name, {}).get(key)
            if loaded is None or row is None or not self.owns(name):
                continue  # (another server's: restored with its state if this one takes it over)
            tx = self._tx(loaded, now)
            on_time(tx, key, row)
            if key not in tx.writes and row.get("wake"):
                # Nothing was due after all (a wake time older than the row's own): keep its timer.
                wake = dt.datetime.fromisoformat(row["wake"])
                if wake > now:
                    self._set_wake(name, key, wake)
            self._commit(tx, out)
        return out

    def next_deadline(self) -> dt.datetime | None:
        """The earliest time `advance` would change something (None: nothing is pending)."""
        while self._heap:
            when, name, key = self._heap[0]
            if self._wake.get((name, key)) == when and name in self._loaded and self.owns(name):
                return when
            heapq.heappop(self._heap)
        return None

    # --- looking inside -------------------------------------------------------------------------
    def pending(self, name: str) -> list[dict[str, Any]]:
        """The open state of an automation, for `automation inspect`: joins, counts, armed
        triggers and timers, cooldowns."""
        loaded = self._loaded_or_raise(name)
        views = (pending_view(loaded, k, r) for k, r in sorted(self._rows.get(name, {}).items()))
        return [v for v in views if v is not None]

    def explain(self, name: str, event: dict[str, Any], now: dt.datetime) -> list[str]:
        """Why the event would or would not count for / fire the automation now, as sentences.
        Changes nothing."""
        loaded = self._loaded_or_raise(name)
        _check_event(event)
        notes: list[str] = []
        # All children, not only those the index offers, so every mismatch is told.
        tx = self._tx(loaded, _aware(now), notes)
        try:
            on_event(tx, event, set(loaded.children))
        except TemplateError as exc:
            notes.append(f"the correlate template failed, so the event is not counted: {exc}")
        if not notes:
            notes.append("the event matches but changes nothing")
        if not loaded.enabled:
            notes = [f"automation {name!r} is paused: it neither counts events nor fires",
                     *(f"if it were enabled: {n}" for n in notes)]
        return notes

    # --- plumbing -------------------------------------------------------------------------------
    def _tx(self, loaded: Loaded, now: dt.datetime, notes: list[str] | None = None) -> Tx:
        return Tx(loaded, self._rows.setdefault(loaded.name, {}), now, self._dedup_for, notes)

    def _commit(self, tx: Tx, out: Outcome) -> None:
        name = tx.loaded.name
        rows = self._rows.setdefault(name, {})
        for key, row in tx.writes.items():
            out.state[(name, key)] = row
            if row is None:
                rows.pop(key, None)
                self._wake.pop((name, key), None)
                continue
            rows[key] = row
            wake = tx.wakes.get(key)
            if wake is None:
                self._wake.pop((name, key), None)
            else:
                self._set_wake(name, key, wake)
        out.firings += tx.firings

    def _set_wake(self, name: str, key: str, when: dt.datetime) -> None:
        if self._wake.get((name, key)) != when:
            self._wake[(name, key)] = when
            heapq.heappush(self._heap, (when, name, key))


def pending_view(loaded: Loaded, key: str, row: StateRow) -> dict[str, Any] | None:
    """One row as `automation inspect` shows it (None for bookkeeping rows)."""
    if key.startswith(JOIN):
        order = list(loaded.children)
        if row["status"] != "open":
            return {"kind": "join", "status": row["status"], "bucket": "", "correlation": row["correlation"],
                    "fired_at": row.get("fired_at"), "expires_at": row["expires"]}
        arrived = row["events"]
        return {
            "kind": "join", "status": "open", "bucket": "", "correlation": row["correlation"],
            "arrived": {c: {"id": e.get("id"), "occurred": e.get("occurred")}
                        for c in order if (e := arrived.get(c)) is not None},
            "awaited": [c for c in order if c not in arrived], "expires_at": row["expires"],
        }
    if key.startswith(COOLDOWN):
        return {"kind": "cooldown", "bucket": row["bucket"], "until": row["until"]}
    if not key.startswith(BUCKET) or loaded.join is not None:
        return None
    model = loaded.simple.trigger
    if row.get("deadline"):
        return {"kind": "proactive", "bucket": row["bucket"], "deadline": row["deadline"],
                "armed_by": row.get("armed_by"), "count": len(row.get("counted", [])), "of": model.threshold}
    counted = row.get("counted", [])
    view: dict[str, Any] = {"kind": "threshold", "bucket": row["bucket"], "count": len(counted),
                            "of": model.threshold,
                            "window_ends": (dt.datetime.fromisoformat(counted[0][1]) + model.within).isoformat() if counted else None}
    if loaded.simple.after:
        view.update(kind="armed", armed_by=row.get("armed_by"), armed_until=row.get("armed_until"))
    return view
