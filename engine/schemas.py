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


# --- deployments --------------------------------------------------------------------------------
#: Pool names are broker queue names (`engine.broker.topology`): letters, digits, '-', '_', dots.
POOL_NAME_PATTERN = r"^[A-Za-z0-9_\-]+(\.[A-Za-z0-9_\-]+)*$"


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
    (seconds), a ``timezone`` (IANA name, default UTC), ``active`` (default true) and, for
    intervals, an optional ``anchor_date``. `ValueError` naming `where` on anything else."""
    import zoneinfo

    if not isinstance(item, dict):
        raise ValueError(f"{where}: expected a mapping such as {{cron: '0 2 * * *'}}")
    unknown = set(item) - {"cron", "interval", "timezone", "active", "anchor_date"}
    if unknown:
        raise ValueError(
            f"{where}: unknown key {sorted(unknown)[0]!r} "
            "(expected cron or interval, timezone, active, anchor_date)"
        )
    if ("cron" in item) == ("interval" in item):
        raise ValueError(f"{where}: give exactly one of 'cron' or 'interval'")
    timezone = str(item.get("timezone") or "UTC")
    try:
        zoneinfo.ZoneInfo(timezone)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ValueError(
            f"{where}: timezone {timezone!r} is not a known time zone (such as 'Europe/Paris')"
        ) from None
    result: dict[str, Any] = {}
    if "cron" in item:
        from croniter import croniter  # type: ignore[import-untyped]

        cron = str(item["cron"]).strip()
        if not croniter.is_valid(cron):
            raise ValueError(f"{where}: cron {cron!r} is not a valid cron expression")
        if "anchor_date" in item:
            raise ValueError(f"{where}: anchor_date only applies to an interval")
        result["cron"] = cron
    else:
        try:
            result["interval"] = parse_interval(item["interval"])
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from None
        if item.get("anchor_date") is not None:
            anchor = item["anchor_date"]
            try:
                moment = (
                    anchor
                    if isinstance(anchor, dt.datetime)
                    else dt.datetime.fromisoformat(str(anchor))
                )
            except ValueError:
                raise ValueError(
                    f"{where}: anchor_date {anchor!r} is not an ISO date-time"
                ) from None
            result["anchor_date"] = moment.isoformat()
    result["timezone"] = timezone
    result["active"] = bool(item.get("active", True))
    return result


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
        return [normalise_schedule(item, f"schedules[{i}]") for i, item in enumerate(value)]

    @property
    def full_name(self) -> str:
        """``FLOW/DEPLOYMENT``: how users address the deployment."""
        return f"{self.flow_name}/{self.name}"


class DeploymentSpec(_DeploymentFields):
    """What `flowrelay deploy` (or a ``deployments:`` list in YAML) registers. ``pool`` is
    accepted for ``work_pool``."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    entrypoint: str = Field(min_length=1, max_length=1024)
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
