"""Errors raised by the worker.

    engine.errors.FlowrelayError
    └── WorkerError                 root of every worker problem
        ├── BadDispatch             a pool-queue message that is not a valid dispatch (dead-lettered)
        ├── WorkerConfigError       a worker that cannot work as configured (e.g. process mode
        │                           over the in-memory broker)
        └── ChildStartError         a warm child process did not start, or not in time
"""

from __future__ import annotations

from engine.errors import FlowrelayError

__all__ = ["BadDispatch", "ChildStartError", "WorkerConfigError", "WorkerError"]


class WorkerError(FlowrelayError):
    """Root of the errors the worker raises."""


class BadDispatch(WorkerError, ValueError):
    """A message on a pool queue that is not a dispatch: it is dead-lettered, never retried."""


class WorkerConfigError(WorkerError):
    """The worker cannot run as configured; the message says what to change."""


class ChildStartError(WorkerError):
    """A warm child process exited during start-up or did not report ready in time."""
