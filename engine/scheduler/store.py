"""The scheduler's database work, on an `AsyncSession` inside the engine service's write (or
read) transaction: `EngineService.write(work)` / `EngineService.read_session()`.

Runs made by a schedule carry ``caused_by = {"schedule": <id>, "slot": <UTC ISO>}`` and the
idempotency key ``schedule:<FLOW/DEPLOYMENT>:<id>:<slot UTC ISO>``. A run is *pending* while it
is Scheduled, Late or AwaitingConcurrencySlot and not yet handed to its pool (``dispatched_at``
is NULL, or later than now: dispatched ahead of its time, its message not yet published): only
pending runs are ever cancelled here, so a run in a pool's queue, or claimed, is never taken back.

Removing a slot's run (a pause, a removed schedule, catch-up ``skip``) moves it to Cancelled
with a message saying why, and renames its idempotency key to ``<key>:cancelled:<run id>``. The
run stays in the history; the key is free again, so resuming creates the slot's run anew, while
a slot still never has two live runs.
"""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import and_, func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from engine.db.models import EventRow, FlowRunRow, FlowRunStateRow
from engine.deployments.store import deployment_event
from engine.errors import ObjectNotFound
from engine.scheduler.specs import schedule_id
from engine.schemas import Deployment
from engine.states import Cancelled, Late, StateType, utcnow

__all__ = [
    "KEY_PREFIX",
    "PendingRun",
    "cancel_pending",
    "last_slots",
    "mark_late_many",
    "pending_runs",
    "run_key",
    "set_schedule_active",
]

KEY_PREFIX = "schedule:"
#: Scheduled-type states a schedule's run is in until a worker claims it.
_WAITING_NAMES = ("Scheduled", "Late")
#: ... and those a pause cancels (a run waiting for a concurrency slot holds none).
_CANCELLABLE_NAMES = (*_WAITING_NAMES, "AwaitingConcurrencySlot")


def run_key(deployment: str, sid: str, slot: dt.datetime) -> str:
    """``schedule:<FLOW/DEPLOYMENT>:<schedule id>:<slot as UTC ISO>``."""
    return f"{KEY_PREFIX}{deployment}:{sid}:{slot_text(slot)}"


def slot_text(slot: dt.datetime) -> str:
    return slot.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ").replace(".000000Z", "Z")


@dataclass(frozen=True)
class PendingRun:
    """A schedule's run not yet claimed by a worker."""

    id: uuid.UUID
    deployment: str
    schedule: str
    slot: dt.datetime
    state_name: str
    dispatched: bool


def _schedule_runs() -> Any:
    return and_(
        FlowRunRow.idempotency_key.like(f"{KEY_PREFIX}%"),
        FlowRunRow.deployment_name.is_not(None),
    )


def _not_handed_over() -> Any:
    """Not dispatched, or dispatched ahead of its time (staged: the work message is published
    at that time, and a worker's claim of a run cancelled meanwhile is refused)."""
    return or_(FlowRunRow.dispatched_at.is_(None), FlowRunRow.dispatched_at > utcnow())


async def pending_runs(session: AsyncSession, deployment: str | None = None) -> list[PendingRun]:
    """Schedule runs in Scheduled/Late (dispatched or not), of one deployment or all."""
    query = select(
        FlowRunRow.id,
        FlowRunRow.deployment_name,
        FlowRunRow.caused_by,
        FlowRunRow.expected_start_time,
        FlowRunRow.state_name,
        FlowRunRow.dispatched_at,
    ).where(
        _schedule_runs(),
        FlowRunRow.state_type == StateType.SCHEDULED.value,
        FlowRunRow.state_name.in_(_WAITING_NAMES),
    )
    if deployment is not None:
        query = query.where(FlowRunRow.deployment_name == deployment)
    found, now = [], utcnow()
    for run_id, name, caused_by, expected, state_name, dispatched_at in await session.execute(
        query
    ):
        sid = (caused_by or {}).get("schedule")
        if not sid or expected is None:
            continue
        handed = dispatched_at is not None and dispatched_at <= now
        found.append(PendingRun(run_id, name, str(sid), expected, state_name, handed))
    return sorted(found, key=lambda run: run.slot)


async def last_slots(session: AsyncSession) -> dict[tuple[str, str], dt.datetime]:
    """The latest slot that has (or had) a run, per ``(deployment, schedule id)``."""
    sid = FlowRunRow.caused_by["schedule"].as_string()
    query = (
        select(FlowRunRow.deployment_name, sid, func.max(FlowRunRow.expected_start_time))
        .where(_schedule_runs())
        .group_by(FlowRunRow.deployment_name, sid)
    )
    result: dict[tuple[str, str], dt.datetime] = {}
    for name, schedule, latest in await session.execute(query):
        if name and schedule and latest is not None:
            if latest.tzinfo is None:  # max() over SQLite text loses the column type
                latest = dt.datetime.fromisoformat(str(latest)).replace(tzinfo=dt.UTC)
            result[(name, schedule)] = latest
    return result


