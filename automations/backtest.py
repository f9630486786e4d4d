"""`flowrelay automation test`: which automations would fire on a stream of events, when, and
with which rendered action fields — without side effects.

Each event is evaluated at its own `occurred` time (windows and proactive timers advance between
events as they would have live), on a fresh evaluator: nothing is stored, nothing is launched.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from typing import Any

from automations.errors import TemplateError
from automations.evaluator import Evaluator, Firing
from automations.models import Automation, CompoundTrigger, SequenceTrigger
from automations.templates import render
from engine.schemas import Event

__all__ = ["backtest"]


def _actions(automation: Automation, firing: Firing) -> list[dict[str, Any]]:
    trigger = automation.trigger
    if firing.kind == "expired":
        actions = list(trigger.on_expire) if isinstance(trigger, CompoundTrigger | SequenceTrigger) else []
    else:
        actions = list(automation.actions)
    context = dict(firing.template_context())
    context["automation"] = {"name": automation.name, "description": automation.description}
    out = []
    for index, action in enumerate(actions):
        fields = action.model_dump(mode="json", exclude={"type"}, exclude_none=True)
        try:
            rendered = render(fields, context, where=f"automation {automation.name!r} action {index} ({action.type})")
            out.append({"type": action.type, **rendered})
        except TemplateError as exc:
            out.append({"type": action.type, "error": str(exc)})
    return out


def backtest(
    automations: list[Automation],
    events: Iterable[Event],
    *,
    until: dt.datetime | None = None,
) -> list[dict[str, Any]]:
    """Firings (in time order) that `automations` would make on `events`."""
    ordered = sorted(events, key=lambda e: e.occurred)
    start = ordered[0].occurred if ordered else (until or dt.datetime.now(dt.UTC))
    evaluator = Evaluator(now=start)
    by_name = {a.name: a for a in automations}
    for automation in automations:
        evaluator.upsert(automation, start)
    firings: list[Firing] = []
    errors: list[dict[str, Any]] = []
    for event in ordered:
        firings += evaluator.advance(event.occurred).firings
        outcome = evaluator.evaluate(event.model_dump(mode="json"), event.occurred)
        firings += outcome.firings
        errors += [{"automation": n, "event_id": str(event.id), "error": m} for n, m in outcome.errors]
    end = until or (ordered[-1].occurred if ordered else start)
    firings += evaluator.advance(end).firings
    out: list[dict[str, Any]] = []
    for firing in firings:
        automation = by_name[firing.automation]
        out.append({
            "automation": firing.automation,
            "kind": firing.kind,
            "at": firing.at.isoformat(),
            "firing_id": firing.id,
            "bucket": firing.bucket,
            "correlation": firing.correlation,
            "events": {child: e.get("id") for child, e in firing.events.items() if e},
            "awaited": list(firing.awaited),
            "actions": _actions(automation, firing),
        })
    out += [{"kind": "error", **e} for e in errors]
    return out
