"""Load automation YAML files: validated whole, refused whole, every error with its line.

    load_paths(["rules/", "extra.yaml"], known_deployments={"etl/nightly": "etl"})
    → [LoadedAutomation(automation=Automation(...), source="rules/etl.yaml:3"), ...]

A file (or a set of files) with any error raises `AutomationFileError` listing every error as
``path:line:column: field.path: message``, sorted by place::

    rules/etl.yaml:14:15: automations[0].trigger.expect[0]: 'Complted' is not a state (did you mean 'Completed'?)

What is checked, beyond the pydantic models (`automations.models`):

- YAML at `yaml.safe_load` level: plain data only; any other tag (``!!python/object``) is an error
  with its place, never constructed. Duplicate keys in a mapping are errors.
- The top level is a mapping with ``automations:`` (a list). An empty file holds no automations.
- Names are unique within a file and across the files of one `load_paths` call.
- Deployment names written literally in run-/pause-/resume-deployment actions (`on_expire`
  included) have the form FLOW/NAME and, when `known_deployments` is given, exist.
- Templates in actions and in `correlate` parse.
- The loop guard (`automations.loops`): an automation whose own actions would fire it again is
  refused unless it says ``allow_loops: true``.

Errors are placed by composing the YAML node tree alongside the data (`automations.yamldoc`) and
walking pydantic's error locations down it (with the discriminator tags pydantic adds for unions
removed), so a missing field points at its mapping, an unknown field at its key, a bad value at
the value.
"""

from __future__ import annotations

import difflib
import re
import typing
from collections.abc import Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails
from yaml.nodes import Node

from automations.errors import AutomationFileError
from automations.loops import check_loops, find_loop
from automations.models import (
    ACTION_TYPES,
    NAME_PATTERN,
    TRIGGER_TYPES,
    Action,
    Automation,
    SimpleTrigger,
    Trigger,
)
from automations.templates import check_syntax, has_template
from automations.yamldoc import UNCONSTRUCTED, Document, FieldPath, Problem, format_path

__all__ = [
    "LoadedAutomation",
    "check_loops",
    "load_file",
    "load_paths",
    "parse_automations",
    "parse_documents",
]

_DEPLOY_HINT = "deploy it first with flowrelay deploy"


def _models_by_type(union: Any) -> dict[str, type[BaseModel]]:
    """`type` value → model, read from a discriminated union (no hand-kept list)."""
    members = typing.get_args(typing.get_args(union)[0])
    return {typing.get_args(m.model_fields["type"].annotation)[0]: m for m in members}


_MODELS: dict[str, type[BaseModel]] = _models_by_type(Trigger) | _models_by_type(Action)
_SIMPLE_TRIGGER_TYPES = tuple(_models_by_type(SimpleTrigger))
#: Where a discriminated union sits (the field, or the list of them) → the types allowed there.
_UNIONS: dict[str, tuple[str, tuple[str, ...]]] = {
    "trigger": ("trigger", TRIGGER_TYPES),
    "triggers": ("child trigger", _SIMPLE_TRIGGER_TYPES),
    "actions": ("action", ACTION_TYPES),
    "on_expire": ("action", ACTION_TYPES),
}


@dataclass(frozen=True)
class LoadedAutomation:
    """A validated automation and where it was written."""

    automation: Automation
    #: ``path/file.yaml:LINE`` of the automation's first line.
    source: str


@dataclass
class _Parsed:
    loaded: list[LoadedAutomation]
    problems: list[Problem]
    #: (automation name, a problem with no message yet placed at the name) for cross-file
    #: duplicate checks.
    names: list[tuple[str, Problem]]


# --- public API ------------------------------------------------------------------------------------


