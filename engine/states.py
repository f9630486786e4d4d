"""Run states: the `State` model, its types, and the constructors users return from flows.

A state has a `type` (one of `StateType`), a `name` (the type's name, or a special name such as
``Late``, ``AwaitingRetry`` or ``AwaitingConcurrencySlot`` for a Scheduled state), a message, a
timestamp and details. Final types: Completed, Failed, Crashed, Cancelled.

    from engine.states import Completed, Failed

    @flow
    def check():
        return Completed(message="all good")
"""

from __future__ import annotations

import datetime as dt
import uuid
from enum import Enum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class StateType(str, Enum):
    SCHEDULED = "SCHEDULED"
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CRASHED = "CRASHED"
    CANCELLING = "CANCELLING"
    CANCELLED = "CANCELLED"
    PAUSED = "PAUSED"


FINAL_TYPES = frozenset({StateType.COMPLETED, StateType.FAILED, StateType.CRASHED, StateType.CANCELLED})

#: Every state name the engine knows, with the type it belongs to.
STATE_NAMES: dict[str, StateType] = {
    "Scheduled": StateType.SCHEDULED,
    "Late": StateType.SCHEDULED,
    "AwaitingRetry": StateType.SCHEDULED,
    "AwaitingConcurrencySlot": StateType.SCHEDULED,
    "Pending": StateType.PENDING,
    "Running": StateType.RUNNING,
    "Retrying": StateType.RUNNING,
    "Completed": StateType.COMPLETED,
    "Failed": StateType.FAILED,
    "Crashed": StateType.CRASHED,
    "Cancelling": StateType.CANCELLING,
    "Cancelled": StateType.CANCELLED,
    "Paused": StateType.PAUSED,
}

DEFAULT_NAMES: dict[StateType, str] = {
    StateType.SCHEDULED: "Scheduled",
    StateType.PENDING: "Pending",
    StateType.RUNNING: "Running",
    StateType.COMPLETED: "Completed",
    StateType.FAILED: "Failed",
    StateType.CRASHED: "Crashed",
    StateType.CANCELLING: "Cancelling",
    StateType.CANCELLED: "Cancelled",
    StateType.PAUSED: "Paused",
}


class StateDetails(BaseModel):
    """Links and timing carried by a state (Prefect's `state_details`)."""

    model_config = ConfigDict(extra="allow")

    flow_run_id: uuid.UUID | None = None
    task_run_id: uuid.UUID | None = None
    parent_task_run_id: uuid.UUID | None = None
    child_flow_run_id: uuid.UUID | None = None
    scheduled_time: dt.datetime | None = None
    retry_count: int | None = None
    worker_id: str | None = None
    #: The attempt (fencing token) this state belongs to: a worker's claim opens attempt N of
    #: the run (`FlowRun.attempts` counts them); its Running, logs and final state carry N, and
    #: the engine refuses them once the attempt is superseded (`engine.orchestration.decide`).
    attempt: int | None = None
    #: A Failed or Crashed state's cause: ``{"type", "message", "traceback"}``, the traceback
    #: with the engine's frames trimmed (`engine.runtime.failures`).
    error: dict[str, Any] | None = None
    #: On Running: the code the worker executes (a deployed bundle's ``sha256:`` hash, or
    #: "env": code installed where the worker runs).
    code: str | None = None


