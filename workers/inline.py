"""Inline mode's bridge: the flow runtime reaches the worker's own `EngineAPI`.

The runtime calls the engine through `engine.runtime.embedded`, on its engine loop thread. A worker
running flows in its own process (inline mode: `flowrelay dev`, the quick-start demo, tests) holds
an API that lives on the worker's loop; `LoopBridge` forwards each call there, so both sides use
the one API object (one database writer, one broker connection).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

__all__ = ["LoopBridge"]


class LoopBridge:
    """Forwards every coroutine method of `api` to `loop` (directly when already on it).
    `close()` does nothing: the API belongs to whoever built the worker."""

    def __init__(self, api: Any, loop: asyncio.AbstractEventLoop) -> None:
        self._api = api
        self._loop = loop

    async def close(self) -> None:
        return None

    def __getattr__(self, name: str) -> Callable[..., Awaitable[Any]]:
        target = getattr(self._api, name)
        loop = self._loop

        async def forward(*args: Any, **kwargs: Any) -> Any:
            coro = target(*args, **kwargs)
            try:
                running = asyncio.get_running_loop()
            except RuntimeError:
                running = None
            if running is loop:
                return await coro
            return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, loop))

        forward.__name__ = name
        return forward
