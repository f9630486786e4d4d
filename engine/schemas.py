"""Data objects exchanged between the runtime, the engine service, the CLI and (later) the broker.

They are plain pydantic models, JSON in and out, so the same objects travel in-process (embedded
mode) and over RabbitMQ (distributed mode).
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from engine.states import State, StateType, utcnow


class FlowRun(BaseModel):
    model_config = ConfigDict(extra="ignore")

    id: uuid.UUID = Field(default_factory=uuid.uuid4)
    name: str
    flow_name: str
    deployment_id: uuid.UUID | None = None
    deployment_name: str | None = None  # "FLOW/DEPLOYMENT"
    deployment_version: int | None = None
    work_pool: str | None = None
    parameters: dict[str, Any] = Field(default_factory=dict)
    tags: list[str] = Field(default_factory=list)
    idempotency_key: str | None = None
    parent_task_run_id: uuid.UUID | None = None
    parent_flow_run_id: uuid.UUID | None = None
    state: State | None = None
    run_count: int = 0
    expected_start_time: dt.datetime | None = None
    start_time: dt.datetime | None = None
    end_time: dt.datetime | None = None
    result: Any = None
    #: Why this run exists: {"automation": ..., "event_id": ...} or {"schedule": ...} etc.
    caused_by: dict[str, Any] | None = None
    created: dt.datetime = Field(default_factory=utcnow)
    updated: dt.datetime = Field(default_factory=utcnow)

    @property
    def state_name(self) -> str | None:
        return self.state.name if self.state else None


class TaskRun(BaseModel):
    model_config = ConfigDict(extra="ignore")

    id: uuid.UUID = Field(default_factory=uuid.uuid4)
    flow_run_id: uuid.UUID
    name: str
    task_key: str
    dynamic_key: str = "0"
    parameters: dict[str, Any] = Field(default_factory=dict)
    tags: list[str] = Field(default_factory=list)
    state: State | None = None
    run_count: int = 0
    start_time: dt.datetime | None = None
    end_time: dt.datetime | None = None
    result: Any = None
    child_flow_run_id: uuid.UUID | None = None
    created: dt.datetime = Field(default_factory=utcnow)


class LogRecord(BaseModel):
    id: uuid.UUID = Field(default_factory=uuid.uuid4)
    flow_run_id: uuid.UUID | None = None
    task_run_id: uuid.UUID | None = None
    level: int = 20
    logger: str = "flowrelay"
    message: str
    timestamp: dt.datetime = Field(default_factory=utcnow)


class FlowRunFilter(BaseModel):
    ids: list[uuid.UUID] | None = None
    flow_name: str | None = None
    deployment_name: str | None = None
    state_names: list[str] | None = None
    state_types: list[StateType] | None = None
    parent_flow_run_id: uuid.UUID | None = None
    limit: int = 50
    offset: int = 0


class Event(BaseModel):
    """An event as published on `flowrelay.events` (see DESIGN.md "Events")."""

    model_config = ConfigDict(extra="ignore")

    id: uuid.UUID = Field(default_factory=uuid.uuid4)
    occurred: dt.datetime = Field(default_factory=utcnow)
    event: str
    resource: dict[str, Any] = Field(default_factory=dict)
    related: list[dict[str, Any]] = Field(default_factory=list)
    payload: dict[str, Any] = Field(default_factory=dict)
    follows: uuid.UUID | None = None


class OrchestrationResult(BaseModel):
    """The answer to a state proposal."""

    status: str  # "ACCEPT" | "REJECT" | "ABORT"
    state: State | None  # the run's current state after the proposal
    reason: str | None = None
    run: FlowRun | TaskRun | None = None

    @property
    def accepted(self) -> bool:
        return self.status == "ACCEPT"
