"""Worker fixtures: a real engine service on a temp SQLite file, the in-memory broker, flow files.

The service uses the test's `database.url` (SQLite under the test's FLOWRELAY_HOME), so warm
children started with `LOCAL_API` open the same database through the inherited environment.
"""

from __future__ import annotations

import sys
import textwrap
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog

import engine
from engine.broker import Broker, Names, from_url

# pytest puts tests/ (and this folder) on sys.path, where `workers` is this folder: put the
# project first so `workers` is the package under test, here and in spawned children.
# (A `pythonpath = ["."]` in pytest's settings would make this unnecessary.)
_ROOT = str(Path(engine.__file__).resolve().parent.parent)
if sys.path[:1] != [_ROOT]:
    sys.path.insert(0, _ROOT)
if "workers" in sys.modules and getattr(sys.modules["workers"], "__file__", None) is None:
    del sys.modules["workers"]
from engine.service import EngineService  # noqa: E402
from engine.settings import get_settings  # noqa: E402
from engine.states import Scheduled  # noqa: E402
from workers import Worker, declare_pool, encode_dispatch  # noqa: E402
from workers.child_main import LOCAL_API  # noqa: E402

POOL = "default"

FLOWS = '''
import asyncio
import os
import time

from engine import flow, get_run_logger

with open("imports.log", "a") as log:
    log.write(f"{os.getpid()}\\n")


@flow
def append(tag: str, hold: float = 0.0) -> int:
    time.sleep(hold)
    with open("runs.log", "a") as out:
        out.write(f"{tag} {os.getpid()}\\n")
    get_run_logger().info("appended %s", tag)
    return os.getpid()


@flow(retries=2, retry_delay_seconds=[1, 5])
def die() -> None:
    os._exit(1)


@flow
def nap(seconds: float) -> str:
    time.sleep(seconds)
    return "rested"


@flow
async def async_nap(seconds: float) -> str:
    await asyncio.sleep(seconds)
    return "rested"
'''


@pytest.fixture(autouse=True)
def _forget_flow_modules(tmp_path: Path) -> Iterator[None]:
    path = sys.path[:]
    yield
    sys.path[:] = path
    structlog.contextvars.clear_contextvars()
    for name, module in list(sys.modules.items()):
        if (getattr(module, "__file__", None) or "").startswith(str(tmp_path)):
            del sys.modules[name]


@pytest.fixture
def flows(tmp_path: Path) -> str:
    """Writes flows.py in the test's directory (the cwd); returns its entrypoint prefix."""
    (tmp_path / "flows.py").write_text(textwrap.dedent(FLOWS), encoding="utf-8")
    return "flows.py"


@pytest.fixture
async def service() -> AsyncIterator[EngineService]:
    svc = await EngineService.open(get_settings().database.url)
    yield svc
    await svc.close()


@pytest.fixture
async def broker() -> AsyncIterator[Broker]:
    async with from_url("memory://") as b:
        yield b


Dispatcher = Callable[..., Awaitable[uuid.UUID]]


@pytest.fixture
def dispatch(service: EngineService, broker: Broker) -> Dispatcher:
    """`await dispatch("flows.py:append", tag="a")`: a Scheduled run in the pool, and its dispatch
    message published the way the server's relay does."""

    async def _dispatch(entrypoint: str, *, run_id: uuid.UUID | None = None, names: Names | None = None,
                        code: dict[str, Any] | None = None, **parameters: Any) -> uuid.UUID:
        names = names or Names()
        if run_id is None:
            flow_name = entrypoint.rpartition(":")[2]
            run = await service.create_flow_run(
                flow_name, parameters, state=Scheduled(), work_pool=POOL
            )
            run_id = run.id
        await declare_pool(broker, POOL, names=names)
        await broker.publish(
            names.events, f"dispatch.{POOL}", encode_dispatch(run_id, entrypoint, work_pool=POOL, code=code)
        )
        return run_id

    return _dispatch


@pytest.fixture
async def make_worker(broker: Broker, service: EngineService) -> AsyncIterator[Callable[..., Worker]]:
    """Builds workers (process mode: children open the test database) and stops them after."""
    made: list[Worker] = []

    def _make(mode: str = "inline", *, api: Any = None, **options: Any) -> Worker:
        options.setdefault("concurrency", 1)
        options.setdefault("heartbeat_interval", 0.2)
        options.setdefault("drain_timeout", 10.0)
        if mode == "process":
            options.setdefault("child_api", LOCAL_API)
        worker = Worker(broker, api or service, pool=POOL, mode=mode, **options)
        made.append(worker)
        return worker

    yield _make
    for worker in made:
        await worker.stop()

