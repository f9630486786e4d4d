"""The rule engine inside the server, on the in-memory broker and a temp SQLite database: events in,
durable state, firings recorded before their actions, actions keyed by the firing, bad input
dead-lettered, restarts in the middle of a window. (The same on RabbitMQ with separate processes:
tests/integration/test_automations.py.)"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from automations import store
from automations.errors import AutomationFileError
from engine.broker.topology import Names, QueueSpec
from engine.schemas import DeploymentSpec, Event, FlowRunFilter
from engine.server.app import Server
from engine.settings import load_settings


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv("FLOWRELAY_DATABASE__URL", f"sqlite+aiosqlite:///{tmp_path / 's.db'}")
    monkeypatch.setenv("FLOWRELAY_BROKER__URL", f"memory://auto-{uuid.uuid4().hex[:6]}")
    return load_settings()


async def until(predicate: Callable[[], Awaitable[Any]], timeout: float = 30.0) -> Any:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = await predicate()
        if value:
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


async def deploy(server: Server, *names: str) -> None:
    for full in names:
        flow, name = full.split("/")
        await server.service.register_deployment(DeploymentSpec(
            name=name, flow_name=flow, entrypoint=f"flows/{flow}.py:{flow}", work_pool="pool",
        ))


def completed(flow: str, result: Any = None, *, batch: str | None = None, event_id: uuid.UUID | None = None) -> Event:
    """A flow run's Completed event as the engine publishes it."""
    run = uuid.uuid4()
    payload: dict[str, Any] = {"state": "Completed", "type": "COMPLETED", "result": result,
                               "parameters": {"batch_id": batch} if batch else {}}
    return Event(id=event_id or uuid.uuid4(), event="flow-run.Completed",
                 resource={"id": f"flow-run/{run}", "flow": flow, "deployment": f"{flow}/main"},
                 payload=payload)


async def runs_of(server: Server, deployment: str) -> list[Any]:
    return await server.service.read_flow_runs(FlowRunFilter(deployment_name=deployment))


UPSTREAM_RULE = """
automations:
  - name: downstream-after-upstream
    trigger:
      type: flow-run-state-change
      match: {flow: up}
      expect: [Completed]
    actions:
      - type: run-deployment
        deployment: down/main
        parameters: {upstream_batch_id: "{{ event.payload.result.batch_id }}"}
"""

JOIN_RULE = """
automations:
  - name: join
    trigger:
      type: compound
      correlate: "{{ event.payload.parameters.batch_id }}"
      within: 1h
      triggers:
        - {type: flow-run-state-change, match: {deployment: b/main}, expect: [Completed]}
        - {type: flow-run-state-change, match: {deployment: c/main}, expect: [Completed]}
    actions:
      - type: run-deployment
        deployment: d/main
        parameters: {b: "{{ events['b/main'].payload.result }}", c: "{{ events['c/main'].payload.result }}"}
"""


async def test_an_event_fires_an_automation_and_the_run_records_why(settings: Any) -> None:
    async with Server(settings) as server:
        await deploy(server, "up/main", "down/main")
        assert server.automations is not None
        await server.automations.apply_automations([{"source": "rules.yaml", "text": UPSTREAM_RULE}])

        trigger = completed("up", {"batch_id": "b-17"})
        await server.service.emit_event(trigger)

        [run] = await until(lambda: runs_of(server, "down/main"))
        assert run.parameters == {"upstream_batch_id": "b-17"}
        assert run.caused_by["automation"] == "downstream-after-upstream"
        assert run.caused_by["event_id"] == str(trigger.id)
        detail = await until(lambda: _done(server, "downstream-after-upstream"))
        assert detail["counters"]["fired"] == 1
        assert detail["firings"][0]["results"][0]["detail"]["flow_run_id"] == str(run.id)
        names = [e.event for e in await server.service.read_events(limit=1000)]
        assert "automation.triggered" in names and "automation.action.executed" in names


async def _done(server: Server, name: str) -> dict[str, Any] | None:
    assert server.automations is not None
    detail = await server.automations.read_automation(name)
    return detail if detail["firings"] and detail["firings"][0]["status"] != "pending" else None


