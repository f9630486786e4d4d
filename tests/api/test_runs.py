"""GET /api/flow-runs (filters, pages), one run with its states, task runs, logs and children,
and POST .../cancel."""

from __future__ import annotations

import datetime as dt
import uuid

from engine.schemas import LogRecord
from engine.states import Failed, Running, Scheduled
from tests.api.conftest import Api


async def test_list_filters_and_pages(api: Api) -> None:
    # Given three completed runs of "etl", one failed run of "other"
    for i in range(3):
        await api.finished_run("etl", result=i, parameters={"i": i})
    failed = await api.server.service.create_flow_run("other", {})
    await api.server.service.set_flow_run_state(failed.id, Running())
    await api.server.service.set_flow_run_state(failed.id, Failed(message="boom"))

    everything = (await api.client.get("/api/flow-runs")).json()
    assert everything["total"] == 4 and everything["limit"] == 50 and everything["offset"] == 0
    assert [r["flow_name"] for r in everything["items"]] == ["other", "etl", "etl", "etl"]  # newest first

    page = (await api.client.get("/api/flow-runs", params={"flow": "etl", "limit": 2, "offset": 2})).json()
    assert page["total"] == 3 and len(page["items"]) == 1 and page["items"][0]["parameters"] == {"i": 0}
    oldest = (await api.client.get(f"/api/flow-runs/{page['items'][0]['id']}")).json()
    assert oldest["result"] == 0 and oldest["state_name"] == "Completed"

    by_name = (await api.client.get("/api/flow-runs", params={"state": "Failed"})).json()
    by_type = (await api.client.get("/api/flow-runs", params={"state": "FAILED"})).json()
    assert [r["id"] for r in by_name["items"]] == [r["id"] for r in by_type["items"]] == [str(failed.id)]
    item = by_name["items"][0]
    assert item["state_type"] == "FAILED" and item["state_name"] == "Failed"
    assert item["state_message"] == "boom" and item["deployment"] is None
    assert item["duration_seconds"] is not None and item["duration_seconds"] >= 0

    either = await api.client.get("/api/flow-runs", params=[("state", "Failed"), ("state", "Completed")])
    assert either.json()["total"] == 4

    future = (dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)).isoformat()
    assert (await api.client.get("/api/flow-runs", params={"since": future})).json()["total"] == 0
    assert (await api.client.get("/api/flow-runs", params={"until": future})).json()["total"] == 4
    naive = dt.datetime.now(dt.UTC).replace(tzinfo=None) + dt.timedelta(hours=1)
    assert (await api.client.get("/api/flow-runs", params={"until": naive.isoformat()})).json()["total"] == 4


async def test_deployment_filter_and_item_fields(api: Api) -> None:
    await api.deploy("hello/nightly")
    await api.deploy("hello/weekly")
    run = await api.server.service.create_deployment_run("hello/nightly", {"name": "Ada"}, idempotency_key="k1")
    await api.server.service.create_deployment_run("hello/weekly", {})

    listing = (await api.client.get("/api/flow-runs", params={"deployment": "hello/nightly"})).json()
    assert listing["total"] == 1
    item = listing["items"][0]
    assert item["id"] == str(run.id) and item["deployment"] == "hello/nightly"
    assert item["idempotency_key"] == "k1" and item["parameters"] == {"name": "Ada"}
    assert item["start_time"] is None and item["duration_seconds"] is None
    assert set(item) >= {"id", "name", "flow_name", "deployment", "state_type", "state_name", "parameters",
                         "created", "start_time", "end_time", "duration_seconds", "parent_flow_run_id",
                         "idempotency_key", "tags"}
    assert item["created"].endswith("Z")  # UTC


async def test_one_run_with_states_task_runs_logs_and_children(api: Api) -> None:
    service = api.server.service
    parent = await service.create_flow_run("parent", {"n": 1})
    await service.set_flow_run_state(parent.id, Running())
    task = await service.create_task_run(parent.id, "extract", "extract-1")
    child = await service.create_flow_run("child", {}, parent_flow_run_id=parent.id)
    await service.write_logs([LogRecord(flow_run_id=parent.id, message="hello from the run")])

    detail = (await api.client.get(f"/api/flow-runs/{parent.id}")).json()
    assert detail["children"] == [str(child.id)] and detail["result"] is None
    assert detail["caused_by"] is None and detail["state_name"] == "Running"

    states = (await api.client.get(f"/api/flow-runs/{parent.id}/states")).json()
    assert [s["name"] for s in states["items"]] == ["Pending", "Running"] and states["total"] == 2

    task_runs = (await api.client.get(f"/api/flow-runs/{parent.id}/task-runs")).json()
    assert [t["id"] for t in task_runs["items"]] == [str(task.id)]

    logs = (await api.client.get(f"/api/flow-runs/{parent.id}/logs", params={"limit": 10})).json()
    assert [entry["message"] for entry in logs["items"]] == ["hello from the run"]

    children = (await api.client.get(f"/api/flow-runs/{parent.id}/children")).json()
    assert [c["id"] for c in children["items"]] == [str(child.id)]
    assert children["items"][0]["parent_flow_run_id"] == str(parent.id)


async def test_unknown_run_is_404_naming_it_and_bad_id_is_422(api: Api) -> None:
    missing = uuid.uuid4()
    for suffix in ("", "/states", "/task-runs", "/logs", "/children"):
        answer = await api.client.get(f"/api/flow-runs/{missing}{suffix}")
        assert answer.status_code == 404, suffix
        assert str(missing) in answer.json()["detail"]
    bad = await api.client.get("/api/flow-runs/not-a-uuid")
    assert bad.status_code == 422
    assert "path.flow_run_id" in bad.json()["detail"] and "not-a-uuid" in bad.json()["detail"]


async def test_bad_query_values_are_422_with_the_reason(api: Api) -> None:
    too_many = await api.client.get("/api/flow-runs", params={"limit": 100000})
    assert too_many.status_code == 422 and "query.limit" in too_many.json()["detail"]
    bad_time = await api.client.get("/api/flow-runs", params={"since": "yesterday"})
    assert bad_time.status_code == 422 and "query.since" in bad_time.json()["detail"]


async def test_cancel(api: Api) -> None:
    service = api.server.service
    scheduled = await service.create_flow_run(
        "later", {}, state=Scheduled(scheduled_time=dt.datetime.now(dt.UTC) + dt.timedelta(hours=1))
    )
    running = await service.create_flow_run("busy", {})
    await service.set_flow_run_state(running.id, Running())
    done = await api.finished_run("done")

    first = await api.client.post(f"/api/flow-runs/{scheduled.id}/cancel")
    assert first.status_code == 200 and first.json()["state_name"] == "Cancelled"
    second = await api.client.post(f"/api/flow-runs/{running.id}/cancel")
    assert second.status_code == 200 and second.json()["state_name"] == "Cancelling"
    again = await api.client.post(f"/api/flow-runs/{done}/cancel")
    assert again.status_code == 409 and "already Completed" in again.json()["detail"]
    states = await service.read_flow_run_states(scheduled.id)
    assert states[-1].message == "cancelled through the HTTP API"
