"""Deployment rows: names (``FLOW/DEPLOYMENT``), reading, registering (a version per
registration, with its history row and ``deployment.registered`` event) and pausing."""

from __future__ import annotations

import datetime as dt
import difflib
import uuid
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from engine.db import repository as repo
from engine.db.models import DeploymentRow, DeploymentVersionRow, EventRow
from engine.deployments.slots import EnterState, release_slots
from engine.errors import ObjectNotFound
from engine.schemas import Deployment, DeploymentSpec, Event

_NAME_HINT = "expected FLOW/DEPLOYMENT, such as 'etl/nightly'"


def split_name(name: str) -> tuple[str, str]:
    """``"flow/deployment"`` → ``("flow", "deployment")``; `ObjectNotFound` for another form."""
    flow_name, sep, deployment_name = name.strip().partition("/")
    if not sep or not flow_name or not deployment_name or "/" in deployment_name:
        raise ObjectNotFound(f"deployment {name!r}: {_NAME_HINT}")
    return flow_name, deployment_name


def deployment(row: DeploymentRow) -> Deployment:
    return Deployment(
        id=row.id,
        name=row.name,
        flow_name=row.flow_name,
        entrypoint=row.entrypoint,
        work_pool=row.work_pool,
        parameters=row.parameters or {},
        tags=row.tags or [],
        description=row.description,
        concurrency_limit=row.concurrency_limit,
        schedules=row.schedules or [],
        code=row.code,
        version=row.version,
        paused=row.paused,
        created=row.created,
        updated=row.updated,
    )


async def find(session: AsyncSession, name: str, *, lock: bool = False) -> DeploymentRow:
    """The deployment called `name` (``FLOW/DEPLOYMENT``); `ObjectNotFound` with a did-you-mean."""
    flow_name, deployment_name = split_name(name)
    query = select(DeploymentRow).where(
        DeploymentRow.flow_name == flow_name, DeploymentRow.name == deployment_name
    )
    if lock:
        query = query.with_for_update(key_share=True).execution_options(populate_existing=True)
    row = await session.scalar(query)
    if row is None:
        known = [
            f"{flow}/{dep}"
            for flow, dep in await session.execute(
                select(DeploymentRow.flow_name, DeploymentRow.name)
            )
        ]
        close = difflib.get_close_matches(name.strip(), known, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ObjectNotFound(f"deployment {name.strip()!r} not found{hint}")
    return row


async def read_all(session: AsyncSession) -> list[Deployment]:
    query = select(DeploymentRow).order_by(DeploymentRow.flow_name, DeploymentRow.name)
    return [deployment(row) for row in await session.scalars(query)]


# --- registering and pausing ---------------------------------------------------------------------
async def register(
    session: AsyncSession,
    spec: DeploymentSpec,
    *,
    flow_id: uuid.UUID,
    enter: EnterState,
    now: dt.datetime,
) -> Deployment:
    """Create the deployment (version 1), or update it to `spec` as version + 1; record the
    version and a ``deployment.registered`` event. The pause flag is left as it is."""
    dialect = session.get_bind().dialect.name
    await session.execute(
        repo.insert_ignoring_conflicts(dialect, DeploymentRow, ["flow_name", "name"]).values(
            id=uuid.uuid4(),
            flow_id=flow_id,
            flow_name=spec.flow_name,
            name=spec.name,
            version=0,  # bumped to 1 below, like every registration
            parameters={},
            tags=[],
            schedules=[],
            paused=False,
            created=now,
            updated=now,
        )
    )
    row = await find(session, spec.full_name, lock=True)
    old_limit = row.concurrency_limit
    row.version += 1
    row.flow_id = flow_id
    row.entrypoint = spec.entrypoint
    row.work_pool = spec.work_pool
    row.parameters = dict(spec.parameters)
    row.tags = list(spec.tags)
    row.description = spec.description
    row.schedules = list(spec.schedules)
    row.concurrency_limit = spec.concurrency_limit
    row.code = dict(spec.code) if spec.code is not None else None
    row.updated = now
    session.add(
        DeploymentVersionRow(
            id=uuid.uuid4(),
            deployment_id=row.id,
            version=row.version,
            entrypoint=row.entrypoint,
            parameters=row.parameters,
            work_pool=row.work_pool,
            tags=row.tags,
            description=row.description,
            schedules=row.schedules,
            concurrency_limit=row.concurrency_limit,
            code=row.code,
            created=now,
        )
    )
    session.add(deployment_event(row, "deployment.registered", now))
    if row.concurrency_limit != old_limit:  # a raised or removed limit frees waiting runs now
        await release_slots(session, row, enter=enter, now=now)
    return deployment(row)


async def set_paused(
    session: AsyncSession, name: str, paused: bool, *, now: dt.datetime
) -> Deployment:
    """Pause or resume; ``deployment.paused`` / ``deployment.resumed`` when the flag changes."""
    row = await find(session, name, lock=True)
    if row.paused != paused:
        row.paused = paused
        row.updated = now
        event = "deployment.paused" if paused else "deployment.resumed"
        session.add(deployment_event(row, event, now))
        if paused:  # its schedules' runs not yet handed to a pool go (resuming recreates them)
            from engine.scheduler.store import cancel_pending

            await cancel_pending(
                session, deployment_id=row.id, message=f"deployment '{name.strip()}' paused"
            )
    return deployment(row)


def deployment_event(
    row: DeploymentRow, name: str, now: dt.datetime, payload: dict[str, Any] | None = None
) -> EventRow:
    """The outbox row of event `name` about deployment `row` (payload by default: its version
    and whether it is paused)."""
    full_name = f"{row.flow_name}/{row.name}"
    event = Event(
        event=name,
        occurred=now,
        resource={
            "id": f"deployment/{row.id}",
            "name": full_name,
            "flow": row.flow_name,
            "deployment": full_name,
            "work_pool": row.work_pool,
            "tags": list(row.tags or []),
        },
        payload=payload if payload is not None else {"version": row.version, "paused": row.paused},
    )
    return EventRow(**repo.event_values(event))
