"""Fixtures for the database tests: a started `EngineService` on each database of `db_url`."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from engine.service import EngineService


@pytest.fixture
async def service(db_url: str) -> AsyncIterator[EngineService]:
    svc = await EngineService.open(db_url)
    try:
        yield svc
    finally:
        await svc.close()
