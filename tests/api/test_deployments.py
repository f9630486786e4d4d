"""/api/deployments: list, one with its schedules' next fire times, run (idempotency: 201 then
200), pause and resume; /api/graph."""

from __future__ import annotations

import datetime as dt

from tests.api.conftest import Api


async def test_list_and_read_with_next_fire_times(api: Api) -> None:
    await api.deploy("hello/daily", description="every weekday", tags=["etl"],
                     parameters={"name": "Ada"},
                     schedules=[{"cron": "30 9 * * 1-5", "timezone": "America/New_York"},
                                {"interval": 3600, "active": False}])
    await api.deploy("hello/adhoc")

    listing = (await api.client.get("/api/deployments")).json()
    assert [d["full_name"] for d in listing["items"]] == ["hello/adhoc", "hello/daily"]
    assert listing["total"] == 2

    dep = (await api.client.get("/api/deployments/hello/daily")).json()
    assert dep["version"] == 1 and dep["work_pool"] == "default" and dep["tags"] == ["etl"]
    assert dep["description"] == "every weekday" and dep["parameters"] == {"name": "Ada"}
    assert dep["paused"] is False
    cron, interval = dep["schedules"]
    assert cron["cron"] == "30 9 * * 1-5" and cron["id"] and len(cron["next"]) == 5
    first = cron["next"][0]
    local = dt.datetime.fromisoformat(first["local"])
    utc = dt.datetime.fromisoformat(first["utc"].replace("Z", "+00:00"))
    assert local == utc and (local.hour, local.minute) == (9, 30) and local.weekday() < 5
    assert first["utc"].endswith("Z")
    assert interval["active"] is False and interval["next"] == []  # a paused schedule makes no runs


async def test_unknown_deployment_is_404_with_its_name(api: Api) -> None:
    await api.deploy("hello/daily")
    answer = await api.client.get("/api/deployments/hello/dialy")
    assert answer.status_code == 404
    assert "hello/dialy" in answer.json()["detail"] and "hello/daily" in answer.json()["detail"]
    run = await api.client.post("/api/deployments/nope/none/runs", json={})
    assert run.status_code == 404 and "nope/none" in run.json()["detail"]


async def test_run_with_idempotency_key(api: Api) -> None:
    await api.deploy("hello/daily", parameters={"name": "Ada"})
    body = {"parameters": {"name": "Grace"}, "idempotency_key": "report-2026-11-23"}

    created = await api.client.post("/api/deployments/hello/daily/runs", json=body)
    assert created.status_code == 201
    run = created.json()
    assert run["deployment"] == "hello/daily" and run["parameters"] == {"name": "Grace"}
    assert run["state_type"] in ("SCHEDULED", "PENDING") and run["caused_by"] == {"source": "api"}

    again = await api.client.post("/api/deployments/hello/daily/runs", json=body)
    assert again.status_code == 200 and again.json()["id"] == run["id"]

    await api.deploy("hello/other")
    clash = await api.client.post("/api/deployments/hello/other/runs", json=body)
    assert clash.status_code == 409 and "report-2026-11-23" in clash.json()["detail"]

    later = (dt.datetime.now(dt.UTC) + dt.timedelta(hours=2)).replace(microsecond=0)
    scheduled = await api.client.post("/api/deployments/hello/daily/runs",
                                      json={"scheduled_time": later.isoformat()})
    assert scheduled.status_code == 201 and scheduled.json()["state_name"] == "Scheduled"
    assert dt.datetime.fromisoformat(scheduled.json()["expected_start_time"].replace("Z", "+00:00")) == later

    no_body = await api.client.post("/api/deployments/hello/daily/runs")
    assert no_body.status_code == 201 and no_body.json()["parameters"] == {"name": "Ada"}


async def test_run_refuses_bad_bodies_with_reasons(api: Api) -> None:
    await api.deploy("hello/daily")
    url = "/api/deployments/hello/daily/runs"
    broken = await api.client.post(url, content=b'{"parameters": ', headers={"Content-Type": "application/json"})
    assert broken.status_code == 400 and "not valid JSON" in broken.json()["detail"]
    wrong_type = await api.client.post(url, json={"parameters": [1, 2]})
    assert wrong_type.status_code == 422 and "body.parameters" in wrong_type.json()["detail"]
    unknown = await api.client.post(url, json={"paramters": {}})
    assert unknown.status_code == 422 and "body.paramters" in unknown.json()["detail"]
    bad_time = await api.client.post(url, json={"scheduled_time": "soon"})
    assert bad_time.status_code == 422 and "body.scheduled_time" in bad_time.json()["detail"]


async def test_pause_and_resume(api: Api) -> None:
    await api.deploy("hello/daily", schedules=[{"cron": "0 2 * * *"}])
    paused = await api.client.post("/api/deployments/hello/daily/pause")
    assert paused.status_code == 200 and paused.json()["paused"] is True
    assert paused.json()["schedules"][0]["next"] == []
    assert (await api.server.service.read_deployment("hello/daily")).paused
    resumed = await api.client.post("/api/deployments/hello/daily/resume")
    assert resumed.json()["paused"] is False and len(resumed.json()["schedules"][0]["next"]) == 5
    missing = await api.client.post("/api/deployments/hello/nope/pause")
    assert missing.status_code == 404 and "hello/nope" in missing.json()["detail"]


async def test_graph(api: Api) -> None:
    await api.deploy("hello/upstream")
    await api.deploy("report/downstream", flow_fn="report")
    await api.server.automations.apply_automations([{"source": "rules.yaml", "text": """
automations:
  - name: chain
    trigger: {type: flow-run-state-change, match: {deployment: hello/upstream}, expect: [Completed]}
    actions:
      - {type: run-deployment, deployment: report/downstream}
"""}])
    run = await api.server.service.create_deployment_run("hello/upstream", {})
    await api.server.service.set_deployment_paused("report/downstream", True)

    graph = (await api.client.get("/api/graph")).json()
    nodes = {n["id"]: n for n in graph["nodes"]}
    assert nodes["hello/upstream"]["flow"] == "hello" and nodes["hello/upstream"]["deployment"] == "upstream"
    assert nodes["hello/upstream"]["latest_state"] == "SCHEDULED"
    assert nodes["hello/upstream"]["latest_state_name"] == "Scheduled" and nodes["hello/upstream"]["paused"] is False
    assert nodes["report/downstream"]["latest_state"] is None and nodes["report/downstream"]["paused"] is True
    assert graph["edges"] == [{"source": "hello/upstream", "target": "report/downstream", "automation": "chain",
                               "kind": "run-deployment", "label": graph["edges"][0]["label"], "enabled": True}]
    assert "Completed" in graph["edges"][0]["label"]
    assert run.deployment_name == "hello/upstream"
