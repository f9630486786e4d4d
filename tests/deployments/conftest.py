"""Fixtures for the deployment tests: a started `EngineService` on each database of `db_url`,
and a helper to register deployments without loading flow code."""

from __future__ import annotations

import json
import logging
import sys
import textwrap
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import structlog

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


# --- CLI (as in tests/cli/conftest.py) -----------------------------------------------------------
@dataclass
class Result:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Any:
    """`cli("deploy", ...)` runs the CLI in this process, through `run_cli`'s error handling."""
    from engine.cli import run_cli

    def invoke(*args: str) -> Result:
        capsys.readouterr()
        code = run_cli(list(args))
        captured = capsys.readouterr()
        return Result(code, captured.out, captured.err)

    return invoke


@pytest.fixture
def write(tmp_path: Path) -> Any:
    """`write("flows.py", source)` creates a file under the test's directory (the cwd)."""

    def _write(name: str, source: str) -> Path:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(source).lstrip(), encoding="utf-8")
        return path

    return _write


@pytest.fixture
def restore_process_state(tmp_path: Path) -> Iterator[None]:
    """The CLI configures logging and imports flow files: undo both after the test."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    path = sys.path[:]
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    structlog.reset_defaults()
    structlog.contextvars.clear_contextvars()
    sys.path[:] = path
    for name, module in list(sys.modules.items()):
        file = getattr(module, "__file__", None) or ""
        if file.startswith(str(tmp_path)):
            del sys.modules[name]
