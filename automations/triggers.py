"""Matching one event against one simple trigger: pure functions, no state, no I/O.

    event_name_matches("flow-run.Failed", ["flow-run.*"])          → True
    why_not(trigger, event)     → None when the event counts for the trigger, else the first
                                  failing check as a sentence: "resource.flow is 'x', expected
                                  'upstream'"
    resolve_path(event, "payload.parameters.batch_id")             → the value, or None

Match semantics (`match`, and each mapping of `match_related`):

- A key names a resource field (`flow`, `tags`); a dotted key reaches into nested values
  (`labels.team`). A key present literally (`prefect.resource.name`) wins over nesting.
- A value is a pattern or a list of patterns. A pattern is compared with the field's text form
  (numbers as written, booleans as `true`/`false`); `*` matches any run of characters.
- Positive patterns: at least one must match. Patterns starting with `!`: none may match. So
  `["etl-*", "!etl-test"]` is "starts with etl- but is not etl-test", and `["!a", "!b"]` is
  "neither a nor b" (not "any of", which would match everything).
- A list-valued field (tags) is its items: a positive pattern matches when any item does, a
  negated one fails when any item matches it (`tags: "!test"` excludes runs tagged test).
- A missing field has no items: positive patterns fail, negated ones pass.

`match_related`: one mapping means some related resource (`event["related"]`) matches all its
keys (`role` is a key like any other); a list of mappings means each is matched by some related
resource.

The index over many automations (`TriggerIndex`) is in `automations.index`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from functools import lru_cache
from typing import Any, Final

from automations.models import EventTrigger, FlowRunStateChangeTrigger, MatchValue

__all__ = [
    "CompiledTrigger",
    "FieldMatcher",
    "NamePatterns",
    "SimpleTriggerModel",
    "compile_trigger",
    "event_name_matches",
    "field_texts",
    "glob_match",
    "glob_regex",
    "matches",
    "resolve_path",
    "text_of",
    "why_not",
    "why_not_after",
]

SimpleTriggerModel = EventTrigger | FlowRunStateChangeTrigger


class _Missing:
    def __repr__(self) -> str:
        return "<missing>"


MISSING: Final = _Missing()


# --- text forms and globs -----------------------------------------------------------------------
def text_of(value: Any) -> str:
    """The text a pattern is compared with: booleans as JSON writes them, numbers as `str`."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    if value is None:
        return "null"
    return json.dumps(value, sort_keys=True, default=str)


@lru_cache(maxsize=8192)
def glob_regex(pattern: str) -> re.Pattern[str]:
    return re.compile(".*".join(re.escape(part) for part in pattern.split("*")), re.S)


def glob_match(pattern: str, text: str) -> bool:
    """`text` matches `pattern`, where `*` matches any run of characters (nothing else is special)."""
    if "*" not in pattern:
        return pattern == text
    return glob_regex(pattern).fullmatch(text) is not None


class NamePatterns:
    """Event-name patterns: exact names in a set, wildcard ones tried in turn."""

    __slots__ = ("any", "exact", "patterns", "wild")

    def __init__(self, patterns: Sequence[str], *, empty_means_any: bool) -> None:
        self.patterns = tuple(patterns)
        self.any = empty_means_any and not self.patterns
        self.exact = frozenset(p for p in self.patterns if "*" not in p)
        self.wild = tuple(glob_regex(p) for p in self.patterns if "*" in p)

    def __bool__(self) -> bool:
        return self.any or bool(self.patterns)

    def matches(self, name: str) -> bool:
        if self.any or name in self.exact:
            return True
        return any(w.fullmatch(name) is not None for w in self.wild)

    def describe(self) -> str:
        return ", ".join(self.patterns) if self.patterns else "any event"


def event_name_matches(name: str, patterns: Sequence[str]) -> bool:
    """`name` matches one of `patterns` (`*` wildcards); an empty list matches any name."""
    return NamePatterns(patterns, empty_means_any=True).matches(name)


# --- field lookup ---------------------------------------------------------------------------------
def _get(obj: Any, key: str) -> Any:
    if isinstance(obj, Mapping):
        if key in obj:
            return obj[key]
        head, dot, rest = key.partition(".")
        if dot and head in obj:
            return _get(obj[head], rest)
        return MISSING
    if isinstance(obj, list):
        # A dotted path through a list of objects collects the field of each.
        found = [v for v in (_get(item, key) for item in obj) if v is not MISSING]
        return found if found else MISSING
    return MISSING


