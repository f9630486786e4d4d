"""Bulk dispatch of due deployment runs: the server's timer hands a whole cron minute over in a few
transactions instead of one per run.

`dispatch_due(session, run_ids, now, enter=...)`, inside the service's write transaction:

1. one query reads the runs among `run_ids` with their deployments; on PostgreSQL it locks the
   run rows ``FOR NO KEY UPDATE ... SKIP LOCKED`` (as `slots.dispatch_run` locks one run, but a
   run locked by another transaction — another server dispatching it, a client changing its
   state — is skipped and reported `busy`, for the caller to try again: this transaction never
   waits on a run lock, so it cannot deadlock with anyone on them);
2. runs no longer undispatched in Scheduled/Late/AwaitingRetry are left alone (at most once: a
   run another server dispatched first has ``dispatched_at`` set once its lock is released);
3. runs of a deployment with a concurrency limit take the per-run path, `slots.dispatch_run`
   (run → deployment lock order, slot counting, AwaitingConcurrencySlot): the same semantics;
4. the rest are dispatched in bulk: their ``flow-run.dispatched`` outbox rows (the values
   `slots.dispatch_values` builds, routed to ``dispatch.<pool>``) in one executemany INSERT and
   their ``dispatched_at`` in one UPDATE. These rows bypass the ORM, so the caller hands
   `DueDispatch.events` to the relay once committed (`EngineService.dispatch_due`); the per-run
   path's rows are ORM rows, handed over by the session like every other.

Outbox order between the runs of one call is not kept (executemany): each dispatch event is
the only outbox row its run gets here, and the events of different runs are independent.

Like `slots.dispatch_run`, the caller judges which runs are due (the timer, on its clock): a
run's scheduled time is not compared with `now`, which is the dispatch time recorded.

*Staged* dispatch (`at`: run id → its time, in the future): the timer does a run's database
work a few seconds before its time, so that at the time only the publish remains (10,000 runs of
one cron minute handed over within a second of it). Such a run's ``dispatched_at`` and its
dispatch event's ``occurred`` are its time, not `now`; the relay publishes no event before it
occurs (`engine.server.relay`), and until then the run still counts as not handed over (a pause
cancels it; its worker's claim of a cancelled run is refused). Runs of deployments with a
concurrency limit are not staged (a slot is taken when the run is due): they come back in
`DueDispatch.deferred` for the caller to dispatch at their time.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from engine.db.runs import DEPLOYMENTS, EVENTS, FLOW_RUNS, WORK_POOLS, RunRecord
from engine.deployments.slots import DISPATCHABLE, EnterState, dispatch_run, dispatch_values
from engine.schemas import Event
from engine.states import StateType

#: Deployment columns a dispatch reads, labelled apart from the run's columns.
_DEP_COLUMNS = ("version", "work_pool", "flow_name", "name", "entrypoint", "concurrency_limit", "code")


@dataclass
class DueDispatch:
    """What `dispatch_due` did with the runs it was given."""

    #: handed to their pools by this call (bulk and per-run paths)
    dispatched: list[uuid.UUID] = field(default_factory=list)
    #: runs of limited deployments that went (or stayed) waiting for a slot
    waiting: list[uuid.UUID] = field(default_factory=list)
    #: locked by another transaction (PostgreSQL): not looked at, try again
    busy: list[uuid.UUID] = field(default_factory=list)
    #: runs of limited deployments asked to be staged: dispatch them at their time instead
    deferred: list[uuid.UUID] = field(default_factory=list)
    #: the bulk path's outbox rows as `(event, routing key)`, to hand to the relay once committed
    events: list[tuple[Event, str]] = field(default_factory=list)


def _query(run_ids: list[uuid.UUID]) -> Any:
    deployment_columns = [DEPLOYMENTS.c[name].label(f"dep_{name}") for name in _DEP_COLUMNS]
    return (
        select(FLOW_RUNS, *deployment_columns)
        .join(DEPLOYMENTS, DEPLOYMENTS.c.id == FLOW_RUNS.c.deployment_id)
        .where(FLOW_RUNS.c.id.in_(run_ids))
        .order_by(FLOW_RUNS.c.id)
        .with_for_update(of=FLOW_RUNS, key_share=True, skip_locked=True)
    )


def _dispatchable(run: Any) -> bool:
    return (
        run.dispatched_at is None
        and run.state_type == StateType.SCHEDULED.value
        and run.state_name in DISPATCHABLE
    )


async def dispatch_due(
    session: AsyncSession,
    run_ids: Sequence[uuid.UUID],
    now: dt.datetime,
    *,
    enter: EnterState,
    at: Mapping[uuid.UUID, dt.datetime] | None = None,
) -> DueDispatch:
    """Dispatch the undispatched Scheduled/Late/AwaitingRetry deployment runs among `run_ids` in
    the session's transaction (see the module docstring), each at `at[run id]` if that is later
    than `now` (staged). Unknown ids, runs of no deployment and runs already dispatched are
    skipped."""
    at = at or {}
    out = DueDispatch()
    wanted = list(dict.fromkeys(run_ids))
    if not wanted:
        return out
    rows = (await session.execute(_query(wanted))).mappings().all()
    seen = {row["id"] for row in rows}
    missing = [run_id for run_id in wanted if run_id not in seen]
    if missing and session.get_bind().dialect.name == "postgresql":
        # Skipped rows exist but are locked by someone else; the others are gone or have no
        # deployment (the join) — nothing to do for those.
        existing = await session.scalars(
            select(FLOW_RUNS.c.id).where(
                FLOW_RUNS.c.id.in_(missing), FLOW_RUNS.c.deployment_id.is_not(None)
            )
        )
        out.busy = list(existing)

    bulk: list[tuple[RunRecord, Any]] = []
    limited: list[uuid.UUID] = []
    limited_pools = set((await session.execute(
        select(WORK_POOLS.c.name).where(WORK_POOLS.c.concurrency_limit.is_not(None))
    )).scalars()) if rows else set()
    for row in rows:
        if not _dispatchable(row):
            continue
        if row["dep_concurrency_limit"] is not None or row["dep_work_pool"] in limited_pools:
            if at.get(row["id"], now) > now:
                out.deferred.append(row["id"])
            else:
                limited.append(row["id"])
            continue
        run = RunRecord(**{k: v for k, v in row.items() if not k.startswith("dep_")})
        dep = RunRecord(id=row["deployment_id"],
                        **{name: row[f"dep_{name}"] for name in _DEP_COLUMNS})
        bulk.append((run, dep))

    for run_id in limited:  # the per-run path: slot counting under the deployment's lock
        if await dispatch_run(session, run_id, enter=enter, now=now):
            out.dispatched.append(run_id)
        else:
            out.waiting.append(run_id)

    if bulk:
        values, restamped = [], []
        by_time: dict[dt.datetime, list[uuid.UUID]] = {}
        for run, dep in bulk:
            version = run.deployment_version
            when = max(at.get(run.id, now), now)
            event, row_values = dispatch_values(run, dep, when)  # sets run.dispatched_at
            values.append(row_values)
            out.events.append((event, row_values["routing_key"]))
            out.dispatched.append(run.id)
            by_time.setdefault(when, []).append(run.id)
            if run.deployment_version != version:
                restamped.append(run)
        for when, ids in by_time.items():  # one UPDATE per time (a cron minute's runs share it)
            await session.execute(
                update(FLOW_RUNS)
                .where(FLOW_RUNS.c.id.in_(ids), FLOW_RUNS.c.dispatched_at.is_(None))
                .values(dispatched_at=when)
            )
        for run in restamped:  # the deployment changed since the run was made (rare)
            await session.execute(
                update(FLOW_RUNS)
                .where(FLOW_RUNS.c.id == run.id)
                .values(deployment_version=run.deployment_version, work_pool=run.work_pool)
            )
        await session.execute(insert(EVENTS), values)
    return out


__all__ = ["DueDispatch", "dispatch_due"]
