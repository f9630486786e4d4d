"""The narrow port between the flow runtime / CLI and the engine service.

`EngineAPI` is what the runtime and the CLI call. Two implementations:

- `engine.service.EngineService` — the engine service itself, over the database (embedded mode
  calls it in process; `flowrelay server` serves it over the broker);
- a broker RPC client (distributed mode), sending the same calls as JSON commands.

Every method is async and takes/returns the pydantic objects of `engine.schemas`.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any, Protocol

from engine.schemas import (
    CodeChunk,
    Deployment,
    DeploymentSpec,
    Event,
    FlowRun,
    FlowRunFilter,
    LogRecord,
    OrchestrationResult,
    TaskRun,
    WorkerInfo,
    WorkPool,
)
from engine.states import State


class EngineAPI(Protocol):
    async def create_flow_run(
        self,
        flow_name: str,
        parameters: dict[str, Any] | None = None,
        *,
        name: str | None = None,
        state: State | None = None,
        tags: list[str] | None = None,
        idempotency_key: str | None = None,
        parent_task_run_id: uuid.UUID | None = None,
        parent_flow_run_id: uuid.UUID | None = None,
        deployment_id: uuid.UUID | None = None,
        work_pool: str | None = None,
        expected_start_time: dt.datetime | None = None,
        caused_by: dict[str, Any] | None = None,
        id: uuid.UUID | None = None,
    ) -> FlowRun:
        """Create a flow run (initial state Pending unless `state` is given). `id`: the run's id,
        chosen by the caller so that a request sent again after a lost reply returns the run the
        first one made. With an
        `idempotency_key` already used, return the existing run unchanged."""
        ...

    async def set_flow_run_state(
        self,
        flow_run_id: uuid.UUID,
        state: State,
        *,
        force: bool = False,
        logs: list[LogRecord] | None = None,
    ) -> OrchestrationResult:
        """Propose `state`; `logs` are written with it (one call for a run's final state and
        its last log lines)."""
        ...

    async def create_task_run(
        self,
        flow_run_id: uuid.UUID,
        name: str,
        task_key: str,
        *,
        dynamic_key: str = "0",
        parameters: dict[str, Any] | None = None,
        tags: list[str] | None = None,
        state: State | None = None,
        id: uuid.UUID | None = None,
    ) -> TaskRun: ...

    async def set_task_run_state(
        self, task_run_id: uuid.UUID, state: State, *, force: bool = False
    ) -> OrchestrationResult: ...

    async def write_logs(self, logs: list[LogRecord]) -> None: ...

    async def emit_event(self, event: Event) -> None: ...

    async def read_flow_run(self, flow_run_id: uuid.UUID) -> FlowRun: ...

    async def read_flow_runs(self, flt: FlowRunFilter | None = None) -> list[FlowRun]: ...

    async def read_flow_run_states(self, flow_run_id: uuid.UUID) -> list[State]: ...

    async def read_task_runs(self, flow_run_id: uuid.UUID) -> list[TaskRun]: ...

    async def read_task_run_states(self, task_run_id: uuid.UUID) -> list[State]: ...

    async def read_logs(self, flow_run_id: uuid.UUID, limit: int = 1000) -> list[LogRecord]: ...

    async def read_events(self, resource_id: str | None = None, limit: int = 200) -> list[Event]: ...

    # --- deployments ------------------------------------------------------------------------
    async def register_deployment(self, spec: DeploymentSpec) -> Deployment:
        """Create the deployment, or update it and bump its version by one."""
        ...

    async def register_deployments(self, specs: list[DeploymentSpec]) -> list[Deployment]:
        """Register several deployments in one transaction: all or none."""
        ...

    async def read_deployment(self, name: str) -> Deployment:
        """The deployment ``FLOW/DEPLOYMENT`` (`ObjectNotFound` with a did-you-mean)."""
        ...

    async def read_deployments(self) -> list[Deployment]: ...

    async def set_deployment_paused(self, name: str, paused: bool) -> Deployment: ...

    async def create_deployment_run(
        self,
        name: str,
        parameters: dict[str, Any] | None = None,
        *,
        idempotency_key: str | None = None,
        scheduled_time: dt.datetime | None = None,
        flow_run_name: str | None = None,
        tags: list[str] | None = None,
        parent_task_run_id: uuid.UUID | None = None,
        parent_flow_run_id: uuid.UUID | None = None,
        caused_by: dict[str, Any] | None = None,
        id: uuid.UUID | None = None,
    ) -> FlowRun:
        """A run of the latest version of the deployment, dispatched to its pool when due.
        `id`: as for `create_flow_run`."""
        ...

    # --- code bundles (engine/code) ---------------------------------------------------------
    async def has_code_bundle(self, hash: str) -> bool: ...

    async def store_code_bundle(self, hash: str, data: str) -> int:
        """Store a bundle (base64 `data`), verified against its hash; its size."""
        ...

    async def read_code_bundle(self, hash: str, offset: int = 0, limit: int = 512 * 1024) -> CodeChunk:
        """Up to `limit` bytes of bundle `hash` from `offset`, base64."""
        ...

    # --- work pools and workers -------------------------------------------------------------
    async def read_work_pools(self) -> list[WorkPool]: ...

    async def read_work_pool(self, name: str) -> WorkPool: ...

    async def set_work_pool_concurrency(self, name: str, limit: int | None) -> WorkPool:
        """Set (None: clear) the pool's concurrency limit."""
        ...

    async def read_workers(self) -> list[WorkerInfo]: ...

    # Server-side (the scheduler's timer and the heartbeat monitor), not for flow code.
    async def dispatch_run(self, flow_run_id: uuid.UUID) -> bool: ...

    async def due_runs(self) -> list[tuple[uuid.UUID, dt.datetime]]: ...

    async def runs_held_by(self, worker_id: str) -> list[FlowRun]: ...

    async def close(self) -> None: ...
