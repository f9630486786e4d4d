"""Database tables (SQLAlchemy 2 declarative, portable between SQLite and PostgreSQL).

Portable types only: `Uuid` (native on PostgreSQL, CHAR(32) on SQLite), `JSON`, and `UTCDateTime`
(timezone-aware in Python, stored as UTC on both databases). The Alembic migrations
(``engine/migrations/versions/``) create exactly these tables; a test compares them.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    Uuid,
    text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from engine.states import utcnow

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(TypeDecorator[dt.datetime]):
    """A timezone-aware datetime stored as UTC (SQLite has no time zones: it keeps naive UTC)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:  # naive datetimes are taken as UTC
            value = value.replace(tzinfo=dt.UTC)
        value = value.astimezone(dt.UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(
        self, value: dt.datetime | None, dialect: Dialect
    ) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=dt.UTC)
        return value.astimezone(dt.UTC)


#: An autoincrementing 64-bit key (SQLite only autoincrements an INTEGER PRIMARY KEY).
AutoId = BigInteger().with_variant(Integer(), "sqlite")

#: JSON where Python ``None`` is SQL NULL.
Json = JSON(none_as_null=True)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class FlowRow(Base):
    __tablename__ = "flows"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    name: Mapped[str] = mapped_column(String(255), unique=True)
    created: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


class DeploymentRow(Base):
    __tablename__ = "deployments"
    __table_args__ = (UniqueConstraint("flow_name", "name"),)

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    flow_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("flows.id", ondelete="CASCADE"), index=True
    )
    flow_name: Mapped[str] = mapped_column(String(255))
    name: Mapped[str] = mapped_column(String(255))
    version: Mapped[int] = mapped_column(Integer, default=1)
    entrypoint: Mapped[str | None] = mapped_column(String(1024))
    parameters: Mapped[dict[str, Any]] = mapped_column(Json, default=dict)
    work_pool: Mapped[str | None] = mapped_column(String(255))
    tags: Mapped[list[str]] = mapped_column(Json, default=list)
    description: Mapped[str | None] = mapped_column(Text)
    schedules: Mapped[list[dict[str, Any]]] = mapped_column(Json, default=list)
    paused: Mapped[bool] = mapped_column(Boolean, default=False)
    concurrency_limit: Mapped[int | None] = mapped_column(Integer)
    #: the code its runs execute: {"bundle": "sha256:...", ...} or {"package": ..., "version": ...}
    code: Mapped[dict[str, Any] | None] = mapped_column(Json, nullable=True)
    created: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)


class DeploymentVersionRow(Base):
    """One row per registered version of a deployment (history; the current one is on
    `deployments`)."""

    __tablename__ = "deployment_versions"
    __table_args__ = (UniqueConstraint("deployment_id", "version"),)

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    deployment_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("deployments.id", ondelete="CASCADE")
    )
    version: Mapped[int] = mapped_column(Integer)
    entrypoint: Mapped[str | None] = mapped_column(String(1024))
    parameters: Mapped[dict[str, Any]] = mapped_column(Json, default=dict)
    work_pool: Mapped[str | None] = mapped_column(String(255))
    tags: Mapped[list[str]] = mapped_column(Json, default=list)
    description: Mapped[str | None] = mapped_column(Text)
    schedules: Mapped[list[dict[str, Any]]] = mapped_column(Json, default=list)
    concurrency_limit: Mapped[int | None] = mapped_column(Integer)
    code: Mapped[dict[str, Any] | None] = mapped_column(Json, nullable=True)
    created: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


class CodeBundleRow(Base):
    """A content-addressed bundle of a deployed project (a zip), by its ``sha256:`` hash
    (`engine.code`). `data` is null when the server keeps bundles in a directory."""

    __tablename__ = "code_bundles"

    hash: Mapped[str] = mapped_column(String(80), primary_key=True)
    size: Mapped[int] = mapped_column(BigInteger)
    data: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    created: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


class WorkPoolRow(Base):
    """A work pool with settings of its own (a pool needs no row to be used: its queue is
    declared by the first worker or dispatch)."""

    __tablename__ = "work_pools"

    name: Mapped[str] = mapped_column(String(255), primary_key=True)
    concurrency_limit: Mapped[int | None] = mapped_column(Integer)
    created: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)


class _CurrentState:
    """Columns holding a run's current state (its history is in a `*_states` table)."""

    state_type: Mapped[str | None] = mapped_column(String(32))
    state_name: Mapped[str | None] = mapped_column(String(64))
    state_message: Mapped[str | None] = mapped_column(Text)
    state_timestamp: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    state_details: Mapped[dict[str, Any] | None] = mapped_column(Json)
    result: Mapped[Any] = mapped_column(Json, nullable=True)
    run_count: Mapped[int] = mapped_column(Integer, default=0)
    start_time: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    end_time: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    #: Number of events emitted for this run (the `seq` of the last one).
    event_seq: Mapped[int] = mapped_column(Integer, default=0)
    #: Id of the last event of this run (the next one `follows` it).
    last_event_id: Mapped[uuid.UUID | None] = mapped_column(Uuid)


