"""Fault 6: duplicate delivery. The same event published three times (as a publisher retrying
after a lost confirm would) gives one firing and one run; a fourth copy after the server was
SIGKILLed and restarted still gives nothing more."""

from __future__ import annotations

import json
import random
import time
import uuid

import pytest

from engine.broker.topology import Names
from tests.faults.conftest import FaultCluster, automation, publish, wait_until

pytestmark = pytest.mark.rabbitmq

EVENTS = 20
COPIES = 3

RULES = """
    automations:
      - name: on-ready
        trigger: {type: event, expect: [batch.ready]}
        actions:
          - type: run-deployment
            deployment: down/faults
            parameters: {upstream_batch_id: "{{ event.payload.batch_id }}"}
"""


def _event(batch: str) -> dict[str, object]:
    return {"id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"faults/{batch}")), "event": "batch.ready",
            "occurred": "2026-11-23T10:00:00+00:00", "resource": {"id": f"batch/{batch}"},
            "payload": {"batch_id": batch}}


def test_the_same_event_three_times_fires_once(faults: FaultCluster) -> None:
    # Given the rule and 20 events, each published 3 times, the copies shuffled
    server = faults.start_server()
    faults.start_worker()
    faults.deploy("down", "faults")
    faults.apply(RULES)
    exchange = Names(faults.env["FLOWRELAY_BROKER__PREFIX"]).events
    batches = [f"d{i:02d}" for i in range(EVENTS)]
    copies = [(b, _event(b)) for b in batches for _ in range(COPIES)]
    random.Random(7).shuffle(copies)
    messages = [(exchange, "batch.ready", json.dumps(e).encode(), {"message_id": str(e["id"])})
                for _, e in copies]

    # When they are delivered
    publish(faults.env["FLOWRELAY_BROKER__URL"], messages)

    # Then one run per event, executed once
    def done() -> bool:
        runs = faults.runs("down")
        return len(runs) >= EVENTS and all(r.state == "Completed" for r in runs.values())

    wait_until(done, timeout=60, what="a run per event")

    # And a fourth copy of each, after a SIGKILL and restart of the server, changes nothing
    faults.kill(server)
    faults.start_server()
    publish(faults.env["FLOWRELAY_BROKER__URL"], messages[:: COPIES])
    wait_until(lambda: automation(faults, "on-ready")["counters"]["matched"] >= EVENTS,
               timeout=30, what="matched counter")
    time.sleep(2.0)  # far longer than a firing takes on this cluster: a duplicate would show

    runs = faults.runs("down")
    assert sorted(r.parameters["upstream_batch_id"] for r in runs.values()) == batches
    assert sorted(e.extra for e in faults.executions("down")) == batches
    inspected = automation(faults, "on-ready")
    assert inspected["counters"]["fired"] == EVENTS
