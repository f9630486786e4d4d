"""Bad input, generated: automation YAML and event JSON that are valid, near-valid (a valid
document mutated: keys dropped or renamed, wrong types, misspelt states and types, broken
indentation) and garbage.

What must hold for every one of them:
- a rule file is either accepted or refused with `AutomationFileError`, every problem of which
  starts with `path:line:`; never another exception, never a hang (hypothesis' `deadline` bounds
  each example, pytest-timeout the whole test);
- an event body goes through the rule engine's decode path (`Event.model_validate_json`, as
  `AutomationsService._on_message` does) and `Evaluator.evaluate`: malformed → ValueError (the
  service dead-letters it), otherwise evaluated without an exception;
- the CLI (`flowrelay automation validate`, `flowrelay automation test --events`) answers either
  way with exit codes 0/1/2 and no traceback (a few runs, in process).
"""

from __future__ import annotations

import datetime as dt
import json
import re
import uuid
from pathlib import Path
from typing import Any

import pydantic
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from automations.errors import AutomationFileError
from automations.evaluator import Evaluator
from automations.loader import parse_automations
from automations.models import Automation
from engine.schemas import Event
from engine.states import STATE_NAMES

FUZZ = settings(
    max_examples=200,
    deadline=dt.timedelta(seconds=2),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
SOURCE = "rules/fuzz.yaml"
PLACED = re.compile(rf"^{re.escape(SOURCE)}:[1-9]\d*:")
STATES = sorted(STATE_NAMES)

# --- automation documents ----------------------------------------------------------------------

names = st.from_regex(r"[a-z][a-z0-9-]{0,15}", fullmatch=True)
flows = st.sampled_from(["up", "etl-*", "report", "*"])
templates = st.sampled_from([
    "{{ event.payload.result.batch_id }}", "{{ event.resource.flow }}", "b-{{ event.id }}",
    "{{ events | length }}", "plain", "{{ firing.id }}",
])
durations = st.sampled_from(["10s", "5m", "1h", "1h30m", 30, "2d", "3650d"])

simple_trigger = st.one_of(
    st.fixed_dictionaries(
        {"type": st.just("flow-run-state-change"), "match": st.fixed_dictionaries({"flow": flows})},
        optional={"expect": st.lists(st.sampled_from(STATES), min_size=1, max_size=3),
                  "threshold": st.integers(1, 5), "within": durations,
                  "posture": st.sampled_from(["reactive", "proactive"])},
    ).filter(lambda t: "within" in t or (t.get("posture") != "proactive" and t.get("threshold", 1) == 1)),
    st.fixed_dictionaries(
        {"type": st.just("event")},
        optional={"expect": st.lists(st.sampled_from(["batch.ready", "tick", "x.*"]), max_size=2),
                  "match": st.fixed_dictionaries({"id": st.sampled_from(["ticker/*", "a/b"])})},
    ),
)
child_trigger = st.fixed_dictionaries(  # a join's children: its own `within` decides
    {"type": st.just("flow-run-state-change"), "match": st.fixed_dictionaries({"flow": flows})},
    optional={"expect": st.lists(st.sampled_from(STATES), min_size=1, max_size=3)},
)
join_trigger = st.fixed_dictionaries(
    {"type": st.sampled_from(["compound", "sequence"]),
     "triggers": st.lists(child_trigger, min_size=1, max_size=3).map(
         lambda ts: [{**t, "name": f"child-{i}"} for i, t in enumerate(ts)])},
    optional={"within": durations, "correlate": st.just("{{ event.payload.parameters.batch_id }}")},
)
action = st.one_of(
    st.fixed_dictionaries(
        {"type": st.just("run-deployment"), "deployment": st.sampled_from(["down/main", "report/daily"])},
        optional={"parameters": st.dictionaries(names, st.one_of(templates, st.integers(), st.booleans()),
                                                max_size=3),
                  "tags": st.lists(names, max_size=2), "start_in": durations},
    ),
    st.fixed_dictionaries({"type": st.sampled_from(["pause-deployment", "resume-deployment"])},
                          optional={"deployment": st.just("down/main")}),
    st.fixed_dictionaries({"type": st.just("emit-event"), "event": st.sampled_from(["batch.done", "x.y"])},
                          optional={"payload": st.dictionaries(names, templates, max_size=2)}),
    st.fixed_dictionaries({"type": st.just("call-webhook"), "url": st.just("https://hooks.example.com/x")},
                          optional={"method": st.sampled_from(["GET", "POST"]), "retries": st.integers(0, 3)}),
)
automation = st.fixed_dictionaries(
    {"name": names, "trigger": st.one_of(simple_trigger, join_trigger),
     "actions": st.lists(action, min_size=1, max_size=3)},
    optional={"description": st.text(max_size=30), "enabled": st.booleans(), "cooldown": durations},
).map(lambda a: {**a, "allow_loops": True})  # the loop guard has its own tests (test_loader.py)
documents = st.builds(
    lambda items: {"automations": items},
    st.lists(automation, min_size=1, max_size=4, unique_by=lambda a: a["name"]),
)


def _paths(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [path] if path else []
    if isinstance(value, dict):
        for key, item in value.items():
            out += _paths(item, path + (key,))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            out += _paths(item, path + (i,))
    return out


def _parent(doc: Any, path: tuple[Any, ...]) -> Any:
    for part in path[:-1]:
        doc = doc[part]
    return doc


WRONG = st.one_of(st.none(), st.integers(), st.floats(allow_nan=True), st.booleans(),
                  st.sampled_from([10**12, "999999999d", "3651d", "P99999D", "inf", -1]),
                  st.lists(st.integers(), max_size=2), st.dictionaries(names, st.integers(), max_size=2),
                  st.text(max_size=10))


@st.composite
def near_valid(draw: st.DrawFn) -> Any:
    """A valid document with 1-3 mutations of its data."""
    doc = draw(documents)
    for _ in range(draw(st.integers(1, 3))):
        paths = _paths(doc)
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        parent, key = _parent(doc, path), path[-1]
        kind = draw(st.sampled_from(["drop", "rename", "wrong", "misspell"]))
        if kind == "drop":
            del parent[key]
        elif kind == "rename" and isinstance(parent, dict):
            parent[f"{key}{draw(st.sampled_from(['s', '_', 'x']))}"] = parent.pop(key)
        elif kind == "misspell" and isinstance(parent[key], str) and len(parent[key]) > 1:
            text = parent[key]
            i = draw(st.integers(0, len(text) - 1))
            parent[key] = text[:i] + text[i + 1:]  # 'Completed' → 'Complted', 'event' → 'evnt'
        else:
            parent[key] = draw(WRONG)
    return doc


def _dump(doc: Any) -> str:
    return yaml.safe_dump(doc, sort_keys=False, allow_unicode=True)


@st.composite
def broken_text(draw: st.DrawFn) -> str:
    """A valid document's text with its indentation broken or a character put in or taken out."""
    lines = _dump(draw(documents)).splitlines()
    for _ in range(draw(st.integers(1, 3))):
        i = draw(st.integers(0, len(lines) - 1))
        kind = draw(st.sampled_from(["indent", "dedent", "tab", "insert", "delete", "cut"]))
        line = lines[i]
        if kind == "indent":
            lines[i] = " " * draw(st.integers(1, 3)) + line
        elif kind == "dedent":
            lines[i] = line[draw(st.integers(1, 4)):]
        elif kind == "tab":
            lines[i] = "\t" + line.lstrip(" ")
        elif kind == "insert":
            at = draw(st.integers(0, len(line)))
            lines[i] = line[:at] + draw(st.sampled_from(list(":-[]{}&*!|>'\"%@`#,?\\"))) + line[at:]
        elif kind == "delete" and line:
            at = draw(st.integers(0, len(line) - 1))
            lines[i] = line[:at] + line[at + 1:]
        else:
            lines = lines[: i + 1]
            break
    return "\n".join(lines) + "\n"


YAMLISH = st.lists(st.sampled_from(list(":-[]{}&*!|>'\"%@`#,? \n\t\\abcde01")
                                   + ["automations", "!!python/object", "  - ", "name: ", "\n  "]),
                   max_size=80).map("".join)
garbage = st.one_of(st.text(max_size=300), YAMLISH)


def check_rules(text: str) -> None:
    """Accepted, or refused with every problem placed at `path:line:`."""
    try:
        loaded = parse_automations(text, source=SOURCE)
    except AutomationFileError as exc:
        assert exc.problems, "refused without a problem"
        for problem in exc.problems:
            assert PLACED.match(problem), problem
        return
    assert all(isinstance(item.automation, Automation) for item in loaded)
    exercise([item.automation for item in loaded])


def exercise(automations: list[Automation]) -> None:
    """What was accepted can run: loaded into the rule engine, fed events, its clock moved on
    past every window (a huge `within` once passed validation and then failed every event)."""
    e = Evaluator(now=T0)
    for a in automations:
        e.upsert(a, T0)
    for i, name in enumerate(["flow-run.Completed", "tick", "batch.ready"]):
        e.evaluate({"id": f"e{i}", "event": name, "occurred": T0.isoformat(),
                    "resource": {"id": "flow-run/1", "flow": "up"},
                    "payload": {"parameters": {"batch_id": "b"}, "result": {"batch_id": "b"}}}, T0)
    e.advance(T0 + dt.timedelta(days=3651))


@FUZZ
@given(documents)
def test_valid_documents_are_accepted(doc: dict[str, Any]) -> None:
    loaded = parse_automations(_dump(doc), source=SOURCE)
    exercise([item.automation for item in loaded])
    assert [item.automation.name for item in loaded] == [a["name"] for a in doc["automations"]]
    assert all(re.fullmatch(rf"{re.escape(SOURCE)}:[1-9]\d*", item.source) for item in loaded)


@FUZZ
@given(near_valid())
def test_near_valid_documents_are_accepted_or_placed(doc: Any) -> None:
    check_rules(_dump(doc))


@FUZZ
@given(broken_text())
def test_broken_indentation_and_characters_are_accepted_or_placed(text: str) -> None:
    check_rules(text)


@FUZZ
@given(garbage)
def test_garbage_is_refused_with_a_place(text: str) -> None:
    check_rules(text)


# --- events ------------------------------------------------------------------------------------

T0 = dt.datetime(2026, 11, 23, 10, 0, tzinfo=dt.UTC)

RULES = """
automations:
  - name: any-event
    trigger: {type: event}
    actions: [{type: pause-deployment, deployment: a/b}]
  - name: upstream
    trigger: {type: flow-run-state-change, match: {flow: up}, expect: [Completed], for_each: [resource.flow]}
    actions: [{type: run-deployment, deployment: down/main, parameters: {b: "{{ event.payload.result.batch_id }}"}}]
  - name: threshold
    trigger: {type: event, expect: ["tick"], threshold: 3, within: 1m, match: {id: "ticker/*"}}
    actions: [{type: emit-event, event: ticks}]
  - name: quiet
    trigger: {type: event, expect: ["heartbeat"], posture: proactive, within: 30s}
    actions: [{type: pause-deployment, deployment: a/b}]
  - name: join
    trigger:
      type: compound
      correlate: "{{ event.payload.parameters.batch_id }}"
      within: 1h
      triggers:
        - {type: flow-run-state-change, match: {flow: b}, expect: [Completed]}
        - {type: flow-run-state-change, match: {flow: c}, expect: [Completed, Failed]}
    actions: [{type: run-deployment, deployment: d/main}]
"""

json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=20)),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)),
    max_leaves=10,
)
times = st.one_of(
    st.datetimes(timezones=st.just(dt.UTC)).map(lambda t: t.isoformat()),
    st.datetimes().map(lambda t: t.isoformat()),  # no offset
    st.sampled_from(["2026-11-23T10:00:00Z", "yesterday", "", "2026-13-45T99:00:00"]),
    st.integers(-(2**40), 2**40),
)
event_names = st.sampled_from(["flow-run.Completed", "flow-run.Failed", "tick", "heartbeat", "batch.ready",
                               "", "flow-run.", "x" * 300, "émoji.🎉"])
