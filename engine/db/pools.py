"""Work pools and their workers as things one can see and limit (``flowrelay pool ...``,
``flowrelay worker ls``, the "Work pools" page).

A pool needs no row to be used: it exists as soon as a deployment names it or a worker serves it.
It gets a ``work_pools`` row once it has a concurrency limit. Workers are the rows of
``worker_heartbeats`` (a worker judged lost is deleted there): live while heard within the
server's heartbeat timeout.

A run *waits without a worker* when it is due and unclaimed (Scheduled, Late or AwaitingRetry,
not waiting for a slot) while its pool has had no live worker for longer than a heartbeat
timeout: `WorkPool.waiting_reason` says so, for `flow-run inspect`, ``--watch`` and the UI, and
`_stranded` counts them for the gauge.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from engine.db import repository as repo
from engine.db.models import DeploymentRow, FlowRunRow, WorkerHeartbeatRow, WorkPoolRow
from engine.schemas import DUE_STATE_NAMES, WorkerInfo, WorkPool
from engine.states import StateType

__all__ = ["read_pools", "read_workers", "set_limit"]

_OPEN_TYPES = (StateType.SCHEDULED.value, StateType.PENDING.value, StateType.RUNNING.value,
               StateType.CANCELLING.value, StateType.PAUSED.value)


def _worker(row: WorkerHeartbeatRow, now: dt.datetime, timeout: float) -> WorkerInfo:
    info = row.info or {}
    return WorkerInfo(
        id=row.worker_id, pool=row.pool, last_seen=row.last_seen,
        alive=(now - row.last_seen).total_seconds() <= timeout,
        runs=[str(r) for r in row.flow_run_ids or ()],
        concurrency=info.get("concurrency"), mode=info.get("mode"), host=info.get("host"),
        pid=info.get("pid"), code=list(info.get("code") or ()),
    )


async def read_workers(session: AsyncSession, now: dt.datetime, timeout: float) -> list[WorkerInfo]:
    rows = await session.scalars(
        select(WorkerHeartbeatRow).order_by(WorkerHeartbeatRow.pool, WorkerHeartbeatRow.worker_id)
    )
    return [_worker(row, now, timeout) for row in rows]


async def read_pools(
    session: AsyncSession, now: dt.datetime, timeout: float, names: list[str] | None = None
) -> list[WorkPool]:
    """Every known pool (or those in `names`), with its limit, workers and open runs."""
    limits = {name: limit for name, limit in await session.execute(
        select(WorkPoolRow.name, WorkPoolRow.concurrency_limit))}
    known = set(limits)
    known |= {p for (p,) in await session.execute(select(DeploymentRow.work_pool).distinct()) if p}
    workers = await read_workers(session, now, timeout)
    known |= {w.pool for w in workers}
    counts: dict[str, dict[str, int]] = {}
    query = (
        select(FlowRunRow.work_pool, FlowRunRow.state_name, func.count())
        .where(FlowRunRow.work_pool.is_not(None), FlowRunRow.state_type.in_(_OPEN_TYPES))
        .group_by(FlowRunRow.work_pool, FlowRunRow.state_name)
    )
    for pool, state, count in await session.execute(query):
        counts.setdefault(str(pool), {})[str(state)] = int(count)
    known |= set(counts)
    if names is not None:
        known = set(names)  # a pool nobody has used yet reads as empty
    stranded = await _stranded(session, now, timeout, workers)
    pools = []
    for name in sorted(known):
        mine = [w for w in workers if w.pool == name]
        live = [w for w in mine if w.alive]
        last = max((w.last_seen for w in mine), default=None)
        pools.append(WorkPool(
            name=name, concurrency_limit=limits.get(name), workers=mine, live_workers=len(live),
            last_heard=last, runs=counts.get(name, {}),
            busy=sum(n for s, n in counts.get(name, {}).items() if s in ("Pending", "Running", "Cancelling")),
            waiting_without_worker=stranded.get(name, 0), heartbeat_timeout=timeout,
        ))
    return pools


async def _stranded(
    session: AsyncSession, now: dt.datetime, timeout: float, workers: list[WorkerInfo]
) -> dict[str, int]:
    """Per pool without a live worker: its runs due and unclaimed for over `timeout`."""
    live = {w.pool for w in workers if w.alive}
    since = now - dt.timedelta(seconds=timeout)
    query = (
        select(FlowRunRow.work_pool, func.count())
        .where(
            FlowRunRow.deployment_id.is_not(None),
            FlowRunRow.state_type == StateType.SCHEDULED.value,
            FlowRunRow.state_name.in_(DUE_STATE_NAMES),
            or_(FlowRunRow.dispatched_at <= since, FlowRunRow.expected_start_time <= since),
        )
        .group_by(FlowRunRow.work_pool)
    )
    return {pool: int(n) for pool, n in await session.execute(query) if pool and pool not in live}


async def set_limit(session: AsyncSession, name: str, limit: int | None, now: dt.datetime) -> None:
    """Set (or clear, with None) the pool's concurrency limit."""
    dialect = session.get_bind().dialect.name
    await session.execute(
        repo.insert_ignoring_conflicts(dialect, WorkPoolRow, ["name"]).values(
            name=name, concurrency_limit=None, created=now, updated=now)
    )
    row = await session.scalar(
        select(WorkPoolRow).where(WorkPoolRow.name == name).with_for_update(key_share=True)
        .execution_options(populate_existing=True)
    )
    assert row is not None
    row.concurrency_limit = limit
    row.updated = now