class State(BaseModel):
    """The state of a flow run or task run at one moment."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    type: StateType
    name: str = ""
    message: str | None = None
    timestamp: dt.datetime = Field(default_factory=utcnow)
    details: StateDetails = Field(default_factory=StateDetails)
    #: JSON-serialisable result of a Completed run, as stored.
    data: Any = None

    # In-process only: the Python value or exception behind this state.
    _value: Any = PrivateAttr(default=None)
    _has_value: bool = PrivateAttr(default=False)
    _exception: BaseException | None = PrivateAttr(default=None)

    def model_post_init(self, __context: Any) -> None:
        if not self.name:
            self.name = DEFAULT_NAMES[self.type]

    # --- predicates -------------------------------------------------------------------------
    def is_scheduled(self) -> bool:
        return self.type is StateType.SCHEDULED

    def is_pending(self) -> bool:
        return self.type is StateType.PENDING

    def is_running(self) -> bool:
        return self.type is StateType.RUNNING

    def is_completed(self) -> bool:
        return self.type is StateType.COMPLETED

    def is_failed(self) -> bool:
        return self.type is StateType.FAILED

    def is_crashed(self) -> bool:
        return self.type is StateType.CRASHED

    def is_cancelled(self) -> bool:
        return self.type is StateType.CANCELLED

    def is_paused(self) -> bool:
        return self.type is StateType.PAUSED

    def is_final(self) -> bool:
        return self.type in FINAL_TYPES

    # --- results ----------------------------------------------------------------------------
    def with_value(self, value: Any) -> State:
        """Attach the in-process Python value (returned by `.result()`)."""
        self._value = value
        self._has_value = True
        return self

    def with_exception(self, exc: BaseException) -> State:
        self._exception = exc
        return self

    @property
    def exception(self) -> BaseException | None:
        return self._exception

    def result(self, raise_on_failure: bool = True) -> Any:
        """The run's result. For a Failed/Crashed/Cancelled state, raise its error, or return it
        when ``raise_on_failure=False``."""
        from engine.errors import UnfinishedRun, error_for_state

        if self.type in (StateType.FAILED, StateType.CRASHED, StateType.CANCELLED):
            exc = self._exception or error_for_state(self)
            if raise_on_failure:
                raise exc
            return exc
        if not self.is_final():
            if raise_on_failure:
                raise UnfinishedRun(f"run is {self.name}, not finished: it has no result yet")
            return None
        return self._value if self._has_value else self.data

    def __repr__(self) -> str:
        parts = [f"message={self.message!r}"] if self.message else []
        if self.name != DEFAULT_NAMES[self.type]:
            parts.append(f"type={self.type.value}")
        return f"{self.name}({', '.join(parts)})"

    __str__ = __repr__


def _make(type_: StateType, name: str | None, message: str | None, data: Any, **details: Any) -> State:
    state = State(type=type_, name=name or DEFAULT_NAMES[type_], message=message,
                  details=StateDetails(**details))
    if data is not None:
        state.with_value(data)
    return state


def Scheduled(message: str | None = None, scheduled_time: dt.datetime | None = None,
              name: str | None = None, **details: Any) -> State:
    return _make(StateType.SCHEDULED, name, message, None,
                 scheduled_time=scheduled_time or utcnow(), **details)


def Late(message: str | None = None, scheduled_time: dt.datetime | None = None, **details: Any) -> State:
    return Scheduled(message, scheduled_time, name="Late", **details)


def AwaitingRetry(message: str | None = None, scheduled_time: dt.datetime | None = None,
                  **details: Any) -> State:
    return Scheduled(message, scheduled_time, name="AwaitingRetry", **details)


def AwaitingConcurrencySlot(message: str | None = None, **details: Any) -> State:
    return Scheduled(message, name="AwaitingConcurrencySlot", **details)


def Pending(message: str | None = None, **details: Any) -> State:
    return _make(StateType.PENDING, None, message, None, **details)


def Running(message: str | None = None, name: str | None = None, **details: Any) -> State:
    return _make(StateType.RUNNING, name, message, None, **details)


def Completed(message: str | None = None, data: Any = None, **details: Any) -> State:
    return _make(StateType.COMPLETED, None, message, data, **details)


def Failed(message: str | None = None, data: Any = None, **details: Any) -> State:
    return _make(StateType.FAILED, None, message, data, **details)


def Crashed(message: str | None = None, **details: Any) -> State:
    return _make(StateType.CRASHED, None, message, None, **details)


def Cancelling(message: str | None = None, **details: Any) -> State:
    return _make(StateType.CANCELLING, None, message, None, **details)


def Cancelled(message: str | None = None, **details: Any) -> State:
    return _make(StateType.CANCELLED, None, message, None, **details)


def Paused(message: str | None = None, **details: Any) -> State:
    return _make(StateType.PAUSED, None, message, None, **details)


__all__ = [
    "FINAL_TYPES", "STATE_NAMES", "AwaitingConcurrencySlot", "AwaitingRetry", "Cancelled",
    "Cancelling", "Completed", "Crashed", "Failed", "Late", "Paused", "Pending", "Running",
    "Scheduled", "State", "StateDetails", "StateType",
]