valid_event = st.fixed_dictionaries(
    {"id": st.uuids().map(str), "event": event_names},
    optional={
        "occurred": times,
        "resource": st.fixed_dictionaries(
            {"id": st.sampled_from(["flow-run/1", "ticker/9", "x"])},
            optional={"flow": st.sampled_from(["up", "b", "c", "zz"]), "tags": st.lists(st.text(max_size=5))},
        ),
        "payload": st.fixed_dictionaries({}, optional={
            "result": json_values, "parameters": st.dictionaries(st.sampled_from(["batch_id", "n"]), json_values),
            "state": st.sampled_from(STATES)}),
        "related": st.lists(st.dictionaries(st.sampled_from(["id", "role"]), st.text(max_size=10)), max_size=2),
        "follows": st.one_of(st.uuids().map(str), st.just("nope")),
    },
)


@st.composite
def mutated_event(draw: st.DrawFn) -> Any:
    event = draw(valid_event)
    for _ in range(draw(st.integers(1, 3))):
        paths = _paths(event)
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        parent = _parent(event, path)
        if draw(st.booleans()):
            del parent[path[-1]]
        else:
            parent[path[-1]] = draw(WRONG)
    return event


event_bodies = st.one_of(
    valid_event.map(lambda e: json.dumps(e).encode()),
    mutated_event().map(lambda e: json.dumps(e).encode()),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.binary(max_size=200),
    st.text(max_size=200).map(lambda t: t.encode()),
)


