"""/api/automations: list with counters, one with its open joins and firings, pause/resume."""

from __future__ import annotations

from tests.api.conftest import Api, until

RULES = """
automations:
  - name: report-when-ready
    description: run the report when a batch is ready
    trigger: {type: event, expect: [batch.ready], match: {id: "batch/*"}}
    actions:
      - type: run-deployment
        deployment: report/main
        parameters: {batch_id: "{{ event.payload.batch_id }}"}
  - name: join-a-b
    trigger:
      type: compound
      require: all
      correlate: "{{ event.payload.batch }}"
      within: 10m
      triggers:
        - {type: event, expect: [part.a]}
        - {type: event, expect: [part.b]}
    actions:
      - {type: emit-event, event: parts.joined, resource: {id: "batch/{{ correlation }}"}}
"""


async def apply(api: Api) -> None:
    await api.deploy("report/main", flow_fn="report")
    assert api.server.automations is not None
    await api.server.automations.apply_automations([{"source": "rules.yaml", "text": RULES}])


async def test_list_read_pause_resume(api: Api) -> None:
    await apply(api)
    listing = (await api.client.get("/api/automations")).json()
    assert listing["total"] == 2
    first = listing["items"][1]
    assert first["name"] == "report-when-ready" and first["enabled"] is True
    assert first["trigger_type"] == "event" and first["actions"] == ["run-deployment"]
    assert first["description"] == "run the report when a batch is ready"
    assert set(first["counters"]) >= {"matched", "fired", "expired", "failed"}

    paused = await api.client.post("/api/automations/report-when-ready/pause")
    assert paused.status_code == 200 and paused.json()["enabled"] is False
    assert (await api.client.get("/api/automations/report-when-ready")).json()["enabled"] is False
    resumed = await api.client.post("/api/automations/report-when-ready/resume")
    assert resumed.json()["enabled"] is True

    missing = await api.client.get("/api/automations/report-when-redy")
    assert missing.status_code == 404 and "report-when-redy" in missing.json()["detail"]
    assert (await api.client.post("/api/automations/nope/pause")).status_code == 404


async def test_open_join_and_firings_are_shown(api: Api) -> None:
    await apply(api)
    # Given half of a join
    sent = await api.client.post("/api/events", json={"event": "part.a", "resource": {"id": "part/a"},
                                                      "payload": {"batch": "b-9"}})
    assert sent.status_code == 202

    async def open_join() -> list[dict]:
        detail = (await api.client.get("/api/automations/join-a-b")).json()
        return [p for p in detail["pending"] if p.get("status") == "open"]

    (join,) = await until(open_join, what="an open join")
    assert join["correlation"] == "b-9" and join["awaited"] == ["trigger_2"]
    assert list(join["arrived"]) == ["trigger_1"] and join["arrived"]["trigger_1"]["id"] == sent.json()["ids"][0]
    assert join["expires_at"]

    # When the other half arrives, the join fires and is listed as a firing
    await api.client.post("/api/events", json={"event": "part.b", "resource": {"id": "part/b"},
                                               "payload": {"batch": "b-9"}})

    async def fired() -> list[dict]:
        return (await api.client.get("/api/automations/join-a-b")).json()["firings"]

    (firing,) = await until(fired, what="a firing")
    assert firing["kind"] == "fired" and firing["correlation"] == "b-9"
    detail = (await api.client.get("/api/automations/join-a-b")).json()
    assert detail["definition"]["trigger"]["type"] == "compound"
    assert detail["counters"]["matched"] >= 2
