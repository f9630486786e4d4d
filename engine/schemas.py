"""Data objects exchanged between the runtime, the engine service, the CLI and (later) the broker.

They are plain pydantic models, JSON in and out, so the same objects travel in-process (embedded
mode) and over RabbitMQ (distributed mode).
"""

from __future__ import annotations

import datetime as dt
import re
import uuid
from typing import Any

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, field_validator

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
    #: Claims made of this run by workers (each opened an attempt: `StateDetails.attempt`).
    attempts: int = 0
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
    #: The attempt of the run that wrote the line (a worker's execution): lines of an attempt the
    #: engine has ended are refused, as its states are. Not stored.
    attempt: int | None = None


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

    @field_validator("occurred")
    @classmethod
    def _aware(cls, value: dt.datetime) -> dt.datetime:
        # A time without an offset is read as UTC (as the CLI reads --since): a naive time would
        # otherwise meet the aware clock of the rule engine and fail there with a TypeError.
        return value if value.tzinfo is not None else value.replace(tzinfo=dt.UTC)


class OrchestrationResult(BaseModel):
    """The answer to a state proposal."""

    status: str  # "ACCEPT" | "REJECT" | "ABORT"
    state: State | None  # the run's current state after the proposal
    reason: str | None = None
    run: FlowRun | TaskRun | None = None

    @property
    def accepted(self) -> bool:
        return self.status == "ACCEPT"


# --- deployments --------------------------------------------------------------------------------
#: Pool names are broker queue names (`engine.broker.topology`): letters, digits, '-', '_', dots.
POOL_NAME_PATTERN = r"^[A-Za-z0-9_\-]+(\.[A-Za-z0-9_\-]+)*$"


def check_pool_name(name: str) -> str:
    """`name` if it is a valid work pool name; `ConfigError` saying what is allowed otherwise."""
    from engine.errors import ConfigError

    if len(name) > 255 or not re.match(POOL_NAME_PATTERN, name):
        raise ConfigError(
            f"work pool {name!r}: a pool name is letters, digits, '_', '-' and dots between them"
        )
    return name


_INTERVAL_PART = re.compile(r"(\d+(?:\.\d+)?)\s*([dhms])", re.IGNORECASE)
_INTERVAL_UNITS = {"d": 86400, "h": 3600, "m": 60, "s": 1}


def parse_interval(value: str | float) -> float:
    """Seconds in an interval: a number of seconds, or ``90s``, ``15m``, ``2h``, ``1d``, ``1h30m``."""
    if isinstance(value, bool):
        raise ValueError(f"interval {value!r}: expected seconds or a duration such as '2h'")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        text = value.strip().replace(" ", "")
        try:
            seconds = float(text)
        except ValueError:
            parts = _INTERVAL_PART.findall(text)
            if not parts or "".join(n + u for n, u in parts).lower() != text.lower():
                raise ValueError(
                    f"interval {value!r}: expected seconds or a duration such as "
                    "'90s', '15m', '2h', '1d' or '1h30m'"
                ) from None
            seconds = sum(float(n) * _INTERVAL_UNITS[u.lower()] for n, u in parts)
    if seconds <= 0:
        raise ValueError(f"interval {value!r}: must be more than 0 seconds")
    return seconds


def normalise_schedule(item: Any, where: str = "schedule") -> dict[str, Any]:
    """A schedule as stored: exactly one of ``cron`` (checked by croniter) or ``interval``
    (seconds), a ``timezone`` (IANA name, default UTC), ``active`` (default true) and, when
    given, ``anchor_date``, ``parameters``, ``catchup`` and ``id`` (`engine.scheduler.specs`).
    `ValueError` naming `where` on anything else."""
    from engine.scheduler.specs import normalise

    return normalise(item, where)


class _DeploymentFields(BaseModel):
    """Fields shared by `DeploymentSpec` (what is registered) and `Deployment` (what is stored).

    `schedules` items are normalised by `normalise_schedule` into
    ``{"cron": "0 2 * * *", "timezone": "UTC", "active": true}`` or
    ``{"interval": 7200.0, "timezone": "UTC", "active": true}`` (+ ``anchor_date`` if given).
    """

    name: str = Field(min_length=1, max_length=255)
    #: Filled by the CLI from the entrypoint (``load_flow(entrypoint).name``).
    flow_name: str = Field(min_length=1, max_length=255)
    parameters: dict[str, Any] = Field(default_factory=dict)
    tags: list[str] = Field(default_factory=list)
    description: str | None = None
    concurrency_limit: int | None = Field(None, ge=1)
    schedules: list[dict[str, Any]] = Field(default_factory=list)
    #: The code its runs execute (`engine.code`): ``{"bundle": "sha256:...", "files": N,
    #: "bytes": N, "root": "..."}`` for a project packed at deploy time (the entrypoint is then
    #: relative to the bundle's root), ``{"package": DIST, "version": V}`` for code installed in
    #: the workers' environment, or None (loaded as found where the worker runs).
    code: dict[str, Any] | None = None

    @field_validator("name", "flow_name")
    @classmethod
    def _no_slash(cls, value: str) -> str:
        value = value.strip()
        if "/" in value or not value:
            raise ValueError(
                f"{value!r}: a name cannot be empty or contain '/' "
                "(a deployment is addressed as FLOW/DEPLOYMENT)"
            )
        return value

    @field_validator("schedules")
    @classmethod
    def _normalise_schedules(cls, value: list[dict[str, Any]]) -> list[dict[str, Any]]:
        from engine.scheduler.specs import normalise_all

        return normalise_all(value)

    @property
    def full_name(self) -> str:
        """``FLOW/DEPLOYMENT``: how users address the deployment."""
        return f"{self.flow_name}/{self.name}"