def parse_automations(
    text: str,
    *,
    source: str = "<string>",
    known_deployments: Collection[str] | None = None,
) -> list[LoadedAutomation]:
    """The automations in YAML `text`; `source` names it in errors and `LoadedAutomation.source`.

    `known_deployments`: when given, every literal deployment an action names must be in it; a
    mapping of deployment name → flow name also tells the loop guard which flow each runs.
    Raise `AutomationFileError` with every problem if there is any.
    """
    parsed = _parse(text, source, known_deployments)
    if parsed.problems:
        raise AutomationFileError([p.text for p in _sorted(parsed.problems)])
    return parsed.loaded


def load_file(
    path: str | Path, *, known_deployments: Collection[str] | None = None
) -> list[LoadedAutomation]:
    """The automations of one YAML file (see `parse_automations`)."""
    return load_paths([path], known_deployments=known_deployments)


def load_paths(
    paths: Iterable[str | Path], *, known_deployments: Collection[str] | None = None
) -> list[LoadedAutomation]:
    """The automations of files and folders (a folder's ``*.yaml``/``*.yml`` files, not recursed
    into, in name order), all or nothing: any problem in any file raises `AutomationFileError`
    with the problems of every file. A name defined twice is an error naming both places."""
    unreadable: list[list[Problem]] = []
    documents: list[tuple[str, str]] = []
    for file in _files(paths, unreadable):
        try:
            documents.append((str(file), file.read_text(encoding="utf-8")))
        except UnicodeDecodeError as exc:
            unreadable.append([Problem(0, 0, f"{file}: not UTF-8 text ({exc.reason} at byte {exc.start})")])
        except OSError as exc:
            unreadable.append([Problem(0, 0, f"{file}: cannot read: {exc.strerror or exc}")])
    return _parse_all(documents, known_deployments, unreadable)


def parse_documents(
    documents: Iterable[tuple[str, str]], *, known_deployments: Collection[str] | None = None
) -> list[LoadedAutomation]:
    """Several YAML texts given as (source, text), as `load_paths` loads files: all or nothing,
    automation names unique across them."""
    return _parse_all(documents, known_deployments, [])


def _parse_all(
    documents: Iterable[tuple[str, str]],
    known: Collection[str] | None,
    problems: list[list[Problem]],
) -> list[LoadedAutomation]:
    loaded: list[LoadedAutomation] = []
    first_place: dict[str, str] = {}
    for source, text in documents:
        parsed = _parse(text, source, known)
        mine = list(parsed.problems)
        for name, where in parsed.names:
            if name in first_place:
                mine.append(Problem(
                    where.line, where.column,
                    f"{where.text}{name!r} is already defined at {first_place[name]} "
                    f"(automation names must be unique across files)",
                ))
            first_place.setdefault(name, f"{source}:{where.line}")
        problems.append(mine)
        loaded += parsed.loaded
    if any(problems):
        raise AutomationFileError([p.text for group in problems for p in _sorted(group)])
    return loaded


def _files(paths: Iterable[str | Path], problems: list[list[Problem]]) -> Iterator[Path]:
    seen: set[Path] = set()
    for given in paths:
        path = Path(given)
        if path.is_dir():
            found = sorted(
                p for p in path.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file()
            )
        elif path.exists():
            found = [path]
        else:
            problems.append([Problem(0, 0, f"{path}: no such file or folder")])
            continue
        for file in found:
            key = file.resolve()
            if key not in seen:
                seen.add(key)
                yield file


def _sorted(problems: list[Problem]) -> list[Problem]:
    return sorted(problems, key=lambda p: (p.line, p.column))


# --- one file ----------------------------------------------------------------------------------


