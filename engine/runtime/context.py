"""Run contexts: which flow run / task run the current code belongs to.

Held in contextvars, so they follow the code into threads (`contextvars.copy_context()`) and
asyncio tasks. structlog's contextvars carry the same ids into every log line.
"""

from __future__ import annotations

import asyncio
import contextvars
import threading
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from engine.schemas import FlowRun, LogRecord
from engine.states import State

if TYPE_CHECKING:
    from engine.runtime.flows import Flow
    from engine.runtime.futures import TaskFuture
    from engine.runtime.tasks import Task


@dataclass
class FlowRunContext:
    flow: Flow[..., Any]
    flow_run: FlowRun
    #: the loop of an async flow body (None for a sync flow)
    loop: asyncio.AbstractEventLoop | None = None
    #: final states of the task runs and subflow runs of this run, in completion order
    child_states: list[State] = field(default_factory=list)
    #: futures submitted in this run: awaited before the run ends (no orphans)
    futures: list[TaskFuture] = field(default_factory=list)
    logs: list[LogRecord] = field(default_factory=list)
    _counters: dict[str, int] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def next_dynamic_key(self, task_key: str) -> str:
        with self._lock:
            n = self._counters.get(task_key, 0)
            self._counters[task_key] = n + 1
            return str(n)

    def record(self, state: State) -> None:
        with self._lock:
            self.child_states.append(state)

    def add_future(self, future: TaskFuture) -> None:
        with self._lock:
            self.futures.append(future)

    def add_log(self, record: LogRecord) -> None:
        state = getattr(self.flow_run, "state", None)
        if record.attempt is None and state is not None:
            # the attempt a worker's claim opened: the engine refuses the line once it is over
            record.attempt = state.details.attempt
        with self._lock:
            self.logs.append(record)

    def take_logs(self) -> list[LogRecord]:
        with self._lock:
            logs, self.logs = self.logs, []
            return logs

    def give_back_logs(self, logs: list[LogRecord]) -> None:
        """Put back lines `take_logs` returned but could not send (they go first)."""
        with self._lock:
            self.logs[:0] = logs


@dataclass
class TaskRunContext:
    task: Task[..., Any]
    task_run_id: uuid.UUID
    task_run_name: str
    flow_run_context: FlowRunContext
    extra: dict[str, Any] = field(default_factory=dict)


flow_run_ctx: contextvars.ContextVar[FlowRunContext | None] = contextvars.ContextVar(
    "flowrelay_flow_run", default=None
)
task_run_ctx: contextvars.ContextVar[TaskRunContext | None] = contextvars.ContextVar(
    "flowrelay_task_run", default=None
)


def current_flow_run() -> FlowRunContext | None:
    return flow_run_ctx.get()


def current_task_run() -> TaskRunContext | None:
    return task_run_ctx.get()
