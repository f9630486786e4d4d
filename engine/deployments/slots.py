"""Dispatch, concurrency slots and crash retries of deployment runs.

A due deployment run is *dispatched*: in the transaction of its state, an outbox row routed to
``dispatch.<pool>`` (docs/protocol.md "Work") and ``flow_runs.dispatched_at``. A run *holds a
slot* of its deployment while it is Pending, Running or Cancelling, or Scheduled and already
dispatched (in its pool's queue, not yet claimed). `concurrency_limit` caps that number; a due run
over the limit goes ``AwaitingConcurrencySlot`` and waits, without polling, for a run of its
deployment to give its slot back (`on_state_entered`, called by `set_flow_run_state`).

Locks, PostgreSQL (SQLite serialises writers anyway, and ignores ``FOR UPDATE``): every slot
decision holds the deployment row ``FOR UPDATE``, so two decisions never both see the same free
slot. Lock order is always run row → deployment row → waiting runs, the last with ``SKIP
LOCKED`` (a waiting run locked by someone else is being changed by them: take the next one), so
no two transactions wait on each other in a cycle. The locks are ``FOR NO KEY UPDATE``: they
serialise changes of a row but let other transactions insert rows that reference it (a run of
the deployment, a history row of the run), which take only ``FOR KEY SHARE``. Group commit puts
several works in one transaction, so two servers' batches can still cross: the loser is run
again (`engine.db.group_commit`).
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable
from typing import Any

from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from engine.db import repository as repo
from engine.db.models import (
    Base,
    DeploymentRow,
    EventRow,
    FlowRunRow,
    FlowRunStateRow,
    WorkPoolRow,
)
from engine.errors import ObjectNotFound
from engine.schemas import DUE_STATE_NAMES, Event, FlowRun
from engine.states import State, StateDetails, StateType, utcnow

#: Makes `state` current on the run row; returns the history and outbox rows to add
#: (`EngineService._enter_flow_run_state`).
EnterState = Callable[[FlowRunRow, State], list[Base]]

DISPATCH_EVENT = "flow-run.dispatched"
#: Scheduled-type states from which a run may be dispatched (and then claimed by a worker).
DISPATCHABLE = frozenset(DUE_STATE_NAMES)
WAITING = "AwaitingConcurrencySlot"
_ACTIVE_TYPES = (StateType.PENDING.value, StateType.RUNNING.value, StateType.CANCELLING.value)


async def lock(session: AsyncSession, deployment_id: uuid.UUID) -> DeploymentRow | None:
    """The deployment row, locked for this transaction (PostgreSQL) and freshly read."""
    row: DeploymentRow | None = await session.scalar(
        select(DeploymentRow)
        .where(DeploymentRow.id == deployment_id)
        .with_for_update(key_share=True)
        .execution_options(populate_existing=True)
    )
    return row


# --- slots and dispatch --------------------------------------------------------------------------
def holds_slot(row: Any) -> bool:
    """Whether the run counts against its deployment's concurrency limit."""
    if row.state_type in _ACTIVE_TYPES:
        return True
    return row.state_type == StateType.SCHEDULED.value and row.dispatched_at is not None


def _holding() -> Any:
    return or_(
        FlowRunRow.state_type.in_(_ACTIVE_TYPES),
        and_(
            FlowRunRow.state_type == StateType.SCHEDULED.value,
            FlowRunRow.dispatched_at.is_not(None),
        ),
    )


async def _deployment_free(session: AsyncSession, dep: DeploymentRow) -> int | None:
    """Free slots of `dep` by its own limit (None: no limit). Call with the row locked."""
    if dep.concurrency_limit is None:
        return None
    busy = await session.scalar(
        select(func.count()).select_from(FlowRunRow)
        .where(FlowRunRow.deployment_id == dep.id, _holding())
    )
    return max(dep.concurrency_limit - (busy or 0), 0)


