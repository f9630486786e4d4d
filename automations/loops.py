"""The loop guard: refuse an automation whose own actions would surely fire it again.

The rule (conservative: refuse only when the produced events would *surely* match)::

    an action produces events ──▶ a trigger of the same automation expects them
                              └─▶ and nothing in that trigger narrows the match away

What actions produce:

- `run-deployment D` launches a run of D, whose state events are `flow-run.<State>` for any
  state (a run can end Completed, Failed, Crashed ...: a rule "on Failed, run it again" loops
  as surely as one on Completed). Its resource surely carries `deployment: D`, `flow: F` (F from
  `deployment_flows`, else the FLOW part of `FLOW/NAME`), the action's literal `tags`, and an
  `id`, `name` and `seq` whose values are unknown. A templated deployment is unknown, except
  `{{ event.resource.deployment }}` in a simple trigger: the deployment of the run that fired it,
  which matched `deployment` and `flow` by definition ("on Failed, rerun it").
- `emit-event E` produces E with its literal `resource` fields.

What narrows (any one is enough to accept the automation):

- a `match` key whose value the produced event does not surely satisfy: a key not listed above
  (`work_pool`, labels ...), a pattern that the known value fails (`deployment: a/x` against a
  launch of `b/y`), a negation on tags, anything but `*` on an unknown value;
- `match_related` (a launched run has no related resources we can vouch for);
- `after` (the trigger must be armed by another event first);
- `posture: proactive` (the produced events would *prevent* a firing, not cause one);
- in a compound or sequence trigger, fewer children surely matched than the join requires
  (for `on_expire` actions one is enough: the run opens a join that can expire again).

What does not narrow: `expect` states (any may happen), `threshold`/`within` (a run's events
count like any others), `for_each`, `cooldown` (it slows a loop down, it does not end it) and
`correlate` (its value for the new run cannot be known).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from automations.models import (
    FLOW_RUN_EVENT_PREFIX,
    Action,
    Automation,
    CompoundTrigger,
    EmitEventAction,
    EventTrigger,
    FlowRunStateChangeTrigger,
    MatchValue,
    RunDeploymentAction,
    SequenceTrigger,
)
from automations.templates import has_template
from engine.states import STATE_NAMES

__all__ = ["check_loops", "find_loop"]

_SAME_DEPLOYMENT = re.compile(r"^\s*\{\{\s*event\.resource\.deployment\s*\}\}\s*$")
_RUN_EVENTS = tuple(f"{FLOW_RUN_EVENT_PREFIX}{state}" for state in STATE_NAMES)


class _Unknown:
    """A field the produced event surely has, with a value we cannot know."""


class _Same:
    """The same value as the event that fired the trigger (which matched it)."""


UNKNOWN = _Unknown()
SAME = _Same()


@dataclass(frozen=True)
class _Produced:
    """Events an action surely produces, described as far as they can be known."""

    what: str
    events: tuple[str, ...]
    #: Field → value (str), list of values carried (tags), UNKNOWN or SAME.
    resource: dict[str, Any] = field(default_factory=dict)
    #: What `match` could narrow on, for the explanation.
    narrow_on: str = "`deployment` or `tags`"


def check_loops(
    automation: Automation, *, deployment_flows: Mapping[str, str] | None = None
) -> str | None:
    """An explanation if `automation`'s actions would fire it again, else None.

    `deployment_flows` maps deployment names to the flow they run; without it, the flow is the
    FLOW part of `FLOW/NAME`. `allow_loops: true` accepts any automation.
    """
    found = find_loop(automation, deployment_flows=deployment_flows)
    return None if found is None else found[1]


def find_loop(
    automation: Automation, *, deployment_flows: Mapping[str, str] | None = None
) -> tuple[tuple[str | int, ...], str] | None:
    """(location of the looping action within the automation, explanation), or None."""
    if automation.allow_loops:
        return None
    flows = deployment_flows or {}
    trigger = automation.trigger
    simple = not isinstance(trigger, CompoundTrigger | SequenceTrigger)
    located: list[tuple[tuple[str | int, ...], Action, bool]] = [
        (("actions", i), action, False) for i, action in enumerate(automation.actions)
    ]
    if isinstance(trigger, CompoundTrigger | SequenceTrigger):
        located += [(("trigger", "on_expire", i), a, True) for i, a in enumerate(trigger.on_expire)]
    children = automation.simple_triggers()
    for where, action, on_expire in located:
        produced = _produced_by(action, flows, same_allowed=simple)
        if produced is None:
            continue
        hits = [(name, child) for name, child in children if _surely_matches(child, produced)]
        if isinstance(trigger, CompoundTrigger):
            needed = 1 if on_expire else trigger.required_count()
        elif isinstance(trigger, SequenceTrigger):
            needed = 1 if on_expire else len(trigger.triggers)
        else:
            needed = 1
        if hits and len(hits) >= needed:
            return where, _explain(automation, produced, hits, simple=simple)
    return None


def _produced_by(action: Action, flows: Mapping[str, str], *, same_allowed: bool) -> _Produced | None:
    if isinstance(action, RunDeploymentAction):
        tags = [t for t in action.tags if not has_template(t)]
        resource: dict[str, Any] = {"id": UNKNOWN, "name": UNKNOWN, "seq": UNKNOWN, "tags": tags}
        if same_allowed and _SAME_DEPLOYMENT.match(action.deployment):
            resource |= {"deployment": SAME, "flow": SAME}
            what = "run-deployment of the deployment whose run fired it"
        elif has_template(action.deployment):
            return None
        else:
            deployment = action.deployment
            flow = flows.get(deployment) or deployment.split("/", 1)[0]
            resource |= {"deployment": deployment, "flow": flow}
            what = f"run-deployment {deployment!r} (a run of flow {flow!r})"
        return _Produced(what, _RUN_EVENTS, resource)
    if isinstance(action, EmitEventAction):
        if has_template(action.event):
            return None
        resource = {
            str(k): UNKNOWN if has_template(v) else v
            for k, v in action.resource.items()
            if isinstance(v, str | int | float | bool | list)
        }
        return _Produced(f"emit-event {action.event!r}", (action.event,), resource, "the event's `resource`")
    return None


def _surely_matches(trigger: EventTrigger | FlowRunStateChangeTrigger, produced: _Produced) -> bool:
    if trigger.posture == "proactive" or trigger.after or trigger.match_related:
        return False
    expected = trigger.expected_events()
    if expected and not any(_glob(p, e) for p in expected for e in produced.events):
        return False
    for key, value in trigger.match.items():
        if key not in produced.resource:
            return False
        if not _value_matches(value, produced.resource[key]):
            return False
    return True


def _value_matches(pattern: MatchValue, known: Any) -> bool:
    """Whether every event carrying `known` surely satisfies `pattern` (a list is any-of)."""
    if isinstance(pattern, list):
        return any(_value_matches(p, known) for p in pattern)
    pattern = str(pattern)
    if isinstance(known, _Same):
        return True
    if isinstance(known, _Unknown):
        return not pattern.startswith("!") and set(pattern) == {"*"}
    if isinstance(known, list):
        # A list-valued field (tags) matches when any item does; the run may carry more items,
        # so only a positive pattern met by a known item is sure.
        return not pattern.startswith("!") and any(_glob(pattern, str(item)) for item in known)
    if pattern.startswith("!"):
        return not _glob(pattern[1:], str(known))
    return _glob(pattern, str(known))


def _glob(pattern: str, value: str) -> bool:
    """`*` wildcards only (event names and match values use no other metacharacter)."""
    if "*" not in pattern:
        return pattern == value
    return re.fullmatch(".*".join(map(re.escape, pattern.split("*"))), value, re.S) is not None


def _explain(
    automation: Automation,
    produced: _Produced,
    hits: Sequence[tuple[str, EventTrigger | FlowRunStateChangeTrigger]],
    *,
    simple: bool,
) -> str:
    name, trigger = hits[0]
    match = ", ".join(f"{k}: {v!r}" for k, v in trigger.match.items()) or "nothing"
    whose = "the trigger" if simple else f"child trigger {name!r}"
    listens = ", ".join(trigger.expected_events()) or "any event"
    return (
        f"automation {automation.name!r} can trigger itself: its action {produced.what} produces "
        f"events that {whose} listens to ({listens}; match: {match}), so each firing can cause "
        f"the next; narrow `match` so these events do not match (e.g. on {produced.narrow_on}), "
        f"or set `allow_loops: true` if the loop is intended"
    )
