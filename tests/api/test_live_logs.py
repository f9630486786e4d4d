"""Live logs on ``GET /api/stream``: when the server stores log lines of a run (the workers'
``write_logs`` command), its stream clients get a ``flow-run.logs`` frame for that run, straight
from memory (no outbox, no broker), coalesced so that a burst of writes makes a few frames."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

from engine.api.stream import LOGS_EVENT, EventHub, LogNotices
from engine.remote import RemoteEngine
from engine.schemas import LogRecord
from engine.states import Running
from tests.api.conftest import Live
from tests.api.test_stream import frames


async def events_of(stream: AsyncIterator[dict[str, Any]]) -> AsyncIterator[dict[str, Any]]:
    """The stream's event frames (comments skipped), with their data parsed."""
    async for frame in stream:
        if "event" in frame:
            yield {**frame, "data": json.loads(frame["data"])}


async def test_lines_written_through_the_command_arrive_as_a_logs_frame(live: Live) -> None:
    # Given a running flow run and a client following the stream
    service = live.server.service
    run = await service.create_flow_run("chatty", {})
    await service.set_flow_run_state(run.id, Running())
    remote = RemoteEngine(live.server.broker, timeout=5)  # what a worker calls the server through
    try:
        async with live.client() as client, client.stream("GET", "/api/stream") as response:
            stream = frames(response)
            assert (await anext(stream)).get("comment") == "connected"

            # When the run writes two lines, as a worker does: the write_logs command
            await remote.call("write_logs", logs=[
                LogRecord(flow_run_id=run.id, message="step 1 of 2"),
                LogRecord(flow_run_id=run.id, message="step 2 of 2"),
            ])

            # Then one frame says the run has two new lines
            async with asyncio.timeout(10):
                frame = await anext(e async for e in events_of(stream) if e["event"] == LOGS_EVENT)
    finally:
        await remote.close()
    data = frame["data"]
    assert data["event"] == LOGS_EVENT and data["id"] == frame["id"]
    assert data["resource"] == {"id": f"flow-run/{run.id}"}
    assert data["payload"] == {"count": 2}
    assert [r.message for r in await service.read_logs(run.id)] == ["step 1 of 2", "step 2 of 2"]
    # Not an event: nothing of it is stored or published
    assert all(e.event != LOGS_EVENT for e in await service.read_events(f"flow-run/{run.id}"))


async def test_a_burst_of_writes_makes_few_frames_that_count_every_line(live: Live) -> None:
    service = live.server.service
    runs = [(await service.create_flow_run("chatty", {})).id for _ in range(2)]
    writes, lines = 200, 5
    async with live.client() as client, client.stream(
        "GET", "/api/stream", params={"match": "flow-run.logs"}
    ) as response:
        stream = frames(response)
        assert (await anext(stream)).get("comment") == "connected"

        # When two runs write 200 batches of 5 lines each, all at once
        await asyncio.gather(*(
            service.write_logs([LogRecord(flow_run_id=run_id, message=f"line {i}.{j}") for j in range(lines)])
            for i in range(writes) for run_id in runs
        ))

        # Then the frames add up to every line of each run, in far fewer frames than writes
        counted = dict.fromkeys(runs, 0)
        frames_of = dict.fromkeys(runs, 0)
        async with asyncio.timeout(10):
            async for frame in events_of(stream):
                assert frame["event"] == LOGS_EVENT  # ?match= lets nothing else through
                run_id = uuid.UUID(frame["data"]["resource"]["id"].removeprefix("flow-run/"))
                counted[run_id] += frame["data"]["payload"]["count"]
                frames_of[run_id] += 1
                if all(n == writes * lines for n in counted.values()):
                    break
    assert all(n < writes / 4 for n in frames_of.values()), frames_of


async def test_a_filter_that_does_not_match_gets_no_logs_frames(live: Live) -> None:
    service = live.server.service
    run = await service.create_flow_run("chatty", {})
    async with live.client() as client, client.stream(
        "GET", "/api/stream", params={"match": "flow-run.R*"}
    ) as response:
        stream = frames(response)
        assert (await anext(stream)).get("comment") == "connected"
        await service.write_logs([LogRecord(flow_run_id=run.id, message="quiet")])
        await service.set_flow_run_state(run.id, Running())
        async with asyncio.timeout(10):
            first = await anext(events_of(stream))
    # The Running event came after the lines were stored: no logs frame was queued before it
    assert first["event"] == "flow-run.Running"


async def test_notices_coalesce_what_comes_within_the_interval() -> None:
    hub = EventHub()
    client = hub.subscribe()
    notices = LogNotices(hub, interval=3600)  # the held-back frames come only with flush()
    a, b = uuid.uuid4(), uuid.uuid4()

    # The first lines are told at once
    notices.stored([LogRecord(flow_run_id=a, message="1"), LogRecord(flow_run_id=a, message="2")])
    assert told(client) == [(a, 2)]

    # What follows within the interval is held, then told as one frame per run
    notices.stored([LogRecord(flow_run_id=a, message="3")])
    notices.stored([LogRecord(flow_run_id=b, message="1"), LogRecord(message="no run")])
    notices.stored([LogRecord(flow_run_id=a, message="4")])
    assert told(client) == []
    notices.flush()
    assert told(client) == [(a, 2), (b, 1)]
    notices.close()


async def test_notices_keep_nothing_without_clients() -> None:
    hub = EventHub()
    notices = LogNotices(hub, interval=3600)
    notices.stored([LogRecord(flow_run_id=uuid.uuid4(), message="nobody listens")])
    client = hub.subscribe()
    notices.flush()
    assert told(client) == []


def told(client: Any) -> list[tuple[uuid.UUID, int]]:
    """The (run, count) of the logs frames queued for `client`."""
    out = []
    while not client.frames.empty():
        data = json.loads(client.frames.get_nowait().decode().split("data: ", 1)[1])
        out.append((uuid.UUID(data["resource"]["id"].removeprefix("flow-run/")), data["payload"]["count"]))
    return out

