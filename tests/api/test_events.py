"""/api/events: stored events with filters; events sent in (validated, limited, emitted through
the outbox so that automations fire); a run launched end to end by an event sent over HTTP."""

from __future__ import annotations

import datetime as dt
import json
import uuid

import pytest

from engine.schemas import Event
from tests.api.conftest import Api, until
from workers.worker import Worker


async def test_list_filters_newest_first(api: Api) -> None:
    service = api.server.service
    for i in range(3):
        await service.emit_event(Event(event="batch.ready", resource={"id": f"batch/{i}"}, payload={"i": i}))
    await service.emit_event(Event(event="batch.failed", resource={"id": "batch/9"}))
    await api.finished_run("etl")

    ready = (await api.client.get("/api/events", params={"name": "batch.ready"})).json()
    assert ready["total"] == 3 and [e["payload"]["i"] for e in ready["items"]] == [2, 1, 0]

    prefix = (await api.client.get("/api/events", params={"name": "batch.*", "limit": 2})).json()
    assert prefix["total"] == 4 and len(prefix["items"]) == 2 and prefix["items"][0]["event"] == "batch.failed"

    one = (await api.client.get("/api/events", params={"resource": "batch/1"})).json()
    assert [e["resource"]["id"] for e in one["items"]] == ["batch/1"]

    runs = (await api.client.get("/api/events", params={"name": "flow-run.*"})).json()
    assert [e["event"] for e in runs["items"]] == ["flow-run.Completed", "flow-run.Running", "flow-run.Pending"]

    later = (dt.datetime.now(dt.UTC) + dt.timedelta(minutes=5)).isoformat()
    assert (await api.client.get("/api/events", params={"since": later})).json()["total"] == 0
    # Work messages for pools are not events
    await api.deploy("hello/now")
    await service.create_deployment_run("hello/now", {})
    listed = (await api.client.get("/api/events", params={"limit": 1000})).json()["items"]
    assert not any(e["event"].startswith("flow-run.dispatch") for e in listed)


async def test_post_one_and_a_batch(api: Api) -> None:
    one = await api.client.post("/api/events", json={
        "event": "batch.ready", "resource": {"flowrelay.resource.id": "batch/17", "team": "data"},
        "payload": {"batch_id": "b-17"},
    })
    assert one.status_code == 202 and one.json()["count"] == 1
    (event_id,) = one.json()["ids"]
    stored = (await api.client.get("/api/events", params={"resource": "batch/17"})).json()["items"]
    assert stored[0]["id"] == event_id and stored[0]["resource"] == {"id": "batch/17", "team": "data"}

    chosen = str(uuid.uuid4())
    when = "2026-01-02T03:04:05"
    batch = await api.client.post("/api/events", json=[
        {"event": "a.happened", "id": chosen, "occurred": when},
        {"event": "b.happened", "related": [{"id": "batch/17", "role": "batch"}]},
    ])
    assert batch.status_code == 202 and batch.json()["count"] == 2 and batch.json()["ids"][0] == chosen
    again = await api.client.post("/api/events", json={"event": "a.happened", "id": chosen, "occurred": when})
    assert again.status_code == 202  # the same id is stored once
    stored = (await api.client.get("/api/events", params={"name": "a.happened"})).json()
    assert stored["total"] == 1 and stored["items"][0]["occurred"] == "2026-01-02T03:04:05Z"
    assert stored["items"][0]["resource"] == {"id": "a.happened"}  # as engine.emit_event does


