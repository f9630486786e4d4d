"""The rule engine's queue is bound to what the automations can match, narrowed by flow."""

from __future__ import annotations

import pytest

from automations.models import Automation
from automations.routing import key_for_pattern, routing_keys


@pytest.mark.parametrize(
    ("pattern", "flow", "key"),
    [
        ("flow-run.Completed", None, "flow-run.*.Completed"),
        ("flow-run.Completed", "etl", "flow-run.etl.Completed"),
        ("flow-run.Completed", "my.flow", "flow-run.my_flow.Completed"),
        ("flow-run.*", None, "flow-run.#"),
        ("flow-run.*", "etl", "flow-run.etl.#"),
        ("task-run.Failed", None, "task-run.*.Failed"),
        ("batch.ready", None, "batch.ready"),
        ("batch.*", None, "batch.#"),
        ("*.ready", None, "#.ready"),
        ("*", None, "#"),
        ("flow*", None, "#"),
    ],
)
def test_key_for_pattern(pattern: str, flow: str | None, key: str) -> None:
    assert key_for_pattern(pattern, flow) == key


def _automation(trigger: dict) -> Automation:
    return Automation.model_validate(
        {"name": "a", "trigger": trigger, "actions": [{"type": "emit-event", "event": "x"}]}
    )


def test_routing_keys_of_automations() -> None:
    simple = _automation({"type": "flow-run-state-change", "match": {"flow": "up"}, "expect": ["Completed", "Failed"]})
    assert routing_keys([simple]) == {"flow-run.up.Completed", "flow-run.up.Failed"}
    proactive = _automation({
        "type": "flow-run-state-change", "posture": "proactive", "within": "1m",
        "match": {"flow": "down"}, "after": ["Completed"], "expect": ["Completed"],
    })
    assert routing_keys([proactive]) == {"flow-run.down.Completed"}  # match filters `after` too
    other = _automation({
        "type": "flow-run-state-change", "posture": "proactive", "within": "1m",
        "match": {"flow": "down"}, "after": ["Completed"], "after_match": {"flow": "up"},
        "expect": ["Completed"],
    })
    assert routing_keys([other]) == {"flow-run.down.Completed", "flow-run.up.Completed"}
    anywhere = _automation({
        "type": "flow-run-state-change", "posture": "proactive", "within": "1m",
        "match": {"flow": "down"}, "after": ["Completed"], "after_match": {}, "expect": ["Completed"],
    })
    assert routing_keys([anywhere]) == {"flow-run.down.Completed", "flow-run.*.Completed"}
    custom = _automation({"type": "event", "expect": []})
    assert routing_keys([custom]) == {"#"}
    compound = _automation({"type": "compound", "triggers": [
        {"type": "flow-run-state-change", "match": {"deployment": "b/x"}, "expect": ["Completed"]},
        {"type": "event", "expect": ["batch.ready"]},
    ]})
    assert routing_keys([compound]) == {"flow-run.*.Completed", "batch.ready"}
