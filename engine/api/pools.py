"""``/api/work-pools`` and ``/api/workers``: pools with their limit, workers and open runs (the
"Work pools" page), setting a pool's concurrency limit, and the live workers."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Depends

from engine.api.auth import Ctx, require_read, require_write
from engine.api.models import Page
from engine.schemas import WorkerInfo, WorkPool

router = APIRouter(tags=["work pools"])


@router.get("/api/work-pools", dependencies=[Depends(require_read)],
            summary="Work pools: limit, workers, open runs, runs stranded without a worker")
async def list_pools(ctx: Ctx) -> Page[WorkPool]:
    pools = await ctx.service.read_work_pools()
    return Page(items=pools, total=len(pools), limit=len(pools), offset=0)


@router.get("/api/work-pools/{name}", dependencies=[Depends(require_read)], summary="One work pool")
async def read_pool(ctx: Ctx, name: str) -> WorkPool:
    return await ctx.service.read_work_pool(name)


@router.put("/api/work-pools/{name}/concurrency-limit", dependencies=[Depends(require_write)],
            summary="Set (null: clear) how many runs of the pool go at once")
async def set_limit(
    ctx: Ctx, name: str,
    limit: Annotated[int | None, Body(embed=True, ge=1, description="At most this many; null: no limit")],
) -> WorkPool:
    return await ctx.service.set_work_pool_concurrency(name, limit)


@router.get("/api/workers", dependencies=[Depends(require_read)],
            summary="Workers with a recorded heartbeat: pool, runs held, code loaded")
async def list_workers(ctx: Ctx) -> Page[WorkerInfo]:
    workers = await ctx.service.read_workers()
    return Page(items=workers, total=len(workers), limit=len(workers), offset=0)