def _parse(text: str, source: str, known: Collection[str] | None) -> _Parsed:
    result = _Parsed([], [], [])
    doc = Document(source, result.problems)
    root, data = doc.read(text)
    if root is None or data is None or data is UNCONSTRUCTED:
        return result
    items = _top_level(doc, root, data)
    if items is None:
        return result
    flows = known if isinstance(known, Mapping) else None
    first_line: dict[str, int] = {}
    for index, item in enumerate(items):
        base: FieldPath = ("automations", index)
        _check_templates(doc, item, base)
        _check_deployments(doc, item, base, known)
        name = item.get("name") if isinstance(item, dict) else None
        if isinstance(name, str):
            if name in first_line:
                doc.add(base + ("name",), f"{name!r} is already defined at line {first_line[name]} (automation names must be unique)")
            else:
                place = doc.problem(base + ("name",), "")
                first_line[name] = place.line
                result.names.append((name, place))
        try:
            automation = Automation.model_validate(item)
        except ValidationError as exc:
            _validation_problems(doc, exc, item, base)
            continue
        loop = find_loop(automation, deployment_flows=flows)
        if loop is not None:
            doc.add(base + loop[0], loop[1])
        line = doc.node_at(base).start_mark.line + 1
        result.loaded.append(LoadedAutomation(automation, f"{source}:{line}"))
    return result


def _top_level(doc: Document, root: Node, data: Any) -> list[Any] | None:
    """The list under `automations:`, or None after reporting why there is none."""
    if isinstance(data, list):
        doc.add_at(root, (), "expected a mapping with an `automations:` list at the top level, got a list; write `automations:` on the first line and indent this list under it")
        return None
    if not isinstance(data, dict):
        doc.add_at(root, (), f"expected a mapping with an `automations:` list at the top level, got {_kind(data)}")
        return None
    if "automations" not in data and {"trigger", "actions"} & set(data):
        doc.add_at(root, (), "expected `automations:` at the top level; this looks like a single automation: make it an item of the list (`automations:` on the first line, then `  - name: ...` with the rest indented under it)")
        return None
    for key in data:
        if key != "automations":
            hint = _did_you_mean(str(key), ["automations"]) or "; the top level holds only `automations:`"
            doc.add((key,), f"unknown field {key!r}{hint}", at_key=True)
    items = data.get("automations")
    if items is None:
        return []
    if not isinstance(items, list):
        doc.add(("automations",), f"expected a list of automations, got {_kind(items)}")
        return None
    return items


# --- pydantic errors → problems ------------------------------------------------------------------


def _validation_problems(doc: Document, exc: ValidationError, item: Any, base: FieldPath) -> None:
    unions: dict[FieldPath, list[ErrorDetails]] = {}
    for error in exc.errors(include_url=False):
        path, rest, trail = _user_path(error["loc"], item)
        kind = error["type"]
        if kind == "missing" and len(rest) == 1:
            doc.add(base + path, f"missing required field {rest[0]!r}")
        elif kind == "extra_forbidden" and path:
            doc.add(base + path, _unknown_field(path, trail), at_key=True)
        elif kind == "union_tag_invalid" and path:
            doc.add(base + path + ("type",), _unknown_type(path, str(error.get("ctx", {}).get("tag"))))
        elif kind == "union_tag_not_found" and path:
            what, allowed = _union_at(path)
            doc.add(base + path, f"missing `type`; {what} types are {', '.join(allowed)}")
        elif rest:
            unions.setdefault(path, []).append(error)
        else:
            doc.add(base + path, _message(error))
    for path, errors in unions.items():
        if len(errors) == 1:
            doc.add(base + path, _message(errors[0]))
            continue
        wanted = list(dict.fromkeys(_short(e) for e in errors))
        expected = ", ".join(wanted[:-1]) + f" or {wanted[-1]}"
        doc.add(base + path, f"expected {expected}{_got(errors[0]['input'])}")


