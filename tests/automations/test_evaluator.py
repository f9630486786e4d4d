"""The evaluator: windows, arming, proactive timers, cooldown, dedup, restart, explain.

Joins (compound and sequence) are in test_joins.py. Every test drives an injected clock.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import pytest

from automations.errors import AutomationNotFound
from automations.evaluator import Evaluator, Outcome
from automations.models import Automation

T0 = dt.datetime(2026, 11, 22, 9, 0, tzinfo=dt.UTC)


def at(minutes: float) -> dt.datetime:
    return T0 + dt.timedelta(minutes=minutes)


def auto(name: str = "a", trigger: dict[str, Any] | None = None, **fields: Any) -> Automation:
    trigger = trigger or {"type": "flow-run-state-change", "match": {"flow": "up"}, "expect": ["Completed"]}
    return Automation.model_validate({"name": name, "trigger": trigger, "actions": [{"type": "pause-deployment"}], **fields})


_n = 0


def ev(name: str = "flow-run.Completed", id: str | None = None, **resource: Any) -> dict[str, Any]:
    global _n
    _n += 1
    resource.setdefault("flow", "up")
    return {"id": id or f"ev-{_n}", "occurred": "2026-11-22T09:00:00Z", "event": name,
            "resource": {"id": f"flow-run/{_n}", **resource}, "related": [],
            "payload": {"parameters": {"batch_id": resource.get("batch", "b1")}}}


class Store:
    """Persisted state: what the service would write from each Outcome."""

    def __init__(self) -> None:
        self.rows: dict[tuple[str, str], dict[str, Any]] = {}

    def apply(self, out: Outcome) -> Outcome:
        for key, row in out.state.items():
            json.dumps(row)  # every row must be JSON-able
            if row is None:
                self.rows.pop(key, None)
            else:
                self.rows[key] = row
        return out


def loaded(*automations: Automation, now: dt.datetime = T0, store: Store | None = None) -> Evaluator:
    e = Evaluator(now=now, state=store.rows if store else None)
    for a in automations:
        out = e.upsert(a, now)
        if store:
            store.apply(out)
    return e


# --- simple reactive triggers ---------------------------------------------------------------------
def test_a_matching_event_fires_once_with_its_context() -> None:
    # Given "when up completes"
    e = loaded(auto())
    event = ev()
    # When up completes
    out = e.evaluate(event, at(1))
    # Then one firing, carrying the event
    assert len(out.firings) == 1
    f = out.firings[0]
    assert (f.automation, f.kind, f.at, f.event, f.events, f.bucket, f.correlation, f.awaited, f.proactive) == (
        "a", "fired", at(1), event, {"event": event}, "", None, (), False)
    assert out.matched == {"a": 1}
    ctx = f.template_context()
    assert ctx["event"] is event and ctx["firing"]["id"] == f.id and ctx["firing"]["at"] == at(1).isoformat()


@pytest.mark.parametrize(
    "event",
    [ev("flow-run.Failed"), ev(flow="other"), ev("batch.ready")],
)
def test_an_event_that_does_not_match_changes_nothing(event: dict[str, Any]) -> None:
    e = loaded(auto())
    out = e.evaluate(event, at(1))
    assert out == Outcome()


def test_firing_ids_are_deterministic_and_distinct() -> None:
    event = ev()
    one = loaded(auto()).evaluate(event, at(1)).firings[0]
    again = loaded(auto()).evaluate(event, at(5)).firings[0]
    other = loaded(auto()).evaluate(ev(), at(1)).firings[0]
    renamed = loaded(auto("b")).evaluate(event, at(1)).firings[0]
    assert one.id == again.id
    assert len({one.id, other.id, renamed.id}) == 3
    assert all(c in "0123456789abcdef" for c in one.id)


THRESHOLD = {"type": "flow-run-state-change", "match": {"flow": "up"}, "expect": ["Failed"],
             "threshold": 3, "within": "10m"}


@pytest.mark.parametrize(
    ("minutes", "fires_at"),
    [
        ([0, 1, 2], [2]),                       # 3 in 2 minutes
        ([0, 5, 9.99], [9.99]),                 # just inside the window
        ([0, 5, 10], []),                       # the first left the window exactly at 10
        ([0, 5, 10, 12], [12]),                 # 5, 10, 12
        ([0, 30, 60], []),                      # spread out: never 3 in 10 minutes
        ([0, 1, 2, 3, 4, 5], [2, 5]),           # a firing resets the count
        ([0, 1, 20, 21, 22], [22]),             # the clock jumps; old ones dropped
    ],
)
def test_threshold_counts_in_a_trailing_window(minutes: list[float], fires_at: list[float]) -> None:
    e = loaded(auto(trigger=THRESHOLD))
    fired = [m for m in minutes if e.evaluate(ev("flow-run.Failed"), at(m)).firings]
    assert fired == fires_at


def test_threshold_counts_drop_out_in_advance_and_the_state_is_deleted() -> None:
    store = Store()
    e = loaded(auto(trigger=THRESHOLD), store=store)
    store.apply(e.evaluate(ev("flow-run.Failed"), at(0)))
    store.apply(e.evaluate(ev("flow-run.Failed"), at(4)))
    assert e.pending("a") == [{"kind": "threshold", "bucket": "", "count": 2, "of": 3,
                               "window_ends": at(10).isoformat()}]
    assert e.next_deadline() == at(10)
    # When time passes the first event's window
    store.apply(e.advance(at(10)))
    assert e.pending("a")[0]["count"] == 1
    assert e.next_deadline() == at(14)
    store.apply(e.advance(at(60)))
    # Then nothing is left, in memory or persisted
    assert e.pending("a") == []
    assert e.next_deadline() is None
    assert store.rows == {}


def test_for_each_keeps_a_count_per_bucket() -> None:
    e = loaded(auto(trigger={**THRESHOLD, "match": {}, "for_each": ["flow"], "threshold": 2}))
    assert not e.evaluate(ev("flow-run.Failed", flow="x"), at(0)).firings
    assert not e.evaluate(ev("flow-run.Failed", flow="y"), at(1)).firings
    out = e.evaluate(ev("flow-run.Failed", flow="x"), at(2))
    assert [f.bucket for f in out.firings] == ["x"]
    assert [p["bucket"] for p in e.pending("a")] == ["y"]


AFTER = {"type": "flow-run-state-change", "match": {"flow": "up"}, "after": ["Running"], "expect": ["Completed"]}


def test_after_arms_the_trigger_until_it_fires() -> None:
    e = loaded(auto(trigger=AFTER))
    # Given no arming event yet, a Completed does not count
    assert e.evaluate(ev(), at(0)) == Outcome()
    # When Running arms it, Then the next Completed fires
    assert not e.evaluate(ev("flow-run.Running"), at(1)).firings
    assert e.pending("a") == [{"kind": "armed", "bucket": "", "count": 0, "of": 1, "window_ends": None,
                               "armed_by": e.pending("a")[0]["armed_by"], "armed_until": None}]
    assert len(e.evaluate(ev(), at(2)).firings) == 1
    # And it must be armed again
    assert not e.evaluate(ev(), at(3)).firings
    e.evaluate(ev("flow-run.Running"), at(4))
    assert len(e.evaluate(ev(), at(5)).firings) == 1


def test_arming_lapses_after_within() -> None:
    e = loaded(auto(trigger={**AFTER, "within": "10m"}))
    e.evaluate(ev("flow-run.Running"), at(0))
    assert e.next_deadline() == at(10)
    e.advance(at(10))
    assert e.pending("a") == []
    assert not e.evaluate(ev(), at(11)).firings


def test_an_event_both_arming_and_expected_arms_first_then_counts() -> None:
    # "a Completed, then another Completed"
    e = loaded(auto(trigger={**AFTER, "after": ["Completed"]}))
    assert e.evaluate(ev(), at(0)).firings == []
    assert len(e.evaluate(ev(), at(1)).firings) == 1
    assert e.evaluate(ev(), at(2)).firings == []


def test_after_with_a_threshold_counts_only_while_armed() -> None:
    e = loaded(auto(trigger={**AFTER, "threshold": 2, "within": "10m"}))
    e.evaluate(ev("flow-run.Running"), at(0))
    e.evaluate(ev(), at(5))
    assert e.next_deadline() == at(10)  # the arming lapses before the count would
    e.advance(at(10))
    assert e.evaluate(ev(), at(11)).firings == []
    e.evaluate(ev("flow-run.Running"), at(12))
    e.evaluate(ev(), at(13))
    assert len(e.evaluate(ev(), at(14)).firings) == 1


def test_after_per_bucket() -> None:
    e = loaded(auto(trigger={**AFTER, "match": {}, "for_each": ["flow"]}))
    e.evaluate(ev("flow-run.Running", flow="x"), at(0))
    assert not e.evaluate(ev(flow="y"), at(1)).firings
    assert [f.bucket for f in e.evaluate(ev(flow="x"), at(2)).firings] == ["x"]


# --- proactive --------------------------------------------------------------------------------------
PROACTIVE = {"type": "event", "expect": ["batch.ready"], "posture": "proactive", "within": "30m"}


def test_proactive_without_after_is_armed_at_load_and_fires_at_the_deadline() -> None:
    # Given "batch.ready every 30 minutes", loaded at T0
    e = loaded(auto(trigger=PROACTIVE))
    assert e.next_deadline() == at(30)
    # When nothing arrives, Then it fires at the deadline, not before
    assert e.advance(at(29)).firings == []
    out = e.advance(at(30))
    assert [(f.kind, f.proactive, f.event, f.events) for f in out.firings] == [("fired", True, {}, {"event": {}})]
    # And it is armed again from the firing
    assert e.next_deadline() == at(60)


def test_proactive_expected_event_disarms_and_rearms_from_that_moment() -> None:
    e = loaded(auto(trigger=PROACTIVE))
    out = e.evaluate(ev("batch.ready"), at(20))
    assert out.firings == [] and out.matched == {"a": 1}
    assert e.advance(at(30)).firings == []
    assert e.next_deadline() == at(50)
    assert len(e.advance(at(50)).firings) == 1


def test_proactive_threshold_needs_n_events_before_the_deadline() -> None:
    e = loaded(auto(trigger={**PROACTIVE, "threshold": 2}))
    e.evaluate(ev("batch.ready"), at(10))
    assert e.pending("a")[0]["count"] == 1
    assert len(e.advance(at(30)).firings) == 1


PROACTIVE_AFTER = {"type": "flow-run-state-change", "after": ["Completed"], "expect": ["Completed"],
                   "posture": "proactive", "within": "30m", "for_each": ["payload.parameters.batch_id"]}


def test_proactive_with_after_fires_with_the_arming_event() -> None:
    # Given "downstream not Completed within 30 min after upstream Completed", per batch
    trig = {"type": "event", "after": ["flow-run.Completed"], "expect": ["flow-run.Completed"], "match": {"flow": ["up", "down"]},
            "posture": "proactive", "within": "30m", "for_each": ["payload.parameters.batch_id"]}
    e = loaded(auto(trigger=trig))
    assert e.next_deadline() is None  # nothing armed before an `after` event
    upstream = ev(flow="up", batch="b1")
    e.evaluate(upstream, at(0))
    e.evaluate(ev(flow="up", batch="b2"), at(1))
    assert [(p["bucket"], p["deadline"]) for p in e.pending("a")] == [("b1", at(30).isoformat()), ("b2", at(31).isoformat())]
    # When b2's downstream... (an already-armed bucket counts the next Completed)
    e.evaluate(ev(flow="down", batch="b2"), at(10))
    # Then only b1 fires, with its arming event
    out = e.advance(at(40))
    assert [(f.bucket, f.event) for f in out.firings] == [("b1", upstream)]
    assert e.pending("a") == [] and e.next_deadline() is None


def test_proactive_for_each_without_after_watches_each_bucket_from_its_first_event() -> None:
    e = loaded(auto(trigger={**PROACTIVE, "for_each": ["flow"]}))
    assert e.next_deadline() is None
    e.evaluate(ev("batch.ready", flow="x"), at(0))
    e.evaluate(ev("batch.ready", flow="y"), at(0))
    e.evaluate(ev("batch.ready", flow="y"), at(20))  # y is alive
    out = e.advance(at(30))
    assert [f.bucket for f in out.firings] == ["x"]
    # A quiet bucket fires once, then waits for its next event
    assert [p["bucket"] for p in e.pending("a")] == ["y"]


# --- cooldown ---------------------------------------------------------------------------------------
def test_cooldown_suppresses_a_second_firing_of_the_same_bucket() -> None:
    e = loaded(auto(trigger={"type": "event", "expect": ["x.*"], "for_each": ["flow"]}, cooldown="10m"))
    assert len(e.evaluate(ev("x.1", flow="f"), at(0)).firings) == 1
    out = e.evaluate(ev("x.2", flow="f"), at(5))
    assert out.firings == [] and out.matched == {"a": 1}
    assert {"kind": "cooldown", "bucket": "f", "until": at(10).isoformat()} in e.pending("a")
    assert len(e.evaluate(ev("x.3", flow="g"), at(5)).firings) == 1  # another bucket
    assert len(e.evaluate(ev("x.4", flow="f"), at(10)).firings) == 1  # cooldown over


def test_cooldown_suppresses_a_proactive_deadline() -> None:
    e = loaded(auto(trigger={**PROACTIVE, "within": "10m"}, cooldown="15m"))
    assert len(e.advance(at(10)).firings) == 1
    assert e.advance(at(20)).firings == []  # in cooldown until 25: re-armed instead
    assert len(e.advance(at(30)).firings) == 1


# --- dedup ------------------------------------------------------------------------------------------
def test_a_redelivered_event_counts_once() -> None:
    e = loaded(auto(trigger={**THRESHOLD, "threshold": 2}))
    first = ev("flow-run.Failed")
    e.evaluate(first, at(0))
    out = e.evaluate(dict(first), at(1))
    assert out == Outcome()
    assert e.pending("a")[0]["count"] == 1


def test_a_redelivered_completing_event_does_not_fire_again() -> None:
    e = loaded(auto())
    event = ev()
    assert len(e.evaluate(event, at(0)).firings) == 1
    assert e.evaluate(event, at(1)).firings == []
    # The dedup memory is bounded: it ends with its own timer
    assert e.next_deadline() == at(15)
    e.advance(at(15))
    assert e.next_deadline() is None


def test_a_redelivered_threshold_event_after_the_firing_does_not_start_a_new_count() -> None:
    e = loaded(auto(trigger={**THRESHOLD, "threshold": 2}))
    one, two = ev("flow-run.Failed"), ev("flow-run.Failed")
    e.evaluate(one, at(0))
    assert len(e.evaluate(two, at(1)).firings) == 1
    assert e.evaluate(one, at(2)) == Outcome()
    assert e.pending("a") == []


def test_a_redelivered_arming_event_does_not_rearm() -> None:
    e = loaded(auto(trigger=AFTER))
    running = ev("flow-run.Running")
    e.evaluate(running, at(0))
    assert len(e.evaluate(ev(), at(1)).firings) == 1
    e.evaluate(running, at(2))
    assert e.evaluate(ev(), at(3)).firings == []


# --- restart ----------------------------------------------------------------------------------------
def test_an_armed_proactive_timer_fires_on_time_after_a_restart() -> None:
    store = Store()
    a = auto(trigger=PROACTIVE)
    loaded(a, store=store)
    # When the service restarts 10 minutes later
    e = loaded(a, now=at(10), store=store)
    # Then the timer keeps its deadline (not re-armed from the restart) and fires once
    assert e.next_deadline() == at(30)
    out = store.apply(e.advance(at(30)))
    assert len(out.firings) == 1
    restarted_again = loaded(a, now=at(31), store=store)
    assert restarted_again.advance(at(31)).firings == []
    assert restarted_again.next_deadline() == at(60)


def test_a_proactive_timer_armed_by_an_event_survives_a_restart_with_the_same_firing_id() -> None:
    store = Store()
    trig = {**PROACTIVE, "after": ["batch.started"]}
    first = loaded(auto(trigger=trig), store=store)
    started = ev("batch.started")
    store.apply(first.evaluate(started, at(0)))
    before = first.advance(at(30)).firings
    after = loaded(auto(trigger=trig), now=at(5), store=store).advance(at(30)).firings
    assert [(f.id, f.event) for f in after] == [(f.id, f.event) for f in before] == [(before[0].id, started)]


def test_a_threshold_count_survives_a_restart() -> None:
    store = Store()
    a = auto(trigger=THRESHOLD)
    e = loaded(a, store=store)
    store.apply(e.evaluate(ev("flow-run.Failed"), at(0)))
    store.apply(e.evaluate(ev("flow-run.Failed"), at(1)))
    e = loaded(a, now=at(2), store=store)
    assert len(e.evaluate(ev("flow-run.Failed"), at(2)).firings) == 1


def test_a_changed_trigger_resets_its_state_and_changed_actions_keep_it() -> None:
    store = Store()
    e = loaded(auto(trigger=THRESHOLD), store=store)
    store.apply(e.evaluate(ev("flow-run.Failed"), at(0)))
    # Changed actions: the count stays
    same = auto(trigger=THRESHOLD).model_copy(update={"description": "new words"})
    assert store.apply(e.upsert(same, at(1))).state == {}
    assert e.pending("a")[0]["count"] == 1
    # Changed trigger: the rows are deleted
    out = store.apply(e.upsert(auto(trigger={**THRESHOLD, "threshold": 4}), at(2)))
    assert set(out.state.values()) == {None}
    assert e.pending("a") == [] and store.rows == {}


def test_restored_rows_of_another_definition_are_deleted_at_load() -> None:
    store = Store()
    e = loaded(auto(trigger=THRESHOLD), store=store)
    store.apply(e.evaluate(ev("flow-run.Failed"), at(0)))
    loaded(auto(trigger={**THRESHOLD, "within": "1h"}), now=at(1), store=store)
    assert store.rows == {}


# --- enabled ----------------------------------------------------------------------------------------
def test_a_disabled_automation_is_loaded_but_neither_counts_nor_fires() -> None:
    e = loaded(auto(enabled=False), auto("p", trigger=PROACTIVE, enabled=False))
    assert e.evaluate(ev(), at(0)) == Outcome()
    assert e.next_deadline() is None
    assert e.get("a").enabled is False and sorted(e.names) == ["a", "p"]


def test_pause_drops_timers_and_resume_rearms_from_now() -> None:
    store = Store()
    e = loaded(auto(trigger=PROACTIVE), store=store)
    store.apply(e.set_enabled("a", False, at(5)))
    assert e.advance(at(30)).firings == [] and store.rows == {}
    store.apply(e.set_enabled("a", True, at(40)))
    assert e.next_deadline() == at(70)
    assert e.get("a").enabled is True
    # Re-applying the same definition with enabled: false pauses it too
    e.upsert(auto(trigger=PROACTIVE, enabled=False), at(41))
    assert e.next_deadline() is None


def test_a_paused_automations_join_lapses_silently() -> None:
    trig = {"type": "compound", "within": "1h", "triggers": [
        {"type": "event", "name": "b", "expect": ["b.done"]}, {"type": "event", "name": "c", "expect": ["c.done"]}]}
    e = loaded(auto(trigger=trig))
    e.evaluate(ev("b.done"), at(0))
    e.set_enabled("a", False, at(1))
    assert e.advance(at(60)).firings == []
    assert e.pending("a") == []


def test_state_of_an_automation_deleted_while_down_is_found_and_removed() -> None:
    store = Store()
    e = loaded(auto(trigger=THRESHOLD), store=store)
    store.apply(e.evaluate(ev("flow-run.Failed"), at(0)))
    restarted = Evaluator(now=at(1), state=store.rows)
    assert restarted.unloaded() == ["a"]
    store.apply(restarted.remove("a"))
    assert store.rows == {} and restarted.unloaded() == []


def test_set_enabled_on_an_unknown_automation() -> None:
    with pytest.raises(AutomationNotFound):
        loaded().set_enabled("nope", False, T0)


def test_remove_deletes_the_state() -> None:
    store = Store()
    e = loaded(auto(trigger=THRESHOLD), store=store)
    store.apply(e.evaluate(ev("flow-run.Failed"), at(0)))
    store.apply(e.remove("a"))
    assert store.rows == {}
    assert e.candidates(ev("flow-run.Failed")) == [] and e.next_deadline() is None


# --- explain, pending, candidates, bad input --------------------------------------------------------
@pytest.mark.parametrize(
    ("automation", "setup", "event", "expected"),
    [
        (auto(), [], ev("flow-run.Failed"),
         "does not match: event 'flow-run.Failed' is not one of flow-run.Completed"),
        (auto(), [], ev(flow="x"), "does not match: resource.flow is 'x', expected 'up'"),
        (auto(), [], ev(), "fires (firing "),
        (auto(enabled=False), [], ev(), "automation 'a' is paused: it neither counts events nor fires"),
        (auto(enabled=False), [], ev(), "if it were enabled: fires (firing "),
        (auto(trigger=AFTER), [], ev(), "not armed: waiting for one of flow-run.Running"),
        (auto(trigger=THRESHOLD), [], ev("flow-run.Failed"),
         "counted 1 of 3 within 0:10:00; the oldest leaves the window at 2026-11-22T09:15:00+00:00"),
        (auto(cooldown="1h"), [ev()], ev(), "in cooldown until 2026-11-22T10:00:00+00:00: counted as matched, does not fire"),
        (auto(trigger=PROACTIVE), [], ev("batch.ready"), "arrived in time (deadline 2026-11-22T09:30:00+00:00): the timer is disarmed"),
    ],
)
def test_explain(automation: Automation, setup: list[dict[str, Any]], event: dict[str, Any], expected: str) -> None:
    e = loaded(automation)
    for s in setup:
        e.evaluate(s, at(0))
    before = e.pending("a")
    lines = e.explain("a", event, at(5))
    assert any(line.startswith(expected) for line in lines), lines
    # Explaining changes nothing
    assert e.pending("a") == before
    if not setup and automation.enabled:
        assert e.evaluate(event, at(5)).matched in ({}, {"a": 1})


def test_explain_a_duplicate() -> None:
    e = loaded(auto(trigger=THRESHOLD))
    event = ev("flow-run.Failed", id="dup")
    e.evaluate(event, at(0))
    assert e.explain("a", event, at(1)) == ["event dup was already counted (a redelivery): nothing changes"]


def test_explain_an_unknown_automation() -> None:
    with pytest.raises(AutomationNotFound):
        loaded().explain("nope", ev(), T0)


def test_candidates_are_what_the_index_offers() -> None:
    e = loaded(*[auto(f"a{i}", {"type": "flow-run-state-change", "match": {"flow": f"f{i}"}, "expect": ["Completed"]})
                 for i in range(100)])
    assert e.candidates(ev(flow="f7")) == ["a7"]
    assert e.candidates(ev(flow="nope")) == []


@pytest.mark.parametrize(
    ("event", "message"),
    [
        ([], "an event must be a JSON object, not list"),
        ({"id": "1"}, "the event has no `event` name"),
        ({"event": "x.y"}, "event 'x.y' has no `id`"),
        ({"event": "x.y", "id": "1", "resource": "nope"}, "event 1: `resource` must be an object"),
    ],
)
def test_a_malformed_event_is_refused(event: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("`", ".").replace("(", ".").replace(")", ".")):
        loaded(auto()).evaluate(event, T0)


def test_now_must_be_timezone_aware() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        Evaluator(now=dt.datetime(2026, 1, 1))


# --- after_match: arming events of another resource ------------------------------------------------
def test_proactive_downstream_not_completed_in_time_after_upstream_completed() -> None:
    """"downstream not Completed within 30 min after upstream Completed", per batch."""
    trigger = {
        "type": "flow-run-state-change", "posture": "proactive", "within": "30m",
        "after": ["Completed"], "after_match": {"flow": "up"},
        "match": {"flow": "down"}, "expect": ["Completed"],
        "for_each": ["payload.parameters.batch_id"],
    }
    e = loaded(auto(trigger=trigger))
    assert e.evaluate(ev(flow="down", batch="b1"), at(0)).firings == []  # not armed yet
    e.evaluate(ev(flow="up", batch="b1"), at(1))  # arms b1
    e.evaluate(ev(flow="up", batch="b2"), at(2))  # arms b2
    e.evaluate(ev(flow="down", batch="b1"), at(10))  # b1 made it in time
    assert e.advance(at(31)).firings == []
    [late] = e.advance(at(32)).firings
    assert late.bucket == "b2" and late.proactive
    assert "after_match" in " ".join(e.explain("a", ev(flow="other", batch="b3"), at(40)))


def test_after_match_is_indexed_separately_from_match() -> None:
    trigger = {"type": "flow-run-state-change", "after": ["Completed"], "after_match": {"flow": "up"},
               "match": {"flow": "down"}, "expect": ["Failed"]}
    e = loaded(auto(trigger=trigger))
    assert e.candidates(ev(flow="up")) == ["a"]
    assert e.candidates(ev("flow-run.Failed", flow="down")) == ["a"]
    assert e.candidates(ev(flow="down")) == []
