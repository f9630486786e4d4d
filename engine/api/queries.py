"""Reads the API needs beyond `EngineService`'s own: several values per filter, time ranges,
totals for pagination, newest-first events, and the figures `/metrics` computes at scrape.

Every query runs in the service's read-only snapshot session (`EngineService.read_session`),
so none of them takes SQLite's write lock or waits on the group-commit writer.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import ColumnElement, func, or_, select

from engine.db import repository as repo
from engine.db import servers
from engine.db.models import EventRow, FlowRunRow, WorkerHeartbeatRow
from engine.schemas import Event, FlowRun
from engine.service import EngineService


@dataclass(frozen=True)
class RunQuery:
    """`GET /api/flow-runs` filters: values of one field are alternatives (OR), fields AND."""

    states: Sequence[str] = ()
    flows: Sequence[str] = ()
    deployments: Sequence[str] = ()
    since: dt.datetime | None = None
    until: dt.datetime | None = None
    parent_flow_run_id: uuid.UUID | None = None
    limit: int = 50
    offset: int = 0


def _run_conditions(query: RunQuery) -> list[ColumnElement[bool]]:
    conditions: list[ColumnElement[bool]] = []
    if query.states:
        # "Completed" (a state name) or "COMPLETED" / "completed" (a state type) both work.
        conditions.append(
            or_(
                FlowRunRow.state_name.in_(list(query.states)),
                FlowRunRow.state_type.in_([s.upper() for s in query.states]),
            )
        )
    if query.flows:
        conditions.append(FlowRunRow.flow_name.in_(list(query.flows)))
    if query.deployments:
        conditions.append(FlowRunRow.deployment_name.in_(list(query.deployments)))
    if query.since is not None:
        conditions.append(FlowRunRow.created >= query.since)
    if query.until is not None:
        conditions.append(FlowRunRow.created < query.until)
    if query.parent_flow_run_id is not None:
        conditions.append(FlowRunRow.parent_flow_run_id == query.parent_flow_run_id)
    return conditions


async def flow_runs(service: EngineService, query: RunQuery) -> tuple[list[FlowRun], int]:
    """One page of runs, newest first, and how many match in all."""
    conditions = _run_conditions(query)
    page = (
        select(FlowRunRow)
        .where(*conditions)
        .order_by(FlowRunRow.created.desc(), FlowRunRow.id.desc())
        .limit(query.limit)
        .offset(query.offset)
    )
    count = select(func.count()).select_from(FlowRunRow).where(*conditions)
    async with service.read_session() as session:
        rows = list(await session.scalars(page))
        total = int(await session.scalar(count) or 0)
    return [repo.flow_run(row) for row in rows], total


async def child_ids(service: EngineService, flow_run_id: uuid.UUID) -> list[uuid.UUID]:
    """Ids of the runs whose parent flow run is `flow_run_id`, oldest first."""
    query = (
        select(FlowRunRow.id)
        .where(FlowRunRow.parent_flow_run_id == flow_run_id)
        .order_by(FlowRunRow.created, FlowRunRow.id)
    )
    async with service.read_session() as session:
        return list(await session.scalars(query))


async def run_by_idempotency_key(service: EngineService, key: str) -> FlowRun | None:
    async with service.read_session() as session:
        row = await session.scalar(select(FlowRunRow).where(FlowRunRow.idempotency_key == key))
        return repo.flow_run(row) if row is not None else None


async def latest_states(service: EngineService, deployments: Sequence[str]) -> dict[str, tuple[str, str]]:
    """Deployment ``FLOW/NAME`` → (state type, state name) of its newest run, for those with
    runs. One indexed lookup per deployment (``ix_flow_runs_deployment_name_created``)."""
    out: dict[str, tuple[str, str]] = {}
    async with service.read_session() as session:
        for name in deployments:
            row = (
                await session.execute(
                    select(FlowRunRow.state_type, FlowRunRow.state_name)
                    .where(FlowRunRow.deployment_name == name)
                    .order_by(FlowRunRow.created.desc(), FlowRunRow.id.desc())
                    .limit(1)
                )
            ).first()
            if row is not None and row[0] is not None:
                out[name] = (str(row[0]), str(row[1]))
    return out


@dataclass(frozen=True)
class EventQuery:
    """`GET /api/events` filters. Names and resource ids may end in ``*`` (a prefix match)."""

    names: Sequence[str] = ()
    resources: Sequence[str] = ()
    since: dt.datetime | None = None
    until: dt.datetime | None = None
    limit: int = 100
    offset: int = 0


def _like(column: Any, values: Sequence[str]) -> ColumnElement[bool]:
    exact = [v for v in values if "*" not in v]
    parts: list[ColumnElement[bool]] = []
    if exact:
        parts.append(column.in_(exact))
    for value in values:
        if "*" in value:
            escaped = value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            parts.append(column.like(escaped.replace("*", "%"), escape="\\"))
    return or_(*parts)


async def events(service: EngineService, query: EventQuery) -> tuple[list[Event], int]:
    """One page of stored events, newest first, and how many match in all."""
    conditions: list[ColumnElement[bool]] = []
    if query.names:
        conditions.append(_like(EventRow.event, query.names))
    if query.resources:
        conditions.append(_like(EventRow.resource_id, query.resources))
    if query.since is not None:
        conditions.append(EventRow.occurred >= query.since)
    if query.until is not None:
        conditions.append(EventRow.occurred < query.until)
    # Work messages (`dispatch.<pool>`) live in the outbox too, but are not events to show.
    conditions.append(EventRow.routing_key.not_like("dispatch.%"))
    page = (
        select(EventRow)
        .where(*conditions)
        .order_by(EventRow.position.desc())
        .limit(query.limit)
        .offset(query.offset)
    )
    count = select(func.count()).select_from(EventRow).where(*conditions)
    async with service.read_session() as session:
        rows = list(await session.scalars(page))
        total = int(await session.scalar(count) or 0)
    return [repo.event(row) for row in rows], total


@dataclass
class Snapshot:
    """What `/metrics` reads from the database at each scrape."""

    runs_by_state: dict[tuple[str, str], int] = field(default_factory=dict)
    outbox_backlog: int = 0
    outbox_total: int = 0
    #: (worker id, pool, last heartbeat, runs held)
    workers: list[tuple[str, str, dt.datetime, int]] = field(default_factory=list)
    #: messages waiting in the dead-letter queue (read from the broker; None: unknown)
    dead_letter_queue: int | None = None
    #: live servers with the partitions they own (`engine.db.servers.live_servers`)
    servers: list[dict[str, Any]] = field(default_factory=list)
    #: pools: (name, concurrency limit, live workers, busy runs, runs stranded without a worker)
    pools: list[tuple[str, int | None, int, int, int]] = field(default_factory=list)
    #: this server's write transactions committed, and the works they carried
    commits: tuple[int, int] = (0, 0)


async def snapshot(service: EngineService) -> Snapshot:
    out = Snapshot()
    async with service.read_session() as session:
        by_state = await session.execute(
            select(FlowRunRow.state_type, FlowRunRow.state_name, func.count())
            .group_by(FlowRunRow.state_type, FlowRunRow.state_name)
        )
        out.runs_by_state = {
            (str(kind or ""), str(name or "")): int(n) for kind, name, n in by_state
        }
        out.outbox_backlog = int(
            await session.scalar(
                select(func.count()).select_from(EventRow).where(EventRow.sent_at.is_(None))
            )
            or 0
        )
        out.outbox_total = int(await session.scalar(select(func.max(EventRow.position))) or 0)
        heartbeats = await session.scalars(select(WorkerHeartbeatRow))
        out.workers = [
            (row.worker_id, row.pool, row.last_seen, len(row.flow_run_ids or []))
            for row in heartbeats
        ]
        out.servers = await servers.live_servers(session)
    out.pools = [(p.name, p.concurrency_limit, p.live_workers, p.busy, p.waiting_without_worker)
                 for p in await service.read_work_pools()]
    out.commits = service.commits
    return out


__all__ = [
    "EventQuery",
    "RunQuery",
    "Snapshot",
    "child_ids",
    "events",
    "flow_runs",
    "latest_states",
    "run_by_idempotency_key",
    "snapshot",
]