async def cancel_pending(
    session: AsyncSession,
    *,
    run_ids: list[uuid.UUID] | None = None,
    deployment_id: uuid.UUID | None = None,
    schedules: set[str] | None = None,
    message: str,
) -> list[uuid.UUID]:
    """Cancel pending (undispatched Scheduled/Late/AwaitingConcurrencySlot) schedule runs — those of `run_ids`, or of
    deployment `deployment_id` (only of the schedule ids in `schedules`, if given) — and free
    their idempotency keys. Returns the ids cancelled."""
    from engine.flow_runs import enter

    query = (
        select(FlowRunRow)
        .where(
            _schedule_runs(),
            FlowRunRow.state_type == StateType.SCHEDULED.value,
            FlowRunRow.state_name.in_(_CANCELLABLE_NAMES),
            _not_handed_over(),
        )
        .order_by(FlowRunRow.id)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    if run_ids is not None:
        if not run_ids:
            return []
        query = query.where(FlowRunRow.id.in_(run_ids))
    if deployment_id is not None:
        query = query.where(FlowRunRow.deployment_id == deployment_id)
    cancelled = []
    for row in (await session.scalars(query)).all():
        sid = (row.caused_by or {}).get("schedule")
        if schedules is not None and sid not in schedules:
            continue
        history, _, values, _ = enter(row, Cancelled(message=message))
        row.idempotency_key = f"{row.idempotency_key}:cancelled:{row.id}"[:512]
        row.updated = history["timestamp"]
        session.add_all([FlowRunStateRow(**history), EventRow(**values)])
        cancelled.append(row.id)
    return cancelled


async def mark_late_many(
    session: AsyncSession, run_ids: list[uuid.UUID], *, message: str
) -> tuple[list[uuid.UUID], list[uuid.UUID]]:
    """Move the runs still plainly Scheduled (not claimed, not waiting for a concurrency slot)
    among `run_ids` to Late, in one transaction (a whole cron minute's runs at once): one query
    finds them, one locks them (SKIP LOCKED). Returns (moved, busy): busy runs are held by
    another transaction (PostgreSQL: a claim, another scheduler) — ask again later."""
    from engine.flow_runs import enter

    plainly_scheduled = (
        FlowRunRow.id.in_(run_ids),
        FlowRunRow.state_type == StateType.SCHEDULED.value,
        FlowRunRow.state_name == "Scheduled",
    )
    candidates = set(await session.scalars(select(FlowRunRow.id).where(*plainly_scheduled)))
    if not candidates:
        return [], []
    rows = list(await session.scalars(
        select(FlowRunRow)
        .where(*plainly_scheduled)
        .with_for_update(skip_locked=True)
        .execution_options(populate_existing=True)
    ))
    moved = []
    for row in rows:
        scheduled = (row.state_details or {}).get("scheduled_time")
        when = dt.datetime.fromisoformat(scheduled) if isinstance(scheduled, str) else None
        history, _, values, _ = enter(row, Late(message=message, scheduled_time=when))
        row.updated = history["timestamp"]
        session.add_all([FlowRunStateRow(**history), EventRow(**values)])
        moved.append(row.id)
    busy = sorted(candidates - set(moved))
    return moved, busy


async def set_schedule_active(
    session: AsyncSession, name: str, which: str | None, active: bool, *, now: dt.datetime
) -> tuple[Deployment, list[str]]:
    """Pause (``active=False``) or resume one schedule of deployment `name` (`which`: its id or
    its 1-based position), or all of them (`which` None). A pause cancels the schedules'
    pending runs in this transaction. Returns the deployment and the ids whose flag changed;
    a ``deployment.schedule-paused`` / ``-resumed`` event tells every scheduler."""
    from engine.deployments import deployment as as_deployment
    from engine.deployments import find

    row = await find(session, name, lock=True)
    schedules = [dict(item) for item in row.schedules or []]
    targets = _select(schedules, which, f"{row.flow_name}/{row.name}")
    changed = []
    for index in targets:
        if schedules[index].get("active", True) != active:
            schedules[index]["active"] = active
            changed.append(schedule_id(schedules[index]))
    if changed:
        row.schedules = schedules  # a new list: the JSON column sees the change
        row.updated = now
        full_name = f"{row.flow_name}/{row.name}"
        if not active:
            await cancel_pending(
                session, deployment_id=row.id, schedules=set(changed),
                message=f"schedule paused on deployment '{full_name}'",
            )
        session.add(deployment_event(
            row, "deployment.schedule-resumed" if active else "deployment.schedule-paused", now,
            {"schedules": changed, "version": row.version, "active": active},
        ))
    return as_deployment(row), changed


def _select(schedules: list[dict[str, Any]], which: str | None, name: str) -> list[int]:
    if not schedules:
        raise ObjectNotFound(f"deployment {name!r} has no schedules")
    if which is None:
        return list(range(len(schedules)))
    ids = [schedule_id(item) for item in schedules]
    if which in ids:
        return [ids.index(which)]
    if which.isdigit() and 1 <= int(which) <= len(schedules):
        return [int(which) - 1]
    raise ObjectNotFound(
        f"deployment {name!r} has no schedule {which!r} (its schedules: {', '.join(ids)}; "
        "see 'flowrelay deployment schedule ls')"
    )
