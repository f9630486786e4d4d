"""A `flowrelay server` (engine, rule engine, HTTP API on a free port) running on its own event
loop in a thread, for tests that drive it from synchronous code (the OpenAPI fuzz)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from typing import Any

from engine.server.app import Server
from engine.settings import Settings

START_TIMEOUT = 30.0


class BackgroundServer:
    def __init__(self, settings: Settings, seed: Callable[[Server], Awaitable[Any]] | None = None) -> None:
        self.settings = settings
        self.seed = seed
        self.url = ""
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), name="api-server", daemon=True)

    def __enter__(self) -> BackgroundServer:
        self._thread.start()
        if not self._ready.wait(START_TIMEOUT):
            raise AssertionError(f"the server did not start within {START_TIMEOUT:g} s")
        if self._error is not None:
            raise self._error
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(START_TIMEOUT)
        assert not self._thread.is_alive(), "the server did not stop in time"

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        server = Server(self.settings, serve_api=True)
        try:
            await server.start()
            if self.seed is not None:
                await self.seed(server)
            assert server.api is not None
            self.url = server.api.url
        except BaseException as exc:  # handed to the test thread
            self._error = exc
            self._ready.set()
            await server.stop()
            return
        self._ready.set()
        try:
            await self._stop.wait()
        finally:
            await server.stop()
