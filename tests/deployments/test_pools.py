"""Work pools as things one can see and limit: a pool's concurrency limit across its
deployments (runs wait for a slot without polling and go as slots free up), the pool and worker
views, and the "no live worker" flag — on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from typing import Any

import pytest

from engine.errors import ConfigError
from engine.service import EngineService
from engine.states import Cancelled, utcnow
from tests.deployments.test_service_deployments import dispatches, finish, states


async def test_a_pool_limit_holds_runs_of_every_deployment_and_a_finish_frees_the_oldest(
    service: EngineService, deploy: Any
) -> None:
    await deploy("a")
    await deploy("b")
    pool = await service.set_work_pool_concurrency("pool-a", 2)
    assert pool.concurrency_limit == 2
    runs = [await service.create_deployment_run(f"etl/{'ab'[i % 2]}") for i in range(6)]

    assert await states(service, runs) == ["Scheduled"] * 2 + ["AwaitingConcurrencySlot"] * 4
    waiting = await service.read_flow_run(runs[2].id)
    assert waiting.state is not None
    assert waiting.state.message == "work pool 'pool-a' is at its concurrency limit (2)"
    assert [len(await dispatches(service, r.id)) for r in runs] == [1, 1, 0, 0, 0, 0]
    view = await service.read_work_pool("pool-a")
    assert view.runs == {"Scheduled": 2, "AwaitingConcurrencySlot": 4}

    await finish(service, runs[0])
    assert await states(service, runs) == [
        "Completed", "Scheduled", "Scheduled", "AwaitingConcurrencySlot",
        "AwaitingConcurrencySlot", "AwaitingConcurrencySlot"]
    await service.set_flow_run_state(runs[1].id, Cancelled())  # dispatched, unclaimed: a slot too
    assert (await states(service, runs))[3] == "Scheduled"

    cleared = await service.set_work_pool_concurrency("pool-a", None)  # the rest go at once
    assert cleared.concurrency_limit is None
    assert await states(service, runs) == ["Completed", "Cancelled"] + ["Scheduled"] * 4
    assert len(await dispatches(service)) == 6


async def test_concurrent_finishes_never_exceed_the_pool_limit(
    service: EngineService, deploy: Any
) -> None:
    await deploy("a")
    await deploy("b", concurrency_limit=5)  # the pool's limit binds first
    await service.set_work_pool_concurrency("pool-a", 2)
    runs = [await service.create_deployment_run(f"etl/{'ab'[i % 2]}") for i in range(8)]
    finished: set[uuid.UUID] = set()
    while len(finished) < len(runs):
        held = [r for r in runs if r.id not in finished and await dispatches(service, r.id)]
        assert 1 <= len(held) <= 2
        await asyncio.gather(*(finish(service, r, worker=f"w-{r.id}") for r in held))
        finished.update(r.id for r in held)
    assert set(await states(service, runs)) == {"Completed"}


async def test_a_deployment_limit_still_binds_inside_a_roomier_pool(
    service: EngineService, deploy: Any
) -> None:
    await deploy("a", concurrency_limit=1)
    await service.set_work_pool_concurrency("pool-a", 5)
    runs = [await service.create_deployment_run("etl/a") for _ in range(3)]
    assert await states(service, runs) == ["Scheduled", "AwaitingConcurrencySlot", "AwaitingConcurrencySlot"]
    run = await service.read_flow_run(runs[1].id)
    assert run.state is not None and "deployment 'etl/a' is at its concurrency limit (1)" in str(run.state.message)
    await service.set_work_pool_concurrency("pool-a", 10)  # the pool frees nobody the deployment holds
    assert await states(service, runs) == ["Scheduled", "AwaitingConcurrencySlot", "AwaitingConcurrencySlot"]


async def test_bad_pool_limits_are_refused(service: EngineService) -> None:
    with pytest.raises(ConfigError, match="at least 1"):
        await service.set_work_pool_concurrency("pool-a", 0)
    with pytest.raises(ConfigError, match="a pool name is letters"):
        await service.set_work_pool_concurrency("bad name/", 2)


async def test_pools_and_workers_tell_the_truth_and_flag_a_run_without_a_worker(
    service: EngineService, deploy: Any
) -> None:
    service.heartbeat_timeout = 5.0
    await deploy("a")
    await deploy("lonely", work_pool="empty-pool")
    now = utcnow()
    await service.record_heartbeat("w1", "pool-a", [], info={"concurrency": 4, "code": ["sha256:ab"]})
    await service.record_heartbeat("old", "pool-a", [], at=now - dt.timedelta(seconds=60))
    due = await service.create_deployment_run("etl/lonely")
    fresh = await service.create_deployment_run("etl/a")

    pools = {p.name: p for p in await service.read_work_pools()}
    assert set(pools) == {"pool-a", "empty-pool"}
    assert pools["pool-a"].live_workers == 1 and len(pools["pool-a"].workers) == 2
    workers = {w.id: w for w in await service.read_workers()}
    assert workers["w1"].alive and workers["w1"].concurrency == 4 and workers["w1"].code == ["sha256:ab"]
    assert not workers["old"].alive
    empty = pools["empty-pool"]
    assert empty.live_workers == 0 and empty.waiting_without_worker == 0  # not yet: within the timeout

    run = await service.read_flow_run(due.id)
    later = utcnow() + dt.timedelta(seconds=6)
    reason = empty.waiting_reason(run, later)
    assert reason is not None and reason.startswith("waiting: no live worker on pool empty-pool")
    assert "flowrelay worker --pool empty-pool" in reason
    assert empty.waiting_reason(run, utcnow()) is None  # not flagged within one timeout
    other = await service.read_flow_run(fresh.id)
    assert pools["pool-a"].waiting_reason(other, later) is None  # its pool has a live worker

    # a future run is not waiting for a worker yet
    future = await service.create_deployment_run("etl/lonely", scheduled_time=utcnow() + dt.timedelta(hours=1))
    assert empty.waiting_reason(await service.read_flow_run(future.id), later) is None