class FlowRunRow(_CurrentState, Base):
    __tablename__ = "flow_runs"
    __table_args__ = (
        Index("ix_flow_runs_created", "created"),
        Index("ix_flow_runs_flow_name_created", "flow_name", "created"),
        Index("ix_flow_runs_deployment_id_created", "deployment_id", "created"),
        Index("ix_flow_runs_deployment_name_created", "deployment_name", "created"),
        Index("ix_flow_runs_state_name", "state_name"),
        Index("ix_flow_runs_state_type", "state_type"),
        Index("ix_flow_runs_parent_flow_run_id", "parent_flow_run_id"),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    name: Mapped[str] = mapped_column(String(255))
    flow_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("flows.id", ondelete="CASCADE"))
    flow_name: Mapped[str] = mapped_column(String(255))
    deployment_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("deployments.id", ondelete="SET NULL")
    )
    deployment_name: Mapped[str | None] = mapped_column(String(511))
    deployment_version: Mapped[int | None] = mapped_column(Integer)
    work_pool: Mapped[str | None] = mapped_column(String(255))
    parameters: Mapped[dict[str, Any]] = mapped_column(Json, default=dict)
    tags: Mapped[list[str]] = mapped_column(Json, default=list)
    idempotency_key: Mapped[str | None] = mapped_column(String(512), unique=True)
    # Parent links carry no foreign key: a child may be reported before/without its parent row.
    parent_task_run_id: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    parent_flow_run_id: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    expected_start_time: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    caused_by: Mapped[dict[str, Any] | None] = mapped_column(Json)
    #: When a deployment run was handed to its pool (its dispatch event written); NULL while it
    #: waits for its start time, a concurrency slot or a retry (migration 0002).
    dispatched_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    #: Claims made of this run: the last one opened attempt number `attempts` (migration 0005).
    #: Only grows; it is the fencing token of the run's reports (`engine.orchestration`).
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    created: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)


class TaskRunRow(_CurrentState, Base):
    __tablename__ = "task_runs"
    __table_args__ = (Index("ix_task_runs_flow_run_id_created", "flow_run_id", "created"),)

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    flow_run_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("flow_runs.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(255))
    task_key: Mapped[str] = mapped_column(String(512))
    dynamic_key: Mapped[str] = mapped_column(String(255), default="0")
    parameters: Mapped[dict[str, Any]] = mapped_column(Json, default=dict)
    tags: Mapped[list[str]] = mapped_column(Json, default=list)
    child_flow_run_id: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    created: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)


class _StateHistory:
    # An autoincrement key gives the chronological order even when timestamps tie.
    id: Mapped[int] = mapped_column(AutoId, primary_key=True, autoincrement=True)
    type: Mapped[str] = mapped_column(String(32))
    name: Mapped[str] = mapped_column(String(64))
    message: Mapped[str | None] = mapped_column(Text)
    timestamp: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    details: Mapped[dict[str, Any]] = mapped_column(Json, default=dict)
    data: Mapped[Any] = mapped_column(Json, nullable=True)


class FlowRunStateRow(_StateHistory, Base):
    __tablename__ = "flow_run_states"

    flow_run_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("flow_runs.id", ondelete="CASCADE"), index=True
    )


class TaskRunStateRow(_StateHistory, Base):
    __tablename__ = "task_run_states"

    task_run_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("task_runs.id", ondelete="CASCADE"), index=True
    )


class LogRow(Base):
    __tablename__ = "logs"
    __table_args__ = (Index("ix_logs_flow_run_id_timestamp", "flow_run_id", "timestamp"),)

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    # No foreign keys: a batch of logs must never fail because one run is unknown.
    flow_run_id: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    task_run_id: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    level: Mapped[int] = mapped_column(Integer, default=20)
    logger: Mapped[str] = mapped_column(String(255), default="flowrelay")
    message: Mapped[str] = mapped_column(Text)
    timestamp: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


#: Execution option naming the server (`engine.server.leases`) whose relay publishes the outbox
#: rows written through an engine: set on the service's write engine, read at INSERT.
WRITER_OPTION = "flowrelay_writer"


def _writer(context: Any) -> str | None:
    value = context.execution_options.get(WRITER_OPTION)
    return str(value) if value else None