def field_texts(resource: Mapping[str, Any], key: str) -> list[str]:
    """The text forms of a resource field: its items for a list, nothing when missing or null."""
    if type(resource) is dict:  # the index's question for nearly every event: a plain string field
        value = resource.get(key, MISSING)
        if type(value) is str:
            return [value]
        if value is MISSING and "." not in key:
            return []
    value = _get(resource, key)
    if value is MISSING or value is None:
        return []
    if isinstance(value, list | tuple):
        out: list[str] = []
        for item in value:
            if isinstance(item, list | tuple):
                out.extend(text_of(v) for v in item if v is not None)
            elif item is not None:
                out.append(text_of(item))
        return out
    return [text_of(value)]


def resolve_path(event: Mapping[str, Any], path: str) -> Any:
    """A value of the event for `for_each` and the like: a bare word is a resource field
    (`flow`), a dotted path starts at the event (`payload.parameters.batch_id`,
    `resource.name`). None when the path leads nowhere."""
    if "." in path:
        value = _get(event, path)
    else:
        resource = event.get("resource")
        value = _get(resource, path) if isinstance(resource, Mapping) else MISSING
    return None if value is MISSING else value


# --- one match entry ------------------------------------------------------------------------------
def _quote_all(patterns: Iterable[str]) -> str:
    return ", ".join(repr(p) for p in patterns)


class FieldMatcher:
    """One `match` entry: a key and its positive and negated patterns."""

    __slots__ = ("exact", "key", "negatives", "positives", "wild")

    def __init__(self, key: str, value: MatchValue) -> None:
        items = value if isinstance(value, list) else [value]
        texts = [text_of(v) for v in items]
        self.key = key
        self.positives = tuple(t for t in texts if not t.startswith("!"))
        self.negatives = tuple(t[1:] for t in texts if t.startswith("!"))
        self.exact = frozenset(p for p in self.positives if "*" not in p)
        self.wild = tuple(glob_regex(p) for p in self.positives if "*" in p)

    def index_values(self) -> frozenset[str] | None:
        """The exact values an event must have in this field, when the patterns say so (used
        by the index); None when a wildcard or only negations make that impossible."""
        if self.positives and not self.wild:
            return self.exact
        return None

    def _positive(self, text: str) -> bool:
        return text in self.exact or any(w.fullmatch(text) is not None for w in self.wild)

    def matches(self, resource: Mapping[str, Any]) -> bool:
        texts = field_texts(resource, self.key)
        if self.positives and not any(self._positive(t) for t in texts):
            return False
        return not any(glob_match(n, t) for n in self.negatives for t in texts)

    def describe(self) -> str:
        parts = []
        if len(self.positives) == 1:
            parts.append(repr(self.positives[0]))
        elif self.positives:
            parts.append(f"one of {_quote_all(self.positives)}")
        if self.negatives:
            parts.append(f"not {_quote_all(self.negatives)}" if len(self.negatives) == 1
                         else f"none of {_quote_all(self.negatives)}")
        return " and ".join(parts)

    def why_not(self, resource: Mapping[str, Any], where: str) -> str | None:
        if self.matches(resource):
            return None
        value = _get(resource, self.key)
        shown = "missing" if value is MISSING else f"{value!r}"
        return f"{where}.{self.key} is {shown}, expected {self.describe()}"


def _related_group_matches(group: Sequence[FieldMatcher], event: Mapping[str, Any]) -> bool:
    related = event.get("related")
    if not isinstance(related, list):
        return False
    return any(
        isinstance(r, Mapping) and all(m.matches(r) for m in group) for r in related
    )


