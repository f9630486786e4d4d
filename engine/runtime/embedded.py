"""Process-wide access to the engine from user code.

In embedded mode (`broker.url: memory://`, the default) the engine service runs in this process,
over the configured database, on the engine loop. In distributed mode the same `EngineAPI` is a
client that talks to `flowrelay server` over the broker. Either way the runtime sees one object.
"""

from __future__ import annotations

import atexit
import contextvars
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
_server: Any = None
_broker: Any = None
_inline_workers: list[Any] = []
_inline_enabled = True
_waiter: Any = None


def engine_loop() -> LoopThread:
    global _engine_loop
    loop = _engine_loop
    if loop is not None:  # the common case takes no lock (reset() holds it while closing)
        return loop
    with _lock:
        if _engine_loop is None:
            import structlog

            from engine.settings import get_settings

            if not structlog.is_configured():
                from engine.logging import configure_logging

                configure_logging(get_settings())  # logs to stderr, never into a script's stdout
            _engine_loop = LoopThread(
                "flowrelay-engine", executor_threads=get_settings().runtime.task_threads
            )
        return _engine_loop


def user_loop() -> LoopThread:
    """The loop that runs async tasks submitted from sync code."""
    global _user_loop
    loop = _user_loop
    if loop is not None:
        return loop
    with _lock:
        if _user_loop is None:
            _user_loop = LoopThread("flowrelay-user", executor_threads=4)
        return _user_loop


_worker_details: dict[str, Any] = {}
_worker_scope: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "flowrelay_worker", default=None
)


def set_worker_identity(
    worker_id: str | None, extra_details: dict[str, Any] | None = None, *, context_only: bool = False
) -> None:
    """Runs started from here on are executed for worker `worker_id` (None clears it): the runtime
    proposes Running with `worker_id` plus `extra_details`. Process-wide (a worker's child), or
    with `context_only` for the current context only (one run task of an inline worker)."""
    global _worker_details
    details = {"worker_id": worker_id, **(extra_details or {})} if worker_id else {}
    if context_only:
        _worker_scope.set(details)
    else:
        _worker_details = details


def worker_details() -> dict[str, Any]:
    """The details set by `set_worker_identity` (empty when no worker executes this run)."""
    scoped = _worker_scope.get()
    return dict(scoped if scoped is not None else _worker_details)


def set_api_factory(factory: Callable[[], Awaitable[EngineAPI]] | None) -> None:
    """Choose how the process reaches the engine (used by workers and `flowrelay dev`)."""
    global _api_factory
    _api_factory = factory


async def _default_api() -> EngineAPI:
    """Embedded mode (`memory://`): the whole server in process, with an in-process worker per
    pool. Otherwise: a client of `flowrelay server` over the broker."""
    global _server, _broker
    from engine.settings import get_settings

    settings = get_settings()
    if settings.broker.url.startswith("memory://"):
        from engine.server.app import Server

        server = Server(settings, serve_rpc=False, on_new_pool=_start_inline_worker)
        _server, _broker = server, server.broker  # before start: it starts the pools' workers
        try:
            await server.start()
        except BaseException:
            _server = _broker = None
            raise
        return server.service
    from engine.broker import from_url
    from engine.remote import RemoteEngine

    broker = from_url(settings.broker.url, connection_name="flowrelay-client")
    await broker.connect()
    remote = RemoteEngine(broker, timeout=settings.broker.rpc_timeout_seconds)
    await remote.start()
    _broker = broker
    return remote  # type: ignore[return-value]


def run_inline_workers(enabled: bool) -> None:
    """Embedded mode: whether this process runs deployment runs itself (scripts and `flowrelay
    dev` do; read-only CLI commands don't, so they never pick up queued work)."""
    global _inline_enabled
    _inline_enabled = enabled


async def _start_inline_worker(pool: str) -> None:
    """Embedded mode: runs of pool `pool` execute in this process."""
    assert _server is not None
    if not _inline_enabled:
        return
    from engine.settings import get_settings
    from workers.worker import Worker

    settings = get_settings()
    worker = Worker(
        _server.broker, _server.service, pool=pool, concurrency=settings.worker.concurrency,
        mode="inline", heartbeat_interval=settings.worker.heartbeat_interval_seconds,
        drain_timeout=10.0,
    )
    await worker.start()
    _inline_workers.append(worker)


def broker() -> Any:
    """The broker this process talks through (the embedded server's, or the client's)."""
    if _broker is not None:
        return _broker
    api_broker = getattr(_api, "broker", None)  # a RemoteEngine made by a worker's api factory
    if api_broker is None:
        raise RuntimeError("the engine is not connected yet")
    return api_broker


async def _close_api() -> None:
    global _server, _broker, _api
    for worker in reversed(_inline_workers):
        try:
            await worker.stop()
        except Exception:  # noqa: BLE001 - closing must go on
            pass
    _inline_workers.clear()
    if _waiter is not None:
        await _waiter.close()
    if _server is not None:
        await _server.stop()
    elif _api is not None:
        await _api.close()
        if _broker is not None:
            await _broker.close()
    _server = _broker = _api = None


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
    global _engine_loop, _user_loop, _api, _api_factory, _server, _broker, _waiter
    with _lock:
        if _engine_loop is not None:
            try:
                _engine_loop.run(_close_api(), timeout=30)
            except Exception:  # noqa: BLE001 - closing at exit must not raise
                pass
            _engine_loop.stop()
        if _user_loop is not None:
            _user_loop.stop()
        _engine_loop = _user_loop = None
        _api = None
        _api_factory = None
        _server = _broker = _waiter = None
        _inline_workers.clear()
        run_inline_workers(True)
        try:
            from engine.settings import reset_settings

            reset_settings()
        except ImportError:
            pass


atexit.register(reset)


async def waiter() -> Any:
    """The process's `RunWaiter` (call on the engine loop, after the API is connected)."""
    global _waiter
    await _get_api()
    if _waiter is None:
        from engine.runtime.waiting import RunWaiter

        _waiter = RunWaiter(broker())
    return _waiter
