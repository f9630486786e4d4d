"""The scheduler on SQLite and PostgreSQL, its clock moved by hand: runs made ahead, one run
per slot across restarts and replicas, Late, catch-up after an outage, pause and resume."""

from __future__ import annotations

import asyncio
import datetime as dt

import pytest

from engine.scheduler.store import run_key
from engine.service import EngineService
from engine.states import Running
from tests.scheduler.conftest import Clock, live, scheduled_runs

HOURLY = {"cron": "0 * * * *"}


async def test_runs_are_made_ahead_with_keys_parameters_and_cause(service, deploy, schedulers, clock: Clock) -> None:
    # Given a deployment with an hourly schedule that overrides a parameter
    await deploy(schedules=[{**HOURLY, "parameters": {"full": True}}])
    # When a scheduler starts at 00:10
    clock.advance(minutes=10)
    scheduler = await schedulers()
    # Then the next three slots have Scheduled runs, with their time, key, parameters and cause
    runs = await scheduled_runs(service)
    assert [run.expected_start_time for run in runs] == [clock.at(hours=h) for h in (1, 2, 3)]
    assert {run.state_name for run in runs} == {"Scheduled"}
    [sid] = {run.caused_by["schedule"] for run in runs}
    first = runs[0]
    assert first.idempotency_key == f"schedule:etl/nightly:{sid}:{clock.at(hours=1):%Y-%m-%dT%H:%M:%SZ}"
    assert first.state.details.scheduled_time == clock.at(hours=1)
    assert first.parameters == {"region": "eu", "full": True}
    assert first.caused_by == {"schedule": sid, "slot": f"{clock.at(hours=1):%Y-%m-%dT%H:%M:%SZ}"}
    # When the clock passes 01:00, one more run is made ahead
    clock.advance(hours=1)
    assert await scheduler.run_due() >= 1
    runs = await scheduled_runs(service)
    assert [run.expected_start_time for run in runs] == [clock.at(hours=h) for h in (1, 2, 3, 4)]


async def test_a_restart_makes_no_second_run(service, deploy, schedulers, clock: Clock) -> None:
    await deploy(schedules=[HOURLY, {"interval": "30m"}])
    clock.advance(minutes=10)
    first = await schedulers()
    before = await scheduled_runs(service)
    await first.stop()
    # When another scheduler starts on the same database (a restart)
    await schedulers()
    after = await scheduled_runs(service)
    # Then it found the runs instead of making new ones
    assert [run.id for run in after] == [run.id for run in before]
    assert len(before) == 6


async def test_late_runs_go_late_and_stay_runnable(service: EngineService, deploy, schedulers, clock: Clock) -> None:
    await deploy(schedules=[HOURLY])
    scheduler = await schedulers(late_after=60)
    # Given the 01:00 run was never claimed (no worker) and another was claimed in time
    runs = await scheduled_runs(service)
    await service.set_flow_run_state(runs[1].id, Running(worker_id="w1"))
    # When the clock passes 02:01 (the grace is 60 s)
    clock.advance(hours=2, minutes=1, seconds=1)
    await scheduler.run_due()
    # Then the unclaimed one is Late (still a Scheduled type: a worker may take it), the other not
    runs = {run.id: run for run in await scheduled_runs(service)}
    late = runs[[*runs][0]]
    assert late.state_name == "Late" and late.state.type.value == "SCHEDULED"
    assert "not started 60 s after its scheduled time" in late.state.message
    assert late.state.details.scheduled_time == clock.at(hours=1)
    assert runs[[*runs][1]].state_name == "Running"
    assert await service.due_runs()  # still handed to the pool by the dispatch timer
    result = await service.set_flow_run_state(late.id, Running(worker_id="w2"))
    assert result.accepted


