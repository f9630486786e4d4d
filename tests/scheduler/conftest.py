"""Fixtures: a started `EngineService` on each database of `db_url`, a clock tests move by
hand, and schedulers on that clock (started without their background task: tests call
`run_due()`)."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from typing import Any

import pytest

from engine.scheduler.service import Scheduler
from engine.schemas import Deployment, DeploymentSpec, FlowRun, FlowRunFilter
from engine.service import EngineService
from engine.states import utcnow


class Clock:
    """Starts tomorrow at 00:10 UTC, so every slot is in the engine's future: runs made for
    it wait for the dispatch timer (which these tests don't run) instead of being dispatched."""

    def __init__(self) -> None:
        start = utcnow() + dt.timedelta(days=1)
        self.now = start.replace(hour=0, minute=10, second=0, microsecond=0)

    def __call__(self) -> dt.datetime:
        return self.now

    def advance(self, **delta: float) -> dt.datetime:
        self.now += dt.timedelta(**delta)
        return self.now

    def at(self, **delta: float) -> dt.datetime:
        """The start day plus `delta` (hours=9, minutes=30)."""
        return self.now.replace(hour=0, minute=0, second=0, microsecond=0) + dt.timedelta(**delta)


@pytest.fixture
async def service(db_url: str) -> AsyncIterator[EngineService]:
    svc = await EngineService.open(db_url)
    try:
        yield svc
    finally:
        await svc.close()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def schedulers(service: EngineService, clock: Clock) -> AsyncIterator[Any]:
    """`await schedulers()` starts a scheduler on `service` (or another service) and the clock."""
    made: list[Scheduler] = []

    async def start(svc: EngineService | None = None, **options: Any) -> Scheduler:
        options.setdefault("late_after", 15)
        options.setdefault("runs_ahead", 3)
        scheduler = Scheduler(svc or service, clock=clock, **options)
        await scheduler.start(background=False)
        made.append(scheduler)
        return scheduler

    yield start
    for scheduler in made:
        await scheduler.stop()


@pytest.fixture
def deploy(service: EngineService) -> Any:
    """`await deploy(schedules=[...])` registers deployment ``etl/nightly``."""

    async def _deploy(name: str = "nightly", **fields: Any) -> Deployment:
        spec = {"flow_name": "etl", "entrypoint": "flows/etl.py:etl", "work_pool": "pool-a",
                "parameters": {"region": "eu"}}
        spec.update(fields)
        return await service.register_deployment(DeploymentSpec(name=name, **spec))

    return _deploy


async def scheduled_runs(service: EngineService, deployment: str = "etl/nightly") -> list[FlowRun]:
    """The deployment's runs made by schedules, by slot."""
    runs = await service.read_flow_runs(FlowRunFilter(deployment_name=deployment, limit=10_000))
    mine = [run for run in runs if run.caused_by and "schedule" in run.caused_by]
    return sorted(mine, key=lambda run: (run.expected_start_time, run.created))


def live(runs: list[FlowRun]) -> list[FlowRun]:
    return [run for run in runs if run.state_name != "Cancelled"]