class DeploymentSpec(_DeploymentFields):
    """What `flowrelay deploy` (or a ``deployments:`` list in YAML) registers. ``pool`` is
    accepted for ``work_pool``."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    entrypoint: str = Field(min_length=1, max_length=1024)
    #: The project folder packed with a file entrypoint (default: the nearest folder above the
    #: file with pyproject.toml or .git, else the file's folder). Used where the spec is packed
    #: (`engine.code.pack_specs`); not stored.
    root: str | None = Field(None, max_length=4096)
    work_pool: str = Field(
        "default",
        validation_alias=AliasChoices("work_pool", "pool"),
        pattern=POOL_NAME_PATTERN,
        max_length=255,
    )


class Deployment(_DeploymentFields):
    """A registered deployment: its latest spec, its version (1, 2, ... one per registration)
    and its pause flag (a paused deployment's schedules create no runs)."""

    model_config = ConfigDict(extra="ignore")

    id: uuid.UUID
    entrypoint: str | None = None
    work_pool: str | None = None
    version: int
    paused: bool = False
    created: dt.datetime
    updated: dt.datetime


class CodeChunk(BaseModel):
    """A piece of a code bundle as a worker fetches it (`EngineAPI.read_code_bundle`)."""

    hash: str
    #: the whole bundle's size in bytes
    size: int
    offset: int
    #: the bytes from `offset`, base64
    data: str


class WorkerInfo(BaseModel):
    """A worker as its heartbeats describe it (``flowrelay worker ls``)."""

    id: str
    pool: str
    last_seen: dt.datetime
    #: heard within the server's heartbeat timeout
    alive: bool
    #: the runs it said it holds in its last heartbeat
    runs: list[str] = Field(default_factory=list)
    concurrency: int | None = None
    mode: str | None = None
    host: str | None = None
    pid: int | None = None
    #: the code versions its warm children have imported (bundle hashes, or "env")
    code: list[str] = Field(default_factory=list)


#: Scheduled-type state names from which a run is handed to its pool (and claimed by a worker):
#: a due one not claimed is what a pool without a live worker leaves waiting.
DUE_STATE_NAMES = ("Scheduled", "Late", "AwaitingRetry")


class WorkPool(BaseModel):
    """A work pool: its concurrency limit, its workers and its open runs."""

    name: str
    concurrency_limit: int | None = None
    workers: list[WorkerInfo] = Field(default_factory=list)
    live_workers: int = 0
    #: the last heartbeat of any of its workers (None: none recorded)
    last_heard: dt.datetime | None = None
    #: open runs by state name
    runs: dict[str, int] = Field(default_factory=dict)
    #: runs Pending, Running or Cancelling (what the limit counts, with dispatched ones)
    busy: int = 0
    #: runs due and unclaimed for over a heartbeat timeout while no worker is live
    waiting_without_worker: int = 0
    heartbeat_timeout: float = 30.0

    def waiting_reason(self, run: FlowRun, now: dt.datetime) -> str | None:
        """``waiting: no live worker on pool P (...)`` when `run` is due and unclaimed and this
        pool has had no live worker for over a heartbeat timeout; else None."""
        state = run.state
        if state is None or state.type is not StateType.SCHEDULED or state.name not in DUE_STATE_NAMES:
            return None
        if self.live_workers:
            return None
        due = state.details.scheduled_time or run.expected_start_time or run.created
        if (now - due).total_seconds() <= self.heartbeat_timeout:
            return None
        if self.last_heard is not None and (now - self.last_heard).total_seconds() <= self.heartbeat_timeout:
            return None
        heard = (f"last worker heard {int((now - self.last_heard).total_seconds())} s ago"
                 if self.last_heard is not None else "no worker has served it")
        return (f"waiting: no live worker on pool {self.name} ({heard}); start one with: "
                f"flowrelay worker --pool {self.name}")