@pytest.mark.parametrize(
    ("policy", "runs_for_missed_slots"),
    [("skip", []), ("latest", [3]), ("all", [1, 2, 3])],
)
async def test_catchup_after_a_three_hour_outage(service, deploy, schedulers, clock: Clock, policy, runs_for_missed_slots) -> None:
    # Given an hourly schedule, runs made one slot ahead, and the scheduler down from 00:10 to 03:10
    await deploy(schedules=[{**HOURLY, "catchup": policy}])
    clock.advance(minutes=10)
    before = await schedulers(runs_ahead=1)
    await before.stop()
    clock.advance(hours=3)
    # When it starts again (and takes its first step)
    after = await schedulers(runs_ahead=1)
    await after.run_due()
    # Then the missed slots 01:00, 02:00, 03:00 run as the policy says, the next one is made
    runs = await scheduled_runs(service)
    alive = {run.expected_start_time: run for run in live(runs)}
    missed = [h for h in (1, 2, 3) if clock.at(hours=h) in alive]
    assert missed == runs_for_missed_slots
    assert clock.at(hours=4) in alive
    # and every missed slot that does not run is Cancelled, saying why
    for run in runs:
        if run.state_name == "Cancelled":
            assert run.state.message == f"slot missed while no scheduler ran (catchup: {policy})"
    # and no slot has two live runs
    assert len(alive) == len(live(runs))
    # Missed runs that run are Late at once (they are past the grace)
    assert {alive[clock.at(hours=h)].state_name for h in runs_for_missed_slots} <= {"Late"}


async def test_pausing_the_deployment_cancels_its_pending_runs_and_resuming_makes_them(service: EngineService, deploy, schedulers, clock: Clock) -> None:
    await deploy(schedules=[HOURLY])
    scheduler = await schedulers()
    made = await scheduled_runs(service)
    # When the deployment is paused
    await service.set_deployment_paused("etl/nightly", True)
    scheduler.changed("etl/nightly")  # (the server learns it from the deployment.paused event)
    await scheduler.run_due()
    # Then its pending runs are Cancelled with a message, and no slot makes a run while paused
    runs = await scheduled_runs(service)
    assert {run.state_name for run in runs} == {"Cancelled"}
    assert {run.state.message for run in runs} == {"deployment 'etl/nightly' paused"}
    clock.advance(hours=5)
    await scheduler.run_due()
    assert live(await scheduled_runs(service)) == []
    # When it is resumed, the next slots have runs again, under their usual keys
    await service.set_deployment_paused("etl/nightly", False)
    scheduler.changed("etl/nightly")
    await scheduler.run_due()
    alive = live(await scheduled_runs(service))
    assert [run.expected_start_time for run in alive] == [clock.at(hours=h) for h in (6, 7, 8)]
    assert all(run.idempotency_key == run_key("etl/nightly", run.caused_by["schedule"], run.expected_start_time)
               for run in alive)
    assert {run.id for run in alive}.isdisjoint({run.id for run in made})


async def test_pausing_one_schedule(service: EngineService, deploy, schedulers, clock: Clock) -> None:
    await deploy(schedules=[{**HOURLY, "id": "hourly"}, {"interval": "30m", "id": "often"}])
    scheduler = await schedulers()
    # When one schedule is paused (by id)
    answer = await scheduler.set_schedule_active("etl/nightly", False, "often")
    await scheduler.run_due()
    assert answer["changed"] == ["often"]
    runs = await scheduled_runs(service)
    by_schedule = {sid: [run.state_name for run in runs if run.caused_by["schedule"] == sid] for sid in ("hourly", "often")}
    assert by_schedule == {"hourly": ["Scheduled"] * 3, "often": ["Cancelled"] * 3}
    dep = await service.read_deployment("etl/nightly")
    assert [s["active"] for s in dep.schedules] == [True, False]
    assert "schedule paused on deployment 'etl/nightly'" in {run.state.message for run in runs}
    # When it is resumed (by position), it makes its runs again
    await scheduler.set_schedule_active("etl/nightly", True, "2")
    await scheduler.run_due()
    alive = live(await scheduled_runs(service))
    assert sorted(run.caused_by["schedule"] for run in alive) == ["hourly"] * 3 + ["often"] * 3
    # An unknown schedule says which ones exist
    from engine.errors import ObjectNotFound

    with pytest.raises(ObjectNotFound, match="has no schedule 'nope' .*hourly, often"):
        await scheduler.set_schedule_active("etl/nightly", False, "nope")