class EventRow(Base):
    """The outbox: every event, committed with the change it describes; the relay publishes the
    rows whose `sent_at` is NULL in `position` order and then sets `sent_at`.

    `position` is the primary key (not `id`) because SQLite only autoincrements an INTEGER
    PRIMARY KEY; `id` (the event's uuid) is UNIQUE.
    """

    __tablename__ = "events"
    __table_args__ = (
        Index(
            "ix_events_unsent",
            "position",
            sqlite_where=text("sent_at IS NULL"),
            postgresql_where=text("sent_at IS NULL"),
        ),
        Index("ix_events_resource_id_position", "resource_id", "position"),
    )

    position: Mapped[int] = mapped_column(AutoId, primary_key=True, autoincrement=True)
    id: Mapped[uuid.UUID] = mapped_column(Uuid, unique=True)
    occurred: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    event: Mapped[str] = mapped_column(String(255))
    resource_id: Mapped[str | None] = mapped_column(String(255))
    resource: Mapped[dict[str, Any]] = mapped_column(Json, default=dict)
    related: Mapped[list[dict[str, Any]]] = mapped_column(Json, default=list)
    payload: Mapped[dict[str, Any]] = mapped_column(Json, default=dict)
    follows: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    routing_key: Mapped[str] = mapped_column(String(255))
    created: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    sent_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    #: the server whose relay publishes it (the engine's `WRITER_OPTION`; a dead server's rows
    #: are adopted by a live one: `engine.server.leases`)
    writer: Mapped[str | None] = mapped_column(String(100), default=_writer)


class ServerRow(Base):
    """A live server: it renews `lease_until` while it runs (`engine.server.leases`)."""

    __tablename__ = "servers"

    id: Mapped[str] = mapped_column(String(100), primary_key=True)
    started: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    lease_until: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    #: where its HTTP API listens (for `flowrelay server ls`), if it serves one
    api_url: Mapped[str | None] = mapped_column(String(255))


class PartitionRow(Base):
    """One partition of the server-side work, leased by one live server at a time. `token`
    grows by one at every change of owner (a fencing token)."""

    __tablename__ = "server_partitions"

    partition: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    owner: Mapped[str | None] = mapped_column(String(100))
    token: Mapped[int] = mapped_column(BigInteger)
    lease_until: Mapped[dt.datetime] = mapped_column(UTCDateTime)


class WorkerHeartbeatRow(Base):
    """The last heartbeat of each live worker, whichever server received it: every server's
    heartbeat monitor judges silence from this shared row (`engine.server.heartbeats`)."""

    __tablename__ = "worker_heartbeats"

    worker_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    pool: Mapped[str] = mapped_column(String(255), default="")
    last_seen: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    #: the runs the worker said it holds in that heartbeat
    flow_run_ids: Mapped[list[str]] = mapped_column(Json, default=list)
    #: what the worker reports about itself: concurrency, mode, code loaded, host
    info: Mapped[dict[str, Any] | None] = mapped_column(Json, nullable=True)


# --- automations (automations/store.py) -------------------------------------------------------
class AutomationRow(Base):
    """An automation: its validated definition (the pydantic model as JSON), where it came from,
    whether it is enabled, and its counters (matched, fired, expired, failed)."""

    __tablename__ = "automations"

    name: Mapped[str] = mapped_column(String(200), primary_key=True)
    definition: Mapped[dict[str, Any]] = mapped_column(Json)
    source: Mapped[str] = mapped_column(String(1024), default="")
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    version: Mapped[int] = mapped_column(Integer, default=1)
    counters: Mapped[dict[str, Any]] = mapped_column(Json, default=dict)
    created: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


class AutomationStateRow(Base):
    """Durable trigger state of one automation: open windows, counts, armed timers, fired join
    keys, cooldowns (one row per state key, as the evaluator reports them)."""

    __tablename__ = "automation_state"

    automation: Mapped[str] = mapped_column(
        String(200), ForeignKey("automations.name", ondelete="CASCADE"), primary_key=True
    )
    key: Mapped[str] = mapped_column(String(1024), primary_key=True)
    state: Mapped[dict[str, Any]] = mapped_column(Json)
    updated: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


class AutomationFiringRow(Base):
    """One firing of an automation. Its id is derived from the automation and the triggering
    events, so a redelivered event finds its firing here and does not act twice. `status` is
    pending until every action ran (a restart re-runs pending firings: their run launches carry
    idempotency keys)."""

    __tablename__ = "automation_firings"
    __table_args__ = (Index("ix_automation_firings_automation_at", "automation", "at"),)

    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    automation: Mapped[str] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(16))
    at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    bucket: Mapped[str] = mapped_column(String(1024), default="")
    correlation: Mapped[str | None] = mapped_column(String(1024))
    event_ids: Mapped[list[str]] = mapped_column(Json, default=list)
    context: Mapped[dict[str, Any]] = mapped_column(Json, default=dict)
    status: Mapped[str] = mapped_column(String(16), default="pending")
    results: Mapped[list[dict[str, Any]]] = mapped_column(Json, default=list)
    updated: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