def _rule_engine() -> Evaluator:
    e = Evaluator(now=T0)
    for item in parse_automations(RULES, source="rules.yaml"):
        e.upsert(item.automation, T0)
    return e


@FUZZ
@given(bodies=st.lists(st.tuples(event_bodies, st.integers(0, 120)), min_size=1, max_size=6))
def test_event_bodies_are_evaluated_or_refused_with_value_error(bodies: list[tuple[bytes, int]]) -> None:
    e, now = _rule_engine(), T0
    for body, seconds in bodies:
        now += dt.timedelta(seconds=seconds)
        # The service's decode path: what is not an event is a ValueError (dead-lettered).
        try:
            event = Event.model_validate_json(body).model_dump(mode="json")
        except (pydantic.ValidationError, ValueError):
            continue
        # the service measures the rule engine's lag from `occurred`: an aware time, always
        assert now - dt.datetime.fromisoformat(event["occurred"]) is not None
        try:
            outcome = e.evaluate(event, now)
        except ValueError:  # decoded, but not an event the rule engine can use (no name)
            assert not event["event"]
            continue
        json.dumps(list(outcome.state.values()))  # what the service stores must be JSON


@FUZZ
@given(st.one_of(st.dictionaries(st.text(max_size=6), json_values, max_size=4), json_values))
def test_decoded_shapes_that_are_not_events_are_value_errors(value: Any) -> None:
    """Evaluate's own guard, for callers that hand it data without the decode path."""
    try:
        Evaluator(now=T0).evaluate(value, T0)
    except ValueError:
        pass


