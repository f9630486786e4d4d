"""Short human descriptions of triggers and actions (CLI tables, `flowrelay graph` edge labels)."""

from __future__ import annotations

from typing import Any

from automations.models import (
    Automation,
    CompoundTrigger,
    EventTrigger,
    FlowRunStateChangeTrigger,
    SequenceTrigger,
)
from engine.durations import format_duration

__all__ = ["describe_actions", "describe_trigger", "sources_of"]


def _match_text(match: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in match.items())


def _simple(trigger: EventTrigger | FlowRunStateChangeTrigger) -> str:
    if isinstance(trigger, FlowRunStateChangeTrigger):
        what = " or ".join(trigger.expect) if trigger.expect else "any state"
    else:
        what = " or ".join(trigger.expect) if trigger.expect else "any event"
    text = f"on {what}"
    if trigger.match:
        text += f" of {_match_text(trigger.match)}"
    if trigger.threshold > 1:
        text = f"{trigger.threshold}x {text} within {format_duration(trigger.within)}"
    if trigger.posture == "proactive":
        text = f"no {what} within {format_duration(trigger.within)}"
        if trigger.match:
            text += f" of {_match_text(trigger.match)}"
    if trigger.after:
        text += f" after {' or '.join(trigger.after)}"
    if trigger.for_each:
        text += f" per {', '.join(trigger.for_each)}"
    return text


def describe_trigger(automation: Automation) -> str:
    trigger = automation.trigger
    if isinstance(trigger, CompoundTrigger | SequenceTrigger):
        names = trigger.child_names()
        if isinstance(trigger, SequenceTrigger):
            head = "sequence " + " → ".join(names)
        elif trigger.require == "all":
            head = "all of " + ", ".join(names)
        elif trigger.require == "any":
            head = "any of " + ", ".join(names)
        else:
            head = f"{trigger.require} of " + ", ".join(names)
        if trigger.correlate:
            head += f" per {trigger.correlate.strip('{} ').removeprefix('event.')}"
        return f"{head} within {format_duration(trigger.within)}"
    return _simple(trigger)


def describe_actions(automation: Automation) -> str:
    parts = []
    for action in automation.actions:
        target = getattr(action, "deployment", None) or getattr(action, "automation", None) or getattr(
            action, "event", None
        ) or getattr(action, "url", None)
        parts.append(f"{action.type} {target}" if target else action.type)
    return "; ".join(parts)


def sources_of(automation: Automation, flows_to_deployments: dict[str, list[str]]) -> list[str]:
    """The deployments (or flows, or events) whose events feed this automation's trigger."""
    out: list[str] = []
    for _, trigger in automation.simple_triggers():
        deployment = trigger.match.get("deployment")
        flow = trigger.match.get("flow")
        if isinstance(deployment, str):
            out.append(deployment)
        elif isinstance(deployment, list):
            out += [str(d) for d in deployment]
        elif isinstance(flow, str) and flow in flows_to_deployments:
            out += flows_to_deployments[flow]
        elif isinstance(flow, str):
            out.append(f"flow:{flow}")
        elif isinstance(trigger, EventTrigger) and trigger.expect:
            out += [f"event:{e}" for e in trigger.expect]
        else:
            out.append("*")
    return list(dict.fromkeys(out))