async def _pool_free(session: AsyncSession, pool: str | None) -> tuple[int | None, int | None]:
    """``(free slots, limit)`` of work pool `pool` (``(None, None)``: no limit), its row locked
    for this transaction (PostgreSQL): lock order run → deployment → pool → waiting runs."""
    if not pool:
        return None, None
    limit = await session.scalar(
        select(WorkPoolRow.concurrency_limit).where(WorkPoolRow.name == pool)
        .with_for_update(key_share=True)
    )
    if limit is None:
        return None, None
    busy = await session.scalar(
        select(func.count()).select_from(FlowRunRow)
        .where(FlowRunRow.work_pool == pool, _holding())
    )
    return max(limit - (busy or 0), 0), limit


async def _free_slots(session: AsyncSession, dep: DeploymentRow) -> tuple[int | None, str]:
    """Free slots for a run of `dep` (None: no limit applies): the fewer of its deployment's and
    its pool's, and which of them binds (for the waiting run's message)."""
    own = await _deployment_free(session, dep)
    if own == 0:
        return 0, _deployment_full(dep)
    pool, limit = await _pool_free(session, dep.work_pool)
    if pool is not None and (own is None or pool < own):
        return pool, f"work pool '{dep.work_pool}' is at its concurrency limit ({limit})"
    return own, _deployment_full(dep)


def _deployment_full(dep: DeploymentRow) -> str:
    return (f"deployment '{dep.flow_name}/{dep.name}' is at its concurrency limit "
            f"({dep.concurrency_limit})")


def dispatch(row: FlowRunRow, dep: DeploymentRow, now: dt.datetime) -> EventRow:
    """Mark the run dispatched and return its work message: an outbox row routed to
    ``dispatch.<pool>``. The run goes as the deployment is now (its latest entrypoint and pool,
    as Prefect's workers do); the run records that version."""
    return EventRow(**dispatch_values(row, dep, now)[1])


def dispatch_values(row: Any, dep: Any, now: dt.datetime) -> tuple[Event, dict[str, Any]]:
    """`dispatch` for any object with the rows' attributes (an ORM row, or a
    `engine.db.runs.RunRecord` and a Core row): the work event and its outbox row's values."""
    if row.deployment_version != dep.version:
        row.deployment_version = dep.version
        row.work_pool = dep.work_pool
    row.dispatched_at = now
    full_name = f"{dep.flow_name}/{dep.name}"
    event = Event(
        event=DISPATCH_EVENT,
        occurred=now,
        resource={
            "id": f"flow-run/{row.id}",
            "name": row.name,
            "flow": row.flow_name,
            "deployment": full_name,
            "work_pool": row.work_pool,
        },
        payload={
            "flow_run_id": str(row.id),
            "deployment": full_name,
            "entrypoint": dep.entrypoint,
            # the code to execute, as the deployment is now (a bundle's hash, or the installed
            # distribution's version): a run dispatched before a redeploy keeps its own
            "code": dep.code,
            "work_pool": row.work_pool,
            "parameters": row.parameters or {},
            # Claims made before this dispatch, and the attempt the run's state still belongs to
            # (an in-process retry's AwaitingRetry; None once the engine ended it): a worker
            # still running an attempt learns from them whether it is over (`workers.worker`).
            "attempts": row.attempts or 0,
            "attempt": (row.state_details or {}).get("attempt"),
        },
    )
    values = repo.event_values(event)
    values["routing_key"] = f"dispatch.{row.work_pool}"
    return event, values


def _waiting(why: str, state: State) -> State:
    return State(type=StateType.SCHEDULED, name=WAITING, message=why, details=state.details)


async def plan_new_run(
    session: AsyncSession, dep: DeploymentRow, state: State, now: dt.datetime
) -> tuple[State, bool]:
    """The initial state of a new run of `dep` (locked) and whether to dispatch it now: a due
    dispatchable run is dispatched if a slot is free, else it waits for one."""
    if state.type is not StateType.SCHEDULED or state.name not in DISPATCHABLE:
        return state, False
    if (state.details.scheduled_time or now) > now:
        return state, False  # the server's timer calls `dispatch_run` when it is due
    free, why = await _free_slots(session, dep)
    if free is None or free > 0:
        return state, True
    return _waiting(why, state), False


