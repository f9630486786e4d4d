"""Errors raised by the engine.

    FlowrelayError                      root of everything we raise on purpose
    ├── ConfigError                     bad config file, key or value (names the key)
    ├── ObjectNotFound                  unknown flow run, task run, deployment ... id or name
    ├── ParameterValidationError        flow parameters that do not validate against the type hints
    ├── ResultTooLarge                  a result over `results.max_bytes`
    ├── ResultNotSerializable           a result that is not JSON-serialisable
    ├── EntrypointError                 `path/file.py:flow` or `module:flow` that cannot be loaded
    ├── InvalidTransition               a state proposal the orchestration rules reject
    ├── UnfinishedRun                   `.result()` on a state that is not final
    ├── RunFailed                       `.result()` of a Failed run without a Python exception
    │   └── RunCrashed / RunCancelled
    ├── WaitTimeout                     a bounded wait ran out (TimeoutError too)
    ├── EngineUnavailable               the engine cannot act now (its database is down): retry
    └── BrokerError                     broker problems (see engine.broker.errors)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from engine.states import State


class FlowrelayError(Exception):
    """Root of the errors flowrelay raises on purpose."""


class ConfigError(FlowrelayError):
    pass


class ObjectNotFound(FlowrelayError):
    pass


class ParameterValidationError(FlowrelayError, ValueError):
    pass


class ResultTooLarge(FlowrelayError, ValueError):
    pass


class ResultNotSerializable(FlowrelayError, TypeError):
    pass


class EntrypointError(FlowrelayError):
    pass


class CodeError(FlowrelayError, ValueError):
    """Deployed code that cannot be stored, fetched or run as recorded: a bundle whose bytes do
    not match its hash, one over the size limit, or an installed distribution of another version
    than the deployment's (`engine.code`)."""


class ProtocolMismatch(FlowrelayError):
    """The other side speaks another version of flowrelay's wire protocol (a worker or client
    older or newer than the server): the message names both versions."""


class InvalidTransition(FlowrelayError):
    pass


class UnfinishedRun(FlowrelayError):
    pass


class RunFailed(FlowrelayError):
    pass


class RunCrashed(RunFailed):
    pass


class RunCancelled(RunFailed):
    pass


class WaitTimeout(FlowrelayError, TimeoutError):
    pass


class EngineUnavailable(FlowrelayError):
    """The engine could not do it now (its database refused or lost the connection): the same
    request, sent again later, may succeed. Callers retry with backoff, within their bound."""


class BrokerError(FlowrelayError):
    pass


def error_for_state(state: State) -> RunFailed:
    """An exception describing a failed/crashed/cancelled state without a Python exception."""
    from engine.states import StateType

    cls: type[RunFailed] = {StateType.CRASHED: RunCrashed, StateType.CANCELLED: RunCancelled}.get(
        state.type, RunFailed
    )
    return cls(state.message or f"run ended {state.name}")
