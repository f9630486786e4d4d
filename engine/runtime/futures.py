"""`TaskFuture`: the handle `task.submit()` returns."""

from __future__ import annotations

import asyncio
import concurrent.futures
import uuid
from collections.abc import Generator
from typing import Any

from engine.states import Pending, State


class TaskFuture:
    """A task run in progress. `.result()` waits for its value, `.wait()` for its end, `.state`
    tells where it is without waiting. Awaiting it gives the value too."""

    def __init__(self, future: concurrent.futures.Future[State], task_run_id: uuid.UUID, name: str) -> None:
        self._future = future
        self.task_run_id = task_run_id
        self.name = name

    @property
    def state(self) -> State:
        if self._future.done() and not self._future.cancelled() and self._future.exception() is None:
            return self._future.result()
        return Pending(message="not finished yet")

    def done(self) -> bool:
        return self._future.done()

    def wait(self, timeout: float | None = None) -> State | None:
        """Wait for the task run to end (at most `timeout` seconds); its final state, or None."""
        try:
            return self._future.result(timeout)
        except concurrent.futures.TimeoutError:
            return None

    def result(self, timeout: float | None = None, raise_on_failure: bool = True) -> Any:
        """The task's return value; raises its exception if it failed (unless told not to)."""
        try:
            state = self._future.result(timeout)
        except concurrent.futures.TimeoutError:
            from engine.errors import WaitTimeout

            raise WaitTimeout(f"task run {self.name!r} did not finish within {timeout} s") from None
        return state.result(raise_on_failure=raise_on_failure)

    async def wait_async(self) -> State:
        return await asyncio.wrap_future(self._future)

    def __await__(self) -> Generator[Any, None, Any]:
        state = yield from asyncio.wrap_future(self._future).__await__()
        return state.result()

    def __repr__(self) -> str:
        return f"TaskFuture({self.name!r}, state={self.state.name})"
