"""A Python client for scripts and tests: read runs, their states, task runs and logs.

    from engine.client import get_client

    client = get_client()                 # sync methods
    runs = client.read_flow_runs(flow="etl", state="Completed", limit=10)

    async with get_client(sync=False) as client:   # async methods
        run = await client.read_flow_run(run_id)

It talks to the engine the same way flows do: in process in the embedded mode.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from engine.errors import ObjectNotFound
from engine.ports import EngineAPI
from engine.runtime import embedded
from engine.schemas import Deployment, FlowRun, FlowRunFilter, LogRecord, TaskRun, WorkPool
from engine.states import State

T = TypeVar("T")


def _run_id(value: uuid.UUID | str) -> uuid.UUID:
    if isinstance(value, uuid.UUID):
        return value
    try:
        return uuid.UUID(str(value))
    except ValueError:
        raise ObjectNotFound(f"flow run {value!r} not found (not a valid run id)") from None


def _filter(
    flow: str | None, deployment: str | None, state: str | list[str] | None, limit: int,
    parent: uuid.UUID | str | None,
) -> FlowRunFilter:
    states = [state] if isinstance(state, str) else state
    return FlowRunFilter(
        flow_name=flow, deployment_name=deployment, state_names=states, limit=limit,
        parent_flow_run_id=_run_id(parent) if parent is not None else None,
    )


class AsyncClient:
    """Async form: every method is a coroutine."""

    async def _call(self, fn: Callable[[EngineAPI], Coroutine[Any, Any, T]]) -> T:
        return await embedded.call(fn)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    async def read_flow_run(self, flow_run_id: uuid.UUID | str) -> FlowRun:
        rid = _run_id(flow_run_id)
        return await self._call(lambda api: api.read_flow_run(rid))

    async def read_flow_runs(
        self, flow: str | None = None, deployment: str | None = None,
        state: str | list[str] | None = None, limit: int = 50, parent: uuid.UUID | str | None = None,
    ) -> list[FlowRun]:
        flt = _filter(flow, deployment, state, limit, parent)
        return await self._call(lambda api: api.read_flow_runs(flt))

    async def read_flow_run_states(self, flow_run_id: uuid.UUID | str) -> list[State]:
        rid = _run_id(flow_run_id)
        await self.read_flow_run(rid)
        return await self._call(lambda api: api.read_flow_run_states(rid))

    async def read_task_runs(self, flow_run_id: uuid.UUID | str) -> list[TaskRun]:
        rid = _run_id(flow_run_id)
        return await self._call(lambda api: api.read_task_runs(rid))

    async def read_logs(self, flow_run_id: uuid.UUID | str, limit: int = 1000) -> list[LogRecord]:
        rid = _run_id(flow_run_id)
        return await self._call(lambda api: api.read_logs(rid, limit))

    async def read_children(self, flow_run_id: uuid.UUID | str) -> list[FlowRun]:
        return await self.read_flow_runs(parent=flow_run_id, limit=10_000)

    async def read_deployment(self, name: str) -> Deployment:
        """A deployment by its `FLOW/DEPLOYMENT` name."""
        return await self._call(lambda api: api.read_deployment(name))

    async def read_deployments(self) -> list[Deployment]:
        return await self._call(lambda api: api.read_deployments())

    async def read_work_pool(self, name: str) -> WorkPool:
        """A work pool: its limit, workers and open runs."""
        return await self._call(lambda api: api.read_work_pool(name))

    async def create_flow_run(
        self, deployment: str, parameters: dict[str, Any] | None = None, *,
        idempotency_key: str | None = None, scheduled_time: dt.datetime | None = None,
        flow_run_name: str | None = None, tags: list[str] | None = None,
    ) -> FlowRun:
        """Create a run of the latest version of `deployment` (returns at once)."""
        return await self._call(lambda api: api.create_deployment_run(
            deployment, parameters or {}, idempotency_key=idempotency_key,
            scheduled_time=scheduled_time, flow_run_name=flow_run_name, tags=tags,
        ))


class SyncClient:
    """Sync form: the same methods, blocking."""

    def __init__(self) -> None:
        self._async = AsyncClient()

    def __enter__(self) -> SyncClient:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        return embedded.engine_loop().run(coro)

    def read_flow_run(self, flow_run_id: uuid.UUID | str) -> FlowRun:
        return self._run(self._async.read_flow_run(flow_run_id))

    def read_flow_runs(
        self, flow: str | None = None, deployment: str | None = None,
        state: str | list[str] | None = None, limit: int = 50, parent: uuid.UUID | str | None = None,
    ) -> list[FlowRun]:
        return self._run(self._async.read_flow_runs(flow, deployment, state, limit, parent))

    def read_flow_run_states(self, flow_run_id: uuid.UUID | str) -> list[State]:
        return self._run(self._async.read_flow_run_states(flow_run_id))

    def read_task_runs(self, flow_run_id: uuid.UUID | str) -> list[TaskRun]:
        return self._run(self._async.read_task_runs(flow_run_id))

    def read_logs(self, flow_run_id: uuid.UUID | str, limit: int = 1000) -> list[LogRecord]:
        return self._run(self._async.read_logs(flow_run_id, limit))

    def read_children(self, flow_run_id: uuid.UUID | str) -> list[FlowRun]:
        return self._run(self._async.read_children(flow_run_id))

    def read_deployment(self, name: str) -> Deployment:
        return self._run(self._async.read_deployment(name))

    def read_work_pool(self, name: str) -> WorkPool:
        return self._run(self._async.read_work_pool(name))

    def read_deployments(self) -> list[Deployment]:
        return self._run(self._async.read_deployments())

    def create_flow_run(
        self, deployment: str, parameters: dict[str, Any] | None = None, *,
        idempotency_key: str | None = None, scheduled_time: dt.datetime | None = None,
        flow_run_name: str | None = None, tags: list[str] | None = None,
    ) -> FlowRun:
        return self._run(self._async.create_flow_run(
            deployment, parameters, idempotency_key=idempotency_key,
            scheduled_time=scheduled_time, flow_run_name=flow_run_name, tags=tags,
        ))


def get_client(sync: bool = True) -> Any:
    """A client: `SyncClient` by default, `AsyncClient` with `sync=False`."""
    return SyncClient() if sync else AsyncClient()
