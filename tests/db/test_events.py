"""Building outbox events and their routing keys (pure)."""

from __future__ import annotations

import datetime as dt
import uuid

from engine.events import MAX_EVENT_RESULT_BYTES, flow_run_event, routing_key_for, task_run_event
from engine.schemas import Event, FlowRun, TaskRun
from engine.states import Completed, Running, Scheduled, State, StateType


def completed(data: object) -> State:
    return State(type=StateType.COMPLETED, data=data)


def make_run(**overrides: object) -> FlowRun:
    values: dict[str, object] = {
        "name": "crimson-otter",
        "flow_name": "upstream",
        "tags": ["etl"],
        "parameters": {"day": "2026-11-22"},
        "run_count": 1,
        "work_pool": "default",
    }
    values.update(overrides)
    return FlowRun(**values)


def test_flow_run_event_shape() -> None:
    parent = uuid.uuid4()
    previous = uuid.uuid4()
    run = make_run(
        deployment_name="upstream/nightly", parent_flow_run_id=parent, result={"batch_id": "b-17"}
    )

    event = flow_run_event(run, completed({"batch_id": "b-17"}), seq=4, follows=previous)

    assert event.event == "flow-run.Completed"
    assert event.resource == {
        "id": f"flow-run/{run.id}",
        "name": "crimson-otter",
        "flow": "upstream",
        "deployment": "upstream/nightly",
        "tags": ["etl"],
        "seq": 4,
        "work_pool": "default",
    }
    assert event.related == [{"id": f"flow-run/{parent}", "role": "parent"}]
    assert event.payload == {
        "state": "Completed",
        "type": "COMPLETED",
        "message": None,
        "parameters": {"day": "2026-11-22"},
        "run_count": 1,
        "result": {"batch_id": "b-17"},
        "scheduled_time": None,
    }
    assert event.follows == previous
    assert routing_key_for(event) == "flow-run.upstream.Completed"


def test_no_deployment_no_parent_no_result_before_completion() -> None:
    event = flow_run_event(make_run(), Running(), seq=1, follows=None)
    assert "deployment" not in event.resource
    assert event.related == []
    assert "result" not in event.payload and "result_truncated" not in event.payload


def test_scheduled_time_is_iso_text() -> None:
    when = dt.datetime(2026, 11, 22, 9, 30, tzinfo=dt.UTC)
    event = flow_run_event(make_run(), Scheduled(scheduled_time=when), seq=1, follows=None)
    assert event.payload["scheduled_time"] == "2026-11-22T09:30:00+00:00"


def test_large_result_is_left_out_with_a_flag() -> None:
    big = "x" * (MAX_EVENT_RESULT_BYTES + 1)
    event = flow_run_event(make_run(result=big), completed(big), seq=2, follows=None)
    assert "result" not in event.payload
    assert event.payload["result_truncated"] is True


def test_task_run_event() -> None:
    flow_run_id, child = uuid.uuid4(), uuid.uuid4()
    task = TaskRun(
        flow_run_id=flow_run_id,
        name="load-1",
        task_key="load",
        tags=["t"],
        child_flow_run_id=child,
        result=3,
    )

    event = task_run_event(
        task, Completed(), flow_name="etl.v2", flow_run_name="calm-owl", seq=2, follows=None
    )

    assert event.event == "task-run.Completed"
    assert event.resource["id"] == f"task-run/{task.id}"
    assert event.resource["flow"] == "etl.v2" and event.resource["seq"] == 2
    assert {
        "id": f"flow-run/{flow_run_id}",
        "role": "flow-run",
        "name": "calm-owl",
    } in event.related
    assert {"id": f"flow-run/{child}", "role": "child"} in event.related
    # a dot in a flow name must not add a word to the topic key
    assert routing_key_for(event) == "task-run.etl_v2.Completed"


def test_custom_event_routing_key_is_its_name() -> None:
    assert routing_key_for(Event(event="batch.ready", resource={"id": "batch/1"})) == "batch.ready"
