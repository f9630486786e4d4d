"""Which routing keys the rule engine's queue must be bound to, from the loaded automations.

Events are routed on the `events` topic exchange by `engine.events.routing_key_for`:
`flow-run.<flow>.<State>`, `task-run.<flow>.<State>`, and custom events under their own name.
An automation needs the keys of its expected and arming events, narrowed to one flow when its
trigger matches a literal flow name (`after_match`'s flow for the arming events, if given):

    expect [Completed], match {flow: etl}     → flow-run.etl.Completed
    expect [Completed]                        → flow-run.*.Completed
    flow-run-state-change with no expect      → flow-run.#
    event batch.ready                         → batch.ready
    event batch.*   /  no expect at all       → batch.#  /  #

Over-binding is harmless (the evaluator drops what does not match); under-binding would lose
events, so anything unusual binds wider.
"""

from __future__ import annotations

from collections.abc import Iterable

from automations.models import Automation

__all__ = ["routing_keys"]

_RUN_PREFIXES = ("flow-run.", "task-run.")


def _word(value: str) -> str:
    return value.replace(".", "_") or "_"


def _wild(words: list[str]) -> str:
    """A topic pattern from event-name words where any word with `*` becomes `#`."""
    out = ["#" if "*" in w else w for w in words]
    collapsed: list[str] = []
    for w in out:
        if not (w == "#" and collapsed and collapsed[-1] == "#"):
            collapsed.append(w)
    return ".".join(collapsed)


def key_for_pattern(pattern: str, flow: str | None = None) -> str:
    """The routing key pattern that carries events named like `pattern` (may contain `*`)."""
    for prefix in _RUN_PREFIXES:
        if pattern.startswith(prefix):
            state = pattern[len(prefix):]
            flow_word = _word(flow) if flow else "*"
            if not state or "*" in state or "." in state:
                return f"{prefix}{flow_word}.#" if flow else f"{prefix}#"
            return f"{prefix}{flow_word}.{state}"
        if "*" in pattern and prefix.startswith(pattern.split("*", 1)[0]) and pattern.split("*", 1)[0]:
            return "#"  # e.g. "flow*": could be any run event
    if pattern in ("*", ""):
        return "#"
    return _wild(pattern.split("."))


def routing_keys(automations: Iterable[Automation]) -> set[str]:
    keys: set[str] = set()
    for automation in automations:
        for _, trigger in automation.simple_triggers():
            expected = trigger.expected_events() or ["*"]
            flow = _literal(trigger.match.get("flow"))
            for pattern in expected:
                keys.add(key_for_pattern(pattern, flow))
            after_filter = trigger.after_match if trigger.after_match is not None else trigger.match
            after_flow = _literal(after_filter.get("flow"))
            for pattern in trigger.after_events():
                keys.add(key_for_pattern(pattern, after_flow))
    return keys


def _literal(value: object) -> str | None:
    """A flow name the key can be narrowed to: a plain string, no wildcard, no negation."""
    if isinstance(value, str) and "*" not in value and not value.startswith("!"):
        return value
    return None