async def test_the_same_event_three_times_launches_one_run(settings: Any) -> None:
    async with Server(settings) as server:
        await deploy(server, "up/main", "down/main")
        assert server.automations is not None
        await server.automations.apply_automations([{"source": "r.yaml", "text": UPSTREAM_RULE}])
        event = completed("up", {"batch_id": "dup"})
        body = event.model_dump_json().encode()
        for _ in range(3):  # redelivered copies, straight onto the exchange
            await server.broker.publish(Names().events, "flow-run.up.Completed", body)
        await until(lambda: runs_of(server, "down/main"))
        await asyncio.sleep(0.2)
        assert len(await runs_of(server, "down/main")) == 1


async def test_a_join_survives_a_restart_and_fires_once(settings: Any) -> None:
    async with Server(settings) as server:
        await deploy(server, "b/main", "c/main", "d/main")
        assert server.automations is not None
        await server.automations.apply_automations([{"source": "j.yaml", "text": JOIN_RULE}])
        await server.service.emit_event(completed("b", "B(1)", batch="1"))
        await until(lambda: _pending(server))

    async with Server(settings) as server:  # a new process: state comes from the database
        [pending] = await _pending(server)
        assert pending["correlation"] == "1"
        await server.service.emit_event(completed("c", "C(1)", batch="1"))
        [run] = await until(lambda: runs_of(server, "d/main"))
        assert run.parameters == {"b": "B(1)", "c": "C(1)"}
        await server.service.emit_event(completed("c", "C(1) again", batch="1"))  # late duplicate
        await server.service.emit_event(completed("b", "B(2)", batch="2"))  # another batch opens
        await until(lambda: _pending(server))
        assert len(await runs_of(server, "d/main")) == 1


async def _pending(server: Server) -> list[dict[str, Any]]:
    assert server.automations is not None
    return list((await server.automations.read_automation("join"))["pending"])


async def test_a_firing_recorded_but_not_acted_on_is_resumed_at_start(settings: Any) -> None:
    async with Server(settings) as server:
        await deploy(server, "up/main", "down/main")
        assert server.automations is not None
        await server.automations.apply_automations([{"source": "r.yaml", "text": UPSTREAM_RULE}])
        event = completed("up", {"batch_id": "b-9"}).model_dump(mode="json")

        # Given a firing committed by a server that died before running its actions
        async def crash_before_acting(session: Any) -> bool:
            return await store.insert_firing(
                session, firing_id="f-crashed", automation="downstream-after-upstream", kind="fired",
                at=Event(event="x").occurred, bucket="", correlation=None, event_ids=[event["id"]],
                context={"event": event, "events": {"event": event}, "firing": {"id": "f-crashed"}},
            )

        await server.automations.stop()
        await server.service.write(crash_before_acting)
        # When the rule engine starts again
        await server.automations.start()
        # Then the firing's actions run (once)
        [run] = await until(lambda: runs_of(server, "down/main"))
        assert run.parameters == {"upstream_batch_id": "b-9"}
        assert run.idempotency_key == "automation:downstream-after-upstream:f-crashed:0"


async def test_malformed_messages_are_dead_lettered_with_a_reason(settings: Any) -> None:
    async with Server(settings) as server:
        await deploy(server, "up/main", "down/main")
        assert server.automations is not None
        await server.automations.apply_automations([{"source": "r.yaml", "text": UPSTREAM_RULE}])
        dead: asyncio.Queue[Any] = asyncio.Queue()
        names = Names()
        probe = await server.broker.declare_queue(QueueSpec.temporary(prefix="probe"))
        await server.broker.bind(probe, names.dlx, "#")

        async def on(message: Any) -> None:
            await message.ack()
            dead.put_nowait(message)

        await server.broker.consume(probe, on)
        for body in (b"not json", b'{"event": 5}', b'{"id": "x", "event": "flow-run.Completed"}'):
            await server.broker.publish(names.events, "flow-run.up.Completed", body)
        got = [await asyncio.wait_for(dead.get(), 5) for _ in range(3)]
        assert all(m.headers["x-flowrelay-reason"].startswith("not a flowrelay event") for m in got)
        assert server.automations.dead_lettered == 3
        # and the rule engine keeps serving the queue
        await server.service.emit_event(completed("up", {"batch_id": "ok"}))
        await until(lambda: runs_of(server, "down/main"))


