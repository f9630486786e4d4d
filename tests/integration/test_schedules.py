"""Schedules on the real RabbitMQ: a `flowrelay server` whose scheduler makes a flow-of-flows
parent deployment's runs every 2 seconds, handed to a `flowrelay worker` by the dispatch timer;
each parent launches its children A, B, C, D."""

from __future__ import annotations

import pytest

from tests.integration.conftest import Cluster, wait_until

pytestmark = pytest.mark.rabbitmq




def test_scheduled_flow_of_flows_parent_launches_its_children(cluster: Cluster) -> None:
    cluster.start_server()
    cluster.start_worker(concurrency=8)
    for fn in ("flow_a", "flow_b", "flow_c", "flow_d"):
        cluster.deploy(fn, "examples")
    # Given the parent deployed with an interval schedule of 2 s (one parent at a time, so
    # parents waiting on their children never fill the worker's slots)
    cluster.deploy("parent_flow", "scheduled", "--interval", "2s", "--param", "batch_id=b-sched",
                   "--concurrency-limit", "1")
    [schedule] = cluster.cli_json("deployment", "schedule", "ls", "parent-flow/scheduled")
    assert schedule["active"] and schedule["schedule"]["interval"] == 2.0

    def completed_parent() -> dict | None:
        runs = cluster.cli_json("flow-run", "ls", "--flow", "parent-flow", "--limit", "100")
        done = [r for r in runs if r["state"]["name"] == "Completed"]
        return done[0] if done else None

    # When the scheduler's runs come due, a scheduled parent completes
    parent = wait_until(completed_parent, timeout=60.0, interval=0.3)
    cluster.cli("deployment", "pause", "parent-flow/scheduled")
    # Then it was made by the schedule, under the slot's key, and ran its four children
    assert parent["caused_by"]["schedule"] == schedule["id"]
    assert parent["idempotency_key"] == (
        f"schedule:parent-flow/scheduled:{schedule['id']}:{parent['caused_by']['slot']}"
    )
    assert parent["result"] == "D[B(b-sched), C(b-sched)]"
    detail = cluster.cli_json("flow-run", "inspect", parent["id"])
    assert sorted(child["flow_name"] for child in detail["children"]) == ["A", "B", "C", "D"]
    assert {child["state"]["name"] for child in detail["children"]} == {"Completed"}
    # and every run of the schedule has a slot of its own; none is left Scheduled once paused
    runs = cluster.cli_json("flow-run", "ls", "--flow", "parent-flow", "--limit", "200")
    slots = [r["caused_by"]["slot"] for r in runs if r["state"]["name"] != "Cancelled"]
    assert len(slots) == len(set(slots))
    assert all(r["caused_by"] and r["caused_by"]["schedule"] == schedule["id"] for r in runs)
    cancelled = [r for r in runs if r["state"]["name"] == "Cancelled"]
    assert cancelled and all(r["state"]["message"] == "deployment 'parent-flow/scheduled' paused"
                             for r in cancelled)
