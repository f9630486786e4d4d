"""`get_run_logger()`: a logger whose lines are stored with the current run and printed."""

from __future__ import annotations

import logging
from typing import Any

import structlog

from engine.errors import FlowrelayError
from engine.runtime.context import FlowRunContext, current_flow_run, current_task_run
from engine.schemas import LogRecord


class MissingRunContext(FlowrelayError):
    pass


class RunLogger:
    """Logs to structlog (console/JSON) and stores each line with the run (and task run)."""

    def __init__(self, ctx: FlowRunContext, task_run_id: Any = None, name: str = "flowrelay.run") -> None:
        self._ctx = ctx
        self._task_run_id = task_run_id
        self._log = structlog.get_logger(name)
        self.name = name

    def _emit(self, level: int, msg: str, *args: Any, **kw: Any) -> None:
        text = msg % args if args else str(msg)
        self._ctx.add_log(
            LogRecord(
                flow_run_id=self._ctx.flow_run.id,
                task_run_id=self._task_run_id,
                level=level,
                logger=self.name,
                message=text,
            )
        )
        self._log.log(level, text, **kw)

    def debug(self, msg: str, *args: Any, **kw: Any) -> None:
        self._emit(logging.DEBUG, msg, *args, **kw)

    def info(self, msg: str, *args: Any, **kw: Any) -> None:
        self._emit(logging.INFO, msg, *args, **kw)

    def warning(self, msg: str, *args: Any, **kw: Any) -> None:
        self._emit(logging.WARNING, msg, *args, **kw)

    warn = warning

    def error(self, msg: str, *args: Any, **kw: Any) -> None:
        self._emit(logging.ERROR, msg, *args, **kw)

    def exception(self, msg: str, *args: Any, **kw: Any) -> None:
        kw.setdefault("exc_info", True)
        self._emit(logging.ERROR, msg, *args, **kw)

    def critical(self, msg: str, *args: Any, **kw: Any) -> None:
        self._emit(logging.CRITICAL, msg, *args, **kw)


def get_run_logger() -> RunLogger:
    """The logger of the current flow run or task run. Raises outside a run."""
    task_ctx = current_task_run()
    if task_ctx is not None:
        return RunLogger(task_ctx.flow_run_context, task_ctx.task_run_id, "flowrelay.task_run")
    flow_ctx = current_flow_run()
    if flow_ctx is not None:
        return RunLogger(flow_ctx, None, "flowrelay.flow_run")
    raise MissingRunContext(
        "get_run_logger() was called outside a flow or task run: call it inside a @flow or "
        "@task function, or use logging/structlog directly"
    )