async def test_a_failing_template_fails_the_action_not_the_service(settings: Any) -> None:
    rule = UPSTREAM_RULE.replace("event.payload.result.batch_id", "event.payload.result.missing")
    async with Server(settings) as server:
        await deploy(server, "up/main", "down/main")
        assert server.automations is not None
        await server.automations.apply_automations([{"source": "r.yaml", "text": rule}])
        await server.service.emit_event(completed("up", {"batch_id": "b"}))
        detail = await until(lambda: _done(server, "downstream-after-upstream"))
        assert detail["firings"][0]["status"] == "failed"
        assert "has no attribute 'missing'" in detail["firings"][0]["results"][0]["error"]
        assert detail["counters"]["failed"] == 1
        failed = [e for e in await server.service.read_events(limit=1000) if e.event == "automation.action.failed"]
        assert "missing" in failed[0].payload["error"]


async def test_apply_is_all_or_nothing_and_pause_stops_firing(settings: Any) -> None:
    async with Server(settings) as server:
        await deploy(server, "up/main", "down/main")
        automations = server.automations
        assert automations is not None
        bad = "automations:\n  - name: x\n    trigger: {type: event}\n    actions: [{type: run-deployment, deployment: nope/nope}]\n"
        with pytest.raises(AutomationFileError) as caught:
            await automations.apply_automations([
                {"source": "good.yaml", "text": UPSTREAM_RULE}, {"source": "bad.yaml", "text": bad},
            ])
        assert caught.value.problems[0].startswith("bad.yaml:4:")
        assert await automations.read_automations() == []

        await automations.apply_automations([{"source": "good.yaml", "text": UPSTREAM_RULE}])
        await automations.set_automation_enabled("downstream-after-upstream", False)
        await server.service.emit_event(completed("up", {"batch_id": "while-paused"}))
        await asyncio.sleep(0.3)
        assert await runs_of(server, "down/main") == []
        await automations.set_automation_enabled("downstream-after-upstream", True)
        await server.service.emit_event(completed("up", {"batch_id": "resumed"}))
        [run] = await until(lambda: runs_of(server, "down/main"))
        assert run.parameters == {"upstream_batch_id": "resumed"}


async def test_configured_paths_are_loaded_at_start_and_a_bad_file_keeps_the_rest(
    settings: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "up.yaml").write_text(UPSTREAM_RULE)
    monkeypatch.setenv("FLOWRELAY_AUTOMATIONS__PATHS", f'["{rules}"]')
    async with Server(settings) as server:
        await deploy(server, "up/main", "down/main")
    configured = load_settings()
    async with Server(configured) as server:
        assert server.automations is not None
        assert [a["name"] for a in await server.automations.read_automations()] == ["downstream-after-upstream"]

    (rules / "broken.yaml").write_text("automations:\n  - name: [\n")
    async with Server(load_settings()) as server:  # refused whole, logged; the stored rules run on
        assert server.automations is not None
        await server.service.emit_event(completed("up", {"batch_id": "still"}))
        await until(lambda: runs_of(server, "down/main"))


async def test_replay_fires_what_never_fired_and_nothing_twice(settings: Any) -> None:
    async with Server(settings) as server:
        await deploy(server, "up/main", "down/main")
        automations = server.automations
        assert automations is not None
        first = completed("up", {"batch_id": "before-the-rule"})
        await server.service.emit_event(first)  # no automation yet: nothing fires
        await asyncio.sleep(0.1)
        await automations.apply_automations([{"source": "r.yaml", "text": UPSTREAM_RULE}])
        since = first.occurred.replace(microsecond=0)

        result = await automations.replay_events(since=since)
        assert len(result["fired"]) == 1
        [run] = await until(lambda: runs_of(server, "down/main"))
        assert run.parameters == {"upstream_batch_id": "before-the-rule"}

        again = await automations.replay_events(since=since)
        assert again["fired"] == []
        await asyncio.sleep(0.1)
        assert len(await runs_of(server, "down/main")) == 1
        explained = await automations.explain_automation("downstream-after-upstream", str(first.id))
        assert any("firing" in line for line in explained)
