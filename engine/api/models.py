"""The API's JSON shapes: list envelopes, run views, what POST bodies accept.

Engine objects (`engine.schemas`, `engine.states.State`) are returned as they are where they fit
(states, task runs, logs, events); runs and deployments get a flatter view for tables.
Times are ISO-8601 in UTC.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, Field, field_validator

from engine.schemas import FlowRun, WorkPool
from engine.states import utcnow

T = TypeVar("T")

#: What an event name sent to POST /api/events may look like: it becomes a routing key.
EVENT_NAME_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9_\-:]*(\.[A-Za-z0-9_\-:]+)*$"
#: Event families only the engine emits: an external event may not pose as one of them (a
#: forged `flow-run.Completed` would launch downstream runs; `dispatch.*` would be work).
RESERVED_EVENT_PREFIXES = (
    "flow-run.", "task-run.", "deployment.", "automation.", "worker.", "dispatch.", "flowrelay.",
)
#: Resource keys may be written as Prefect writes them (``prefect.resource.id``): this prefix
#: is dropped, so ``flowrelay.resource.id`` is the resource's ``id``.
RESOURCE_KEY_PREFIX = "flowrelay.resource."


class Page(BaseModel, Generic[T]):
    items: list[T]
    total: int
    limit: int
    offset: int


class Health(BaseModel):
    status: str = "ok"
    version: str


class FlowRunItem(BaseModel):
    """A flow run as a table row."""

    id: uuid.UUID
    name: str
    flow_name: str
    #: ``FLOW/DEPLOYMENT``, or null for a run of no deployment
    deployment: str | None
    deployment_version: int | None = None
    work_pool: str | None = None
    state_type: str | None
    state_name: str | None
    state_message: str | None = None
    state_timestamp: dt.datetime | None = None
    parameters: dict[str, Any]
    created: dt.datetime
    expected_start_time: dt.datetime | None = None
    start_time: dt.datetime | None
    end_time: dt.datetime | None
    #: end - start once final; while running, seconds since start; null before it starts
    duration_seconds: float | None
    run_count: int = 0
    parent_flow_run_id: uuid.UUID | None
    parent_task_run_id: uuid.UUID | None = None
    idempotency_key: str | None
    tags: list[str]
    #: "waiting: no live worker on pool P ..." when the run is due and unclaimed while its pool
    #: has had no live worker for over a heartbeat timeout
    waiting: str | None = None

    @classmethod
    def of(cls, run: FlowRun, now: dt.datetime | None = None, pools: dict[str, WorkPool] | None = None) -> FlowRunItem:
        now = now or utcnow()
        pool = (pools or {}).get(run.work_pool or "")
        return cls(**_item_fields(run, now), waiting=pool.waiting_reason(run, now) if pool else None)


class FlowRunDetail(FlowRunItem):
    result: Any = None
    #: why the run exists, as stored on it: {"automation", "firing_id", "event_id", ...},
    #: {"schedule": ...}, or null for a run started by hand
    caused_by: dict[str, Any] | None = None
    children: list[uuid.UUID] = Field(default_factory=list)
    #: a Failed or Crashed run's cause: {"type", "message", "traceback"} (the user's frames)
    error: dict[str, Any] | None = None

    @classmethod
    def of_run(cls, run: FlowRun, children: list[uuid.UUID], pool: WorkPool | None = None) -> FlowRunDetail:
        now = utcnow()
        return cls(
            **_item_fields(run, now), result=run.result, caused_by=run.caused_by,
            children=children, error=run.state.details.error if run.state is not None else None,
            waiting=pool.waiting_reason(run, now) if pool is not None else None,
        )


def _item_fields(run: FlowRun, now: dt.datetime) -> dict[str, Any]:
    state = run.state
    duration: float | None = None
    if run.start_time is not None:
        duration = max(0.0, ((run.end_time or now) - run.start_time).total_seconds())
    return {
        "id": run.id, "name": run.name, "flow_name": run.flow_name,
        "deployment": run.deployment_name, "deployment_version": run.deployment_version,
        "work_pool": run.work_pool,
        "state_type": state.type.value if state else None,
        "state_name": state.name if state else None,
        "state_message": state.message if state else None,
        "state_timestamp": state.timestamp if state else None,
        "parameters": run.parameters, "created": run.created,
        "expected_start_time": run.expected_start_time, "start_time": run.start_time,
        "end_time": run.end_time, "duration_seconds": duration, "run_count": run.run_count,
        "parent_flow_run_id": run.parent_flow_run_id,
        "parent_task_run_id": run.parent_task_run_id,
        "idempotency_key": run.idempotency_key, "tags": run.tags,
    }


class FireTime(BaseModel):
    #: in the schedule's time zone, with its offset
    local: str
    #: in UTC, ``...Z``
    utc: str


class ScheduleView(BaseModel):
    """A stored schedule (``cron`` or ``interval`` seconds, ``timezone``, ``active``, ...) with
    its id and next fire times."""

    model_config = ConfigDict(extra="allow")

    id: str
    active: bool = True
    timezone: str = "UTC"
    cron: str | None = None
    interval: float | None = None
    next: list[FireTime] = Field(default_factory=list)


class DeploymentView(BaseModel):
    """A deployment: its latest registration (`version`), pause flag and schedules."""

    id: uuid.UUID
    #: ``FLOW/DEPLOYMENT``, as the other endpoints take it
    full_name: str
    name: str
    flow_name: str
    version: int
    entrypoint: str | None = None
    work_pool: str | None = None
    parameters: dict[str, Any] = Field(default_factory=dict)
    tags: list[str] = Field(default_factory=list)
    description: str | None = None
    concurrency_limit: int | None = None
    paused: bool = False
    schedules: list[ScheduleView] = Field(default_factory=list)
    created: dt.datetime
    updated: dt.datetime


class AutomationItem(BaseModel):
    name: str
    description: str = ""
    enabled: bool
    trigger_type: str | None
    version: int = 1
    source: str = ""
    updated: str | None = None
    #: matched, fired, expired, failed, errors (and lag_ms: the last event's delay, in ms)
    counters: dict[str, int]
    actions: list[str] = Field(default_factory=list)


class AutomationDetail(AutomationItem):
    definition: dict[str, Any]
    #: open joins (arrived, awaited, correlation, expires_at), counts, armed triggers, cooldowns
    pending: list[dict[str, Any]] = Field(default_factory=list)
    #: the last firings, newest first (id, kind, at, status, correlation, event_ids, results)
    firings: list[dict[str, Any]] = Field(default_factory=list)


class GraphNode(BaseModel):
    id: str
    flow: str | None
    deployment: str | None
    kind: str = "deployment"
    #: the newest run's state type (COMPLETED, RUNNING, ...), null without runs
    latest_state: str | None = None
    latest_state_name: str | None = None
    paused: bool = False


class GraphEdge(BaseModel):
    source: str
    target: str
    automation: str
    #: the action's type: run-deployment, pause-deployment, resume-deployment
    kind: str
    label: str
    enabled: bool = True


class Graph(BaseModel):
    nodes: list[GraphNode]
    edges: list[GraphEdge]


class RunRequest(BaseModel):
    """Body of POST /api/deployments/{flow}/{name}/runs."""

    model_config = ConfigDict(extra="forbid")

    parameters: dict[str, Any] = Field(default_factory=dict)
    idempotency_key: str | None = Field(None, min_length=1, max_length=512)
    #: when to start (no offset: UTC); default now
    scheduled_time: dt.datetime | None = None
    flow_run_name: str | None = Field(None, min_length=1, max_length=255)
    tags: list[str] | None = None

    @field_validator("scheduled_time")
    @classmethod
    def _aware(cls, value: dt.datetime | None) -> dt.datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=dt.UTC)
        return value


class EventIn(BaseModel):
    """One event sent to POST /api/events."""

    model_config = ConfigDict(extra="forbid")

    event: str = Field(min_length=1, max_length=200, pattern=EVENT_NAME_PATTERN)
    resource: dict[str, Any] = Field(default_factory=dict)
    payload: dict[str, Any] = Field(default_factory=dict)
    related: list[dict[str, Any]] = Field(default_factory=list)
    #: the event's id; sending the same id again stores and publishes it once
    id: uuid.UUID | None = None
    #: when it happened (no offset: UTC); default now
    occurred: dt.datetime | None = None

    @field_validator("event")
    @classmethod
    def _not_reserved(cls, value: str) -> str:
        for prefix in RESERVED_EVENT_PREFIXES:
            if value.startswith(prefix):
                raise ValueError(
                    f"event names starting with {prefix!r} are the engine's own; name external "
                    "events after what happened, such as 'batch.ready'"
                )
        return value

    @field_validator("resource")
    @classmethod
    def _resource(cls, value: dict[str, Any]) -> dict[str, Any]:
        value = _strip_prefix(value)
        resource_id = value.get("id")
        if resource_id is not None and (not isinstance(resource_id, str) or not resource_id):
            raise ValueError("resource id must be a non-empty string, such as 'batch/17'")
        if isinstance(resource_id, str) and len(resource_id) > 255:
            raise ValueError(f"resource id is {len(resource_id)} characters, over the limit of 255")
        return value

    @field_validator("related")
    @classmethod
    def _related(cls, value: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [_strip_prefix(item) for item in value]

    @field_validator("occurred")
    @classmethod
    def _occurred(cls, value: dt.datetime | None) -> dt.datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=dt.UTC)
        return value


def _strip_prefix(mapping: dict[str, Any]) -> dict[str, Any]:
    return {
        (k[len(RESOURCE_KEY_PREFIX):] if k.startswith(RESOURCE_KEY_PREFIX) else k): v
        for k, v in mapping.items()
    }


class Accepted(BaseModel):
    """Answer of POST /api/events: the ids of the events stored for publishing."""

    ids: list[uuid.UUID]
    count: int


class Problem(BaseModel):
    """Every error: what is wrong, where, and how to fix it."""

    detail: str


__all__ = [
    "Accepted",
    "AutomationDetail",
    "AutomationItem",
    "DeploymentView",
    "EventIn",
    "FireTime",
    "FlowRunDetail",
    "FlowRunItem",
    "Graph",
    "GraphEdge",
    "GraphNode",
    "Health",
    "Page",
    "Problem",
    "RunRequest",
    "ScheduleView",
]
