"""Events for run state changes (DESIGN.md "Events"), and their routing keys.

The engine service builds these inside the transaction that changes the state and stores them in
the outbox; the relay publishes them on the `flowrelay.events` topic exchange under
`routing_key_for(event)`:

    flow-run.<flow>.<State>   e.g. flow-run.upstream.Completed  (bind flow-run.upstream.#,
    task-run.<flow>.<State>                                       flow-run.*.Failed, flow-run.#)
    <event name>              for custom events (batch.ready) and deployment.*, worker.*, ...

AMQP topic keys are dot-separated words, so a dot inside a flow name becomes ``_`` in the key.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from typing import Any

from engine.schemas import Event, FlowRun, TaskRun
from engine.states import State, StateType

#: A result whose JSON is larger than this is left out of the event (``result_truncated: true``).
MAX_EVENT_RESULT_BYTES = 64 * 1024

FLOW_RUN_PREFIX = "flow-run."
TASK_RUN_PREFIX = "task-run."


def _iso(value: dt.datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _result_fields(state: State, result: Any) -> dict[str, Any]:
    if state.type is not StateType.COMPLETED:
        return {}
    try:
        size = len(json.dumps(result, default=str).encode())
    except (TypeError, ValueError):
        return {"result_truncated": True}
    if size > MAX_EVENT_RESULT_BYTES:
        return {"result_truncated": True}
    return {"result": result}


def _state_payload(
    state: State, run_count: int, parameters: dict[str, Any], result: Any
) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "state": state.name,
        "type": state.type.value,
        "message": state.message,
        "parameters": parameters,
        "run_count": run_count,
    }
    payload.update(_result_fields(state, result))
    return payload


def flow_run_event(run: FlowRun, state: State, *, seq: int, follows: uuid.UUID | None) -> Event:
    """The event for `run` entering `state` (`run` already carries the new state's effects:
    run_count, result, ...). `seq` is this event's number within the run (1, 2, ...) and `follows`
    the id of the run's previous event."""
    resource: dict[str, Any] = {
        "id": f"flow-run/{run.id}",
        "name": run.name,
        "flow": run.flow_name,
        "tags": list(run.tags),
        "seq": seq,
        "work_pool": run.work_pool,
    }
    if run.deployment_name:
        resource["deployment"] = run.deployment_name
    related: list[dict[str, Any]] = []
    if run.parent_flow_run_id is not None:
        related.append({"id": f"flow-run/{run.parent_flow_run_id}", "role": "parent"})
    payload = _state_payload(state, run.run_count, run.parameters, run.result)
    payload["scheduled_time"] = _iso(state.details.scheduled_time or run.expected_start_time)
    return Event(
        event=f"{FLOW_RUN_PREFIX}{state.name}",
        occurred=state.timestamp,
        resource=resource,
        related=related,
        payload=_jsonable(payload),
        follows=follows,
    )


def task_run_event(
    task_run: TaskRun,
    state: State,
    *,
    flow_name: str,
    flow_run_name: str | None = None,
    seq: int,
    follows: uuid.UUID | None,
) -> Event:
    """The event for `task_run` entering `state`; related to its flow run (role ``flow-run``)."""
    resource: dict[str, Any] = {
        "id": f"task-run/{task_run.id}",
        "name": task_run.name,
        "task_key": task_run.task_key,
        "flow": flow_name,
        "tags": list(task_run.tags),
        "seq": seq,
    }
    related: list[dict[str, Any]] = [
        {"id": f"flow-run/{task_run.flow_run_id}", "role": "flow-run", "name": flow_run_name}
    ]
    if task_run.child_flow_run_id is not None:
        related.append({"id": f"flow-run/{task_run.child_flow_run_id}", "role": "child"})
    payload = _state_payload(state, task_run.run_count, task_run.parameters, task_run.result)
    return Event(
        event=f"{TASK_RUN_PREFIX}{state.name}",
        occurred=state.timestamp,
        resource=resource,
        related=related,
        payload=_jsonable(payload),
        follows=follows,
    )


def _key_word(value: Any) -> str:
    return str(value).replace(".", "_") or "_"


def routing_key_for(event: Event) -> str:
    """The topic routing key of `event` (see the module docstring)."""
    for prefix in (FLOW_RUN_PREFIX, TASK_RUN_PREFIX):
        if event.event.startswith(prefix) and "flow" in event.resource:
            state = event.event[len(prefix) :]
            return f"{prefix}{_key_word(event.resource['flow'])}.{_key_word(state)}"
    return event.event


def _jsonable(value: dict[str, Any]) -> dict[str, Any]:
    """`value` as plain JSON types (datetimes and uuids as strings)."""
    result: dict[str, Any] = json.loads(json.dumps(value, default=str))
    return result


__all__ = [
    "MAX_EVENT_RESULT_BYTES",
    "flow_run_event",
    "routing_key_for",
    "task_run_event",
]
