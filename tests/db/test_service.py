"""The engine service over a real database (every test runs on SQLite and PostgreSQL)."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.exc import DBAPIError

from engine.db.models import DeploymentRow, EventRow, FlowRow, FlowRunRow, FlowRunStateRow
from engine.errors import InvalidTransition, ObjectNotFound, ResultTooLarge
from engine.schemas import Event, FlowRunFilter, LogRecord
from engine.service import EngineService
from engine.states import (
    AwaitingRetry,
    Cancelled,
    Failed,
    Pending,
    Running,
    Scheduled,
    State,
    StateType,
)


def completed(data: object = None, **details: object) -> State:
    return State(type=StateType.COMPLETED, data=data, details=details)


async def count(svc: EngineService, model: type, *where: object) -> int:
    async with svc.engine.connect() as conn:
        return (
            await conn.execute(select(func.count()).select_from(model).where(*where))
        ).scalar_one()


# --- flow runs ---------------------------------------------------------------------------------
async def test_create_and_read_flow_run(service: EngineService) -> None:
    run = await service.create_flow_run("etl", {"day": "2026-11-22"}, tags=["nightly"])

    read = await service.read_flow_run(run.id)
    assert read == run
    assert read.flow_name == "etl" and read.parameters == {"day": "2026-11-22"}
    assert read.tags == ["nightly"]
    assert read.name and "-" in read.name  # generated readable name
    assert read.state is not None and read.state.name == "Pending"
    assert read.state.details.flow_run_id == run.id
    assert read.created.tzinfo is not None
    assert await count(service, FlowRow) == 1


async def test_initial_state_can_be_given(service: EngineService) -> None:
    when = dt.datetime(2030, 1, 2, 3, 4, 5, 123456, tzinfo=dt.UTC)
    run = await service.create_flow_run("etl", name="my-run", state=Scheduled(scheduled_time=when))
    assert run.name == "my-run"
    assert run.state.type is StateType.SCHEDULED
    assert run.expected_start_time == when
    assert (await service.read_flow_run(run.id)).state.details.scheduled_time == when


async def test_unknown_run_is_not_found(service: EngineService) -> None:
    missing = uuid.uuid4()
    with pytest.raises(ObjectNotFound, match=f"flow run {missing} not found"):
        await service.read_flow_run(missing)
    with pytest.raises(ObjectNotFound, match=f"flow run {missing} not found"):
        await service.set_flow_run_state(missing, Running())


async def test_list_newest_first_with_filters(service: EngineService) -> None:
    parent = await service.create_flow_run("parent")
    a = await service.create_flow_run("etl")
    b = await service.create_flow_run("etl", parent_flow_run_id=parent.id)
    c = await service.create_flow_run("report", state=Scheduled())
    await service.set_flow_run_state(a.id, Running())

    async def ids(**kw: object) -> list[uuid.UUID]:
        return [r.id for r in await service.read_flow_runs(FlowRunFilter(**kw))]

    assert await ids() == [c.id, b.id, a.id, parent.id]
    assert await ids(flow_name="etl") == [b.id, a.id]
    assert await ids(state_names=["Running"]) == [a.id]
    assert await ids(state_types=[StateType.SCHEDULED, StateType.RUNNING]) == [c.id, a.id]
    assert await ids(parent_flow_run_id=parent.id) == [b.id]
    assert await ids(ids=[a.id, c.id]) == [c.id, a.id]
    assert await ids(limit=2, offset=1) == [b.id, a.id]
    assert [r.id for r in await service.read_children(parent.id)] == [b.id]


async def test_deployment_run_takes_its_defaults(service: EngineService) -> None:
    flow_id, deployment_id = uuid.uuid4(), uuid.uuid4()
    async with service.engine.begin() as conn:
        await conn.execute(
            FlowRow.__table__.insert().values(
                id=flow_id, name="etl", created=dt.datetime.now(dt.UTC)
            )
        )
        await conn.execute(
            DeploymentRow.__table__.insert().values(
                id=deployment_id,
                flow_id=flow_id,
                flow_name="etl",
                name="nightly",
                version=3,
                parameters={"day": "today", "mode": "full"},
                work_pool="pool-a",
                tags=["prod"],
                schedules=[],
                paused=False,
                created=dt.datetime.now(dt.UTC),
                updated=dt.datetime.now(dt.UTC),
            )
        )

    run = await service.create_flow_run("etl", {"day": "2026-11-22"}, deployment_id=deployment_id)
    await service.create_flow_run("etl")

    assert run.deployment_name == "etl/nightly" and run.deployment_version == 3
    assert run.work_pool == "pool-a" and run.tags == ["prod"]
    assert run.parameters == {"day": "2026-11-22", "mode": "full"}
    listed = await service.read_flow_runs(FlowRunFilter(deployment_name="etl/nightly"))
    assert [r.id for r in listed] == [run.id]
    events = await service.read_events(f"flow-run/{run.id}")
    assert events[0].resource["deployment"] == "etl/nightly"
    with pytest.raises(ObjectNotFound, match="deployment"):
        await service.create_flow_run("etl", deployment_id=uuid.uuid4())


# --- idempotency -------------------------------------------------------------------------------
async def test_idempotency_key_returns_the_same_run_unchanged(service: EngineService) -> None:
    first = await service.create_flow_run("etl", {"n": 1}, idempotency_key="slot-1")
    again = await service.create_flow_run("etl", {"n": 2}, idempotency_key="slot-1", name="other")
    assert again == first
    assert again.parameters == {"n": 1}


async def test_fifty_concurrent_creates_with_one_key_make_one_run(db_url: str) -> None:
    # Five services = five connection pools, as if five processes raced.
    services = [await EngineService.open(db_url) for _ in range(5)]
    try:
        runs = await asyncio.gather(
            *(
                services[i % 5].create_flow_run("etl", {"i": i}, idempotency_key="firing-42")
                for i in range(50)
            )
        )
        svc = services[0]
        assert len({run.id for run in runs}) == 1
        assert await count(svc, FlowRunRow) == 1
        assert await count(svc, FlowRunStateRow) == 1
        assert await count(svc, EventRow) == 1
        assert await count(svc, FlowRow) == 1
    finally:
        for svc in services:
            await svc.close()


async def test_concurrent_new_flows_with_same_name(service: EngineService) -> None:
    runs = await asyncio.gather(*(service.create_flow_run("fresh-flow") for _ in range(20)))
    assert len({r.id for r in runs}) == 20
    assert await count(service, FlowRow) == 1


# --- state changes -----------------------------------------------------------------------------
async def test_lifecycle_run_count_times_and_result(service: EngineService) -> None:
    run = await service.create_flow_run("etl")

    running = await service.set_flow_run_state(run.id, Running(worker_id="w1"))
    done = await service.set_flow_run_state(run.id, completed({"batch_id": "b-17"}, worker_id="w1"))

    assert running.status == "ACCEPT" and running.accepted
    assert done.status == "ACCEPT"
    final = await service.read_flow_run(run.id)
    assert final.run_count == 1
    assert final.start_time == running.state.timestamp
    assert final.end_time == done.state.timestamp
    assert final.result == {"batch_id": "b-17"}
    assert final.state.data == {"batch_id": "b-17"}
    assert done.run == final


async def test_states_round_trip_in_order(service: EngineService) -> None:
    when = dt.datetime(2026, 11, 22, 9, 30, 0, 123456, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    run = await service.create_flow_run("etl", state=Scheduled(scheduled_time=when))
    proposals = [
        Pending(),
        Running(message="go", worker_id="w1"),
        Failed(message="boom"),
        AwaitingRetry(scheduled_time=when, retry_count=1, custom_key="kept"),
        Running(name="Retrying", worker_id="w1"),
        completed([1, "two", {"3": None}]),
    ]
    for state in proposals:
        assert (await service.set_flow_run_state(run.id, state)).accepted

    history = await service.read_flow_run_states(run.id)

    assert [s.name for s in history] == [
        "Scheduled",
        "Pending",
        "Running",
        "Failed",
        "AwaitingRetry",
        "Retrying",
        "Completed",
    ]
    for stored, proposed in zip(history[1:], proposals, strict=True):
        assert stored.type is proposed.type
        assert stored.message == proposed.message
        assert stored.timestamp == proposed.timestamp
        assert stored.data == proposed.data
        assert stored.details.model_dump(exclude={"flow_run_id"}) == proposed.details.model_dump(
            exclude={"flow_run_id"}
        )
        assert stored.details.flow_run_id == run.id
    assert history[0].details.scheduled_time == when
    assert history[4].details.retry_count == 1
    assert history[4].details.model_extra == {"custom_key": "kept"}
    assert (await service.read_flow_run(run.id)).run_count == 2


async def test_rejected_transition_writes_nothing(service: EngineService) -> None:
    run = await service.create_flow_run("etl")
    await service.set_flow_run_state(run.id, Cancelled())
    before = await service.read_flow_run(run.id)
    events_before = await count(service, EventRow)

    result = await service.set_flow_run_state(run.id, Running())

    assert result.status == "REJECT"
    assert "Cancelled" in result.reason
    assert result.state.name == "Cancelled"
    assert await service.read_flow_run(run.id) == before
    assert await count(service, EventRow) == events_before
    assert len(await service.read_flow_run_states(run.id)) == 2


async def test_duplicate_proposal_writes_nothing(service: EngineService) -> None:
    run = await service.create_flow_run("etl")
    await service.set_flow_run_state(run.id, Running(worker_id="w1"))
    before = await service.read_flow_run(run.id)

    result = await service.set_flow_run_state(run.id, Running(worker_id="w1"))

    assert result.status == "ACCEPT"
    assert await service.read_flow_run(run.id) == before
    assert before.run_count == 1
    assert len(await service.read_events(f"flow-run/{run.id}")) == 2


async def test_concurrent_claims_one_worker_wins(service: EngineService) -> None:
    run = await service.create_flow_run("etl")

    results = await asyncio.gather(
        *(service.set_flow_run_state(run.id, Running(worker_id=f"w{i}")) for i in range(10))
    )

    winners = [r for r in results if r.accepted]
    assert len(winners) == 1
    holder = winners[0].state.details.worker_id
    for loser in (r for r in results if not r.accepted):
        assert loser.status == "REJECT"
        assert repr(holder) in loser.reason
    final = await service.read_flow_run(run.id)
    assert final.run_count == 1 and final.state.details.worker_id == holder
    assert [s.name for s in await service.read_flow_run_states(run.id)] == ["Pending", "Running"]


async def test_forced_transition(service: EngineService) -> None:
    run = await service.create_flow_run("etl", state=completed(1))
    result = await service.set_flow_run_state(run.id, Running(), force=True)
    assert result.accepted and result.state.name == "Running"


async def test_inconsistent_state_aborts(service: EngineService) -> None:
    run = await service.create_flow_run("etl")
    result = await service.set_flow_run_state(run.id, State(type=StateType.RUNNING, name="Late"))
    assert result.status == "ABORT"
    with pytest.raises(InvalidTransition):
        await service.create_flow_run("etl", state=State(type=StateType.PENDING, name="Running"))


async def test_result_over_the_limit_is_refused(db_url: str) -> None:
    async with EngineService(db_url, result_max_bytes=100) as svc:
        run = await svc.create_flow_run("etl", state=Running())
        with pytest.raises(ResultTooLarge, match="100 bytes"):
            await svc.set_flow_run_state(run.id, completed("x" * 200))
        assert (await svc.read_flow_run(run.id)).state.name == "Running"


# --- outbox ------------------------------------------------------------------------------------
async def test_events_chain_by_seq_and_follows(service: EngineService) -> None:
    parent = await service.create_flow_run("parent")
    run = await service.create_flow_run(
        "etl", {"p": 1}, tags=["t"], parent_flow_run_id=parent.id, work_pool="pool-a"
    )
    await service.set_flow_run_state(run.id, Running())
    await service.set_flow_run_state(run.id, completed({"ok": True}))

    events = await service.read_events(f"flow-run/{run.id}")

    assert [e.event for e in events] == [
        "flow-run.Pending",
        "flow-run.Running",
        "flow-run.Completed",
    ]
    assert [e.resource["seq"] for e in events] == [1, 2, 3]
    assert [e.follows for e in events] == [None, events[0].id, events[1].id]
    assert events[-1].payload["result"] == {"ok": True}
    assert events[-1].payload["run_count"] == 1
    assert events[-1].related == [{"id": f"flow-run/{parent.id}", "role": "parent"}]
    assert events[-1].resource["work_pool"] == "pool-a"
    unsent = dict((e.id, key) for e, key in await service.unsent_events(100))
    assert unsent[events[-1].id] == "flow-run.etl.Completed"


async def test_state_and_event_commit_together(service: EngineService) -> None:
    """If the outbox insert fails, the state change is rolled back with it."""
    run = await service.create_flow_run("etl", state=Running())
    async with service.engine.begin() as conn:
        if conn.dialect.name == "sqlite":
            await conn.exec_driver_sql(
                "CREATE TRIGGER refuse_completed BEFORE INSERT ON events "
                "WHEN NEW.event = 'flow-run.Completed' BEGIN SELECT RAISE(ABORT, 'injected'); END"
            )
        else:
            await conn.execute(
                text(
                    "CREATE FUNCTION refuse_completed() RETURNS trigger AS $$ BEGIN "
                    "IF NEW.event = 'flow-run.Completed' THEN RAISE EXCEPTION 'injected'; END IF; "
                    "RETURN NEW; END $$ LANGUAGE plpgsql"
                )
            )
            await conn.execute(
                text(
                    "CREATE TRIGGER refuse_completed BEFORE INSERT ON events "
                    "FOR EACH ROW EXECUTE FUNCTION refuse_completed()"
                )
            )

    with pytest.raises(DBAPIError, match="injected"):
        await service.set_flow_run_state(run.id, completed(1))

    after = await service.read_flow_run(run.id)
    assert after.state.name == "Running" and after.result is None
    assert [s.name for s in await service.read_flow_run_states(run.id)] == ["Running"]
    assert [e.event for e in await service.read_events()] == ["flow-run.Running"]


async def test_unsent_and_mark_sent(service: EngineService) -> None:
    run = await service.create_flow_run("etl")
    await service.set_flow_run_state(run.id, Running())
    custom = Event(event="batch.ready", resource={"id": "batch/7"}, payload={"rows": 3})
    await service.emit_event(custom)
    await service.emit_event(custom)  # same id: stored once

    unsent = await service.unsent_events(10)
    assert [(e.event, key) for e, key in unsent] == [
        ("flow-run.Pending", "flow-run.etl.Pending"),
        ("flow-run.Running", "flow-run.etl.Running"),
        ("batch.ready", "batch.ready"),
    ]
    assert unsent[2][0] == custom

    await service.mark_sent([unsent[0][0].id, unsent[2][0].id])

    assert [e.event for e, _ in await service.unsent_events(10)] == ["flow-run.Running"]
    assert len(await service.read_events()) == 3
    assert await service.read_events("batch/7") == [custom]


# --- task runs and logs ------------------------------------------------------------------------
async def test_task_runs(service: EngineService) -> None:
    run = await service.create_flow_run("etl", state=Running())
    child = await service.create_flow_run("sub")
    chosen = uuid.uuid4()

    task = await service.create_task_run(
        run.id, "load-0", "load", dynamic_key="0", parameters={"x": object()}, id=chosen
    )
    again = await service.create_task_run(run.id, "load-0", "load", id=chosen)
    other = await service.create_task_run(run.id, "load-1", "load", dynamic_key="1")
    await service.set_task_run_state(task.id, Running())
    done = await service.set_task_run_state(task.id, completed(42, child_flow_run_id=child.id))
    rejected = await service.set_task_run_state(task.id, Running())

    assert task.id == chosen and again == task
    assert task.parameters["x"].startswith("<object object")
    assert done.accepted and rejected.status == "REJECT"
    tasks = await service.read_task_runs(run.id)
    assert [t.id for t in tasks] == [chosen, other.id]
    assert tasks[0].result == 42 and tasks[0].run_count == 1
    assert tasks[0].child_flow_run_id == child.id
    assert tasks[0].state.details.task_run_id == chosen
    states = await service.read_task_run_states(task.id)
    assert [s.name for s in states] == ["Pending", "Running", "Completed"]
    events = await service.read_events(f"task-run/{task.id}")
    assert [e.event for e in events] == [
        "task-run.Pending",
        "task-run.Running",
        "task-run.Completed",
    ]
    assert [e.follows for e in events[1:]] == [events[0].id, events[1].id]
    assert events[-1].payload["result"] == 42
    assert {"id": f"flow-run/{run.id}", "role": "flow-run", "name": run.name} in events[-1].related
    unsent_keys = [key for _, key in await service.unsent_events(100)]
    assert "task-run.etl.Completed" in unsent_keys
    with pytest.raises(ObjectNotFound, match="task run"):
        await service.set_task_run_state(uuid.uuid4(), Running())
    with pytest.raises(ObjectNotFound, match="flow run"):
        await service.create_task_run(uuid.uuid4(), "t", "t")


async def test_concurrent_task_run_creates_with_one_id(service: EngineService) -> None:
    run = await service.create_flow_run("etl")
    chosen = uuid.uuid4()
    tasks = await asyncio.gather(
        *(service.create_task_run(run.id, "t", "t", id=chosen) for _ in range(10))
    )
    assert {t.id for t in tasks} == {chosen}
    assert len(await service.read_task_run_states(chosen)) == 1


async def test_logs(service: EngineService) -> None:
    run = await service.create_flow_run("etl")
    t0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    records = [
        LogRecord(
            flow_run_id=run.id,
            message=f"line {i}",
            level=10 * (i % 5),
            timestamp=t0 + dt.timedelta(seconds=i),
        )
        for i in range(30)
    ]
    await service.write_logs(list(reversed(records)))
    await service.write_logs([LogRecord(flow_run_id=uuid.uuid4(), message="elsewhere")])
    await service.write_logs([])

    assert await service.read_logs(run.id) == records
    assert await service.read_logs(run.id, limit=5) == records[:5]


async def test_not_started_service_says_so(db_url: str) -> None:
    svc = EngineService(db_url)
    with pytest.raises(RuntimeError, match="start"):
        await svc.read_flow_runs()
    await svc.close()


async def test_a_final_state_resent_with_its_logs_is_accepted_once(service: EngineService) -> None:
    # Given a run whose final state (with its last logs) was committed but whose reply was lost
    run = await service.create_flow_run("etl", {})
    await service.set_flow_run_state(run.id, Running())
    logs = [LogRecord(flow_run_id=run.id, message="done", level=20)]
    await service.set_flow_run_state(run.id, completed(), logs=logs)
    # When the worker sends the same state and logs again
    again = await service.set_flow_run_state(run.id, completed(), logs=logs)
    # Then it is answered, and the logs are stored once
    assert again.state is not None and again.state.name == "Completed"
    assert [r.message for r in await service.read_logs(run.id)] == ["done"]
