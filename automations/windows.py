"""The rules of trigger state: counts in windows, arming, proactive timers, joins, cooldown.

These functions decide, for one automation, what an event or the passing of time does to its
state rows. They read rows through a `Tx` and write new rows into it (rows are never changed in
place), so a failure leaves the automation's state as it was, and `explain` can run the very
same code and throw the writes away.

Time is the evaluator's `now`, not the events' `occurred`: windows open and close on the clock
the service injects (a replay or a backtest passes each event's own time as `now`). That keeps
one clock for windows and timers, and a backlog processed after an outage still joins.

Joins (compound, sequence): a child "arrives" with its first matching event for a correlation
key; the children's own `after`, `threshold`, `within` and `for_each` are not used (the join's
`within` is the window, `correlate` the key).

State rows, by key (all JSON-able, datetimes as ISO strings; every row has `def`, the
fingerprint of the trigger it belongs to, and `wake`, when `advance` must look at it):

    b:<bucket>       simple trigger bucket: `counted` [[event id, at]...], and `armed_by`,
                     `armed_until` (reactive with `after`) or `deadline`, `arming_event`
                     (proactive)
    j:<correlation>  join: `status` open|fired|suppressed, `opened`, `expires`, `events`
                     {child: event}, `last` (the child that arrived last)
    c:<bucket>       cooldown `until`
    s:<event id>     an event this automation already used (dedup of redeliveries)
"""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass, field
from typing import Any

from automations.firing import Firing, StateRow, firing_id
from automations.models import Automation, CompoundTrigger, SequenceTrigger
from automations.templates import render_str
from automations.triggers import CompiledTrigger, text_of

__all__ = ["BUCKET", "COOLDOWN", "JOIN", "SEEN", "Loaded", "Tx", "arm_proactive", "on_event", "on_time"]

BUCKET, JOIN, COOLDOWN, SEEN = "b:", "j:", "c:", "s:"


def _iso(t: dt.datetime) -> str:
    return t.isoformat()


def _t(value: str) -> dt.datetime:
    return dt.datetime.fromisoformat(value)


def _in(bucket: str) -> str:
    return f" in bucket {bucket!r}" if bucket else ""


@dataclass
class Loaded:
    """An automation as the evaluator holds it: compiled children and its enabled flag."""

    automation: Automation
    enabled: bool
    fingerprint: str
    children: dict[str, CompiledTrigger]
    join: CompoundTrigger | SequenceTrigger | None

    @classmethod
    def build(cls, automation: Automation) -> Loaded:
        # Only the trigger and cooldown decide what the state means: editing actions or the
        # description keeps open windows.
        raw = automation.model_dump_json(include={"trigger", "cooldown"})
        trigger = automation.trigger
        return cls(
            automation=automation,
            enabled=automation.enabled,
            fingerprint=hashlib.blake2b(raw.encode(), digest_size=8).hexdigest(),
            children={n: CompiledTrigger(t) for n, t in automation.simple_triggers()},
            join=trigger if isinstance(trigger, CompoundTrigger | SequenceTrigger) else None,
        )

    @property
    def name(self) -> str:
        return self.automation.name

    @property
    def simple(self) -> CompiledTrigger:
        return self.children["event"]

    def proactive(self) -> bool:
        return self.join is None and self.simple.trigger.posture == "proactive"

    def armed_at_load(self) -> bool:
        """A proactive trigger without `after` or `for_each`: one timer, armed at load/resume."""
        return self.proactive() and not self.simple.after and not self.simple.for_each

    def window(self) -> dt.timedelta:
        return self.join.within if self.join is not None else self.simple.trigger.within