def _user_path(loc: tuple[str | int, ...], data: Any) -> tuple[FieldPath, FieldPath, list[Any]]:
    """pydantic's `loc` as the user's path into `data`, with the discriminator tags pydantic
    inserts after a union (`trigger.flow-run-state-change.expect`) removed; then the parts that
    lead nowhere in the data (union member names, a missing field); then the data at each step."""
    path: list[str | int] = []
    trail = [data]
    for i, part in enumerate(loc):
        current = trail[-1]
        if isinstance(current, dict):
            if _union_at(tuple(path)) and current.get("type") == part:
                continue
            key = next((k for k in current if k == part or str(k) == str(part)), _MISSING)
            if key is _MISSING:
                return tuple(path), loc[i:], trail
            trail.append(current[key])
        elif isinstance(current, list) and isinstance(part, int) and 0 <= part < len(current):
            trail.append(current[part])
        else:
            return tuple(path), loc[i:], trail
        path.append(part)
    return tuple(path), (), trail


_MISSING: Any = object()


def _union_at(path: FieldPath) -> tuple[str, tuple[str, ...]]:
    """(what, allowed types) if `path` (within an automation) holds a discriminated union."""
    if path == ("trigger",):
        return _UNIONS["trigger"]
    if len(path) == 2 and path[0] == "actions" and isinstance(path[1], int):
        return _UNIONS["actions"]
    if len(path) == 3 and path[0] == "trigger" and path[1] in ("triggers", "on_expire") and isinstance(path[2], int):
        return _UNIONS[str(path[1])]
    return "", ()


def _unknown_field(path: FieldPath, trail: list[Any]) -> str:
    key = str(path[-1])
    parent = trail[-2]
    model: type[BaseModel] | None = Automation if len(path) == 1 else None
    if model is None and _union_at(path[:-1])[0] and isinstance(parent, dict):
        model = _MODELS.get(str(parent.get("type")))
    if model is None:
        return f"unknown field {key!r}"
    fields = list(model.model_fields)
    hint = _did_you_mean(key, fields, n=3)
    return f"unknown field {key!r}" + (hint or f"; the fields are {', '.join(fields)}")


def _unknown_type(path: FieldPath, tag: str) -> str:
    what, allowed = _union_at(path)
    if what == "child trigger" and tag in TRIGGER_TYPES:
        return f"a {tag} trigger cannot be a child trigger; children are {' or '.join(allowed)} triggers"
    hint = _did_you_mean(tag, allowed)
    return f"unknown {what} type {tag!r}" + (hint or f"; types are {', '.join(allowed)}")


def _message(error: ErrorDetails) -> str:
    kind, value = error["type"], error.get("input")
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return f"expected a mapping, got {_kind(value)}"
    if kind == "string_pattern_mismatch" and error.get("ctx", {}).get("pattern") == NAME_PATTERN:
        return f"a name starts with a letter or digit and holds letters, digits, spaces and '_', '.', '-'{_got(value)}"
    if kind == "too_short":
        least = error.get("ctx", {}).get("min_length", 1)
        return f"needs at least {least} item{'s' if least != 1 else ''}, got {_count(value)}"
    if kind == "list_type":
        if isinstance(value, str):
            return f"expected a list, got a string; write [{value}]"
        return f"expected a list, got {_kind(value)}"
    message = error["msg"]
    for prefix in ("Value error, ", "Assertion failed, "):
        message = message.removeprefix(prefix)
    if kind == "value_error":
        return message
    if kind == "literal_error" and isinstance(value, str):
        allowed = re.findall(r"'([^']*)'", str(error.get("ctx", {}).get("expected")))
        close = difflib.get_close_matches(value, allowed, n=1)
        if close:
            return f"{message} (got {value!r}; did you mean {close[0]!r}?)"
    return f"{message}{_got(value)}"


_SHORT = {
    "Input should be a valid string": "a string",
    "Input should be a valid integer": "an integer",
    "Input should be a valid number": "a number",
    "Input should be a valid boolean": "a boolean",
    "Input should be a valid list": "a list",
    "Input should be a valid dictionary": "a mapping",
}


def _short(error: ErrorDetails) -> str:
    message = error["msg"]
    if message in _SHORT:
        return _SHORT[message]
    return message.removeprefix("Input should be ").split(",")[0]