def test_an_event_without_an_offset_is_read_as_utc_and_fires() -> None:
    """Regression: a naive `occurred` matched an automation, then the service's lag counter
    subtracted it from its aware clock (TypeError) and dead-lettered the event, losing the
    firing the evaluator had already made."""
    body = json.dumps({"id": str(uuid.uuid4()), "event": "flow-run.Completed", "occurred": "2026-11-23T10:00:00",
                       "resource": {"id": "flow-run/1", "flow": "up"},
                       "payload": {"result": {"batch_id": "b-1"}}}).encode()
    event = Event.model_validate_json(body)
    assert event.occurred == T0
    e = Evaluator(now=T0)
    for item in parse_automations(RULES, source="rules.yaml"):
        e.upsert(item.automation, T0)
    outcome = e.evaluate(event.model_dump(mode="json"), T0 + dt.timedelta(seconds=1))
    assert "upstream" in {f.automation for f in outcome.firings}
    assert dt.datetime.fromisoformat(event.model_dump(mode="json")["occurred"]) == T0


# --- the CLI, a few runs -----------------------------------------------------------------------

CLI_FILES = {
    "valid.yaml": _dump({"automations": [{"name": "ok", "trigger": {"type": "event", "expect": ["tick"]},
                                          "actions": [{"type": "emit-event", "event": "tock"}]}]}),
    "near.yaml": "automations:\n  - name: typo\n    trigger: {type: flow-run-state-change, expect: [Complted]}\n"
                 "    actions: [{type: run-deploymnt, deployment: a/b}]\n",
    "indent.yaml": "automations:\n  - name: x\n   trigger: {type: event}\n    actions: []\n",
    "garbage.yaml": "\x00\x01 ]]]{{{ !!python/object/apply:os.system ['true']\n",
    "tags.yaml": "automations: !!python/object/apply:os.system ['touch pwned']\n",
}