@dataclass
class Tx:
    """One automation's rows as seen during one call, and the writes the call makes."""

    loaded: Loaded
    rows: dict[str, StateRow]
    now: dt.datetime
    dedup_for: dt.timedelta
    notes: list[str] | None = None
    writes: dict[str, StateRow | None] = field(default_factory=dict)
    wakes: dict[str, dt.datetime | None] = field(default_factory=dict)
    firings: list[Firing] = field(default_factory=list)
    counted: int = 0

    def get(self, key: str) -> StateRow | None:
        if key in self.writes:
            return self.writes[key]
        return self.rows.get(key)

    def put(self, key: str, row: StateRow | None, wake: dt.datetime | None = None) -> None:
        if row is None and key not in self.rows:
            self.writes.pop(key, None)  # nothing persisted to delete
            self.wakes.pop(key, None)
            return
        if row is not None:
            row = {**row, "def": self.loaded.fingerprint, "wake": _iso(wake) if wake else None}
        self.writes[key] = row
        self.wakes[key] = wake if row is not None else None

    def note(self, sentence: str) -> None:
        if self.notes is not None:
            self.notes.append(sentence)

    def cooldown_until(self, bucket: str) -> dt.datetime | None:
        row = self.get(COOLDOWN + bucket)
        if row is None:
            return None
        until = _t(row["until"])
        return until if until > self.now else None

    def fire(self, bucket: str, firing: Firing) -> None:
        self.firings.append(firing)
        self.note(f"fires{_in(bucket)} (firing {firing.id})")
        cooldown = self.loaded.automation.cooldown
        if cooldown:
            until = self.now + cooldown
            self.put(COOLDOWN + bucket, {"bucket": bucket, "until": _iso(until)}, until)


# --- events ---------------------------------------------------------------------------------------
def on_event(tx: Tx, event: dict[str, Any], children: set[str]) -> None:
    """What `event` does to the automation's state (`children`: the ones the index offered).

    Raises TemplateError when the join's `correlate` cannot be rendered for the event."""
    loaded = tx.loaded
    event_id = str(event["id"])
    if loaded.join is None:
        trigger = loaded.simple
        arms, expects = trigger.arms(event), trigger.expects(event)
        if not arms and not expects:
            reason = trigger.why_not(event)
            if trigger.after:
                reason = f"{reason}; and not an arming event: {trigger.why_not_after(event)}"
            tx.note(f"does not match: {reason}")
            return
        if _duplicate(tx, event_id):
            return
        used = _simple(tx, event, arms=arms, expects=expects)
    else:
        matched = [c for c in loaded.children if c in children and loaded.children[c].expects(event)]
        if not matched:
            for name, child in loaded.children.items():
                tx.note(f"child {name!r} does not match: {child.why_not(event)}")
            return
        if _duplicate(tx, event_id):
            return
        used = _join(tx, event, matched)
    if used:
        until = tx.now + max(tx.dedup_for, loaded.window())
        tx.put(SEEN + event_id, {"until": _iso(until)}, until)


def _duplicate(tx: Tx, event_id: str) -> bool:
    row = tx.get(SEEN + event_id)
    if row is not None and _t(row["until"]) > tx.now:
        tx.note(f"event {event_id} was already counted (a redelivery): nothing changes")
        return True
    return False


