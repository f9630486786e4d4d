"""Lost workers, judged from heartbeats shared by every server on the database (each test runs on
SQLite and PostgreSQL, with two engine services standing for two servers; the monitors' clock is
injected, so "silent for the timeout" is a clock jump, not a sleep)."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from collections.abc import AsyncIterator, Callable

import pytest
from sqlalchemy import select

from engine.db.models import EventRow
from engine.schemas import DeploymentSpec, FlowRun
from engine.server.heartbeats import HeartbeatMonitor
from engine.service import EngineService
from engine.states import Completed, Crashed, Pending, Running, State, utcnow

TIMEOUT = 30.0


class Clock:
    def __init__(self) -> None:
        self.offset = dt.timedelta()

    def __call__(self) -> dt.datetime:
        return utcnow() + self.offset

    def jump(self, seconds: float) -> None:
        self.offset += dt.timedelta(seconds=seconds)


@pytest.fixture
async def services(db_url: str) -> AsyncIterator[tuple[EngineService, EngineService]]:
    a, b = await EngineService.open(db_url), await EngineService.open(db_url)
    try:
        yield a, b
    finally:
        await a.close()
        await b.close()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def monitors(
    services: tuple[EngineService, EngineService], clock: Clock
) -> tuple[HeartbeatMonitor, HeartbeatMonitor]:
    a, b = services
    return (HeartbeatMonitor(a, timeout=TIMEOUT, clock=clock),
            HeartbeatMonitor(b, timeout=TIMEOUT, clock=clock))


async def deployment_run(svc: EngineService) -> FlowRun:
    await svc.register_deployment(DeploymentSpec(
        name="nightly", flow_name="etl", entrypoint="flows/etl.py:etl", work_pool="pool-a"))
    return await svc.create_deployment_run("etl/nightly")


async def events(svc: EngineService, name: str, resource: str) -> list[EventRow]:
    query = select(EventRow).where(EventRow.event == name, EventRow.resource_id == resource)
    async with svc.read_session() as session:
        return list(await session.scalars(query.order_by(EventRow.position)))


async def test_a_worker_heard_by_one_server_is_alive_for_the_other(
    services: tuple[EngineService, EngineService],
    monitors: tuple[HeartbeatMonitor, HeartbeatMonitor],
    clock: Clock,
) -> None:
    # Given a worker running a run, whose heartbeats all reach server A
    a, b = services
    mon_a, mon_b = monitors
    run = await deployment_run(a)
    await a.set_flow_run_state(run.id, Pending(worker_id="w-1"))
    await a.set_flow_run_state(run.id, Running(worker_id="w-1", flow_retries=0))

    # When it keeps beating to A, for several timeouts, and B checks each time
    for _ in range(4):
        await mon_a.beat("w-1", "pool-a", [str(run.id)])
        clock.jump(TIMEOUT * 0.75)
        await mon_b.check()
        await mon_a.check()

    # Then neither server took it for lost
    read = await b.read_flow_run(run.id)
    assert read.state_name == "Running"
    assert await events(a, "worker.lost", "worker/w-1") == []

    # When it falls silent (to every server) for the timeout
    clock.jump(TIMEOUT)
    await mon_b.check()
    await mon_a.check()

    # Then its run is Crashed once, by one of them, and one worker.lost event says so
    read = await a.read_flow_run(run.id)
    assert read.state_name == "Crashed" and "w-1" in (read.state.message or "")
    lost = await events(a, "worker.lost", "worker/w-1")
    assert len(lost) == 1 and lost[0].payload["runs"] == [str(run.id)]
    history = [s.name for s in await a.read_flow_run_states(run.id)]
    assert history.count("Crashed") == 1


async def test_a_worker_heard_again_is_not_reaped(
    services: tuple[EngineService, EngineService],
) -> None:
    # Given a worker that looked silent to server B when B read the heartbeats
    a, b = services
    run = await deployment_run(a)
    await a.set_flow_run_state(run.id, Pending(worker_id="w-1"))
    await a.set_flow_run_state(run.id, Running(worker_id="w-1"))
    await a.record_heartbeat("w-1", "pool-a")
    await asyncio.sleep(0.01)
    cutoff = utcnow()
    assert [w for w, _ in await b.silent_workers(cutoff)] == ["w-1"]

    # When A hears it again before B reaps it
    await asyncio.sleep(0.01)
    await a.record_heartbeat("w-1", "pool-a")

    # Then B's reaping finds it alive and does nothing
    assert await b.reap_lost_worker("w-1", cutoff, "test") is None
    assert (await b.read_flow_run(run.id)).state_name == "Running"


async def test_a_run_whose_worker_died_before_running_it_is_scheduled_again(
    services: tuple[EngineService, EngineService],
    monitors: tuple[HeartbeatMonitor, HeartbeatMonitor],
    clock: Clock,
) -> None:
    # Given a deployment run claimed by worker w-1 (Pending), which died before the child's
    # Running (the only state that carries the flow's retry settings)
    a, b = services
    mon_a, mon_b = monitors
    run = await deployment_run(a)
    await mon_a.beat("w-1", "pool-a", [])
    assert (await a.set_flow_run_state(run.id, Pending(worker_id="w-1"))).accepted

    # When no server hears w-1 for the timeout
    clock.jump(TIMEOUT + 1)
    await mon_b.check()
    await mon_a.check()

    # Then the run is Scheduled again, with a message, dispatched to its pool again, no retry used
    read = await a.read_flow_run(run.id)
    assert read.state_name == "Scheduled" and read.run_count == 0
    assert "w-1" in (read.state.message or "") and "no retry used" in (read.state.message or "")
    history = [s.name for s in await a.read_flow_run_states(run.id)]
    assert history == ["Scheduled", "Pending", "Scheduled"]
    assert len(await events(a, "flow-run.dispatched", f"flow-run/{run.id}")) == 2
    assert len(await events(a, "worker.lost", "worker/w-1")) == 1

    # And a late Running from the lost worker (its child may still be alive) is rejected,
    late = await b.set_flow_run_state(run.id, Running(worker_id="w-1"))
    assert late.status == "REJECT" and "claimed again" in (late.reason or "")
    # while another worker claims it and runs it to the end
    for state in (Pending(worker_id="w-2"), Running(worker_id="w-2"), Completed()):
        assert (await b.set_flow_run_state(run.id, state)).accepted
    again = await a.set_flow_run_state(run.id, Running(worker_id="w-1"))
    assert again.status == "REJECT"
    assert (await a.read_flow_run(run.id)).state_name == "Completed"


async def test_a_restarted_monitor_gives_holders_never_heard_one_timeout(
    services: tuple[EngineService, EngineService], clock: Clock
) -> None:
    # Given a run held by a worker no server has a heartbeat of (recorded by an older version)
    a, _ = services
    run = await deployment_run(a)
    await a.set_flow_run_state(run.id, Pending(worker_id="w-old"))
    await a.set_flow_run_state(run.id, Running(worker_id="w-old"))
    monitor = HeartbeatMonitor(a, timeout=TIMEOUT, clock=clock)

    # When the monitor starts, then checks within the timeout, then after it
    await monitor.start()
    try:
        await monitor.check()
        assert (await a.read_flow_run(run.id)).state_name == "Running"
        clock.jump(TIMEOUT + 1)
        await monitor.check()
    finally:
        await monitor.stop()

    # Then the run is crashed only once the worker had its full timeout
    assert (await a.read_flow_run(run.id)).state_name == "Crashed"


async def two_runs_of_w1(svc: EngineService, *states: Callable[..., State]) -> tuple[FlowRun, FlowRun]:
    """Two deployment runs taken through `states` by worker w-1."""
    runs = await deployment_run(svc), await svc.create_deployment_run("etl/nightly")
    for run in runs:
        for make in states:
            assert (await svc.set_flow_run_state(run.id, make(worker_id="w-1"))).accepted
    return runs


async def beat_listing(
    held: FlowRun, monitors: tuple[HeartbeatMonitor, HeartbeatMonitor], clock: Clock,
    *, rounds: int, jump: float = 0.75,
) -> None:
    """`rounds` times: w-1 beats (to one server) listing only `held`, the clock moves `jump`
    timeouts on, the other server checks."""
    mon_a, mon_b = monitors
    for _ in range(rounds):
        await mon_a.beat("w-1", "pool-a", [str(held.id)])
        clock.jump(TIMEOUT * jump)
        await mon_b.check()


async def test_a_claim_its_live_worker_never_learnt_of_is_scheduled_again(
    services: tuple[EngineService, EngineService],
    monitors: tuple[HeartbeatMonitor, HeartbeatMonitor],
    clock: Clock,
) -> None:
    # Given two runs claimed by worker w-1: it runs one; the other's claim was committed but its
    # answer was lost (a broker connection closed), so w-1 never learnt it holds that run
    a, b = services
    held, orphan = await two_runs_of_w1(a, Pending)

    # When w-1 keeps beating, listing only the run it holds, past the timeout
    await beat_listing(held, monitors, clock, rounds=3)

    # Then the orphaned claim went back to Scheduled and to its pool once; the held run is untouched
    read = await a.read_flow_run(orphan.id)
    assert read.state_name == "Scheduled" and "does not hold" in (read.state.message or "")
    assert [s.name for s in await a.read_flow_run_states(orphan.id)] == ["Scheduled", "Pending", "Scheduled"]
    assert len(await events(a, "flow-run.dispatched", f"flow-run/{orphan.id}")) == 2
    assert (await a.read_flow_run(held.id)).state_name == "Pending"
    # and w-1 cannot start it late; another worker can claim it
    assert (await b.set_flow_run_state(orphan.id, Running(worker_id="w-1"))).status == "REJECT"
    assert (await b.set_flow_run_state(orphan.id, Pending(worker_id="w-2"))).accepted


async def test_a_running_run_its_live_worker_no_longer_holds_is_crashed(
    services: tuple[EngineService, EngineService],
    monitors: tuple[HeartbeatMonitor, HeartbeatMonitor],
    clock: Clock,
) -> None:
    # Given a run Running under worker w-1, which gave up reporting its final state (the engine
    # was unreachable for longer than runtime.report_timeout_seconds) and so dropped it
    a, _ = services
    held, lost = await two_runs_of_w1(a, Pending, Running)

    # When w-1 stays alive, beating without that run, for less than the timeout: nothing yet
    await beat_listing(held, monitors, clock, rounds=1, jump=0.5)
    assert (await a.read_flow_run(lost.id)).state_name == "Running"
    # and past it
    await beat_listing(held, monitors, clock, rounds=2)

    # Then the lost run is Crashed, once, saying why; the held run is untouched
    read = await a.read_flow_run(lost.id)
    assert read.state_name == "Crashed" and "no longer holds" in (read.state.message or "")
    assert [s.name for s in await a.read_flow_run_states(lost.id)] == ["Scheduled", "Pending", "Running", "Crashed"]
    assert (await a.read_flow_run(held.id)).state_name == "Running"


async def test_a_server_that_could_not_hear_judges_nobody(
    services: tuple[EngineService, EngineService], clock: Clock,
) -> None:
    # Given a worker running a run, and a server whose broker connection came back 1 s ago
    # (RabbitMQ restarted: the worker was cut off with it, its heartbeats are on their way)
    a, _ = services
    connected_for = [1.0]
    monitor = HeartbeatMonitor(a, timeout=TIMEOUT, clock=clock, heard_for=lambda: connected_for[0])
    run = await deployment_run(a)
    await a.set_flow_run_state(run.id, Pending(worker_id="w-1"))
    await a.set_flow_run_state(run.id, Running(worker_id="w-1", flow_retries=0))
    await monitor.beat("w-1", "pool-a", [str(run.id)])

    # When the worker has been silent for longer than the timeout, as seen from the database
    clock.jump(TIMEOUT * 2)
    await monitor.check()

    # Then the server judges nobody while it has not been listening for a full timeout
    assert monitor.deaf_checks == 1
    assert (await a.read_flow_run(run.id)).state_name == "Running"
    assert await events(a, "worker.lost", "worker/w-1") == []

    # When it has been connected for a full timeout and the worker is still silent
    connected_for[0] = TIMEOUT
    await monitor.check()

    # Then the worker is lost and its run Crashed
    assert (await a.read_flow_run(run.id)).state_name == "Crashed"


async def test_a_server_that_stalled_judges_nobody_for_one_timeout(
    services: tuple[EngineService, EngineService], clock: Clock
) -> None:
    """Crashed means "the owner is gone", never "I was busy": a server stopped (SIGSTOP, a
    frozen VM, a blocked loop) longer than the timeout wakes to stale heartbeats of healthy
    workers, whose beats are still queued for it."""
    # Given a worker running a run, last heard just before this server stalled for 2 timeouts
    a, _ = services
    run = await deployment_run(a)
    await a.set_flow_run_state(run.id, Pending(worker_id="w-1"))
    await a.set_flow_run_state(run.id, Running(worker_id="w-1"))
    monitor = HeartbeatMonitor(a, timeout=TIMEOUT, clock=clock)
    await monitor.beat("w-1", "pool-a", [str(run.id)])
    clock.jump(TIMEOUT * 2)

    # When it notices its own stall, and checks within one timeout of waking
    monitor.stalled(TIMEOUT * 2)
    await monitor.check()
    clock.jump(TIMEOUT * 0.9)
    await monitor.check()

    # Then nobody was judged
    assert (await a.read_flow_run(run.id)).state_name == "Running"
    assert monitor.stalled_checks == 2

    # And once a full timeout has passed since it woke, with the worker still silent, it is
    clock.jump(TIMEOUT * 0.2)
    await monitor.check()
    assert (await a.read_flow_run(run.id)).state_name == "Crashed"


async def test_a_heartbeat_grants_a_lease_and_revokes_superseded_attempts(
    services: tuple[EngineService, EngineService], clock: Clock
) -> None:
    # Given two runs claimed by w-1 (attempt 1 each); the engine then ended the second's attempt
    a, _ = services
    kept, ended = await deployment_run(a), await a.create_deployment_run("etl/nightly")
    for run in (kept, ended):
        await a.set_flow_run_state(run.id, Pending(worker_id="w-1"))
        await a.set_flow_run_state(run.id, Running(worker_id="w-1", attempt=1))
    await a.set_flow_run_state(ended.id, Crashed(message="cancelled by hand"), force=True)
    monitor = HeartbeatMonitor(a, timeout=TIMEOUT, clock=clock)

    # When w-1 beats, naming both runs with their attempts (and one the engine never saw)
    unknown = uuid.uuid4()
    reply = await monitor.beat("w-1", "pool-a", [str(kept.id), str(ended.id)],
                               {kept.id: 1, ended.id: 1, unknown: 1})

    # Then its lease is 80 % of the timeout and it must stop the ended and the unknown run
    assert reply["lease_seconds"] == pytest.approx(TIMEOUT * 0.8)
    assert sorted(reply["revoked"]) == sorted([str(ended.id), str(unknown)])
