"""Process-wide access to the engine from user code.

In embedded mode (`broker.url: memory://`, the default) the engine service runs in this process,
over the configured database, on the engine loop. In distributed mode the same `EngineAPI` is a
client that talks to `flowrelay server` over the broker. Either way the runtime sees one object.
"""

from __future__ import annotations

import atexit
import threading
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

from engine.ports import EngineAPI
from engine.runtime.loop import LoopThread

T = TypeVar("T")

_lock = threading.RLock()
_engine_loop: LoopThread | None = None
_user_loop: LoopThread | None = None
_api: EngineAPI | None = None
_api_factory: Callable[[], Awaitable[EngineAPI]] | None = None


def engine_loop() -> LoopThread:
    global _engine_loop
    with _lock:
        if _engine_loop is None:
            from engine.settings import get_settings

            _engine_loop = LoopThread(
                "flowrelay-engine", executor_threads=get_settings().runtime.task_threads
            )
        return _engine_loop


def user_loop() -> LoopThread:
    """The loop that runs async tasks submitted from sync code."""
    global _user_loop
    with _lock:
        if _user_loop is None:
            _user_loop = LoopThread("flowrelay-user", executor_threads=4)
        return _user_loop


def set_api_factory(factory: Callable[[], Awaitable[EngineAPI]] | None) -> None:
    """Choose how the process reaches the engine (used by workers and `flowrelay dev`)."""
    global _api_factory
    _api_factory = factory


async def _default_api() -> EngineAPI:
    from engine.service import EngineService
    from engine.settings import get_settings

    settings = get_settings()
    service = EngineService(settings.database.url, result_max_bytes=settings.results.max_bytes)
    await service.start()
    return service


async def _get_api() -> EngineAPI:
    global _api
    if _api is None:
        factory = _api_factory or _default_api
        _api = await factory()
    return _api


def install_api(api: EngineAPI) -> None:
    """Use an already-open API object (it must live on the engine loop)."""
    global _api
    _api = api


async def call(fn: Callable[[EngineAPI], Coroutine[Any, Any, T]]) -> T:
    """Await `fn(api)` on the engine loop, from any loop."""

    async def _on_engine_loop() -> T:
        return await fn(await _get_api())

    return await engine_loop().run_async(_on_engine_loop())


def call_sync(fn: Callable[[EngineAPI], Coroutine[Any, Any, T]], timeout: float | None = None) -> T:
    """Run `fn(api)` on the engine loop and block for the answer (from sync code)."""

    async def _on_engine_loop() -> T:
        return await fn(await _get_api())

    return engine_loop().run(_on_engine_loop(), timeout)


def reset() -> None:
    """Close the API and stop the loops (at exit, and between tests)."""
    global _engine_loop, _user_loop, _api, _api_factory
    with _lock:
        if _engine_loop is not None:
            api = _api
            if api is not None:
                try:
                    _engine_loop.run(api.close(), timeout=10)
                except Exception:  # noqa: BLE001 - closing at exit must not raise
                    pass
            _engine_loop.stop()
        if _user_loop is not None:
            _user_loop.stop()
        _engine_loop = _user_loop = None
        _api = None
        _api_factory = None
        try:
            from engine.settings import reset_settings

            reset_settings()
        except ImportError:
            pass


atexit.register(reset)
