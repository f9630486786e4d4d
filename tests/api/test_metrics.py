"""GET /metrics: Prometheus text, scraped before and after work; the figures move as they should."""

from __future__ import annotations

import asyncio

from prometheus_client.parser import text_string_to_metric_families

from engine.schemas import Event
from tests.api.conftest import Api, until
from workers.worker import Worker


async def scrape(api: Api) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    answer = await api.client.get("/metrics")
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(answer.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def test_metrics_follow_the_work(api: Api) -> None:
    # Given a deployment, a rule that runs it on batch.ready, and a worker
    await api.deploy("report/main", flow_fn="report")
    await api.server.automations.apply_automations([{"source": "rules.yaml", "text": """
automations:
  - name: report-when-ready
    trigger: {type: event, expect: [batch.ready]}
    actions:
      - {type: run-deployment, deployment: report/main, parameters: {batch_id: "{{ event.payload.b }}"}}
"""}])
    before = await scrape(api)
    assert value(before, "flowrelay_flow_runs", state_type="COMPLETED", state="Completed") == 0
    assert value(before, "flowrelay_api_events_received_total") == 0
    assert ("flowrelay_outbox_backlog", ()) in before
    # the one server on this database leases every partition of the work
    assert value(before, "flowrelay_servers") == 1
    assert value(before, "flowrelay_server_partitions", server=api.server.service.server_id) == 64

    worker = Worker(api.server.broker, api.server.service, pool="default", concurrency=2, mode="inline",
                    heartbeat_interval=0.1, drain_timeout=5)
    await api.server.ensure_pool("default")
    await worker.start()
    try:
        # When two events come in over HTTP and a run is finished by hand
        for b in ("b-1", "b-2"):
            sent = await api.client.post("/api/events", json={"event": "batch.ready", "payload": {"b": b}})
            assert sent.status_code == 202
        await api.finished_run("adhoc")
        await api.server.service.emit_event(Event(event="poke.me"))
        # (an inline worker sends no heartbeats: one arrives as a remote worker's would)
        await api.server.heartbeats.beat("worker-1", "default", [])

        seen: list[tuple[str, str]] = []

        async def two_completed() -> bool:
            runs = (await api.client.get("/api/flow-runs", params={"deployment": "report/main"})).json()
            seen[:] = [(run["state_name"], run["state_message"] or "") for run in runs["items"]]
            return [name for name, _ in seen] == ["Completed", "Completed"]

        try:
            await until(two_completed, timeout=30, what="two Completed report runs")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; the report runs: {seen}") from None

        async def settled() -> dict:
            samples = await scrape(api)
            done = (value(samples, "flowrelay_automation_firings_total", automation="report-when-ready") == 2
                    and value(samples, "flowrelay_event_to_action_latency_seconds_count",
                              action="run-deployment", outcome="executed") == 2)
            return samples if done else {}

        after = await until(settled, timeout=30, what="firings, latencies and heartbeats in /metrics")
    finally:
        await worker.stop()

    # Then: runs by state, events in and out, rule engine counters, latencies, workers
    assert value(after, "flowrelay_flow_runs", state_type="COMPLETED", state="Completed") == 3
    assert value(after, "flowrelay_api_events_received_total") == 2
    assert value(after, "flowrelay_events_published_total", kind="flow-run") >= 9
    assert value(after, "flowrelay_events_published_total", kind="custom") >= 3
    assert value(after, "flowrelay_events_published_total", kind="automation") >= 4
    assert value(after, "flowrelay_runs_dispatched_total", pool="default") == 2
    assert value(after, "flowrelay_dispatch_latency_seconds_count", pool="default") == 2
    assert value(after, "flowrelay_rule_evaluations_total") >= 2
    assert value(after, "flowrelay_rule_matches_total", automation="report-when-ready") == 2
    assert value(after, "flowrelay_automation_action_failures_total", automation="report-when-ready") == 0
    assert value(after, "flowrelay_automation_enabled", automation="report-when-ready") == 1
    assert value(after, "flowrelay_dead_lettered_total", consumer="automations") == 0
    assert value(after, "flowrelay_outbox_events_total") > value(before, "flowrelay_outbox_events_total")
    assert value(after, "flowrelay_workers", pool="default") == 1
    assert 0 <= value(after, "flowrelay_worker_heartbeat_age_seconds", worker="worker-1", pool="default") < 10
    assert ("flowrelay_worker_runs", (("pool", "default"), ("worker", "worker-1"))) in after


async def test_outbox_backlog_counts_unsent_events(api: Api) -> None:
    # The relay is stopped: what is committed now stays unsent
    await api.server.relay.stop()
    for _ in range(3):
        await api.server.service.emit_event(Event(event="stuck.here"))
    samples = await scrape(api)
    assert value(samples, "flowrelay_outbox_backlog") == 3
    await api.server.relay.start()

    async def drained() -> bool:
        return value(await scrape(api), "flowrelay_outbox_backlog") == 0

    await until(drained, what="the backlog published")
    await asyncio.sleep(0)


async def test_dead_letter_queue_counts_what_a_worker_rejected(api: Api) -> None:
    # Given a worker on the default pool
    names = api.server.names
    await api.server.ensure_pool("default")
    worker = Worker(api.server.broker, api.server.service, pool="default", concurrency=1,
                    mode="inline", drain_timeout=5)
    await worker.start()
    try:
        assert value(await scrape(api), "flowrelay_dead_letter_queue_messages") == 0
        # When two malformed work messages reach its queue
        for body in (b"not json", b'{"flow_run_id": "not-a-uuid"}'):
            await api.server.broker.publish(names.events, "dispatch.default", body)

        # Then the worker dead-letters both, and /metrics shows them waiting in the dead queue
        async def counted() -> bool:
            return value(await scrape(api), "flowrelay_dead_letter_queue_messages") == 2

        await until(counted, what="two messages in the dead-letter queue")
        assert worker.stats.dead_lettered == 2
    finally:
        await worker.stop()


async def test_pool_gauges_count_runs_stranded_without_a_worker(api: Api) -> None:
    # Given a run due on a pool no worker serves, past one heartbeat timeout
    api.server.service.heartbeat_timeout = 0.2
    await api.deploy("report/lonely", flow_fn="report", work_pool="lonely")
    await api.server.service.create_deployment_run("report/lonely")
    await api.server.service.set_work_pool_concurrency("lonely", 3)
    await asyncio.sleep(0.3)

    samples = await scrape(api)
    assert value(samples, "flowrelay_runs_without_worker", pool="lonely") == 1
    assert value(samples, "flowrelay_work_pool_concurrency_limit", pool="lonely") == 3
    assert value(samples, "flowrelay_work_pool_busy_runs", pool="lonely") == 0
    assert value(samples, "flowrelay_database_commits_total") > 0
    # and the API says why the run waits
    (run,) = (await api.client.get("/api/flow-runs", params={"deployment": "report/lonely"})).json()["items"]
    assert run["waiting"].startswith("waiting: no live worker on pool lonely")
