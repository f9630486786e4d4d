"""Compound and sequence triggers: joins per correlation key, within a window, fired once."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import pytest

from automations.evaluator import Evaluator, Outcome
from automations.models import Automation

T0 = dt.datetime(2026, 11, 22, 9, 0, tzinfo=dt.UTC)


def at(minutes: float) -> dt.datetime:
    return T0 + dt.timedelta(minutes=minutes)


_n = 0


def done(flow: str, batch: str = "b1", id: str | None = None, state: str = "Completed") -> dict[str, Any]:
    global _n
    _n += 1
    return {"id": id or f"ev-{_n}", "occurred": "2026-11-22T09:00:00Z", "event": f"flow-run.{state}",
            "resource": {"id": f"flow-run/{_n}", "flow": flow},
            "related": [], "payload": {"parameters": {"batch_id": batch}}}


def child(flow: str, state: str = "Completed") -> dict[str, Any]:
    return {"type": "flow-run-state-change", "match": {"flow": flow}, "expect": [state]}


def join(kind: str = "compound", flows: tuple[str, ...] = ("b", "c"), **fields: Any) -> Automation:
    fields.setdefault("correlate", "{{ event.payload.parameters.batch_id }}")
    trigger = {"type": kind, "triggers": [child(f) for f in flows], "within": "1h", **fields}
    return Automation.model_validate({"name": "d", "trigger": trigger, "actions": [{"type": "pause-deployment"}]})


class Store:
    def __init__(self) -> None:
        self.rows: dict[tuple[str, str], dict[str, Any]] = {}

    def apply(self, out: Outcome) -> Outcome:
        for key, row in out.state.items():
            json.dumps(row)
            if row is None:
                self.rows.pop(key, None)
            else:
                self.rows[key] = row
        return out


def loaded(automation: Automation, now: dt.datetime = T0, store: Store | None = None) -> Evaluator:
    e = Evaluator(now=now, state=store.rows if store else None)
    out = e.upsert(automation, now)
    if store:
        store.apply(out)
    return e


def feed(e: Evaluator, steps: list[tuple[float, dict[str, Any]]]) -> list[tuple[float, Any]]:
    """Each (minute, event) evaluated in turn (and time advanced); the firings with their minute."""
    fired = []
    for minute, event in steps:
        for f in e.evaluate(event, at(minute)).firings:
            fired.append((minute, f))
    return fired


# --- compound -------------------------------------------------------------------------------------
def test_d_runs_when_b_and_c_completed_for_the_same_batch() -> None:
    # Given "D when B and C both completed, per batch"
    e = loaded(join())
    b1, c2, c1 = done("b", "1"), done("c", "2"), done("c", "1")
    # When B of batch 1, C of batch 2 and C of batch 1 complete
    fired = feed(e, [(0, b1), (1, c2), (2, c1)])
    # Then D fires once, for batch 1, with both child events by name
    assert [(m, f.correlation, f.kind, f.event, f.events) for m, f in fired] == [
        (2, "1", "fired", c1, {"b": b1, "c": c1})]
    assert fired[0][1].template_context()["events"]["b"] is b1


@pytest.mark.parametrize(
    ("flows", "require", "steps", "fires_at"),
    [
        (("b", "c"), "all", ["b", "c"], [1]),
        (("b", "c"), "all", ["b", "b", "b"], []),
        (("b", "c"), "any", ["b", "c"], [0]),           # a key fires once, `any` at its first child
        (("b", "c"), "any", ["c"], [0]),
        (("b", "c", "e"), 2, ["b", "b", "e", "c"], [2]),
        (("b", "c", "e"), 3, ["e", "c", "b"], [2]),
        (("b", "c", "e"), 1, ["x", "e"], [1]),
    ],
)
def test_require(flows: tuple[str, ...], require: Any, steps: list[str], fires_at: list[int]) -> None:
    e = loaded(join(flows=flows, require=require))
    fired = feed(e, [(i, done(flow)) for i, flow in enumerate(steps)])
    assert [m for m, _ in fired] == fires_at


def test_a_fired_key_never_fires_again_within_its_window() -> None:
    e = loaded(join())
    feed(e, [(0, done("b")), (1, done("c"))])
    # Late children of batch b1 (other runs, new event ids) do not reopen it
    assert feed(e, [(10, done("b")), (11, done("c"))]) == []
    assert e.pending("d")[0]["status"] == "fired"
    # Once the window would have closed, the key is forgotten (and a new join may open)
    e.advance(at(60))
    assert e.pending("d") == []
    assert len(feed(e, [(61, done("b")), (62, done("c"))])) == 1


def test_without_correlate_the_join_starts_afresh_after_each_firing() -> None:
    e = loaded(join(correlate=None))
    fired = feed(e, [(0, done("b", "1")), (1, done("c", "2")), (2, done("b", "3")), (3, done("c", "4"))])
    assert [(m, f.correlation) for m, f in fired] == [(1, None), (3, None)]


def test_a_partial_join_expires_visibly() -> None:
    # Given B done for batch 1, and C never comes
    e = loaded(join(flows=("b", "c", "e"), require=2))
    b = done("b", "1")
    feed(e, [(0, b)])
    assert e.pending("d") == [{
        "kind": "join", "status": "open", "bucket": "", "correlation": "1",
        "arrived": {"b": {"id": b["id"], "occurred": b["occurred"]}}, "awaited": ["c", "e"],
        "expires_at": at(60).isoformat(),
    }]
    assert e.next_deadline() == at(60)
    # When the window closes, Then an `expired` firing names the children that never came
    assert e.advance(at(59)).firings == []
    out = e.advance(at(60))
    assert [(f.kind, f.correlation, f.awaited, f.event, f.events) for f in out.firings] == [
        ("expired", "1", ("c", "e"), b, {"b": b})]
    assert out.firings[0].template_context()["firing"]["awaited"] == ["c", "e"]
    assert e.pending("d") == []


def test_an_event_after_the_window_closed_opens_a_new_join() -> None:
    e = loaded(join())
    feed(e, [(0, done("b"))])
    # The service was slow to call advance: evaluate lets time pass first
    out = e.evaluate(done("c"), at(61))
    assert [f.kind for f in out.firings] == ["expired"]
    assert e.pending("d")[0]["arrived"].keys() == {"c"}


def test_a_child_event_may_complete_several_children() -> None:
    trigger = {"type": "compound", "within": "1h", "triggers": [
        {"type": "event", "name": "any-completed", "expect": ["flow-run.Completed"]},
        {"type": "event", "name": "b-completed", "expect": ["flow-run.Completed"], "match": {"flow": "b"}}]}
    e = loaded(Automation.model_validate({"name": "d", "trigger": trigger, "actions": [{"type": "pause-deployment"}]}))
    assert len(feed(e, [(0, done("b"))])) == 1


def test_a_correlate_template_that_fails_is_reported_and_others_still_run() -> None:
    e = Evaluator(now=T0)
    e.upsert(join(correlate="{{ event.payload.nope.batch }}"), T0)
    e.upsert(Automation.model_validate({"name": "simple", "trigger": child("b"), "actions": [{"type": "pause-deployment"}]}), T0)
    out = e.evaluate(done("b"), at(0))
    assert [f.automation for f in out.firings] == ["simple"]
    assert [name for name, _ in out.errors] == ["d"]
    assert "trigger.correlate" in out.errors[0][1] and "nope" in out.errors[0][1]
    assert e.pending("d") == []


def test_cooldown_on_a_join() -> None:
    automation = join().model_copy(update={"cooldown": dt.timedelta(minutes=30)})
    e = loaded(automation)
    fired = feed(e, [(0, done("b", "1")), (1, done("c", "1")), (2, done("b", "2")), (3, done("c", "2"))])
    assert [m for m, _ in fired] == [1]
    assert e.explain("d", done("b", "3"), at(4)) == [
        "join '3': b arrived, awaiting c until 2026-11-22T10:04:00+00:00"]
    by_key = {p.get("correlation"): p for p in e.pending("d") if p["kind"] == "join"}
    assert (by_key["1"]["status"], by_key["2"]["status"]) == ("fired", "suppressed")
    assert {"kind": "cooldown", "bucket": "", "until": at(31).isoformat()} in e.pending("d")
    feed(e, [(5, done("b", "4"))])
    assert e.explain("d", done("c", "4"), at(6)) == [
        "join '4' is complete but the automation is in cooldown until 2026-11-22T09:31:00+00:00: does not fire"]


# --- sequence -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("steps", "fires_at"),
    [
        (["b", "c", "e"], [2]),
        (["c", "b", "e"], []),            # c before b is ignored; e then comes before c
        (["c", "b", "c", "e"], [3]),      # the out-of-order c does not count, the later one does
        (["b", "b", "c", "c", "e"], [4]),
        (["e", "c", "b"], []),
    ],
)
def test_sequence_order(steps: list[str], fires_at: list[int]) -> None:
    e = loaded(join("sequence", flows=("b", "c", "e")))
    assert [m for m, _ in feed(e, [(i, done(f)) for i, f in enumerate(steps)])] == fires_at


def test_sequence_explains_an_out_of_order_child() -> None:
    e = loaded(join("sequence", flows=("b", "c", "e")))
    assert e.explain("d", done("c"), at(0)) == ["'c' is out of order: the sequence waits for 'b' first"]
    feed(e, [(0, done("b"))])
    assert e.explain("d", done("e"), at(1)) == ["'e' is out of order: the sequence waits for 'c' first"]
    assert e.explain("d", done("b"), at(1)) == ["b already arrived for join 'b1'"]


def test_sequence_expires_with_the_rest_awaited() -> None:
    e = loaded(join("sequence", flows=("b", "c", "e")))
    feed(e, [(0, done("b")), (1, done("c"))])
    [expired] = e.advance(at(60)).firings
    assert (expired.kind, expired.awaited, list(expired.events)) == ("expired", ("e",), ["b", "c"])


# --- explain, dedup, restart ----------------------------------------------------------------------
def test_explain_a_join() -> None:
    e = loaded(join())
    assert e.explain("d", done("x"), at(0)) == [
        "child 'b' does not match: resource.flow is 'x', expected 'b'",
        "child 'c' does not match: resource.flow is 'x', expected 'c'",
    ]
    feed(e, [(0, done("b"))])
    assert e.explain("d", done("c"), at(1))[0].startswith("fires (firing ")
    feed(e, [(1, done("c"))])
    assert e.explain("d", done("c"), at(2)) == [
        "join 'b1' already fired at 2026-11-22T09:01:00+00:00; it stays closed until 2026-11-22T10:00:00+00:00"]


def test_a_redelivered_child_event_does_not_count_or_fire_twice() -> None:
    e = loaded(join(require="any", correlate=None))
    b = done("b")
    assert len(feed(e, [(0, b)])) == 1
    assert e.evaluate(b, at(1)) == Outcome()


def test_half_a_join_then_a_restart_then_the_other_half_fires_exactly_once() -> None:
    store = Store()
    automation = join()
    # Given B arrived before the restart
    first = loaded(automation, store=store)
    b = done("b")
    store.apply(first.evaluate(b, at(0)))
    # When the service restarts and C arrives (and C is then redelivered)
    second = loaded(automation, now=at(5), store=store)
    c = done("c")
    fired = store.apply(second.evaluate(c, at(6))).firings
    again = store.apply(second.evaluate(c, at(7))).firings
    # Then exactly one firing, with both children
    assert [(f.kind, f.events) for f in fired] == [("fired", {"b": b, "c": c})]
    assert again == []
    # And a third incarnation still knows the key fired
    third = loaded(automation, now=at(8), store=store)
    assert third.evaluate(done("c"), at(9)).firings == []
    assert third.evaluate(c, at(9)) == Outcome()


def test_a_partial_join_restored_from_state_expires_on_time() -> None:
    store = Store()
    first = loaded(join(), store=store)
    store.apply(first.evaluate(done("b"), at(0)))
    second = loaded(join(), now=at(30), store=store)
    assert second.next_deadline() == at(60)
    assert [f.kind for f in second.advance(at(60)).firings] == ["expired"]
