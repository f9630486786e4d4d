"""Requests that must get through: sent again while the engine cannot be reached or cannot act.

A flow run's state changes, and the creation of a child run, must not be lost to a broker restart
or a database outage (a run left Running for good, taken for lost and run again, or a parent
that never learns its child). `delivered(call)` runs `call()` again with backoff while the engine
is unreachable (broker down or restarting, no reply in time) or unavailable (its database down),
for up to `runtime.report_timeout_seconds`. Each request must be safe to repeat: a state proposal
(a duplicate is accepted as it is), a creation with an idempotency key or a caller-chosen run id.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

import structlog

from engine.broker.errors import BrokerUnavailable, PublishTimeout, RpcTimeout
from engine.errors import EngineUnavailable

R = TypeVar("R")

log = structlog.get_logger("flowrelay.runtime")

#: What `delivered` waits out: the engine unreachable, no reply in time, its database down.
TRANSIENT = (BrokerUnavailable, PublishTimeout, RpcTimeout, ConnectionError, EngineUnavailable)


async def delivered(call: Callable[[], Awaitable[R]], *, what: str) -> R:
    """`call()`, again while the engine cannot be reached or cannot act, for up to
    `runtime.report_timeout_seconds`; then its last error."""
    deadline: float | None = None  # read on the first failure: the happy path pays nothing
    pause = 0.2
    while True:
        try:
            return await call()
        except TRANSIENT as exc:
            if deadline is None:
                from engine.settings import get_settings

                timeout = get_settings().runtime.report_timeout_seconds
                deadline = asyncio.get_running_loop().time() + timeout
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                raise
            log.warning("engine unreachable; sending again", what=what, retry_in=pause,
                        error=f"{type(exc).__name__}: {exc}")
            await asyncio.sleep(min(pause, left))
            pause = min(pause * 2, 5.0)


__all__ = ["TRANSIENT", "delivered"]
