"""`TriggerIndex`: among many automations, the few whose triggers can match an event.

A dict on exact event names, then a dict on an exact-valued `match` field (`flow`, `deployment`
...); wildcard event patterns sit in a short list tried in turn. The cost of one event does not
grow with the number of automations that cannot match it: 10,000 automations each matching
`{flow: f_i}` on `flow-run.Completed` cost one dict read per level, like 10 do.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from automations.triggers import CompiledTrigger, field_texts, glob_regex

__all__ = ["TriggerIndex"]

#: Which exact-valued `match` field a trigger is filed under: the most selective first.
_INDEX_PREFERENCE = ("id", "name", "deployment", "flow")

_Key = tuple[str, str]  # (automation, child)


class _Slot:
    """Triggers filed under one event-name pattern: by an exact-valued field, or in `rest`."""

    __slots__ = ("by_field", "rest")

    def __init__(self) -> None:
        self.by_field: dict[str, dict[str, dict[_Key, None]]] = {}
        self.rest: dict[_Key, None] = {}

    def collect(self, resource: Mapping[str, Any], out: dict[str, set[str]]) -> None:
        for field, by_value in self.by_field.items():
            for text in field_texts(resource, field):
                hits = by_value.get(text)
                if hits:
                    for automation, child in hits:
                        out.setdefault(automation, set()).add(child)
        for automation, child in self.rest:
            out.setdefault(automation, set()).add(child)

    def empty(self) -> bool:
        return not self.by_field and not self.rest


def _index_field(
    trigger: CompiledTrigger, *, arming: bool = False
) -> tuple[str, frozenset[str]] | None:
    """The field to file under: from `match`, or for the arming events from `after_match` when
    the trigger has one."""
    matchers = trigger.after_match if arming and trigger.after_match is not None else trigger.match
    candidates = [(m.key, v) for m in matchers if (v := m.index_values()) is not None]
    if not candidates:
        return None
    rank = {k: i for i, k in enumerate(_INDEX_PREFERENCE)}
    return min(candidates, key=lambda kv: (rank.get(kv[0], len(rank)), kv[0]))


class TriggerIndex:
    """The (automation, child) pairs whose triggers can possibly match an event.

    Every simple trigger is filed under each of its expected and `after` event-name patterns:
    an exact name goes into a dict, a wildcard pattern into a short list (one entry per distinct
    pattern, however many triggers use it), no pattern (any event) into one catch-all slot.
    Within a pattern, a trigger with an exact-valued `match` field is filed under that field's
    value(s). A lookup is a handful of dict reads; candidates still need the full match.
    """

    def __init__(self) -> None:
        self._exact: dict[str, _Slot] = {}
        self._wild: dict[str, tuple[re.Pattern[str], _Slot]] = {}
        self._any = _Slot()
        #: automation → where its triggers were filed: (pattern, field, value, key).
        self._filed: dict[str, list[tuple[str | None, str | None, str | None, _Key]]] = {}

    def __len__(self) -> int:
        return len(self._filed)

    def __contains__(self, automation: object) -> bool:
        return automation in self._filed

    def _slot(self, pattern: str | None) -> _Slot:
        if pattern is None:
            return self._any
        if "*" not in pattern:
            return self._exact.setdefault(pattern, _Slot())
        if pattern not in self._wild:
            self._wild[pattern] = (glob_regex(pattern), _Slot())
        return self._wild[pattern][1]

    def add(self, automation: str, children: Iterable[tuple[str, CompiledTrigger]]) -> None:
        """File an automation's simple triggers (replacing what was filed under its name)."""
        self.remove(automation)
        filed: list[tuple[str | None, str | None, str | None, _Key]] = []
        for child, trigger in children:
            key = (automation, child)
            expected: set[str | None] = set(trigger.expect.patterns) if not trigger.expect.any else {None}
            filings = [(p, _index_field(trigger)) for p in expected]
            filings += [(p, _index_field(trigger, arming=True)) for p in trigger.after.patterns]
            for pattern, chosen in filings:
                slot = self._slot(pattern)
                if chosen is None:
                    slot.rest[key] = None
                    filed.append((pattern, None, None, key))
                    continue
                field, values = chosen
                by_value = slot.by_field.setdefault(field, {})
                for value in values:
                    by_value.setdefault(value, {})[key] = None
                    filed.append((pattern, field, value, key))
        self._filed[automation] = filed

    def remove(self, automation: str) -> None:
        for pattern, field, value, key in self._filed.pop(automation, []):
            slot = self._slot(pattern)
            if field is None or value is None:
                slot.rest.pop(key, None)
            else:
                by_value = slot.by_field.get(field, {})
                hits = by_value.get(value, {})
                hits.pop(key, None)
                if not hits:
                    by_value.pop(value, None)
                if not by_value:
                    slot.by_field.pop(field, None)
            # Drop an emptied slot so lookups do not walk a dead wildcard pattern.
            if slot.empty() and pattern is not None:
                self._exact.pop(pattern, None)
                self._wild.pop(pattern, None)

    def candidates(self, event: Mapping[str, Any]) -> dict[str, set[str]]:
        """automation → the children that can possibly match the event (by name and index)."""
        name = event.get("event")
        resource = event.get("resource")
        if type(resource) is not dict and not isinstance(resource, Mapping):
            resource = {}
        out: dict[str, set[str]] = {}
        if isinstance(name, str):
            slot = self._exact.get(name)
            if slot is not None:
                slot.collect(resource, out)
            for regex, wild_slot in self._wild.values():
                if regex.fullmatch(name) is not None:
                    wild_slot.collect(resource, out)
        if not self._any.empty():
            self._any.collect(resource, out)
        return out
