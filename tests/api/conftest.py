"""Fixtures for the HTTP API tests: a real `Server` (engine service on a temp SQLite database,
the in-memory broker, the rule engine) and the API application on it.

- `api`: the ASGI app driven in process through httpx's ASGITransport (no socket);
- `live`: the same served by uvicorn on a free port (`Server(serve_api=True)`, ``api.port: 0``),
  for what needs a real connection (the event stream, shutdown).

Tokens: READ may read, WRITE may read and write.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from engine.api import ApiContext, create_app
from engine.schemas import DeploymentSpec
from engine.server.app import Server
from engine.settings import Settings, load_settings
from engine.states import Running, State, StateType

READ = "read-token-123"
WRITE = "write-token-456"

FLOWS = '''
from engine import flow


@flow(name="hello")
def hello(name: str = "world") -> str:
    return f"hello {name}"


@flow(name="report")
def report(batch_id: str = "b-0") -> str:
    return f"report {batch_id}"
'''


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.setenv("FLOWRELAY_DATABASE__URL", f"sqlite+aiosqlite:///{tmp_path / 'api.db'}")
    monkeypatch.setenv("FLOWRELAY_BROKER__URL", f"memory://api-{uuid.uuid4().hex[:8]}")
    monkeypatch.setenv("FLOWRELAY_API__TOKENS__READ", f'["{READ}"]')
    monkeypatch.setenv("FLOWRELAY_API__TOKENS__WRITE", f'["{WRITE}"]')
    monkeypatch.setenv("FLOWRELAY_API__PORT", "0")
    return load_settings()


@pytest.fixture
def flows_file(tmp_path: Path) -> Path:
    path = tmp_path / "api_flows.py"
    path.write_text(FLOWS)
    return path


@dataclass
class Api:
    server: Server
    ctx: ApiContext
    app: Any
    client: httpx.AsyncClient  # authenticated with WRITE
    flows: Path

    def as_token(self, token: str | None, **headers: str) -> httpx.AsyncClient:
        """A client sending `token` (None: no Authorization header)."""
        if token:
            headers["Authorization"] = f"Bearer {token}"
        return httpx.AsyncClient(
            transport=httpx.ASGITransport(app=self.app), base_url="http://api.test", headers=headers
        )

    async def deploy(self, full_name: str, flow_fn: str = "hello", **extra: Any) -> None:
        flow, name = full_name.split("/")
        await self.server.service.register_deployment(DeploymentSpec(
            name=name, flow_name=flow, entrypoint=f"{self.flows}:{flow_fn}",
            **{"work_pool": "default", **extra},
        ))

    async def finished_run(self, flow: str = "adhoc", result: Any = 1, **kwargs: Any) -> uuid.UUID:
        """A run taken through Running to Completed by hand (no worker needed)."""
        service = self.server.service
        run = await service.create_flow_run(flow, kwargs.pop("parameters", {}), **kwargs)
        await service.set_flow_run_state(run.id, Running())
        await service.set_flow_run_state(run.id, State(type=StateType.COMPLETED, data=result))
        return run.id


@pytest.fixture
async def api(settings: Settings, flows_file: Path) -> AsyncIterator[Api]:
    async with Server(settings) as server:
        ctx = ApiContext.for_server(server)
        app = create_app(ctx)
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://api.test",
            headers={"Authorization": f"Bearer {WRITE}"},
        ) as client:
            yield Api(server, ctx, app, client, flows_file)


@dataclass
class Live:
    server: Server
    url: str
    flows: Path

    def client(self, token: str | None = WRITE, **kwargs: Any) -> httpx.AsyncClient:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.AsyncClient(base_url=self.url, headers=headers, timeout=10, **kwargs)


@pytest.fixture
async def live(settings: Settings, flows_file: Path) -> AsyncIterator[Live]:
    server = Server(settings, serve_api=True)
    await server.start()
    try:
        assert server.api is not None
        yield Live(server, server.api.url, flows_file)
    finally:
        await server.stop()


async def until(predicate: Callable[[], Awaitable[Any]], timeout: float = 30.0, what: str = "condition") -> Any:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = await predicate()
        if value:
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"{what} not met within {timeout:g} s (last: {value!r})")
        await asyncio.sleep(0.02)