def _simple(tx: Tx, event: dict[str, Any], *, arms: bool, expects: bool) -> bool:
    """An event that is both an arming and an expected one arms an unarmed bucket and counts in
    an armed one (`after: [Completed]`, `expect: [Completed]`: "a Completed, then another")."""
    trigger = tx.loaded.simple
    model = trigger.trigger
    bucket = trigger.bucket(event)
    key = BUCKET + bucket
    row = tx.get(key)
    now, event_id = tx.now, str(event["id"])
    waiting = f"waiting for one of {trigger.after.describe()}"

    if model.posture == "proactive":
        if arms and row is None:
            arm_proactive(tx, bucket, event)
            return True
        if not expects:
            assert row is not None
            tx.note(f"already armed{_in(bucket)} by {row.get('armed_by')}; deadline {row['deadline']}")
            return False
        if row is None and trigger.after:
            tx.note(f"not armed{_in(bucket)}: {waiting}")
            return False
        tx.counted += 1
        if row is None:  # without `after`: a bucket's first event starts its timer
            arm_proactive(tx, bucket, None)
            return True
        counted = [*row.get("counted", []), [event_id, _iso(now)]]
        if len(counted) >= model.threshold:
            tx.note(f"arrived in time{_in(bucket)} (deadline {row['deadline']}): the timer is disarmed")
            if trigger.after:
                tx.put(key, None)
            else:
                arm_proactive(tx, bucket, None)
        else:
            tx.note(f"counted {len(counted)} of {model.threshold}{_in(bucket)} before {row['deadline']}")
            tx.put(key, {**row, "counted": counted}, _t(row["deadline"]))
        return True

    # reactive
    armed = row is not None and row.get("armed_by")
    if arms and not armed:
        until = now + model.within if model.within else None
        tx.note(f"arms the trigger{_in(bucket)}" + (f" until {_iso(until)}" if until else ""))
        tx.put(key, {"bucket": bucket, "armed_by": event_id, "armed_until": _iso(until) if until else None,
                     "counted": []}, until)
        return True
    if not expects:
        tx.note(f"already armed{_in(bucket)} by {armed}")
        return False
    if trigger.after and not armed:
        tx.note(f"not armed{_in(bucket)}: {waiting}")
        return False
    tx.counted += 1
    cooldown = tx.cooldown_until(bucket)
    if cooldown is not None:
        tx.note(f"in cooldown{_in(bucket)} until {_iso(cooldown)}: counted as matched, does not fire")
        return True
    counted = [c for c in (row or {}).get("counted", []) if _t(c[1]) > now - model.within]
    counted.append([event_id, _iso(now)])
    if len(counted) >= model.threshold:
        tx.put(key, None)  # a firing resets the bucket (and disarms it)
        tx.fire(bucket, Firing(
            automation=tx.loaded.name, id=firing_id(tx.loaded.name, "fired", bucket, [c[0] for c in counted]),
            kind="fired", at=now, event=event, events={"event": event}, bucket=bucket,
        ))
        return True
    window_ends = _t(counted[0][1]) + model.within
    tx.note(f"counted {len(counted)} of {model.threshold} within {model.within}{_in(bucket)}; "
            f"the oldest leaves the window at {_iso(window_ends)}")
    armed_until = (row or {}).get("armed_until")
    wake = min(window_ends, _t(armed_until)) if armed_until else window_ends
    tx.put(key, {**(row or {"bucket": bucket}), "counted": counted}, wake)
    return True


def arm_proactive(tx: Tx, bucket: str, event: dict[str, Any] | None) -> None:
    """Arm (or re-arm) a proactive timer at `tx.now`: it fires `within` later unless disarmed."""
    deadline = tx.now + tx.loaded.simple.trigger.within
    expected = tx.loaded.simple.expect.describe()
    tx.note(f"arms the timer{_in(bucket)}: fires at {_iso(deadline)} unless {expected} arrives")
    tx.put(BUCKET + bucket, {
        "bucket": bucket, "armed_by": event["id"] if event else None, "armed_at": _iso(tx.now),
        "deadline": _iso(deadline), "arming_event": event or {}, "counted": [],
    }, deadline)


