"""Matching one event against one simple trigger, `resolve_path`, and the trigger index."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import TypeAdapter

from automations.index import TriggerIndex
from automations.models import Automation, SimpleTrigger
from automations.triggers import (
    CompiledTrigger,
    event_name_matches,
    matches,
    resolve_path,
    why_not,
    why_not_after,
)

_SIMPLE: TypeAdapter[Any] = TypeAdapter(SimpleTrigger)


def trigger(**fields: Any) -> Any:
    fields.setdefault("type", "event")
    return _SIMPLE.validate_python(fields)


def event(name: str = "flow-run.Completed", related: list[dict[str, Any]] | None = None,
          payload: dict[str, Any] | None = None, **resource: Any) -> dict[str, Any]:
    return {
        "id": "e-1", "occurred": "2026-11-22T09:30:00Z", "event": name,
        "resource": {"id": "flow-run/r1", "name": "crimson-otter", "flow": "upstream",
                     "deployment": "upstream/nightly", "tags": ["etl", "daily"], "seq": 4,
                     "labels": {"team": "data", "tier": 2}, "retried": False, **resource},
        "related": related if related is not None else [{"id": "flow-run/p1", "role": "parent", "flow": "parent-flow"}],
        "payload": payload if payload is not None else {"state": "Completed", "parameters": {"batch_id": "b-17"}},
    }


# --- event names ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "patterns", "expected"),
    [
        ("flow-run.Completed", [], True),
        ("flow-run.Completed", ["flow-run.Completed"], True),
        ("flow-run.Completed", ["flow-run.Failed"], False),
        ("flow-run.Completed", ["flow-run.*"], True),
        ("task-run.Completed", ["flow-run.*"], False),
        ("batch.ready", ["*.ready"], True),
        ("batch.ready.late", ["*.ready"], False),
        ("batch.ready", ["flow-run.Failed", "batch.*"], True),
        ("flow-run.Completed", ["flow-run.Complete"], False),
        ("flow-run.Completed", ["*"], True),
        ("a.b[c]", ["a.b[c]"], True),  # only `*` is special
        ("a.bc", ["a.b?"], False),
    ],
)
def test_event_name_patterns(name: str, patterns: list[str], expected: bool) -> None:
    assert event_name_matches(name, patterns) is expected


# --- match ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("match", "expected"),
    [
        ({}, True),
        ({"flow": "upstream"}, True),
        ({"flow": "downstream"}, False),
        ({"flow": "up*"}, True),
        ({"flow": "*stream"}, True),
        ({"flow": "u*m"}, True),
        ({"flow": "down*"}, False),
        ({"flow": "!downstream"}, True),
        ({"flow": "!upstream"}, False),
        ({"flow": "!up*"}, False),
        ({"flow": ["a", "upstream"]}, True),
        ({"flow": ["a", "b"]}, False),
        ({"flow": ["!a", "!b"]}, True),  # neither a nor b
        ({"flow": ["!a", "!upstream"]}, False),
        ({"flow": ["up*", "!upstream"]}, False),  # starts with up, but not upstream itself
        ({"flow": ["up*", "!upstreamer"]}, True),
        ({"tags": "etl"}, True),  # any item of a list-valued field
        ({"tags": "da*"}, True),
        ({"tags": "ml"}, False),
        ({"tags": ["ml", "daily"]}, True),
        ({"tags": "!daily"}, False),  # a negation fails when any item matches
        ({"tags": "!ml"}, True),
        ({"seq": 4}, True),  # numbers by their text
        ({"seq": "4"}, True),
        ({"seq": 5}, False),
        ({"retried": False}, True),  # booleans as JSON writes them
        ({"retried": "false"}, True),
        ({"retried": True}, False),
        ({"labels.team": "data"}, True),  # dotted keys nest
        ({"labels.team": "ops"}, False),
        ({"labels.tier": 2}, True),
        ({"labels.missing": "x"}, False),
        ({"work_pool": "default"}, False),  # a missing field has no items
        ({"work_pool": "!default"}, True),
        ({"flow": "upstream", "deployment": "upstream/*"}, True),  # every key must hold
        ({"flow": "upstream", "deployment": "other/*"}, False),
    ],
)
def test_match(match: dict[str, Any], expected: bool) -> None:
    # Given a trigger matching resource fields, When an event arrives, Then it counts or not
    assert matches(trigger(match=match), event()) is expected


def test_a_literal_dotted_key_wins_over_nesting() -> None:
    ev = event(**{"prefect.resource.name": "x"})
    assert matches(trigger(match={"prefect.resource.name": "x"}), ev)


def test_list_of_nested_objects_is_searched_item_by_item() -> None:
    ev = event(items=[{"kind": "a"}, {"kind": "b"}])
    assert matches(trigger(match={"items.kind": "b"}), ev)
    assert not matches(trigger(match={"items.kind": "c"}), ev)


@pytest.mark.parametrize(
    ("match_related", "related", "expected"),
    [
        ({}, [], True),
        ({"role": "parent"}, [{"id": "flow-run/p", "role": "parent"}], True),
        ({"role": "parent"}, [{"id": "flow-run/p", "role": "child"}], False),
        ({"role": "parent"}, [], False),
        ({"role": "parent", "flow": "p*"}, [{"role": "parent", "flow": "x"}, {"role": "other", "flow": "parent"}], False),
        ({"role": "parent", "flow": "p*"}, [{"role": "other", "flow": "x"}, {"role": "parent", "flow": "pa"}], True),
        ({"role": ["parent", "root"]}, [{"role": "root"}], True),
        ([{"role": "parent"}, {"role": "work-pool", "id": "pool/a"}], [{"role": "parent"}, {"role": "work-pool", "id": "pool/a"}], True),
        ([{"role": "parent"}, {"role": "work-pool", "id": "pool/a"}], [{"role": "parent"}, {"role": "work-pool", "id": "pool/b"}], False),
        ([], [], True),
    ],
)
def test_match_related(match_related: Any, related: list[dict[str, Any]], expected: bool) -> None:
    assert matches(trigger(match_related=match_related), event(related=related)) is expected


def test_flow_run_state_change_expects_states() -> None:
    t = trigger(type="flow-run-state-change", expect=["Completed", "failed"])
    assert matches(t, event("flow-run.Completed"))
    assert matches(t, event("flow-run.Failed"))
    assert not matches(t, event("flow-run.Running"))
    any_state = trigger(type="flow-run-state-change")
    assert matches(any_state, event("flow-run.Running"))
    assert not matches(any_state, event("task-run.Running"))


# --- why not --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("fields", "ev", "reason"),
    [
        ({"match": {"flow": "upstream"}, "expect": ["flow-run.Completed"]}, event(), None),
        ({"match": {"flow": "x"}}, event(), "resource.flow is 'upstream', expected 'x'"),
        ({"expect": ["flow-run.Completed"]}, event("flow-run.Failed"),
         "event 'flow-run.Failed' is not one of flow-run.Completed"),
        ({"expect": ["flow-run.Completed", "batch.*"]}, event("flow-run.Failed"),
         "event 'flow-run.Failed' is not one of flow-run.Completed, batch.*"),
        ({"match": {"flow": ["a", "b"]}}, event(), "resource.flow is 'upstream', expected one of 'a', 'b'"),
        ({"match": {"flow": "!upstream"}}, event(), "resource.flow is 'upstream', expected not 'upstream'"),
        ({"match": {"flow": ["u*", "!upstream", "!x"]}}, event(),
         "resource.flow is 'upstream', expected 'u*' and none of 'upstream', 'x'"),
        ({"match": {"work_pool": "default"}}, event(), "resource.work_pool is missing, expected 'default'"),
        ({"match": {"tags": "ml"}}, event(), "resource.tags is ['etl', 'daily'], expected 'ml'"),
        ({"match": {"flow": "upstream", "deployment": "x/*"}}, event(),
         "resource.deployment is 'upstream/nightly', expected 'x/*'"),
        ({"match_related": {"role": "root"}}, event(), "no related resource has role 'root'"),
    ],
)
def test_why_not_names_the_first_failing_check(fields: dict[str, Any], ev: dict[str, Any], reason: str | None) -> None:
    assert why_not(trigger(**fields), ev) == reason


def test_why_not_after() -> None:
    t = trigger(expect=["flow-run.Completed"], after=["flow-run.Running"], match={"flow": "upstream"})
    assert why_not_after(t, event("flow-run.Running")) is None
    assert why_not_after(t, event("flow-run.Pending")) == (
        "event 'flow-run.Pending' is not one of the arming events flow-run.Running")
    assert why_not_after(trigger(), event()) == "the trigger has no `after` events"


# --- resolve_path and buckets ---------------------------------------------------------------------
@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("flow", "upstream"),
        ("tags", ["etl", "daily"]),
        ("missing", None),
        ("resource.name", "crimson-otter"),
        ("payload.parameters.batch_id", "b-17"),
        ("payload.parameters.nope", None),
        ("event", None),  # a bare word is a resource field, not the event's own key
        ("related.role", ["parent"]),
    ],
)
def test_resolve_path(path: str, expected: Any) -> None:
    assert resolve_path(event(), path) == expected


@pytest.mark.parametrize(
    ("for_each", "expected"),
    [
        ([], ""),
        (["flow"], "upstream"),
        (["payload.parameters.batch_id"], "b-17"),
        (["flow", "seq"], '["upstream", "4"]'),
        (["missing"], ""),
    ],
)
def test_bucket_key(for_each: list[str], expected: str) -> None:
    assert CompiledTrigger(trigger(for_each=for_each)).bucket(event()) == expected


# --- the index ------------------------------------------------------------------------------------
def automation(name: str, trig: dict[str, Any]) -> Automation:
    return Automation.model_validate({"name": name, "trigger": trig, "actions": [{"type": "pause-deployment"}]})


def index_of(automations: list[Automation]) -> TriggerIndex:
    index = TriggerIndex()
    for a in automations:
        index.add(a.name, [(n, CompiledTrigger(t)) for n, t in a.simple_triggers()])
    return index


def per_flow(n: int) -> list[Automation]:
    return [automation(f"a{i}", {"type": "flow-run-state-change", "match": {"flow": f"f{i}"}, "expect": ["Completed"]})
            for i in range(n)]


@pytest.mark.parametrize("loaded", [10, 10_000])
def test_index_cost_does_not_grow_with_automations_that_cannot_match(loaded: int) -> None:
    # Given `loaded` automations, each for its own flow
    index = index_of(per_flow(loaded))
    # When an event of flow f3 completes, Then exactly its automation is a candidate
    assert index.candidates(event(flow="f3")) == {"a3": {"event"}}
    # And other states or unknown flows offer nothing
    assert index.candidates(event("flow-run.Failed", flow="f3")) == {}
    assert index.candidates(event(flow="nobody")) == {}


def test_index_candidate_sets_are_the_same_size_with_10_and_10000_automations() -> None:
    small, large = index_of(per_flow(10)), index_of(per_flow(10_000))
    extra = [automation("any-failure", {"type": "flow-run-state-change", "expect": ["Failed"]}),
             automation("all-runs", {"type": "event", "expect": ["flow-run.*"], "match": {"tags": "etl"}})]
    for a in extra:
        for index in (small, large):
            index.add(a.name, [(n, CompiledTrigger(t)) for n, t in a.simple_triggers()])
    for ev in (event(flow="f5"), event("flow-run.Failed", flow="f5"), event(flow="zzz")):
        assert len(small.candidates(ev)) == len(large.candidates(ev))


@pytest.mark.parametrize(
    ("trig", "ev", "found"),
    [
        ({"type": "event", "expect": ["batch.ready"]}, event("batch.ready"), True),
        ({"type": "event", "expect": ["batch.*"]}, event("batch.ready"), True),
        ({"type": "event", "expect": ["batch.*"]}, event("flow-run.Completed"), False),
        ({"type": "event"}, event("anything.at.all"), True),  # no expect: any event
        ({"type": "event", "expect": ["x"], "after": ["batch.ready"]}, event("batch.ready"), True),  # arming
        ({"type": "event", "match": {"flow": ["a", "upstream"]}}, event(), True),
        ({"type": "event", "match": {"flow": ["a", "b"]}}, event(), False),
        ({"type": "event", "match": {"flow": "up*"}}, event(), True),  # wildcard: not indexed, checked
        ({"type": "event", "match": {"tags": "daily"}, "expect": ["flow-run.Completed"]}, event(), True),
        ({"type": "event", "match": {"labels.team": "data"}}, event(), True),
        ({"type": "event", "match": {"seq": 4}}, event(), True),
    ],
)
def test_index_finds_what_can_match(trig: dict[str, Any], ev: dict[str, Any], found: bool) -> None:
    assert ("x" in index_of([automation("x", trig)]).candidates(ev)) is found


def test_index_finds_each_child_of_a_compound_trigger() -> None:
    a = automation("d", {"type": "compound", "triggers": [
        {"type": "flow-run-state-change", "match": {"flow": "b"}, "expect": ["Completed"]},
        {"type": "flow-run-state-change", "match": {"flow": "c"}, "expect": ["Completed"]},
    ]})
    index = index_of([a])
    assert index.candidates(event(flow="b")) == {"d": {"b"}}
    assert index.candidates(event(flow="c")) == {"d": {"c"}}


def test_index_remove_and_replace() -> None:
    index = index_of(per_flow(3) + [automation("w", {"type": "event", "expect": ["batch.*"]})])
    index.remove("a1")
    index.remove("w")
    assert index.candidates(event(flow="f1")) == {}
    assert index.candidates(event("batch.ready")) == {}
    replaced = automation("a0", {"type": "flow-run-state-change", "match": {"flow": "g"}, "expect": ["Completed"]})
    index.add("a0", [(n, CompiledTrigger(t)) for n, t in replaced.simple_triggers()])
    assert index.candidates(event(flow="f0")) == {}
    assert index.candidates(event(flow="g")) == {"a0": {"event"}}
    assert len(index) == 2
