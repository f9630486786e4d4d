"""Deployments in the engine service (every test runs on SQLite and PostgreSQL)."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from typing import Any

import pytest
from sqlalchemy import func, select

from engine.db.models import DeploymentVersionRow, EventRow, FlowRunRow
from engine.errors import ObjectNotFound
from engine.schemas import DeploymentSpec, FlowRun
from engine.service import EngineService
from engine.states import Cancelled, Completed, Crashed, Pending, Running, State


async def rows(svc: EngineService, query: Any) -> list[Any]:
    async with svc.engine.connect() as conn:
        return list((await conn.execute(query)).all())


async def dispatches(svc: EngineService, run_id: uuid.UUID | None = None) -> list[EventRow]:
    query = select(EventRow).where(EventRow.event == "flow-run.dispatched")
    if run_id is not None:
        query = query.where(EventRow.resource_id == f"flow-run/{run_id}")
    async with svc._read() as session:
        return list(await session.scalars(query.order_by(EventRow.position)))


async def states(svc: EngineService, runs: list[FlowRun]) -> list[str]:
    return [(await svc.read_flow_run(run.id)).state_name or "" for run in runs]


async def finish(
    svc: EngineService, run: FlowRun, worker: str = "w1", end: State | None = None
) -> None:
    """Claim, start and end `run` as a worker would."""
    for state in (Pending(worker_id=worker), Running(worker_id=worker), end or Completed()):
        result = await svc.set_flow_run_state(run.id, state)
        assert result.accepted, result.reason


# --- registering -------------------------------------------------------------------------------
async def test_register_then_redeploy_bumps_the_version(
    service: EngineService, deploy: Any
) -> None:
    first = await deploy(parameters={"day": "today"}, tags=["prod"], description="nightly load")
    second = await deploy(parameters={"day": "yesterday"}, concurrency_limit=2)

    assert (first.version, second.version) == (1, 2)
    assert first.id == second.id and second.full_name == "etl/nightly"
    read = await service.read_deployment("etl/nightly")
    assert read.version == 2 and read.parameters == {"day": "yesterday"}
    assert read.concurrency_limit == 2 and read.tags == [] and read.work_pool == "pool-a"
    versions = await rows(
        service, select(DeploymentVersionRow.version, DeploymentVersionRow.parameters)
    )
    assert sorted(versions) == [(1, {"day": "today"}), (2, {"day": "yesterday"})]
    events = [e for e in await service.read_events() if e.event.startswith("deployment.")]
    assert [(e.event, e.payload["version"]) for e in events] == [
        ("deployment.registered", 1),
        ("deployment.registered", 2),
    ]
    assert events[0].resource["deployment"] == "etl/nightly"
    keys = await rows(
        service, select(EventRow.routing_key).where(EventRow.event.like("deployment.%"))
    )
    assert keys == [("deployment.registered",), ("deployment.registered",)]


async def test_register_several_is_all_or_nothing(service: EngineService) -> None:
    good = DeploymentSpec(name="a", flow_name="etl", entrypoint="f.py:etl")
    with pytest.raises(Exception):  # noqa: B017 - any database error will do
        await service.register_deployments(
            [good, good.model_copy(update={"parameters": {"x": {1}}})]
        )
    assert await service.read_deployments() == []

    registered = await service.register_deployments(
        [good, DeploymentSpec(name="b", flow_name="etl", entrypoint="f.py:etl", pool="p2")]
    )
    assert [d.full_name for d in registered] == ["etl/a", "etl/b"]
    assert [d.work_pool for d in await service.read_deployments()] == ["default", "p2"]


async def test_unknown_or_malformed_names(service: EngineService, deploy: Any) -> None:
    await deploy("nightly")

    with pytest.raises(
        ObjectNotFound, match=r"deployment 'etl/nighty' not found \(did you mean 'etl/nightly'\?\)"
    ):
        await service.read_deployment("etl/nighty")
    for bad in ("nightly", "etl/", "/nightly", "a/b/c"):
        with pytest.raises(ObjectNotFound, match="expected FLOW/DEPLOYMENT"):
            await service.read_deployment(bad)
    with pytest.raises(ObjectNotFound, match="did you mean 'etl/nightly'"):
        await service.create_deployment_run("etl/nightlyy")
    with pytest.raises(ValueError, match="cannot be empty or contain '/'"):
        DeploymentSpec(name="a/b", flow_name="etl", entrypoint="f.py:etl")


async def test_pause_and_resume_emit_events_once(service: EngineService, deploy: Any) -> None:
    await deploy()

    paused = await service.set_deployment_paused("etl/nightly", True)
    again = await service.set_deployment_paused("etl/nightly", True)
    redeployed = await deploy()  # a re-deploy keeps the pause flag
    resumed = await service.set_deployment_paused("etl/nightly", False)

    assert paused.paused and again.paused and redeployed.paused and not resumed.paused
    names = [e.event for e in await service.read_events() if e.event.startswith("deployment.")]
    assert names == [
        "deployment.registered",
        "deployment.paused",
        "deployment.registered",
        "deployment.resumed",
    ]


# --- runs and dispatch -------------------------------------------------------------------------
async def test_run_uses_the_latest_version_and_is_dispatched_with_its_state(
    service: EngineService, deploy: Any
) -> None:
    await deploy(parameters={"day": "today", "mode": "full"}, tags=["prod"])
    await deploy(
        parameters={"day": "today", "mode": "delta"}, tags=["prod"], entrypoint="v2.py:etl"
    )

    run = await service.create_deployment_run(
        "etl/nightly", {"day": "2026-11-22"}, flow_run_name="manual", caused_by={"user": "me"}
    )

    assert run.deployment_name == "etl/nightly" and run.deployment_version == 2
    assert run.parameters == {"day": "2026-11-22", "mode": "delta"}
    assert run.name == "manual" and run.tags == ["prod"] and run.work_pool == "pool-a"
    assert run.state is not None and run.state.name == "Scheduled"
    assert run.caused_by == {"user": "me"}
    (dispatch,) = await dispatches(service)
    assert dispatch.routing_key == "dispatch.pool-a"
    assert dispatch.payload == {
        "flow_run_id": str(run.id),
        "deployment": "etl/nightly",
        "entrypoint": "v2.py:etl",
        "work_pool": "pool-a",
        "parameters": {"day": "2026-11-22", "mode": "delta"},
        "attempts": 0,
        "attempt": None,
        "code": None,  # registered without code: the worker loads it as it finds it
    }
    # Committed together: the Scheduled event, then the dispatch, and the run marked dispatched.
    run_events = await service.read_events(f"flow-run/{run.id}")
    assert [e.event for e in run_events] == ["flow-run.Scheduled", "flow-run.dispatched"]
    assert run_events[0].payload["scheduled_time"] is not None
    assert run_events[0].resource["deployment"] == "etl/nightly"
    (dispatched_at,) = (await rows(service, select(FlowRunRow.dispatched_at)))[0]
    assert dispatched_at is not None


async def test_same_idempotency_key_gives_one_run_under_concurrency(
    service: EngineService, deploy: Any
) -> None:
    await deploy()

    runs = await asyncio.gather(
        *(
            service.create_deployment_run("etl/nightly", {"n": i}, idempotency_key="firing-1")
            for i in range(50)
        )
    )
    later = await service.create_deployment_run(
        "etl/nightly", {"n": 99}, idempotency_key="firing-1"
    )

    assert len({run.id for run in runs} | {later.id}) == 1
    assert (await rows(service, select(func.count()).select_from(FlowRunRow))) == [(1,)]
    assert len(await dispatches(service)) == 1  # the losers' dispatch rows rolled back with them


async def test_concurrency_limit_holds_runs_and_a_finish_dispatches_the_oldest(
    service: EngineService, deploy: Any
) -> None:
    await deploy(concurrency_limit=1)
    runs = [await service.create_deployment_run("etl/nightly") for _ in range(3)]

    assert await states(service, runs) == [
        "Scheduled",
        "AwaitingConcurrencySlot",
        "AwaitingConcurrencySlot",
    ]
    assert [len(await dispatches(service, run.id)) for run in runs] == [1, 0, 0]

    await finish(service, runs[0])

    assert await states(service, runs) == ["Completed", "Scheduled", "AwaitingConcurrencySlot"]
    assert [len(await dispatches(service, run.id)) for run in runs] == [1, 1, 0]

    await service.set_flow_run_state(runs[1].id, Cancelled())  # dispatched, unclaimed: a slot too

    assert await states(service, runs) == ["Completed", "Cancelled", "Scheduled"]
    assert [len(await dispatches(service, run.id)) for run in runs] == [1, 1, 1]


async def test_concurrent_finishes_never_exceed_the_limit(
    service: EngineService, deploy: Any
) -> None:
    limit = 2
    await deploy(concurrency_limit=limit)
    runs = [await service.create_deployment_run("etl/nightly") for _ in range(8)]
    finished: set[uuid.UUID] = set()

    while len(finished) < len(runs):
        held = [run for run in runs if run.id not in finished and await dispatches(service, run.id)]
        assert 1 <= len(held) <= limit
        await asyncio.gather(*(finish(service, run, worker=f"w-{run.id}") for run in held))
        finished.update(run.id for run in held)

    assert set(await states(service, runs)) == {"Completed"}
    assert len(await dispatches(service)) == len(runs)


async def test_raising_the_limit_releases_waiting_runs(service: EngineService, deploy: Any) -> None:
    await deploy(concurrency_limit=1)
    runs = [await service.create_deployment_run("etl/nightly") for _ in range(3)]

    await deploy(concurrency_limit=None)

    assert await states(service, runs) == ["Scheduled"] * 3
    assert len(await dispatches(service)) == 3


async def test_future_run_waits_for_dispatch_run(service: EngineService, deploy: Any) -> None:
    await deploy(concurrency_limit=1)
    when = dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)
    future = await service.create_deployment_run("etl/nightly", scheduled_time=when)
    now_run = await service.create_deployment_run("etl/nightly")

    assert await dispatches(service, future.id) == []
    assert await service.due_runs() == [(future.id, when)]
    events = await service.read_events(f"flow-run/{future.id}")
    assert dt.datetime.fromisoformat(events[0].payload["scheduled_time"]) == when

    assert await service.dispatch_run(future.id) is False  # the slot is taken by `now_run`
    assert await states(service, [future]) == ["AwaitingConcurrencySlot"]
    assert await service.due_runs() == []

    await finish(service, now_run)
    assert await states(service, [future]) == ["Scheduled"]
    assert len(await dispatches(service, future.id)) == 1
    assert await service.dispatch_run(future.id) is False  # idempotent


async def test_dispatch_run_is_idempotent(service: EngineService, deploy: Any) -> None:
    await deploy()
    later = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=5)
    run = await service.create_deployment_run("etl/nightly", scheduled_time=later)
    plain = await service.create_flow_run("etl")

    results = await asyncio.gather(*(service.dispatch_run(run.id) for _ in range(5)))

    assert sorted(results) == [False] * 4 + [True]
    assert len(await dispatches(service, run.id)) == 1
    assert await service.dispatch_run(plain.id) is False
    with pytest.raises(ObjectNotFound):
        await service.dispatch_run(uuid.uuid4())


# --- claims, crashes and retries ---------------------------------------------------------------
async def test_a_second_claim_is_rejected(service: EngineService, deploy: Any) -> None:
    await deploy()
    run = await service.create_deployment_run("etl/nightly")

    first = await service.set_flow_run_state(run.id, Pending(worker_id="A"))
    again = await service.set_flow_run_state(run.id, Pending(worker_id="A"))
    other = await service.set_flow_run_state(run.id, Pending(worker_id="B"))

    assert first.accepted and again.accepted
    assert other.status == "REJECT" and "held by worker 'A'" in (other.reason or "")
    assert [r.id for r in await service.runs_held_by("A")] == [run.id]
    assert await service.runs_held_by("B") == []


async def test_crash_with_retries_left_is_dispatched_again(
    service: EngineService, deploy: Any
) -> None:
    await deploy(concurrency_limit=1)
    run = await service.create_deployment_run("etl/nightly")
    waiting = await service.create_deployment_run("etl/nightly")
    await service.set_flow_run_state(run.id, Pending(worker_id="A"))
    await service.set_flow_run_state(
        run.id, Running(worker_id="A", flow_retries=1, retry_delay_seconds=0)
    )

    result = await service.set_flow_run_state(run.id, Crashed(message="worker lost"))

    assert result.accepted and result.state is not None and result.state.name == "AwaitingRetry"
    history = [s.name for s in await service.read_flow_run_states(run.id)]
    assert history == ["Scheduled", "Pending", "Running", "Crashed", "AwaitingRetry"]
    assert len(await dispatches(service, run.id)) == 2  # dispatched again, at once
    assert await states(service, [waiting]) == ["AwaitingConcurrencySlot"]  # it kept its slot

    # Another worker claims the retry; this time the crash is final (1 retry used).
    await service.set_flow_run_state(run.id, Pending(worker_id="B"))
    await service.set_flow_run_state(run.id, Running(worker_id="B", flow_retries=1))
    final = await service.set_flow_run_state(run.id, Crashed())

    assert final.state is not None and final.state.name == "Crashed"
    assert await states(service, [waiting]) == ["Scheduled"]  # the slot went to the waiting run


async def test_crash_retry_with_a_delay_waits_for_the_timer(
    service: EngineService, deploy: Any
) -> None:
    await deploy()
    run = await service.create_deployment_run("etl/nightly")
    await service.set_flow_run_state(run.id, Pending(worker_id="A"))
    await service.set_flow_run_state(
        run.id, Running(worker_id="A", flow_retries=2, retry_delay_seconds=30)
    )
    before = dt.datetime.now(dt.UTC)

    await service.set_flow_run_state(run.id, Crashed())

    read = await service.read_flow_run(run.id)
    assert read.state is not None and read.state.name == "AwaitingRetry"
    assert read.state.details.scheduled_time is not None
    assert read.state.details.scheduled_time >= before + dt.timedelta(seconds=29)
    assert len(await dispatches(service, run.id)) == 1
    assert await service.due_runs() == [(run.id, read.state.details.scheduled_time)]
    assert await service.dispatch_run(run.id) is True
    assert len(await dispatches(service, run.id)) == 2
    assert (await service.set_flow_run_state(run.id, Pending(worker_id="B"))).accepted


async def test_crash_without_retries_and_plain_runs_stay_crashed(
    service: EngineService, deploy: Any
) -> None:
    await deploy()
    run = await service.create_deployment_run("etl/nightly")
    plain = await service.create_flow_run("etl")
    for target in (run, plain):
        await service.set_flow_run_state(target.id, Running(worker_id="A"))

        result = await service.set_flow_run_state(target.id, Crashed())

        assert result.state is not None and result.state.name == "Crashed"
