"""Fault 4: the rule engine (inside `flowrelay server`) is SIGKILLed and restarted while a compound
window is open and a proactive timer is armed. The join still fires exactly once; the proactive
trigger fires once, on time: not before its deadline, and within a tolerance after it."""

from __future__ import annotations

import time

import pytest

from tests.faults.conftest import FaultCluster, automation, wait_until

pytestmark = pytest.mark.rabbitmq

WITHIN = 10.0  # seconds of the proactive trigger
#: how late the proactive firing may be (timer wake-up, a commit, the run's creation; loaded CI)
TOLERANCE = 5.0

RULES = f"""
    automations:
      - name: join
        trigger:
          type: compound
          correlate: "{{{{ event.payload.parameters.batch_id }}}}"
          within: 10m
          triggers:
            - {{type: flow-run-state-change, match: {{deployment: up/faults}}, expect: [Completed]}}
            - {{type: flow-run-state-change, match: {{deployment: slow/faults}}, expect: [Completed]}}
        actions:
          - type: run-deployment
            deployment: down/faults
            parameters: {{upstream_batch_id: "{{{{ events['up/faults'].payload.result.batch_id }}}}"}}
      - name: late
        trigger:
          type: flow-run-state-change
          posture: proactive
          after: [Completed]
          after_match: {{deployment: up/faults}}
          match: {{flow: never-runs}}
          expect: [Completed]
          within: {WITHIN:g}s
        actions:
          - type: run-deployment
            deployment: ping/faults
            parameters: {{n: 1}}
"""


def test_restart_mid_join_and_mid_proactive_timer(faults: FaultCluster) -> None:
    # Given a join waiting for `slow` of batch j-1 and a proactive timer armed by `up`
    server = faults.start_server()
    faults.start_worker()
    faults.deploy("up", "faults")
    faults.deploy("slow", "faults", "--param", "seconds=0")
    faults.deploy("down", "faults")
    faults.deploy("ping", "faults")
    faults.apply(RULES)
    faults.cli("deployment", "run", "up/faults", "--param", "batch_id=j-1", "--watch")
    [up] = faults.runs("up").values()
    deadline = next(ts for name, ts, _ in up.states if name == "Completed") + WITHIN
    wait_until(lambda: automation(faults, "join")["pending"], timeout=20, what="join pending")

    # When the server is SIGKILLed and restarted inside both windows
    faults.kill(server)
    time.sleep(1.0)
    faults.start_server()
    assert time.time() < deadline - 2, "the restart took too long for this test to mean anything"
    pending = automation(faults, "join")["pending"]
    assert len(pending) == 1 and pending[0]["correlation"] == "j-1"
    faults.cli("deployment", "run", "slow/faults", "--param", "batch_id=j-1", "--watch")

    # Then the join fires once
    wait_until(lambda: faults.runs("down"), timeout=30, what="the join's run")
    # and the proactive trigger once, on time
    [ping] = wait_until(lambda: list(faults.runs("ping").values()), timeout=WITHIN + 30,
                        what="the proactive firing's run")
    fired_at = ping.states[0][1]
    assert fired_at >= deadline - 0.01, f"fired {deadline - fired_at:.3f} s before its deadline"
    assert fired_at <= deadline + TOLERANCE, f"fired {fired_at - deadline:.3f} s late"

    # And a late duplicate completion, and more time, change nothing
    faults.cli("deployment", "run", "slow/faults", "--param", "batch_id=j-1", "--watch")
    time.sleep(2.0)
    [down] = faults.runs("down").values()
    assert down.parameters == {"upstream_batch_id": "j-1"}
    assert len(faults.runs("ping")) == 1
    assert automation(faults, "join")["counters"]["fired"] == 1
    assert automation(faults, "late")["counters"]["fired"] == 1
