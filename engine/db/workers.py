"""Worker heartbeats in the database (``worker_heartbeats``), shared by every server.

A worker's heartbeat reaches one server (the command queue is shared); that server records it
here. Every server's monitor reads the same rows, so a worker counts as silent only when *no*
server has heard it for the timeout, and the server that deletes the stale row (a conditional
DELETE: one winner) is the one that handles the lost worker's runs, in that same transaction.

Times are the recording server's clock (servers on several machines need synchronised clocks,
to well under the heartbeat timeout).
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from engine.db.models import FlowRunRow, WorkerHeartbeatRow
from engine.db.repository import insert_ignoring_conflicts
from engine.states import StateType

_HELD_TYPES = (StateType.PENDING.value, StateType.RUNNING.value)


async def record(
    session: AsyncSession, worker_id: str, pool: str, now: dt.datetime, flow_run_ids: list[str],
    info: dict[str, Any] | None = None,
) -> None:
    """Upsert the worker's row with `now` as its last heartbeat, the runs it holds and what it
    says about itself (kept from an earlier beat when this one says nothing)."""
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    values: dict[str, Any] = {"pool": pool, "last_seen": now, "flow_run_ids": flow_run_ids}
    if info is not None:
        values["info"] = info
    stmt = insert(WorkerHeartbeatRow).values(worker_id=worker_id, **values)
    stmt = stmt.on_conflict_do_update(index_elements=["worker_id"], set_=values)
    await session.execute(stmt)


async def orphaned_claims(
    session: AsyncSession, claimed_before: dt.datetime
) -> list[tuple[uuid.UUID, str]]:
    """Deployment runs Pending or Running under a worker since before `claimed_before` whose
    worker, heard after that, did not list them in its heartbeat: the worker does not have them
    (a claim committed whose answer never reached it; a run whose final state it gave up
    reporting), so nobody will ever finish them. `(run id, worker id)` pairs."""
    worker = FlowRunRow.state_details["worker_id"].as_string()
    query = select(FlowRunRow.id, worker).where(
        FlowRunRow.state_type.in_((StateType.PENDING.value, StateType.RUNNING.value)),
        FlowRunRow.deployment_id.is_not(None),
        FlowRunRow.state_timestamp < claimed_before,
    )
    held = [(run_id, w) for run_id, w in await session.execute(query) if w]
    if not held:
        return []
    rows = await session.execute(
        select(WorkerHeartbeatRow.worker_id, WorkerHeartbeatRow.flow_run_ids).where(
            WorkerHeartbeatRow.worker_id.in_({w for _, w in held}),
            WorkerHeartbeatRow.last_seen >= claimed_before,
        )
    )
    listed = {w: set(ids or ()) for w, ids in rows}
    return [(run_id, w) for run_id, w in held if w in listed and str(run_id) not in listed[w]]


async def silent(session: AsyncSession, before: dt.datetime) -> list[tuple[str, dt.datetime]]:
    """Workers last heard before `before`, with that time."""
    query = select(WorkerHeartbeatRow.worker_id, WorkerHeartbeatRow.last_seen).where(
        WorkerHeartbeatRow.last_seen < before
    )
    return [(worker_id, seen) for worker_id, seen in await session.execute(query)]


async def take_if_silent(session: AsyncSession, worker_id: str, before: dt.datetime) -> bool:
    """Delete the worker's row if it was last heard before `before`; True if this call did (the
    caller then owns the lost worker's runs, in this transaction)."""
    result = await session.execute(
        delete(WorkerHeartbeatRow).where(
            WorkerHeartbeatRow.worker_id == worker_id, WorkerHeartbeatRow.last_seen < before
        )
    )
    return bool(getattr(result, "rowcount", 0))


async def held_runs(session: AsyncSession, worker_id: str) -> list[uuid.UUID]:
    """Ids of the Pending/Running runs whose current state was proposed by `worker_id`."""
    query = (
        select(FlowRunRow.id)
        .where(
            FlowRunRow.state_type.in_(_HELD_TYPES),
            FlowRunRow.state_details["worker_id"].as_string() == worker_id,
        )
        .order_by(FlowRunRow.created, FlowRunRow.id)
    )
    return list(await session.scalars(query))


async def adopt_holders(session: AsyncSession, now: dt.datetime) -> int:
    """Give every worker that holds a run but has no row (never recorded, or recorded by an
    older version) a row heard `now`: one full timeout to be heard before it counts as lost."""
    worker = FlowRunRow.state_details["worker_id"].as_string()
    query = select(worker).where(FlowRunRow.state_type.in_(_HELD_TYPES)).distinct()
    holders = {w for w in await session.scalars(query) if w}
    if not holders:
        return 0
    stmt = insert_ignoring_conflicts(session.get_bind().dialect.name, WorkerHeartbeatRow, ["worker_id"])
    rows = [{"worker_id": w, "pool": "", "last_seen": now, "flow_run_ids": []} for w in holders]
    await session.execute(stmt, rows)
    return len(holders)


async def superseded(session: AsyncSession, attempts: dict[uuid.UUID, int]) -> list[uuid.UUID]:
    """Of the runs a worker says it runs in `attempts` (run id -> attempt), those whose current
    state is not of that attempt any more (ended by the engine, claimed again, or gone)."""
    if not attempts:
        return []
    query = select(FlowRunRow.id, FlowRunRow.state_details).where(FlowRunRow.id.in_(list(attempts)))
    current = {run_id: (details or {}).get("attempt") for run_id, details in await session.execute(query)}
    return [run_id for run_id, token in attempts.items() if current.get(run_id, -1) != token]


__all__ = ["adopt_holders", "held_runs", "orphaned_claims", "record", "silent", "superseded",
           "take_if_silent"]