@pytest.mark.parametrize(("body", "status", "words"), [
    ('{"event": ', 400, ["not valid JSON"]),
    ('{"event": "x.y", "payload": NaN}', 422, ["body.payload: Input should be a valid dictionary"]),
    ('{"event": "x.y", "payload": {"v": Infinity}}', 400, ["body.payload", "NaN and Infinity"]),
    ('{"payload": {}}', 422, ["event", "required"]),
    ('{"event": 5}', 422, ["event"]),
    ('{"event": "bad name!"}', 422, ["event", "pattern"]),
    ('{"event": "flow-run.Completed", "resource": {"flow": "x"}}', 422, ["engine's own", "batch.ready"]),
    ('{"event": "dispatch.default"}', 422, ["engine's own"]),
    ('{"event": "x.y", "resource": {"id": 17}}', 422, ["resource id must be a non-empty string"]),
    ('{"event": "x.y", "payload": [1]}', 422, ["payload"]),
    ('{"event": "x.y", "id": "not-a-uuid"}', 422, ["id"]),
    ('{"event": "x.y", "extra": 1}', 422, ["extra"]),
    ('[]', 202, []),
    ('"just a string"', 422, ["body: must be an event object or a list of event objects"]),
    ('[{"event": "ok.one"}, {"event": ""}]', 422, ["body[1].event"]),
])
async def test_bad_events_get_4xx_with_the_reason(api: Api, body: str, status: int, words: list[str]) -> None:
    answer = await api.client.post("/api/events", content=body.encode(),
                                   headers={"Content-Type": "application/json"})
    assert answer.status_code == status, answer.text
    for word in words:
        assert word in answer.json()["detail"], (word, answer.json())


async def test_size_and_batch_limits(api: Api) -> None:
    limit = api.ctx.settings.max_event_bytes
    big = await api.client.post("/api/events", json={"event": "big.one", "payload": {"blob": "x" * limit}})
    assert big.status_code == 413
    assert "api.max_event_bytes" in big.json()["detail"] and "'big.one'" in big.json()["detail"]

    many = [{"event": "small.one"}] * (api.ctx.settings.max_batch + 1)
    too_many = await api.client.post("/api/events", json=many)
    assert too_many.status_code == 413 and "api.max_batch" in too_many.json()["detail"]

    huge = b'{"event": "x.y", "payload": {"blob": "' + b"x" * (limit * api.ctx.settings.max_batch + 8192) + b'"}}'
    refused = await api.client.post("/api/events", content=huge, headers={"Content-Type": "application/json"})
    assert refused.status_code == 413 and "request body over" in refused.json()["detail"]

    async def chunks():  # no Content-Length: read up to the limit, then refused
        for _ in range(limit * api.ctx.settings.max_batch // 65536 + 2):
            yield b"x" * 65536

    chunked = await api.client.post("/api/events", content=chunks(), headers={"Content-Type": "application/json"})
    assert chunked.status_code == 413
    assert (await api.client.get("/api/events", params={"name": "x.y"})).json()["total"] == 0


async def test_an_event_sent_over_http_launches_a_run(api: Api) -> None:
    # Given a deployment, an automation on batch.ready and a worker for the deployment's pool
    await api.deploy("report/main", flow_fn="report")
    await api.server.automations.apply_automations([{"source": "rules.yaml", "text": """
automations:
  - name: report-when-ready
    trigger: {type: event, expect: [batch.ready], match: {id: "batch/*"}}
    actions:
      - type: run-deployment
        deployment: report/main
        parameters: {batch_id: "{{ event.payload.batch_id }}"}
"""}])
    worker = Worker(api.server.broker, api.server.service, pool="default", concurrency=2, mode="inline",
                    heartbeat_interval=0.2, drain_timeout=5)
    await api.server.ensure_pool("default")
    await worker.start()
    try:
        # When an external system sends the event
        sent = await api.client.post("/api/events", json={
            "event": "batch.ready", "resource": {"id": "batch/17"}, "payload": {"batch_id": "b-17"},
        })
        assert sent.status_code == 202

        # Then the run is launched with the parameter, completes, and says why it started
        async def completed() -> list[dict]:
            page = (await api.client.get("/api/flow-runs", params={"deployment": "report/main",
                                                                   "state": "Completed"})).json()
            return page["items"]

        (run,) = await until(completed, what="a Completed run of report/main")
        assert run["parameters"] == {"batch_id": "b-17"}
        detail = (await api.client.get(f"/api/flow-runs/{run['id']}")).json()
        assert detail["result"] == "report b-17"
        assert detail["caused_by"]["automation"] == "report-when-ready"
        assert detail["caused_by"]["event_id"] == sent.json()["ids"][0]
    finally:
        await worker.stop()
    assert json.loads(sent.text)["count"] == 1
