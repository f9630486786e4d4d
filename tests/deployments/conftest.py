"""Fixtures for the deployment tests: a started `EngineService` on each database of `db_url`,
and a helper to register deployments without loading flow code."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from engine.schemas import Deployment, DeploymentSpec
from engine.service import EngineService


@pytest.fixture
async def service(db_url: str) -> AsyncIterator[EngineService]:
    svc = await EngineService.open(db_url)
    try:
        yield svc
    finally:
        await svc.close()


@pytest.fixture
def deploy(service: EngineService) -> Any:
    """`await deploy("nightly", concurrency_limit=1)` registers deployment ``etl/<name>``."""

    async def _deploy(name: str = "nightly", **fields: Any) -> Deployment:
        spec = {"flow_name": "etl", "entrypoint": "flows/etl.py:etl", "work_pool": "pool-a"}
        spec.update(fields)
        return await service.register_deployment(DeploymentSpec(name=name, **spec))

    return _deploy
