"""Conversions between table rows and the `engine.schemas` objects, and small row helpers.

Kept apart from the service so the service reads as the orchestration it performs.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.sql.dml import Insert

from engine.db.models import (
    Base,
    EventRow,
    FlowRunRow,
    LogRow,
    TaskRunRow,
    _CurrentState,
    _StateHistory,
)
from engine.db.runs import RunRecord
from engine.events import routing_key_for
from engine.schemas import Event, FlowRun, LogRecord, TaskRun
from engine.states import FINAL_TYPES, State, StateDetails, StateType, utcnow


def insert_ignoring_conflicts(dialect: str, model: type[Base], index_elements: list[str]) -> Insert:
    """``INSERT ... ON CONFLICT (index_elements) DO NOTHING`` for SQLite or PostgreSQL."""
    if dialect == "postgresql":
        return postgresql.insert(model).on_conflict_do_nothing(index_elements=index_elements)
    return sqlite.insert(model).on_conflict_do_nothing(index_elements=index_elements)


def details_json(details: StateDetails) -> dict[str, Any]:
    result: dict[str, Any] = details.model_dump(mode="json", exclude_none=True)
    return result


def current_state(row: _CurrentState | RunRecord) -> State | None:
    """The run's current state from its `state_*` columns (data: the stored result, for final
    states)."""
    if row.state_type is None:
        return None
    type_ = StateType(row.state_type)
    return State(
        type=type_,
        name=row.state_name or "",
        message=row.state_message,
        timestamp=row.state_timestamp,
        details=StateDetails(**(row.state_details or {})),
        data=row.result if type_ in FINAL_TYPES else None,
    )


def history_state(row: _StateHistory) -> State:
    return State(
        type=StateType(row.type),
        name=row.name,
        message=row.message,
        timestamp=row.timestamp,
        details=StateDetails(**(row.details or {})),
        data=row.data,
    )


def enter_state(row: _CurrentState | RunRecord, state: State) -> None:
    """Make `state` the run's current state, with its effects on counters, times and result."""
    row.state_type = state.type.value
    row.state_name = state.name
    row.state_message = state.message
    row.state_timestamp = state.timestamp
    row.state_details = details_json(state.details)
    if state.type is StateType.RUNNING:
        row.run_count = (row.run_count or 0) + 1
        if row.start_time is None:
            row.start_time = state.timestamp
    if state.is_final():
        row.end_time = state.timestamp
    else:
        row.end_time = None
    if state.type is StateType.COMPLETED or (state.is_final() and state.data is not None):
        row.result = state.data


def flow_run(row: FlowRunRow | RunRecord) -> FlowRun:
    return FlowRun(
        id=row.id,
        name=row.name,
        flow_name=row.flow_name,
        deployment_id=row.deployment_id,
        deployment_name=row.deployment_name,
        deployment_version=row.deployment_version,
        work_pool=row.work_pool,
        parameters=row.parameters or {},
        tags=row.tags or [],
        idempotency_key=row.idempotency_key,
        parent_task_run_id=row.parent_task_run_id,
        parent_flow_run_id=row.parent_flow_run_id,
        state=current_state(row),
        run_count=row.run_count or 0,
        attempts=row.attempts or 0,
        expected_start_time=row.expected_start_time,
        start_time=row.start_time,
        end_time=row.end_time,
        result=row.result,
        caused_by=row.caused_by,
        created=row.created,
        updated=row.updated,
    )


def task_run(row: TaskRunRow) -> TaskRun:
    return TaskRun(
        id=row.id,
        flow_run_id=row.flow_run_id,
        name=row.name,
        task_key=row.task_key,
        dynamic_key=row.dynamic_key,
        parameters=row.parameters or {},
        tags=row.tags or [],
        state=current_state(row),
        run_count=row.run_count or 0,
        start_time=row.start_time,
        end_time=row.end_time,
        result=row.result,
        child_flow_run_id=row.child_flow_run_id,
        created=row.created,
    )


def log_row(record: LogRecord) -> dict[str, Any]:
    return {
        "id": record.id,
        "flow_run_id": record.flow_run_id,
        "task_run_id": record.task_run_id,
        "level": record.level,
        "logger": record.logger,
        "message": record.message,
        "timestamp": record.timestamp,
    }


def log_record(row: LogRow) -> LogRecord:
    return LogRecord(
        id=row.id,
        flow_run_id=row.flow_run_id,
        task_run_id=row.task_run_id,
        level=row.level,
        logger=row.logger,
        message=row.message,
        timestamp=row.timestamp,
    )


def event_values(event: Event) -> dict[str, Any]:
    """Column values of the outbox row for `event` (resource, related and payload as plain JSON)."""
    plain = json.loads(event.model_dump_json(include={"resource", "related", "payload"}))
    resource_id = plain["resource"].get("id")
    return {
        "id": event.id,
        "occurred": event.occurred,
        "event": event.event,
        "resource_id": str(resource_id) if resource_id is not None else None,
        "resource": plain["resource"],
        "related": plain["related"],
        "payload": plain["payload"],
        "follows": event.follows,
        "routing_key": routing_key_for(event),
        "created": utcnow(),
        "sent_at": None,
    }


def event(row: EventRow) -> Event:
    return Event(
        id=row.id,
        occurred=row.occurred,
        event=row.event,
        resource=row.resource or {},
        related=row.related or [],
        payload=row.payload or {},
        follows=row.follows,
    )


def new_id() -> uuid.UUID:
    return uuid.uuid4()
