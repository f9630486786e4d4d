"""Flow-of-flows from Python on the embedded engine: deployments run by the in-process worker."""

from __future__ import annotations

import asyncio
import importlib.util
import sys
import uuid
from pathlib import Path

import pytest

from engine import emit_event, run_deployment, wait_for_flow_run
from engine.client import get_client
from engine.errors import RunFailed, WaitTimeout
from engine.runtime import embedded

FLOWS = '''
import time
from engine import flow, run_deployment, create_flow_run, wait_for_flow_run, task

@flow(name="child")
def child(x: int = 1) -> int:
    return x * 10

@flow(name="slow")
def slow(seconds: float = 2.0) -> float:
    time.sleep(seconds)
    return seconds

@flow(name="bad")
def bad() -> None:
    raise ValueError("bad child")

@task
def make_params() -> dict:
    return {"x": 4}

@flow(name="parent")
def parent() -> int:
    run = run_deployment("child/t", {"x": 2})
    return run.result

@flow(name="parent-split")
def parent_split() -> int:
    run_id = create_flow_run("child/t", parameters=make_params())
    return wait_for_flow_run(run_id, raise_final_state=True).result

@flow(name="parent-bad")
def parent_bad() -> None:
    run_id = create_flow_run(flow_name="bad")
    wait_for_flow_run(run_id, raise_final_state=True)
'''


@pytest.fixture
def flows(tmp_path: Path):
    path = tmp_path / f"fof_{uuid.uuid4().hex[:6]}.py"
    path.write_text(FLOWS)
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module
    spec.loader.exec_module(module)
    for f in (module.child, module.slow, module.bad, module.parent, module.parent_split, module.parent_bad):
        f.deploy("t", work_pool="tests")
    yield module
    sys.modules.pop(path.stem, None)


def test_deploy_from_python_bumps_version(flows) -> None:
    again = flows.child.deploy("t", work_pool="tests", parameters={"x": 3})
    assert again.version == 2 and again.parameters == {"x": 3}
    # the flow's file travels as a bundle of its folder; the entrypoint is relative to it
    assert again.code is not None and again.code["bundle"].startswith("sha256:")
    assert again.entrypoint == f"{flows.__name__}.py:child"


def test_run_deployment_waits_and_returns_the_run(flows) -> None:
    run = run_deployment("child/t", {"x": 5}, timeout=30)
    assert run.state.name == "Completed" and run.result == 50
    assert run.deployment_name == "child/t"


def test_run_deployment_inside_a_flow_mirrors_and_links(flows) -> None:
    assert flows.parent() == 20
    client = get_client()
    [p] = client.read_flow_runs(flow="parent")
    [c] = client.read_children(p.id)
    [mirror] = client.read_task_runs(p.id)
    assert c.parent_task_run_id == mirror.id
    assert mirror.state.name == "Completed" and mirror.state.details.child_flow_run_id == c.id


def test_split_form_with_task_output_as_parameters(flows) -> None:
    assert flows.parent_split() == 40


def test_raise_final_state_fails_the_caller(flows) -> None:
    state = flows.parent_bad(return_state=True)
    assert state.is_failed() and "bad child" in state.message
    with pytest.raises(RunFailed):
        flows.parent_bad()


def test_wait_timeout_is_bounded(flows) -> None:
    with pytest.raises(WaitTimeout, match="did not finish within 0.3 s"):
        run_deployment("slow/t", {"seconds": 1.0}, timeout=0.3)


def test_async_gather_runs_children_at_once(flows) -> None:
    async def main():
        return await asyncio.gather(run_deployment("slow/t", {"seconds": 0.5}, timeout=30),
                                    run_deployment("slow/t", {"seconds": 0.5}, timeout=30))

    a, b = asyncio.run(main())
    assert a.state.name == b.state.name == "Completed"
    # the two children overlapped in time
    assert a.start_time < b.end_time and b.start_time < a.end_time


def test_idempotency_key_never_expires(flows) -> None:
    first = run_deployment("child/t", idempotency_key="same", timeout=30)
    second = run_deployment("child/t", {"x": 9}, idempotency_key="same", timeout=30)
    assert first.id == second.id


def test_emit_event_is_stored_and_published(flows) -> None:
    event = emit_event("batch.ready", resource={"id": "batch/17"}, payload={"rows": 3})
    stored = embedded.call_sync(lambda api: api.read_events(resource_id="batch/17"))
    assert [e.id for e in stored] == [event.id]
    assert stored[0].payload == {"rows": 3}


def test_unknown_deployment_is_a_clear_error(flows) -> None:
    from engine.errors import ObjectNotFound

    with pytest.raises(ObjectNotFound, match="child/tt"):
        run_deployment("child/tt")


def test_client_reads_deployments_and_creates_runs(flows) -> None:
    client = get_client()
    assert client.read_deployment("child/t").work_pool == "tests"
    assert "child/t" in {d.full_name for d in client.read_deployments()}
    run = client.create_flow_run("child/t", {"x": 3}, idempotency_key="client-1")
    assert client.create_flow_run("child/t", idempotency_key="client-1").id == run.id
    final = wait_for_flow_run(run.id, timeout=30)
    assert final.result == 30

    async def via_async():
        async with get_client(sync=False) as aclient:
            return await aclient.read_deployment("child/t")

    assert asyncio.run(via_async()).full_name == "child/t"
