"""Actions against a real engine service (SQLite) and webhooks through httpx's MockTransport."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import TypeAdapter

from automations.actions import ActionRunner, host_allowed
from automations.models import Action
from engine.schemas import DeploymentSpec
from engine.service import EngineService
from engine.states import Running

ACTION = TypeAdapter(Action)
EVENT = {
    "id": "2b0c6c1e-5d1a-4f8e-9a51-0f7c3f9a1d11",
    "event": "flow-run.Completed",
    "resource": {"id": "flow-run/x", "flow": "up", "deployment": "etl/up"},
    "payload": {"result": {"batch_id": "b-17", "rows": 3}},
}
CONTEXT = {"event": EVENT, "events": {"event": EVENT}, "firing": {"id": "f1"}, "automation": {"name": "a"}}


@pytest.fixture
async def service(tmp_path: Path) -> AsyncIterator[EngineService]:
    svc = await EngineService.open(f"sqlite+aiosqlite:///{tmp_path / 'a.db'}")
    for name in ("up", "down"):
        await svc.register_deployment(DeploymentSpec(
            name=name, flow_name="etl", entrypoint="flows/etl.py:etl", work_pool="p",
        ))
    try:
        yield svc
    finally:
        await svc.close()


def runner(service: EngineService, handler: Any = None, allow: list[str] | None = None) -> tuple[ActionRunner, list[Any]]:
    toggles: list[Any] = []

    async def set_enabled(name: str, enabled: bool) -> None:
        toggles.append((name, enabled))

    transport = httpx.MockTransport(handler) if handler else None
    return ActionRunner(service, set_automation_enabled=set_enabled, webhook_allow_hosts=allow or [],
                        timeout=5, transport=transport), toggles


async def test_run_deployment_renders_parameters_and_is_keyed_by_the_firing(service: EngineService) -> None:
    r, _ = runner(service)
    action = ACTION.validate_python({
        "type": "run-deployment", "deployment": "etl/down", "tags": ["auto"],
        "parameters": {"batch": "{{ event.payload.result.batch_id }}", "rows": "{{ event.payload.result.rows }}"},
    })
    first = await r.run_one("a", "firing-1", 0, action, CONTEXT, caused_by={"automation": "a"})
    again = await r.run_one("a", "firing-1", 0, action, CONTEXT, caused_by={"automation": "a"})

    assert first.ok and again.ok
    assert first.detail["flow_run_id"] == again.detail["flow_run_id"]  # one run per firing
    run = await service.read_flow_run(uuid.UUID(first.detail["flow_run_id"]))
    assert run.parameters == {"batch": "b-17", "rows": 3}
    assert run.caused_by == {"automation": "a"} and "auto" in run.tags
    other = await r.run_one("a", "firing-2", 0, action, CONTEXT, caused_by={})
    assert other.detail["flow_run_id"] != first.detail["flow_run_id"]


async def test_failures_are_reported_not_raised(service: EngineService) -> None:
    r, _ = runner(service)
    bad_template = ACTION.validate_python({"type": "run-deployment", "deployment": "etl/down",
                                           "parameters": {"x": "{{ event.payload.nope }}"}})
    unknown = ACTION.validate_python({"type": "run-deployment", "deployment": "etl/missing"})
    results = await r.run_all("a", "f", [bad_template, unknown], CONTEXT, caused_by={})
    assert [x.ok for x in results] == [False, False]
    assert "parameters.x" in results[0].error and "nope" in results[0].error
    assert "etl/missing" in results[1].error


async def test_pause_resume_deployment_defaults_to_the_events_deployment(service: EngineService) -> None:
    r, _ = runner(service)
    pause = ACTION.validate_python({"type": "pause-deployment"})
    assert (await r.run_one("a", "f", 0, pause, CONTEXT, caused_by={})).ok
    assert (await service.read_deployment("etl/up")).paused
    resume = ACTION.validate_python({"type": "resume-deployment", "deployment": "etl/up"})
    assert (await r.run_one("a", "f", 1, resume, CONTEXT, caused_by={})).ok
    assert not (await service.read_deployment("etl/up")).paused


async def test_cancel_and_change_state_of_a_run(service: EngineService) -> None:
    r, _ = runner(service)
    run = await service.create_deployment_run("etl/down")
    ctx = {**CONTEXT, "event": {**EVENT, "resource": {"id": f"flow-run/{run.id}"}}}
    result = await r.run_one("a", "f", 0, ACTION.validate_python({"type": "cancel-flow-run"}), ctx, caused_by={})
    assert result.ok and (await service.read_flow_run(run.id)).state.name == "Cancelled"

    running = await service.create_deployment_run("etl/down", idempotency_key="r2")
    await service.set_flow_run_state(running.id, Running(), force=True)
    change = ACTION.validate_python({"type": "change-flow-run-state", "flow_run": str(running.id),
                                     "state": "Failed", "message": "{{ 'gave up on ' ~ event.payload.result.batch_id }}"})
    assert (await r.run_one("a", "f", 1, change, ctx, caused_by={})).ok
    state = (await service.read_flow_run(running.id)).state
    assert state.name == "Failed" and state.message == "gave up on b-17"


async def test_emit_event_is_stored_once_per_firing(service: EngineService) -> None:
    r, _ = runner(service)
    emit = ACTION.validate_python({"type": "emit-event", "event": "batch.done",
                                   "resource": {"id": "batch/{{ event.payload.result.batch_id }}"},
                                   "payload": {"rows": "{{ event.payload.result.rows }}"}})
    for _ in range(2):
        assert (await r.run_one("a", "f", 0, emit, CONTEXT, caused_by={})).ok
    events = [e for e in await service.read_events() if e.event == "batch.done"]
    assert len(events) == 1
    assert events[0].resource == {"id": "batch/b-17"} and events[0].payload == {"rows": 3}


async def test_pause_automation_defaults_to_itself(service: EngineService) -> None:
    r, toggles = runner(service)
    await r.run_one("me", "f", 0, ACTION.validate_python({"type": "pause-automation"}), CONTEXT, caused_by={})
    await r.run_one("me", "f", 1, ACTION.validate_python({"type": "resume-automation", "automation": "other"}),
                    CONTEXT, caused_by={})
    assert toggles == [("me", False), ("other", True)]


@pytest.mark.parametrize(
    ("host", "allowed", "ok"),
    [("hooks.example.com", ["hooks.example.com"], True), ("HOOKS.example.com", ["hooks.example.com"], True),
     ("a.example.com", ["*.example.com"], True), ("example.com.evil.io", ["*.example.com"], False),
     ("evil.io", ["hooks.example.com"], False), ("x", [], False)],
)
def test_host_allow_list(host: str, allowed: list[str], ok: bool) -> None:
    assert host_allowed(host, allowed) is ok


async def test_webhook_posts_the_rendered_body_to_an_allowed_host(service: EngineService) -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200)

    r, _ = runner(service, handler, allow=["hooks.example.com"])
    hook = ACTION.validate_python({"type": "call-webhook", "url": "https://hooks.example.com/in",
                                   "body": {"batch": "{{ event.payload.result.batch_id }}"},
                                   "headers": {"x-token": "t"}})
    result = await r.run_one("a", "f", 0, hook, CONTEXT, caused_by={})
    assert result.ok and result.detail["status"] == 200
    assert json.loads(seen[0].content) == {"batch": "b-17"} and seen[0].headers["x-token"] == "t"


async def test_webhook_refuses_other_hosts_and_redirects_and_retries_5xx(service: EngineService) -> None:
    calls: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(str(request.url))
        if request.url.path == "/redirect":
            return httpx.Response(302, headers={"location": "http://evil.io/"})
        return httpx.Response(503)

    r, _ = runner(service, handler, allow=["hooks.example.com"])
    other = await r.run_one("a", "f", 0, ACTION.validate_python(
        {"type": "call-webhook", "url": "http://evil.io/x"}), CONTEXT, caused_by={})
    assert not other.ok and "not on automations.webhook_allow_hosts" in other.error and calls == []

    redirect = await r.run_one("a", "f", 0, ACTION.validate_python(
        {"type": "call-webhook", "url": "https://hooks.example.com/redirect"}), CONTEXT, caused_by={})
    assert not redirect.ok and "redirects are not followed" in redirect.error and len(calls) == 1

    failing = await r.run_one("a", "f", 0, ACTION.validate_python(
        {"type": "call-webhook", "url": "https://hooks.example.com/down", "retries": 2}), CONTEXT, caused_by={})
    assert not failing.ok and "after 3 attempt(s)" in failing.error and len(calls) == 4


@pytest.mark.parametrize(("outages", "outage_timeout", "ok"), [(3, 300.0, True), (50, 0.5, False)])
async def test_an_action_waits_out_a_database_outage(
    service: EngineService, outages: int, outage_timeout: float, ok: bool
) -> None:
    """Regression (issue 11): a run-deployment action that met the database refusing
    connections failed its firing for good, and the downstream run never existed."""
    from engine.errors import EngineUnavailable

    class Outage:
        def __init__(self) -> None:
            self.left = outages

        def __getattr__(self, name: str) -> Any:
            return getattr(service, name)

        async def create_deployment_run(self, *args: Any, **kwargs: Any) -> Any:
            if self.left:
                self.left -= 1
                raise EngineUnavailable("create_deployment_run: the database is unavailable")
            return await service.create_deployment_run(*args, **kwargs)

    r = ActionRunner(Outage(), set_automation_enabled=lambda *_: None,  # type: ignore[arg-type]
                     webhook_allow_hosts=[], timeout=5, outage_timeout=outage_timeout)
    action = ACTION.validate_python({"type": "run-deployment", "deployment": "etl/down"})

    result = await r.run_one("a", "firing-1", 0, action, CONTEXT, caused_by={})

    assert result.ok is ok, result.error
    if ok:
        assert (await service.read_flow_run(uuid.UUID(result.detail["flow_run_id"]))).deployment_name == "etl/down"
    else:
        assert "the database is unavailable" in (result.error or "")