def _join(tx: Tx, event: dict[str, Any], matched: list[str]) -> bool:
    loaded = tx.loaded
    join = loaded.join
    assert join is not None
    correlation: str | None = None
    if join.correlate is not None:
        value = render_str(join.correlate, {"event": event}, where="trigger.correlate")
        correlation = "" if value is None else text_of(value)
    key = JOIN + (correlation or "")
    row = tx.get(key)
    shown = f"join {correlation!r}" if correlation is not None else "the join"
    if row is not None and row["status"] != "open":
        tx.note(f"{shown} already {row['status']} at {row.get('fired_at')}; it stays closed until {row['expires']}")
        return False
    arrived: dict[str, dict[str, Any]] = dict(row["events"]) if row else {}
    order = list(loaded.children)
    if isinstance(join, SequenceTrigger):
        nxt = order[len(arrived)]
        if nxt not in matched:
            if all(c in arrived for c in matched):
                tx.note(f"{', '.join(matched)} already arrived for {shown}")
            else:
                tx.note(f"{matched[0]!r} is out of order: the sequence waits for {nxt!r} first")
            return False
        new = [nxt]
        need = len(order)
    else:
        new = [c for c in matched if c not in arrived]
        if not new:
            tx.note(f"{', '.join(matched)} already arrived for {shown}")
            return False
        need = join.required_count()
    tx.counted += 1
    now = tx.now
    opened = _t(row["opened"]) if row else now
    expires = opened + join.within
    arrived.update((c, event) for c in new)
    if len(arrived) < need:
        awaited = [c for c in order if c not in arrived]
        tx.note(f"{shown}: {', '.join(c for c in order if c in arrived)} arrived, "
                f"awaiting {', '.join(awaited)} until {_iso(expires)}")
        tx.put(key, {"status": "open", "correlation": correlation, "opened": _iso(opened),
                     "expires": _iso(expires), "events": arrived, "last": new[-1]}, expires)
        return True
    cooldown = tx.cooldown_until("")
    status = "fired"
    if cooldown is not None:
        status = "suppressed"
        tx.note(f"{shown} is complete but the automation is in cooldown until {_iso(cooldown)}: does not fire")
    else:
        ids = sorted((c, str(e.get("id"))) for c, e in arrived.items())
        events = {c: arrived[c] for c in order if c in arrived}
        tx.fire("", Firing(
            automation=loaded.name, id=firing_id(loaded.name, "fired", correlation, ids), kind="fired",
            at=now, event=event, events=events, correlation=correlation,
        ))
    if correlation is None:
        # Without `correlate` the join starts afresh at once: "each time both happened".
        tx.put(key, None)
    else:
        # Remember the key until its window would have closed, so a late child cannot reopen it.
        tx.put(key, {"status": status, "correlation": correlation, "opened": _iso(opened),
                     "expires": _iso(expires), "fired_at": _iso(now)}, expires)
    return True


# --- time -----------------------------------------------------------------------------------------
def on_time(tx: Tx, key: str, row: StateRow) -> None:
    """What the passing of time (to `tx.now`) does to one row whose wake time has come."""
    now, loaded = tx.now, tx.loaded
    if key.startswith((SEEN, COOLDOWN)):
        if _t(row["until"]) <= now:
            tx.put(key, None)
        return
    if key.startswith(JOIN):
        if _t(row["expires"]) > now:
            return
        tx.put(key, None)
        if row["status"] == "open" and loaded.enabled and loaded.join is not None:
            arrived: dict[str, dict[str, Any]] = row["events"]
            order = list(loaded.children)
            ids = sorted((c, str(e.get("id"))) for c, e in arrived.items())
            tx.firings.append(Firing(
                automation=loaded.name,
                id=firing_id(loaded.name, "expired", row["correlation"], row["opened"], ids),
                kind="expired", at=now, event=arrived[row["last"]],
                events={c: arrived[c] for c in order if c in arrived}, correlation=row["correlation"],
                awaited=tuple(c for c in order if c not in arrived),
            ))
        return
    if loaded.join is not None:
        return
    bucket = row["bucket"]
    model = loaded.simple.trigger
    if row.get("deadline"):
        deadline = _t(row["deadline"])
        if deadline > now:
            return
        if not loaded.enabled:
            tx.put(key, None)
            return
        if tx.cooldown_until(bucket) is None:
            arming: dict[str, Any] = row.get("arming_event") or {}
            tx.fire(bucket, Firing(
                automation=loaded.name,
                id=firing_id(loaded.name, "proactive", bucket, row.get("armed_by") or row["deadline"]),
                kind="fired", at=now, event=arming, events={"event": arming}, bucket=bucket, proactive=True,
            ))
        if loaded.armed_at_load():
            arm_proactive(tx, bucket, None)
        else:
            tx.put(key, None)
        return
    armed_until = row.get("armed_until")
    if armed_until and _t(armed_until) <= now:
        tx.put(key, None)  # the arming lapsed before the trigger fired
        return
    counted = [c for c in row.get("counted", []) if _t(c[1]) > now - model.within]
    if not counted and not row.get("armed_by"):
        tx.put(key, None)
        return
    wakes = [_t(counted[0][1]) + model.within] if counted else []
    if armed_until:
        wakes.append(_t(armed_until))
    tx.put(key, {**row, "counted": counted}, min(wakes) if wakes else None)

