"""Background event loops owned by the runtime.

The *engine loop* hosts the engine client (and, in embedded mode, the database): every call the
runtime makes to the engine runs there. The *user loop* runs async tasks submitted from sync code.
Sync user code never runs on either loop; it runs in threads, so a blocking task cannot stall the
engine.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


class LoopThread:
    """An asyncio loop running forever in a daemon thread, stopped by `stop()`."""

    def __init__(self, name: str, *, executor_threads: int = 16) -> None:
        self.name = name
        self._ready = threading.Event()
        self.loop = asyncio.new_event_loop()
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=executor_threads, thread_name_prefix=f"{name}-worker"
        )
        self.loop.set_default_executor(self._executor)
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)
        self._thread.start()
        self._ready.wait()

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.call_soon(self._ready.set)
        try:
            self.loop.run_forever()
        finally:
            try:
                pending = [t for t in asyncio.all_tasks(self.loop) if not t.done()]
                for t in pending:
                    t.cancel()
                if pending:
                    self.loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
                self.loop.run_until_complete(self.loop.shutdown_asyncgens())
            finally:
                self.loop.close()

    @property
    def is_current(self) -> bool:
        return threading.current_thread() is self._thread

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run `coro` on this loop and block the calling thread for its result."""
        if self.is_current:
            coro.close()
            raise RuntimeError(f"blocking call on the {self.name} loop thread would deadlock")
        return self.submit(coro).result(timeout)

    async def run_async(self, coro: Coroutine[Any, Any, T]) -> T:
        """Await `coro` on this loop from any other loop (or directly when already on it)."""
        if self.is_current:
            return await coro
        return await asyncio.wrap_future(self.submit(coro))

    def stop(self, timeout: float = 10.0) -> None:
        if not self._thread.is_alive():
            return
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout)
        self._executor.shutdown(wait=False, cancel_futures=True)