async def test_a_changed_schedule_replaces_the_old_ones_runs(service, deploy, schedulers, clock: Clock) -> None:
    await deploy(schedules=[HOURLY])
    scheduler = await schedulers()
    old = await scheduled_runs(service)
    # When the deployment is registered again with a daily schedule instead
    await deploy(schedules=[{"cron": "30 9 * * *", "timezone": "America/New_York"}])
    scheduler.changed("etl/nightly")
    await scheduler.run_due()
    runs = await scheduled_runs(service)
    assert {run.state_name for run in runs if run.id in {o.id for o in old}} == {"Cancelled"}
    alive = live(runs)
    assert len(alive) == 3
    assert [run.expected_start_time.astimezone(dt.UTC).hour for run in alive] in ([13] * 3, [14] * 3)


@pytest.mark.postgres
@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)
async def test_two_schedulers_on_one_postgresql_database_make_one_run_per_slot(db_url: str, deploy, schedulers, clock: Clock) -> None:
    # Given two servers' engine services on one database, each with its scheduler
    other = await EngineService.open(db_url)
    try:
        for i in range(5):
            await deploy(f"d{i}", schedules=[{"interval": "10m"}, {"cron": "*/15 * * * *", "catchup": "all"}])
        one, two = await asyncio.gather(schedulers(), schedulers(other))
        # When both follow the schedules for two hours, stepping at the same moments
        for _ in range(12):
            clock.advance(minutes=10)
            await asyncio.gather(one.run_due(), two.run_due())
        # Then every slot has exactly one run
        runs = []
        for i in range(5):
            runs += await scheduled_runs(other, f"etl/d{i}")
        keys = [run.idempotency_key for run in runs]
        assert len(keys) == len(set(keys))
        slots = [(run.deployment_name, run.caused_by["schedule"], run.expected_start_time) for run in runs]
        assert len(slots) == len(set(slots))
        # 10-minute slots 00:10 ... 02:40 (the clock ends at 02:10, 3 ahead) and 15-minute
        # ones 00:15 ... 02:45
        assert len(runs) == 5 * (16 + 11)
        assert {run.state_name for run in runs} <= {"Scheduled", "Late"}
    finally:
        await other.close()


async def test_schedules_are_shared_by_owner_and_taken_over_with_catch_up(service, deploy, schedulers, clock: Clock) -> None:
    # Given two servers' schedulers that each own half the deployments (their leases)
    for i in range(4):
        await deploy(f"d{i}", schedules=[{**HOURLY, "catchup": "all"}])
    owner = {f"etl/d{i}": ("one" if i % 2 else "two") for i in range(4)}
    alive = {"one", "two"}

    def owns(me: str):  # noqa: ANN202
        return lambda name: owner[name] == me and me in alive

    one = await schedulers(owns=owns("one"))
    two = await schedulers(owns=owns("two"))
    # Then each made the runs of its own deployments only
    assert one.schedules == 2 and two.schedules == 2
    for i in range(4):
        assert len(await scheduled_runs(service, f"etl/d{i}")) == 3
    # When "two" dies and "one" takes its partitions over three hours later
    alive.discard("two")
    for name in owner:
        owner[name] = "one"
    clock.advance(hours=3)
    one.rebalance()
    await one.run_due()
    # Then "one" follows all four, and caught up the dead owner's missed slots (catchup: all)
    assert one.schedules == 4
    for i in range(4):
        runs = live(await scheduled_runs(service, f"etl/d{i}"))
        slots = [run.expected_start_time for run in runs]
        assert slots == sorted(set(slots))  # one run per slot
        assert slots[:3] == [clock.at(hours=h) for h in (1, 2, 3)]
        assert clock.at(hours=6) in slots
    # And a server that lost a partition forgets its schedules
    owner["etl/d0"] = "nobody"
    one.rebalance()
    await one.run_due()
    assert one.schedules == 3
