"""``/api/deployments`` (with each schedule's next fire times), running, pausing and resuming
a deployment, and ``/api/graph``: deployments as nodes, automations as edges, as
``flowrelay graph`` draws them."""

from __future__ import annotations

import datetime as dt
import zoneinfo
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Query, Response

from engine.api import queries
from engine.api.auth import Ctx, require_read, require_write
from engine.api.automations import automation_models
from engine.api.errors import Conflict
from engine.api.models import (
    DeploymentView,
    FireTime,
    FlowRunDetail,
    Graph,
    GraphEdge,
    GraphNode,
    Page,
    RunRequest,
    ScheduleView,
)
from engine.schemas import Deployment
from engine.states import utcnow

router = APIRouter(tags=["deployments"])

#: Fire times listed per schedule.
NEXT_COUNT = 5


def schedule_views(dep: Deployment, now: dt.datetime) -> list[ScheduleView]:
    """Each schedule with its id and next fire times (none while it or the deployment is
    paused: they make no runs), as ``flowrelay deployment next`` computes them."""
    from engine.scheduler.specs import schedule_id
    from engine.scheduler.timing import Timing, next_fire_times

    views = []
    for schedule in dep.schedules:
        active = bool(schedule.get("active", True))
        times: list[FireTime] = []
        if active and not dep.paused:
            zone = zoneinfo.ZoneInfo(schedule.get("timezone") or "UTC")
            times = [
                FireTime(
                    local=moment.astimezone(zone).isoformat(),
                    utc=moment.astimezone(dt.UTC).isoformat().replace("+00:00", "Z"),
                )
                for moment in next_fire_times(Timing.of(schedule), now, NEXT_COUNT)
            ]
        views.append(ScheduleView(**{**schedule, "id": schedule_id(schedule), "active": active,
                                     "next": times}))
    return views


def view(dep: Deployment, now: dt.datetime | None = None) -> DeploymentView:
    data = dep.model_dump(exclude={"schedules"})
    return DeploymentView(
        **data, full_name=dep.full_name, schedules=schedule_views(dep, now or utcnow())
    )


@router.get("/api/deployments", dependencies=[Depends(require_read)],
            summary="List deployments, by name")
async def list_deployments(
    ctx: Ctx,
    limit: Annotated[int, Query(ge=1, le=1000)] = 200,
    offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
) -> Page[DeploymentView]:
    deployments = sorted(await ctx.service.read_deployments(), key=lambda d: d.full_name)
    now = utcnow()
    items = [view(d, now) for d in deployments[offset:offset + limit]]
    return Page(items=items, total=len(deployments), limit=limit, offset=offset)


@router.get("/api/deployments/{flow}/{name}", dependencies=[Depends(require_read)],
            summary="One deployment, with its schedules' next fire times")
async def read_deployment(ctx: Ctx, flow: str, name: str) -> DeploymentView:
    return view(await ctx.service.read_deployment(f"{flow}/{name}"))


@router.post(
    "/api/deployments/{flow}/{name}/runs", dependencies=[Depends(require_write)], status_code=201,
    summary="Run the deployment (201: a new run; 200: the run its idempotency key already made)",
    responses={200: {"description": "The run made earlier with this idempotency key"}},
)
async def run_deployment(
    ctx: Ctx, flow: str, name: str, response: Response,
    request: Annotated[RunRequest | None, Body()] = None,
) -> FlowRunDetail:
    request = request or RunRequest()
    full_name = f"{flow}/{name}"
    await ctx.service.read_deployment(full_name)  # 404 naming it, with a did-you-mean
    if request.idempotency_key is not None:
        existing = await queries.run_by_idempotency_key(ctx.service, request.idempotency_key)
        if existing is not None:
            if existing.deployment_name != full_name:
                raise Conflict(
                    f"idempotency key {request.idempotency_key!r} already made run {existing.id} "
                    f"of {existing.deployment_name or 'flow ' + repr(existing.flow_name)}, not of "
                    f"{full_name}: use another key"
                )
            response.status_code = 200
            return FlowRunDetail.of_run(existing, await queries.child_ids(ctx.service, existing.id))
    run = await ctx.service.create_deployment_run(
        full_name, request.parameters, idempotency_key=request.idempotency_key,
        scheduled_time=request.scheduled_time, flow_run_name=request.flow_run_name,
        tags=request.tags, caused_by={"source": "api"},
    )
    return FlowRunDetail.of_run(run, [])


@router.post("/api/deployments/{flow}/{name}/pause", dependencies=[Depends(require_write)],
             summary="Pause: its schedules make no runs; runs not yet handed out are cancelled")
async def pause_deployment(ctx: Ctx, flow: str, name: str) -> DeploymentView:
    return view(await ctx.service.set_deployment_paused(f"{flow}/{name}", True))


@router.post("/api/deployments/{flow}/{name}/resume", dependencies=[Depends(require_write)],
             summary="Resume: its schedules make runs again")
async def resume_deployment(ctx: Ctx, flow: str, name: str) -> DeploymentView:
    return view(await ctx.service.set_deployment_paused(f"{flow}/{name}", False))


@router.get("/api/graph", dependencies=[Depends(require_read)], tags=["graph"],
            summary="The flow-of-flows: deployments as nodes, automations as edges")
async def read_graph(ctx: Ctx) -> Graph:
    from automations.graph import build_graph

    deployments = {d.full_name: d for d in await ctx.service.read_deployments()}
    latest = await queries.latest_states(ctx.service, list(deployments))
    rows: list[dict[str, Any]] = [
        {"name": key, "flow": d.flow_name, "state": latest.get(key, (None, None))[1]}
        for key, d in deployments.items()
    ]
    built = build_graph(rows, await automation_models(ctx))
    nodes = []
    for node_id, node in built.nodes.items():
        dep = deployments.get(node_id)
        state = latest.get(node_id)
        nodes.append(GraphNode(
            id=node_id,
            flow=dep.flow_name if dep else None,
            deployment=dep.name if dep else None,
            kind=str(node.get("kind") or "deployment"),
            latest_state=state[0] if state else None,
            latest_state_name=state[1] if state else None,
            paused=dep.paused if dep else False,
        ))
    edges = [
        GraphEdge(source=e.source, target=e.target, automation=e.automation, kind=e.action,
                  label=e.label, enabled=e.enabled)
        for e in built.edges
    ]
    return Graph(nodes=nodes, edges=edges)


__all__ = ["router", "schedule_views", "view"]
