"""What the evaluator hands back: firings and the state to persist.

A `Firing` is one decision "run this automation's actions now" (kind `fired`), or "this join's
window closed with children missing" (kind `expired`, for `automation.join.expired` and the
`on_expire` actions). Its `id` is a digest of the automation and of what caused it, so the same
events always give the same id: it is the idempotency key of the run the firing launches, and a
redelivered event or a restart can never launch a second run.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = ["Firing", "Outcome", "StateKey", "StateRow", "firing_id"]

#: (automation name, state key) → JSON-able row; None in `Outcome.state` deletes the row.
StateKey = tuple[str, str]
StateRow = dict[str, Any]


def firing_id(automation: str, *parts: Any) -> str:
    """A hex digest of the automation name and the parts (event ids, bucket, correlation ...)."""
    raw = json.dumps([automation, *parts], separators=(",", ":"), default=str)
    return hashlib.blake2b(raw.encode(), digest_size=16).hexdigest()


@dataclass(frozen=True)
class Firing:
    """One firing of an automation (or one expired join)."""

    automation: str
    #: Deterministic: automation + the triggering events' ids (+ bucket / correlation; for a
    #: proactive trigger + the arming event's id or the deadline).
    id: str
    kind: Literal["fired", "expired"]
    #: The `now` of the evaluation that produced it.
    at: dt.datetime
    #: The event that completed the firing; expired: the last event that arrived; proactive:
    #: the arming event, or {} when it was armed at load.
    event: dict[str, Any]
    #: child name → its event (compound/sequence); {"event": event} for simple triggers.
    events: dict[str, dict[str, Any]]
    #: The `for_each` bucket ("" without for_each).
    bucket: str = ""
    #: The rendered `correlate` key of a compound/sequence trigger (None without `correlate`).
    correlation: str | None = None
    #: expired: the children that never arrived, in trigger order.
    awaited: tuple[str, ...] = ()
    proactive: bool = False

    def template_context(self) -> dict[str, Any]:
        """What action templates see (the service adds `automation`)."""
        return {
            "event": self.event,
            "events": self.events,
            "correlation": self.correlation,
            "firing": {
                "id": self.id,
                "kind": self.kind,
                "at": self.at.isoformat(),
                "bucket": self.bucket,
                "correlation": self.correlation,
                "awaited": list(self.awaited),
                "proactive": self.proactive,
            },
        }


@dataclass
class Outcome:
    """The result of one evaluator call."""

    firings: list[Firing] = field(default_factory=list)
    #: Rows to persist (None: delete the row). Restoring them through `Evaluator(state=...)`
    #: brings back every open window, count and timer.
    state: dict[StateKey, StateRow | None] = field(default_factory=dict)
    #: automation → events it counted in this call.
    matched: dict[str, int] = field(default_factory=dict)
    #: (automation, message): that automation could not use the event (e.g. its `correlate`
    #: template failed); the other automations were still evaluated.
    errors: list[tuple[str, str]] = field(default_factory=list)

    def merge(self, other: Outcome) -> Outcome:
        """`other` folded into this one (later state wins); returns self."""
        self.firings += other.firings
        self.state.update(other.state)
        for name, n in other.matched.items():
            self.matched[name] = self.matched.get(name, 0) + n
        self.errors += other.errors
        return self