@pytest.mark.usefixtures("restore_process_state")
@pytest.mark.parametrize("name", sorted(CLI_FILES))
def test_cli_validate_accepts_or_places_every_problem(cli: Any, write: Any, name: str, tmp_path: Path) -> None:
    path = write(name, CLI_FILES[name])
    result = cli("automation", "validate", str(path))
    assert "Traceback" not in result.err
    assert not (tmp_path / "pwned").exists()
    if name == "valid.yaml":
        assert result.code == 0, result.err
        return
    assert result.code == 1, (result.out, result.err)
    problems = [line for line in result.err.splitlines() if line.startswith(str(path))]
    assert problems and result.err.rstrip().endswith("error(s); nothing was applied.")
    assert all(re.match(rf"^{re.escape(str(path))}:[1-9]\d*:", p) for p in problems), problems


@pytest.mark.usefixtures("restore_process_state")
def test_cli_test_events_good_bad_and_garbage(cli: Any, write: Any) -> None:
    rules = write("rules.yaml", CLI_FILES["valid.yaml"])
    def tick(occurred: str) -> str:
        return json.dumps({"id": str(uuid.uuid4()), "event": "tick", "occurred": occurred})

    good = tick("2026-11-23T10:00:00")  # no offset: UTC, and comparable with the next one
    ok = write("good.jsonl", f"{good}\n\n{tick('2026-11-23T10:00:01Z')}\n")
    result = cli("automation", "test", str(rules), "--events", str(ok), "--json")
    assert result.code == 0, result.err
    assert [r["automation"] for r in result.json()] == ["ok", "ok"]
    for body, where in (("{not json", ":2: "), ('{"id": "x"}', ":2: id: Input should be a valid UUID"),
                        ('["tick"]', ":2: "), ('{"event": "tick", "occurred": "yesterday"}', ":2: occurred")):
        bad = write("bad.jsonl", f"{good}\n{body}\n")
        result = cli("automation", "test", str(rules), "--events", str(bad))
        assert result.code == 2, (body, result.err)
        assert result.error.startswith(f"Error: {bad}{where}"), result.err
        assert len(result.err.strip().splitlines()) == 1
    binary = write("binary.jsonl", "")
    binary.write_bytes(b"\xff\xfe\x00garbage\n")
    result = cli("automation", "test", str(rules), "--events", str(binary))
    assert result.code == 2 and result.error.startswith("Error: "), result.err


# --- what fuzzing found, pinned ----------------------------------------------------------------


@pytest.mark.parametrize(("text", "expected"), [
    # a control character: PyYAML's ReaderError has no mark; it was reported without a line
    ("automations:\n  - name: a\x07\n", f"{SOURCE}:2:12: invalid YAML: unacceptable character #x0007"),
    # an action whose `type` is a list: TypeError (unhashable) in the deployment check
    ("automations:\n  - name: a\n    trigger: {type: event}\n    actions: [{type: [], deployment: a/b}]\n",
     f"{SOURCE}:4:"),
    # a duration past timedelta's range: OverflowError out of the parser
    ("automations:\n  - name: a\n    cooldown: 86400000000000.0\n    trigger: {type: event}\n"
     "    actions: [{type: emit-event, event: x}]\n", f"{SOURCE}:3:15: automations[0].cooldown: "),
    # a duration timedelta holds but the clock cannot reach: accepted, then every event failed
    ("automations:\n  - name: a\n    trigger: {type: event, threshold: 2, within: 999999998d}\n"
     "    actions: [{type: emit-event, event: x}]\n",
     f"{SOURCE}:3:50: automations[0].trigger.within: '999999998d' is longer than 3650 days"),
])
def test_found_by_fuzzing(text: str, expected: str) -> None:
    with pytest.raises(AutomationFileError) as caught:
        parse_automations(text, source=SOURCE)
    assert caught.value.problems[0].startswith(expected), caught.value.problems
