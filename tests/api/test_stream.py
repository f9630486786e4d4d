"""GET /api/stream over a real socket (uvicorn on a free port): a run's events arrive as SSE
frames, filtered by ?match=, with keep-alive comments; a slow client is dropped; the stream
closes cleanly when the server stops."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from engine.api.stream import EventHub
from engine.schemas import Event
from engine.states import Running, State, StateType
from tests.api.conftest import READ, Live


async def frames(response: httpx.Response) -> AsyncIterator[dict[str, Any]]:
    """Parsed SSE frames: {"event", "id", "data"} or {"comment"}."""
    buffer = ""
    async for text in response.aiter_text():
        buffer += text
        while "\n\n" in buffer:
            block, buffer = buffer.split("\n\n", 1)
            frame: dict[str, Any] = {}
            for line in block.splitlines():
                key, _, value = line.partition(":")
                if key == "":
                    frame.setdefault("comment", value.strip())
                elif key in ("event", "id", "data", "retry"):
                    frame[key] = value.strip()
            yield frame


async def test_a_runs_events_arrive_live(live: Live) -> None:
    service = live.server.service
    async with live.client(token=None) as client, client.stream(
        "GET", "/api/stream", params={"match": "flow-run.*", "access_token": READ}
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        stream = frames(response)
        assert (await anext(stream)).get("comment") == "connected"

        run = await service.create_flow_run("live", {"x": 1})
        await service.emit_event(Event(event="not.matched"))
        await service.set_flow_run_state(run.id, Running())
        await service.set_flow_run_state(run.id, State(type=StateType.COMPLETED, data=42))

        seen = []
        async with asyncio.timeout(10):
            while len(seen) < 3:
                frame = await anext(stream)
                if "event" in frame:
                    seen.append(frame)
        assert [f["event"] for f in seen] == ["flow-run.Pending", "flow-run.Running", "flow-run.Completed"]
        last = json.loads(seen[-1]["data"])
        assert last["resource"]["id"] == f"flow-run/{run.id}" and last["payload"]["result"] == 42
        assert seen[-1]["id"] == last["id"]


async def test_keep_alive_and_clean_close_on_shutdown(live: Live, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(live.server.settings.api, "stream_keepalive_seconds", 0.2)
    async with live.client() as client, client.stream("GET", "/api/stream") as response:
        stream = frames(response)
        assert (await anext(stream))["comment"] == "connected"
        async with asyncio.timeout(5):
            assert (await anext(stream))["comment"] == "keep-alive"
        stopping = asyncio.create_task(live.server.stop())
        async with asyncio.timeout(10):
            rest = [frame async for frame in stream]  # ends: the server closed it
        assert rest[-1]["comment"] == "server shutting down"
        await stopping
    assert live.server.api is not None and live.server.api.context.hub.clients == 0


async def test_a_slow_client_is_dropped_not_buffered_forever() -> None:
    hub = EventHub(buffer=3)
    slow = hub.subscribe()
    picky = hub.subscribe("batch.*")
    for i in range(5):
        hub.publish(Event(event=f"thing.{i}"))
    assert slow.ended is not None and "3 events behind" in slow.ended
    assert slow.frames.empty()  # its buffer was freed
    assert hub.clients == 1 and hub.dropped == 1
    assert picky.ended is None and picky.frames.empty()  # it wanted none of them
    hub.publish(Event(event="batch.ready"))
    assert b"event: batch.ready" in picky.frames.get_nowait()
    last = [frame async for frame in slow.frames_until_end(keepalive=1)]
    assert last[-1].startswith(b": dropped")


async def test_event_names_cannot_break_the_framing() -> None:
    hub = EventHub()
    client = hub.subscribe()
    hub.publish(Event(event="evil\ndata: forged"))
    frame = client.frames.get_nowait().decode()
    assert frame.startswith("event: evil data: forged\nid: ") and frame.count("\ndata: ") == 1
