"""The engine service's commands: which methods the RPC exposes, and how JSON becomes calls.

Every command is a method of `EngineService` (or a server-level handler such as `heartbeat`),
called with keyword parameters validated by pydantic from the method's own type hints. A bad
command — unknown method, wrong or missing parameters — is answered with an error reply naming
the problem; it never reaches the database and never crashes the server.
"""

from __future__ import annotations

import difflib
from collections.abc import Awaitable, Callable
from typing import Any

import pydantic
from pydantic_core import to_jsonable_python

from engine.errors import EngineUnavailable, FlowrelayError

#: The service methods reachable over the broker. Reads and writes of runs, task runs, logs,
#: events and deployments; nothing that administers the database.
SERVICE_COMMANDS = (
    "create_flow_run", "set_flow_run_state", "read_flow_run", "read_flow_runs", "read_children",
    "read_flow_run_states", "create_task_run", "set_task_run_state", "read_task_runs",
    "read_task_run_states", "write_logs", "read_logs", "emit_event", "read_events",
    "register_deployment", "read_deployment", "read_deployments", "set_deployment_paused",
    "create_deployment_run", "runs_held_by", "register_deployments", "dispatch_run", "due_runs",
    "has_code_bundle", "store_code_bundle", "read_code_bundle",
    "read_work_pools", "read_work_pool", "set_work_pool_concurrency", "read_workers",
)


class BadCommand(FlowrelayError):
    """A command the server cannot run as sent (unknown method, bad parameters)."""


class CommandTable:
    """Maps command names to validated callables."""

    def __init__(self) -> None:
        self._methods: dict[str, Callable[..., Awaitable[Any]]] = {}

    def add_service(self, service: object, names: tuple[str, ...] = SERVICE_COMMANDS) -> None:
        for name in names:
            method = getattr(service, name, None)
            if method is not None:
                self.add(name, method)

    def add(self, name: str, method: Callable[..., Awaitable[Any]]) -> None:
        validator = pydantic.validate_call(config=pydantic.ConfigDict(arbitrary_types_allowed=True))
        self._methods[name] = validator(method)

    @property
    def names(self) -> list[str]:
        return sorted(self._methods)

    async def __call__(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        fn = self._methods.get(method)
        if fn is None:
            close = difflib.get_close_matches(method, self._methods, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise BadCommand(f"unknown command {method!r}{hint}")
        try:
            result = await fn(**params)
        except pydantic.ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or 'params'}: {e['msg']}" for e in exc.errors()
            )
            raise BadCommand(f"command {method!r} has bad parameters: {problems}") from None
        except Exception as exc:
            # Imported here: workers and the CLI import this module for SERVICE_COMMANDS and
            # must not pay for SQLAlchemy.
            from engine.db.group_commit import is_unavailable

            if isinstance(exc, FlowrelayError) or not is_unavailable(exc):
                raise
            # An outage, not an answer: the caller retries (within its own bound).
            detail = str(exc).splitlines()[0] if str(exc) else "no detail"
            raise EngineUnavailable(
                f"{method}: the database is unavailable ({type(exc).__name__}: {detail}); "
                "try again later"
            ) from exc
        return {"value": to_jsonable_python(result)}