# --- a compiled simple trigger --------------------------------------------------------------------
class CompiledTrigger:
    """A simple trigger prepared for matching many events: patterns compiled once."""

    __slots__ = ("after", "after_match", "expect", "for_each", "match", "related", "trigger")

    def __init__(self, trigger: SimpleTriggerModel) -> None:
        self.trigger = trigger
        self.expect = NamePatterns(trigger.expected_events(), empty_means_any=True)
        self.after = NamePatterns(trigger.after_events(), empty_means_any=False)
        self.match = tuple(FieldMatcher(k, v) for k, v in trigger.match.items())
        groups = trigger.match_related
        mappings = [groups] if isinstance(groups, dict) else list(groups)
        self.related = tuple(
            tuple(FieldMatcher(k, v) for k, v in m.items()) for m in mappings if m
        )
        self.for_each = tuple(trigger.for_each)
        #: Filters of the arming events when they differ from `match` (None: `match` and
        #: `match_related` filter them too).
        self.after_match = (
            tuple(FieldMatcher(k, v) for k, v in trigger.after_match.items())
            if trigger.after_match is not None else None
        )

    # The hot path: booleans, no sentences.
    def filters_pass(self, event: Mapping[str, Any]) -> bool:
        """`match` and `match_related` hold for the event (whatever its name)."""
        resource = event.get("resource")
        if not isinstance(resource, Mapping):
            resource = {}
        for m in self.match:
            if not m.matches(resource):
                return False
        return all(_related_group_matches(g, event) for g in self.related)

    def expects(self, event: Mapping[str, Any]) -> bool:
        """The event counts for this trigger: an expected name and the filters hold."""
        return self.expect.matches(str(event.get("event", ""))) and self.filters_pass(event)

    def arms(self, event: Mapping[str, Any]) -> bool:
        """The event is one of the `after` events and the filters hold."""
        if not self.after or not self.after.matches(str(event.get("event", ""))):
            return False
        if self.after_match is None:
            return self.filters_pass(event)
        resource = event.get("resource")
        if not isinstance(resource, Mapping):
            resource = {}
        return all(m.matches(resource) for m in self.after_match)

    def bucket(self, event: Mapping[str, Any]) -> str:
        """The `for_each` bucket key: "" without for_each; the value's text for one field; a
        JSON list of the texts for several (unambiguous whatever the values hold)."""
        if not self.for_each:
            return ""
        values = [resolve_path(event, p) for p in self.for_each]
        texts = ["" if v is None else text_of(v) for v in values]
        return texts[0] if len(texts) == 1 else json.dumps(texts)

    # Explanations.
    def filters_why_not(self, event: Mapping[str, Any]) -> str | None:
        resource = event.get("resource")
        if not isinstance(resource, Mapping):
            resource = {}
        for m in self.match:
            reason = m.why_not(resource, "resource")
            if reason is not None:
                return reason
        for group in self.related:
            if not _related_group_matches(group, event):
                wanted = ", ".join(f"{m.key} {m.describe()}" for m in group)
                return f"no related resource has {wanted}"
        return None

    def why_not(self, event: Mapping[str, Any]) -> str | None:
        name = str(event.get("event", ""))
        if not self.expect.matches(name):
            return f"event {name!r} is not one of {self.expect.describe()}"
        return self.filters_why_not(event)

    def why_not_after(self, event: Mapping[str, Any]) -> str | None:
        name = str(event.get("event", ""))
        if not self.after:
            return "the trigger has no `after` events"
        if not self.after.matches(name):
            return f"event {name!r} is not one of the arming events {self.after.describe()}"
        if self.after_match is None:
            return self.filters_why_not(event)
        resource = event.get("resource")
        if not isinstance(resource, Mapping):
            resource = {}
        for m in self.after_match:
            reason = m.why_not(resource, "resource")
            if reason is not None:
                return f"after_match: {reason}"
        return None


def compile_trigger(trigger: SimpleTriggerModel) -> CompiledTrigger:
    return CompiledTrigger(trigger)


def matches(trigger: SimpleTriggerModel, event: Mapping[str, Any]) -> bool:
    """The event counts for the trigger (expected name, `match`, `match_related`)."""
    return CompiledTrigger(trigger).expects(event)


def why_not(trigger: SimpleTriggerModel, event: Mapping[str, Any]) -> str | None:
    """None when the event counts for the trigger; else the first failing check, as a sentence."""
    return CompiledTrigger(trigger).why_not(event)


def why_not_after(trigger: SimpleTriggerModel, event: Mapping[str, Any]) -> str | None:
    """None when the event arms the trigger; else why not."""
    return CompiledTrigger(trigger).why_not_after(event)