async def _dispatch_or_wait(
    session: AsyncSession, row: FlowRunRow, dep: DeploymentRow, enter: EnterState, now: dt.datetime
) -> bool:
    free, why = await _free_slots(session, dep)
    if free is None or free > 0:
        session.add(dispatch(row, dep, now))
        return True
    current = repo.current_state(row)
    assert current is not None
    session.add_all(enter(row, _waiting(why, current)))
    row.updated = now
    return False


async def dispatch_run(
    session: AsyncSession, flow_run_id: uuid.UUID, *, enter: EnterState, now: dt.datetime
) -> bool:
    """Dispatch a deployment run that is still undispatched and Scheduled/Late/AwaitingRetry,
    whatever its scheduled time; over the limit it goes AwaitingConcurrencySlot instead. True
    if it was dispatched by this call (False: nothing to do, or waiting)."""
    row = await session.scalar(
        select(FlowRunRow).where(FlowRunRow.id == flow_run_id).with_for_update(key_share=True)
    )
    if row is None:
        raise ObjectNotFound(f"flow run {flow_run_id} not found")
    if (
        row.deployment_id is None
        or row.dispatched_at is not None
        or row.state_type != StateType.SCHEDULED.value
        or row.state_name not in DISPATCHABLE
    ):
        return False
    dep = await lock(session, row.deployment_id)
    if dep is None:
        return False
    return await _dispatch_or_wait(session, row, dep, enter, now)


def _give_slot(
    session: AsyncSession, waiting: FlowRunRow, dep: DeploymentRow, enter: EnterState, now: dt.datetime
) -> None:
    """A waiting run got its slot: Scheduled again, and dispatched."""
    details = StateDetails(**(waiting.state_details or {}))
    scheduled = State(type=StateType.SCHEDULED, message="a concurrency slot is free", details=details)
    session.add_all(enter(waiting, scheduled))
    waiting.updated = now
    session.add(dispatch(waiting, dep, now))


async def release_slots(
    session: AsyncSession, dep: DeploymentRow, *, enter: EnterState, now: dt.datetime
) -> None:
    """Give the free slots of `dep` (locked) to its oldest AwaitingConcurrencySlot runs: each goes
    Scheduled and is dispatched."""
    free, _ = await _free_slots(session, dep)
    if free == 0:
        return
    query = (
        select(FlowRunRow)
        .where(
            FlowRunRow.deployment_id == dep.id,
            FlowRunRow.state_type == StateType.SCHEDULED.value,
            FlowRunRow.state_name == WAITING,
        )
        .order_by(FlowRunRow.created, FlowRunRow.id)
        .with_for_update(skip_locked=True, key_share=True)
        .execution_options(populate_existing=True)
    )
    if free is not None:
        query = query.limit(free)
    for waiting in (await session.scalars(query)).all():
        _give_slot(session, waiting, dep, enter, now)