def _got(value: Any) -> str:
    if isinstance(value, dict | list) or value is None:
        return f" (got {_kind(value)})"
    return f" (got {value!r})"


def _count(value: Any) -> str:
    return f"{len(value)}" if isinstance(value, list | dict | str) else _kind(value)


def _kind(value: Any) -> str:
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return type(value).__name__


def _did_you_mean(word: str, candidates: Iterable[str], n: int = 1) -> str:
    close = difflib.get_close_matches(word, list(candidates), n=n, cutoff=0.6)
    if not close:
        return ""
    return f" (did you mean {' or '.join(repr(c) for c in close)}?)"


# --- checks beyond the models --------------------------------------------------------------------


#: Action types that name a deployment (run-, pause-, resume-deployment).
_DEPLOYMENT_ACTIONS = frozenset(
    t for t, model in _MODELS.items() if t in ACTION_TYPES and "deployment" in model.model_fields
)


def _raw_actions(item: Any) -> list[tuple[FieldPath, Any]]:
    """(path, raw action) of an automation's actions and its join's `on_expire` actions."""
    if not isinstance(item, dict):
        return []
    found: list[tuple[FieldPath, Any]] = []
    if isinstance(item.get("actions"), list):
        found += [(("actions", i), a) for i, a in enumerate(item["actions"])]
    trigger = item.get("trigger")
    if isinstance(trigger, dict) and isinstance(trigger.get("on_expire"), list):
        found += [(("trigger", "on_expire", i), a) for i, a in enumerate(trigger["on_expire"])]
    return found


def _check_deployments(doc: Document, item: Any, base: FieldPath, known: Collection[str] | None) -> None:
    """Literal deployment names: FLOW/NAME, and known when `known` is given. Checked on the raw
    data so an automation with other errors still gets these reported."""
    for path, action in _raw_actions(item):
        # `type` may be any YAML value here, a list included (unhashable): the models report it.
        if not isinstance(action, dict) or str(action.get("type")) not in _DEPLOYMENT_ACTIONS:
            continue
        name = action.get("deployment")
        if not isinstance(name, str) or has_template(name):
            continue
        where = base + path + ("deployment",)
        flow, _, short = name.partition("/")
        if not flow or not short:
            doc.add(where, f"deployment {name!r} must be written FLOW/NAME (e.g. 'etl/nightly')")
        elif known is not None and name not in known:
            hint = _did_you_mean(name, known)
            doc.add(where, f"deployment {name!r} does not exist{hint}; {_DEPLOY_HINT}")


def _check_templates(doc: Document, item: Any, base: FieldPath) -> None:
    """Template syntax in every action field and in `correlate`, checked on the raw data so
    an automation with other errors still gets these reported."""
    if not isinstance(item, dict):
        return
    targets = _raw_actions(item)
    trigger = item.get("trigger")
    if isinstance(trigger, dict) and isinstance(trigger.get("correlate"), str):
        targets.append((("trigger", "correlate"), trigger["correlate"]))
    for path, value in targets:
        if isinstance(value, dict):
            for key, field in value.items():
                if key != "type":
                    _templates_in(doc, field, base + path + (str(key),))
        else:
            _templates_in(doc, value, base + path)


def _templates_in(doc: Document, value: Any, path: FieldPath) -> None:
    if isinstance(value, str):
        for problem in check_syntax(value, where=format_path(path)):
            doc.problems.append(doc.placed(doc.node_at(path), problem))
    elif isinstance(value, dict):
        for key, item in value.items():
            if isinstance(key, str):
                for problem in check_syntax(key, where=format_path(path + (key,))):
                    node = doc.node_at(path + (key,), at_key=True)
                    doc.problems.append(doc.placed(node, problem))
            _templates_in(doc, item, path + (str(key),))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _templates_in(doc, item, path + (i,))
