"""``/api/flow-runs``: runs with filters and pages, one run with its states, task runs, logs
and children, and cancelling a run."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Annotated

from fastapi import APIRouter, Depends, Query

from engine.api import queries
from engine.api.auth import Ctx, require_read, require_write
from engine.api.errors import Conflict
from engine.api.models import FlowRunDetail, FlowRunItem, Page
from engine.schemas import FlowRun, LogRecord, TaskRun
from engine.states import State, StateType, utcnow

router = APIRouter(prefix="/api/flow-runs", tags=["flow runs"])

Limit = Annotated[int, Query(ge=1, le=500, description="Page size.")]
Offset = Annotated[int, Query(ge=0, le=1_000_000, description="Items to skip.")]


def aware(value: dt.datetime | None) -> dt.datetime | None:
    """A time without an offset is UTC."""
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=dt.UTC)
    return value


async def _run(ctx: Ctx, flow_run_id: uuid.UUID) -> FlowRun:
    return await ctx.service.read_flow_run(flow_run_id)  # ObjectNotFound → 404


@router.get("", dependencies=[Depends(require_read)], summary="List flow runs, newest first")
async def list_flow_runs(
    ctx: Ctx,
    state: Annotated[
        list[str] | None, Query(description="State name (Completed) or type (COMPLETED); repeat for any of several.")
    ] = None,
    flow: Annotated[list[str] | None, Query(description="Flow name; repeatable.")] = None,
    deployment: Annotated[list[str] | None, Query(description="FLOW/DEPLOYMENT; repeatable.")] = None,
    since: Annotated[dt.datetime | None, Query(description="Created at or after (ISO; no offset: UTC).")] = None,
    until: Annotated[dt.datetime | None, Query(description="Created before (ISO; no offset: UTC).")] = None,
    limit: Limit = 50,
    offset: Offset = 0,
) -> Page[FlowRunItem]:
    runs, total = await queries.flow_runs(ctx.service, queries.RunQuery(
        states=state or (), flows=flow or (), deployments=deployment or (),
        since=aware(since), until=aware(until), limit=limit, offset=offset,
    ))
    now = utcnow()
    waiting = [r for r in runs if r.state is not None and r.state.is_scheduled() and r.work_pool]
    pools = {p.name: p for p in await ctx.service.read_work_pools()} if waiting else {}
    return Page(items=[FlowRunItem.of(r, now, pools) for r in runs], total=total, limit=limit, offset=offset)


@router.get("/{flow_run_id}", dependencies=[Depends(require_read)], summary="One flow run")
async def read_flow_run(ctx: Ctx, flow_run_id: uuid.UUID) -> FlowRunDetail:
    run = await _run(ctx, flow_run_id)
    pool = None
    if run.state is not None and run.state.is_scheduled() and run.work_pool:
        pool = await ctx.service.read_work_pool(run.work_pool)
    return FlowRunDetail.of_run(run, await queries.child_ids(ctx.service, flow_run_id), pool)


@router.get("/{flow_run_id}/states", dependencies=[Depends(require_read)],
            summary="The run's state history, oldest first")
async def read_states(ctx: Ctx, flow_run_id: uuid.UUID) -> Page[State]:
    await _run(ctx, flow_run_id)
    states = await ctx.service.read_flow_run_states(flow_run_id)
    return Page(items=states, total=len(states), limit=len(states), offset=0)


@router.get("/{flow_run_id}/task-runs", dependencies=[Depends(require_read)],
            summary="The run's task runs, oldest first")
async def read_task_runs(ctx: Ctx, flow_run_id: uuid.UUID) -> Page[TaskRun]:
    await _run(ctx, flow_run_id)
    task_runs = await ctx.service.read_task_runs(flow_run_id)
    return Page(items=task_runs, total=len(task_runs), limit=len(task_runs), offset=0)


@router.get("/{flow_run_id}/logs", dependencies=[Depends(require_read)],
            summary="The run's logs (its tasks' included), oldest first")
async def read_logs(
    ctx: Ctx, flow_run_id: uuid.UUID,
    limit: Annotated[int, Query(ge=1, le=10_000, description="The most lines to return.")] = 1000,
) -> Page[LogRecord]:
    await _run(ctx, flow_run_id)
    logs = await ctx.service.read_logs(flow_run_id, limit=limit)
    return Page(items=logs, total=len(logs), limit=limit, offset=0)


@router.get("/{flow_run_id}/children", dependencies=[Depends(require_read)],
            summary="Runs whose parent is this run, oldest first")
async def read_children(ctx: Ctx, flow_run_id: uuid.UUID) -> Page[FlowRunItem]:
    await _run(ctx, flow_run_id)
    children = await ctx.service.read_children(flow_run_id)
    items = [FlowRunItem.of(r) for r in children]
    return Page(items=items, total=len(items), limit=len(items), offset=0)


@router.post("/{flow_run_id}/cancel", dependencies=[Depends(require_write)],
             summary="Cancel a run (Cancelling while it runs, else Cancelled)")
async def cancel_flow_run(ctx: Ctx, flow_run_id: uuid.UUID) -> FlowRunDetail:
    run = await _run(ctx, flow_run_id)
    if run.state is not None and run.state.is_final():
        raise Conflict(f"flow run {flow_run_id} is already {run.state.name}: nothing to cancel")
    running = run.state is not None and run.state.type is StateType.RUNNING
    target = State(
        type=StateType.CANCELLING if running else StateType.CANCELLED,
        message="cancelled through the HTTP API",
    )
    answer = await ctx.service.set_flow_run_state(flow_run_id, target, force=True)
    if not answer.accepted:
        raise Conflict(f"flow run {flow_run_id} could not be cancelled: {answer.reason}")
    run = await _run(ctx, flow_run_id)
    return FlowRunDetail.of_run(run, await queries.child_ids(ctx.service, flow_run_id))


__all__ = ["aware", "router"]