async def release_pool_slots(
    session: AsyncSession, pool: str, *, enter: EnterState, now: dt.datetime,
    limited_only: bool = False,
) -> int:
    """Give the free slots of work pool `pool` to its oldest AwaitingConcurrencySlot runs whose
    own deployment has a slot too; how many went. `limited_only`: do nothing for a pool without
    a limit (a run finishing there frees nobody; a limit just cleared frees them all).

    Waiting runs are taken ``SKIP LOCKED`` and so are their deployments (taken after the pool, a
    lock order others never wait against): one being changed elsewhere is left to that change,
    which decides its slots itself."""
    free, _ = await _pool_free(session, pool)
    if free == 0 or (free is None and limited_only):
        return 0
    query = (
        select(FlowRunRow)
        .where(
            FlowRunRow.work_pool == pool,
            FlowRunRow.deployment_id.is_not(None),
            FlowRunRow.state_type == StateType.SCHEDULED.value,
            FlowRunRow.state_name == WAITING,
        )
        .order_by(FlowRunRow.created, FlowRunRow.id)
        .with_for_update(skip_locked=True, key_share=True)
        .execution_options(populate_existing=True)
    )
    released = 0
    for waiting in (await session.scalars(query)).all():
        if free is not None and released >= free:
            break
        dep = await session.scalar(
            select(DeploymentRow).where(DeploymentRow.id == waiting.deployment_id)
            .with_for_update(skip_locked=True, key_share=True)
            .execution_options(populate_existing=True)
        )
        if dep is None or await _deployment_free(session, dep) == 0:
            continue
        _give_slot(session, waiting, dep, enter, now)
        released += 1
    return released


async def on_state_entered(
    session: AsyncSession,
    row: FlowRunRow,
    *,
    held_slot: bool,
    enter: EnterState,
    now: dt.datetime,
    previous_type: StateType | None = None,
) -> None:
    """After a deployment run entered a new state: retry it if it Crashed with retries left;
    send it to its pool again if it went back to Scheduled from a claimed state (handed back by
    a stopping worker, or its worker lost before it ran); and if it gave its slot back, hand the
    slot to the oldest waiting run."""
    if row.deployment_id is None:
        return
    if row.state_type == StateType.CRASHED.value:
        await _retry_crashed(session, row, enter=enter, now=now)
    elif requeued(previous_type, row.state_type, row.state_name):
        await _redispatch(session, row, enter=enter, now=now)
    if held_slot and not holds_slot(row):
        dep = await lock(session, row.deployment_id)
        # Without a limit no run waits for a slot (`register` frees them when it is lifted).
        if dep is not None and dep.concurrency_limit is not None:
            await release_slots(session, dep, enter=enter, now=now)
        if row.work_pool:
            await release_pool_slots(session, row.work_pool, enter=enter, now=now, limited_only=True)


async def _retry_crashed(
    session: AsyncSession, row: FlowRunRow, *, enter: EnterState, now: dt.datetime
) -> None:
    """Crashed → AwaitingRetry when the run's last Running state said ``flow_retries`` > retries
    used (``run_count - 1``); dispatched at once when the delay is 0, else by the server's timer."""
    details = await session.scalar(
        select(FlowRunStateRow.details)
        .where(
            FlowRunStateRow.flow_run_id == row.id,
            FlowRunStateRow.type == StateType.RUNNING.value,
        )
        .order_by(FlowRunStateRow.id.desc())
        .limit(1)
    )
    retries = (details or {}).get("flow_retries")
    used = max((row.run_count or 0) - 1, 0)
    if not isinstance(retries, int) or isinstance(retries, bool) or retries <= used:
        return
    delay = _retry_delay((details or {}).get("retry_delay_seconds"), used)
    retry = State(
        type=StateType.SCHEDULED,
        name="AwaitingRetry",
        message=f"crashed; retry {used + 1} of {retries}" + (f" in {delay:g}s" if delay else ""),
        details=StateDetails(scheduled_time=now + dt.timedelta(seconds=delay)),
    )
    session.add_all(enter(row, retry))
    row.dispatched_at = None
    if delay <= 0:
        assert row.deployment_id is not None
        dep = await lock(session, row.deployment_id)
        if dep is not None:
            await _dispatch_or_wait(session, row, dep, enter, now)


def requeued(previous_type: StateType | str | None, state_type: str | None, state_name: str | None) -> bool:
    """Whether a deployment run moving from `previous_type` to this state goes back to its pool:
    a dispatchable Scheduled-type state entered from a claimed (non-Scheduled) one."""
    previous = previous_type.value if isinstance(previous_type, StateType) else previous_type
    return (
        previous is not None
        and previous != StateType.SCHEDULED.value
        and state_type == StateType.SCHEDULED.value
        and state_name in DISPATCHABLE
    )


