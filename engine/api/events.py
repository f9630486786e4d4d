"""``/api/events``: stored events (newest first), events sent in by other systems, and the live
stream ``/api/stream`` (Server-Sent Events).

An event sent in goes the way of ``engine.emit_event``: into the outbox in one transaction,
then published by the relay, so automations see it like any other. The body is one event or a
list, each at most ``api.max_event_bytes`` as JSON, at most ``api.max_batch`` of them.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Query
from fastapi.responses import StreamingResponse

from engine.api import queries
from engine.api.auth import Ctx, require_read, require_read_or_query, require_write
from engine.api.errors import BadRequest, PayloadTooLarge
from engine.api.models import Accepted, EventIn, Page, Problem
from engine.api.runs import aware
from engine.schemas import Event

router = APIRouter(tags=["events"])

EVENT_EXAMPLE = {
    "event": "batch.ready",
    "resource": {"id": "batch/17"},
    "payload": {"batch_id": "b-17"},
}


@router.get("/api/events", dependencies=[Depends(require_read)],
            summary="Stored events, newest first")
async def list_events(
    ctx: Ctx,
    name: Annotated[
        list[str] | None, Query(description="Event name; a trailing * matches a prefix (flow-run.*); repeatable.")
    ] = None,
    resource: Annotated[
        list[str] | None, Query(description="Resource id (flow-run/<uuid>, batch/17; * as above); repeatable.")
    ] = None,
    since: Annotated[dt.datetime | None, Query(description="Occurred at or after (no offset: UTC).")] = None,
    until: Annotated[dt.datetime | None, Query(description="Occurred before (no offset: UTC).")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
) -> Page[Event]:
    items, total = await queries.events(ctx.service, queries.EventQuery(
        names=name or (), resources=resource or (), since=aware(since), until=aware(until),
        limit=limit, offset=offset,
    ))
    return Page(items=items, total=total, limit=limit, offset=offset)


@router.post(
    "/api/events", dependencies=[Depends(require_write)], status_code=202,
    summary="Send one event or a list of them (they trigger automations)",
    responses={413: {"model": Problem, "description": "An event or the batch is too large"}},
)
async def emit_events(
    ctx: Ctx,
    body: Annotated[EventIn | list[EventIn], Body(examples=[EVENT_EXAMPLE, [EVENT_EXAMPLE]])],
) -> Accepted:
    settings = ctx.settings
    batch = body if isinstance(body, list) else [body]
    if len(batch) > settings.max_batch:
        ctx.metrics.rejected.labels("413").inc()
        raise PayloadTooLarge(
            f"{len(batch)} events in one request, over api.max_batch ({settings.max_batch}): "
            "send them in smaller batches"
        )
    events = []
    for index, item in enumerate(batch):
        where = f"body[{index}]" if isinstance(body, list) else "body"
        _check_json(item, where)
        event = Event(
            event=item.event, resource=item.resource or {"id": item.event}, payload=item.payload,
            related=item.related, **({"id": item.id} if item.id else {}),
            **({"occurred": item.occurred} if item.occurred else {}),
        )
        size = len(event.model_dump_json())
        if size > settings.max_event_bytes:
            ctx.metrics.rejected.labels("413").inc()
            raise PayloadTooLarge(
                f"{where} ({item.event!r}) is {size:,} bytes as JSON, over api.max_event_bytes "
                f"({settings.max_event_bytes:,}): send a reference to the data, not the data"
            )
        events.append(event)
    for event in events:
        await ctx.service.emit_event(event)
    ctx.metrics.received.inc(len(events))
    return Accepted(ids=[e.id for e in events], count=len(events))


def _check_json(item: EventIn, where: str) -> None:
    for part in ("resource", "payload", "related"):
        try:
            json.dumps(getattr(item, part), allow_nan=False)
        except ValueError:
            raise BadRequest(
                f"{where}.{part}: NaN and Infinity are not JSON numbers: send null or a string"
            ) from None


@router.get(
    "/api/stream", dependencies=[Depends(require_read_or_query)],
    summary="Live events as Server-Sent Events",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}, "description": "event: NAME, id: ID, data: JSON"}},
)
async def stream(
    ctx: Ctx,
    match: Annotated[
        str | None, Query(max_length=255, description="Only events whose name matches this pattern (flow-run.*).")
    ] = None,
) -> StreamingResponse:
    subscription = ctx.hub.subscribe(match)

    async def frames() -> Any:
        try:
            async for frame in subscription.frames_until_end(ctx.settings.stream_keepalive_seconds):
                yield frame
        finally:
            ctx.hub.unsubscribe(subscription)

    return StreamingResponse(
        frames(), media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


__all__ = ["router"]