async def _redispatch(
    session: AsyncSession, row: FlowRunRow, *, enter: EnterState, now: dt.datetime
) -> None:
    """Its pool's message was consumed by the claim: dispatch the run anew when due (else the
    server's timer does it), or let it wait for a slot."""
    row.dispatched_at = None
    details = StateDetails(**(row.state_details or {}))
    if (details.scheduled_time or now) > now:
        return
    assert row.deployment_id is not None
    dep = await lock(session, row.deployment_id)
    if dep is not None:
        await _dispatch_or_wait(session, row, dep, enter, now)


def _retry_delay(value: Any, used: int) -> float:
    """Seconds before retry number ``used + 1``: one number, or a list (one per retry, the last
    repeated), as in ``@flow(retry_delay_seconds=...)``."""
    if isinstance(value, list):
        value = value[min(used, len(value) - 1)] if value else 0
    try:
        return max(float(value or 0), 0.0)
    except (TypeError, ValueError):
        return 0.0


# --- queries for the server ----------------------------------------------------------------------
async def due_runs(session: AsyncSession) -> list[tuple[uuid.UUID, dt.datetime]]:
    """Undispatched deployment runs in Scheduled/Late/AwaitingRetry with their scheduled time,
    soonest first (the server loads them into its in-memory timer at start)."""
    query = select(
        FlowRunRow.id, FlowRunRow.state_details, FlowRunRow.expected_start_time, FlowRunRow.created
    ).where(
        FlowRunRow.deployment_id.is_not(None),
        FlowRunRow.dispatched_at.is_(None),
        FlowRunRow.state_type == StateType.SCHEDULED.value,
        FlowRunRow.state_name.in_(sorted(DISPATCHABLE)),
    )
    due = []
    for run_id, details, expected, created in await session.execute(query):
        when = StateDetails(**(details or {})).scheduled_time or expected or created
        due.append((run_id, when))
    return sorted(due, key=lambda item: item[1])


def _waiting_for_claim(before: dt.datetime) -> list[Any]:
    return [
        FlowRunRow.deployment_id.is_not(None),
        FlowRunRow.dispatched_at <= before,
        FlowRunRow.state_type == StateType.SCHEDULED.value,
        FlowRunRow.state_name.in_(sorted(DISPATCHABLE)),
    ]


async def forget_dispatches(
    session: AsyncSession, run_ids: list[uuid.UUID] | None = None, before: dt.datetime | None = None
) -> int:
    """Clear `dispatched_at` of deployment runs still waiting to be claimed, dispatched before
    `before` (default now: not those staged ahead of their time, whose work messages are unsent
    outbox rows, published at that time); only `run_ids` if given."""
    where = _waiting_for_claim(before or utcnow())
    if run_ids is not None:
        where.append(FlowRunRow.id.in_(run_ids))
    result = await session.execute(update(FlowRunRow).where(*where).values(dispatched_at=None))
    return int(getattr(result, "rowcount", 0) or 0)


async def waiting_for_claim(
    session: AsyncSession, before: dt.datetime
) -> list[tuple[uuid.UUID, str]]:
    """Deployment runs dispatched before `before` and still not claimed, with their pool."""
    query = select(FlowRunRow.id, FlowRunRow.work_pool).where(*_waiting_for_claim(before))
    return [(run_id, pool or "") for run_id, pool in await session.execute(query)]


async def runs_held_by(session: AsyncSession, worker_id: str) -> list[FlowRun]:
    """Runs in Pending/Running whose current state was proposed by `worker_id`."""
    query = (
        select(FlowRunRow)
        .where(
            FlowRunRow.state_type.in_([StateType.PENDING.value, StateType.RUNNING.value]),
            FlowRunRow.state_details["worker_id"].as_string() == worker_id,
        )
        .order_by(FlowRunRow.created, FlowRunRow.id)
    )
    return [repo.flow_run(row) for row in await session.scalars(query)]
