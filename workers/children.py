"""Warm child processes: the parent's side (`workers.child_main` is the child's).

`ChildPool` keeps `size` children started with the ``spawn`` context (never ``fork``: the parent
has threads and an event loop). Each child runs one flow run at a time; the pool hands a run to an
idle child over its pipe and awaits the answer or the child's death, watching both the pipe and
the process sentinel with the event loop (`add_reader`), so no thread waits per run and a wait is
cancellable.

A child that dies (segfault, ``os._exit``, SIGKILL) is reaped and replaced in the background by an
owned task, retried with back-off while the pool is open; the run it was executing gets a
`ChildExited` outcome with the exit code, for the worker to report.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import signal
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.process import BaseProcess
from typing import Any, Literal

from engine.logging import get_logger
from workers import child_main
from workers.child_main import ChildConfig
from workers.errors import ChildStartError

__all__ = ["ChildExited", "ChildPool", "ChildProcess", "Finished", "NoChild", "Outcome"]

StartMethod = Literal["spawn", "forkserver"]

log = get_logger("workers.children")

_STOP_TIMEOUT = 10.0
_REAP_TIMEOUT = 5.0
_MAX_BACKOFF = 30.0


@dataclass(frozen=True)
class Finished:
    """The child ran the run to a final state (reported by the flow engine)."""

    state_name: str
    message: str | None
    #: Time in the child from receiving the run to entering the flow engine.
    start_ms: float
    pid: int


@dataclass(frozen=True)
class ChildExited:
    """The child died while running the run."""

    exitcode: int | None
    pid: int

    def describe(self) -> str:
        code = self.exitcode
        if code == child_main.EXIT_LEASE_LOST:
            return (f"child process {self.pid} stopped the run itself: the worker's lease ran out "
                    "(no heartbeat answered in time)")
        if code is not None and code < 0:
            with contextlib.suppress(ValueError):
                return f"child process {self.pid} was killed by {signal.Signals(-code).name} (exit code {code})"
        return f"child process {self.pid} exited with code {code}"


@dataclass(frozen=True)
class NoChild:
    """No child became available in time (children keep failing to start)."""

    reason: str


Outcome = Finished | ChildExited | NoChild


class ChildProcess:
    """One warm child process and the parent's end of its pipe."""

    def __init__(self, ctx: Any, config: ChildConfig, lease: Any = None) -> None:
        self.config = config
        self.conn, self._child_conn = ctx.Pipe(duplex=True)
        self.process: BaseProcess = ctx.Process(
            target=child_main.main,
            args=(self._child_conn, config, lease),
            name=f"flowrelay-child-{config.index}",
            daemon=True,
        )
        self.pid = 0
        self.runs = 0
        #: the code this child has imported (a bundle's hash, or "env"); None: none yet. A child
        #: runs one code version for its whole life (a module imported stays imported).
        self.code: str | None = None
        #: how long the cold start took (spawn, imports, opening the engine API)
        self.start_seconds = 0.0
        self._closed = False

    async def start(self, timeout: float) -> None:  # noqa: ASYNC109 - the start-up deadline
        """Start the process and wait until it reports ready; `ChildStartError` otherwise."""
        began = time.perf_counter()
        await asyncio.to_thread(self.process.start)
        self._child_conn.close()
        self.pid = self.process.pid or 0
        try:
            message = await self.receive(timeout)
        except TimeoutError:
            raise ChildStartError(
                f"child process {self.pid} did not report ready within {timeout:g} s"
            ) from None
        if message is None:
            code = await self.reap()
            raise ChildStartError(f"child process {self.pid} exited during start-up (code {code})")
        if message[0] != "ready":
            reason = message[1] if len(message) > 1 else message
            raise ChildStartError(f"child process {self.pid} could not start: {reason}")
        self.start_seconds = time.perf_counter() - began

    async def receive(self, timeout: float | None) -> tuple[Any, ...] | None:  # noqa: ASYNC109
        """The child's next message, or None once the child has exited without one."""
        loop = asyncio.get_running_loop()
        ready: asyncio.Future[None] = loop.create_future()

        def wake() -> None:
            if not ready.done():
                ready.set_result(None)

        fds = (self.conn.fileno(), self.process.sentinel)
        for fd in fds:
            loop.add_reader(fd, wake)
        try:
            async with asyncio.timeout(timeout):
                await ready
        finally:
            for fd in fds:
                loop.remove_reader(fd)
        try:
            if self.conn.poll():
                message: tuple[Any, ...] = self.conn.recv()
                return message
        except (EOFError, OSError):
            pass
        return None

    async def run(
        self, flow_run_id: uuid.UUID, entrypoint: str, run_json: str | None,
        code: str = "env", root: str | None = None,
    ) -> Finished | ChildExited:
        self.code = code
        try:
            self.conn.send(("run", str(flow_run_id), entrypoint, run_json, code, root))
        except OSError:
            return ChildExited(await self.reap(), self.pid)
        while True:
            message = await self.receive(None)  # a run lasts as long as the flow says
            if message is None:
                return ChildExited(await self.reap(), self.pid)
            if message[0] == "done" and message[1] == str(flow_run_id):
                self.runs += 1
                _, _, name, text, start_ms = message
                return Finished(name, text, start_ms, self.pid)
            log.warning("unexpected message from a child", pid=self.pid, message=repr(message))

    @property
    def alive(self) -> bool:
        return not self._closed and self.process.is_alive()

    def kill(self) -> None:
        """SIGKILL the child (it ignores SIGTERM: its life is the parent's to manage)."""
        if not self._closed and self.process.pid is not None:
            with contextlib.suppress(OSError, ValueError):
                self.process.kill()

    async def reap(self) -> int | None:
        """Wait (bounded) for the dead child's exit code, and release its resources."""
        if self._closed:
            return None
        if self.process.pid is not None:
            await asyncio.to_thread(self.process.join, _REAP_TIMEOUT)
        code = self.process.exitcode
        self._close()
        return code

    async def stop(self, timeout: float = _STOP_TIMEOUT) -> None:  # noqa: ASYNC109
        """Ask the child to leave; kill it if it has not within `timeout`."""
        if self._closed:
            return
        if self.process.pid is not None and self.process.is_alive():
            with contextlib.suppress(OSError, ValueError):
                self.conn.send(("stop",))
            await asyncio.to_thread(self.process.join, timeout)
            if self.process.is_alive():
                log.warning("child did not stop in time; killing it", pid=self.pid)
                self.kill()
        await self.reap()

    def _close(self) -> None:
        self._closed = True
        self.conn.close()
        self._child_conn.close()
        with contextlib.suppress(ValueError):  # still running: the watchdog in it takes over
            self.process.close()


class ChildPool:
    """`size` warm children; `run()` executes one flow run in an idle one."""

    def __init__(
        self,
        size: int,
        config_for: Callable[[int], ChildConfig],
        *,
        start_method: StartMethod = "spawn",
        start_timeout: float = 60.0,
        lease: Any = None,
    ) -> None:
        """`lease`: the worker's lease deadline (a shared ``RawValue("d")`` of
        ``time.monotonic()`` seconds, made with `shared_lease`); a child running a run past it
        stops the run itself (`workers.child_main`)."""
        if size < 1:
            raise ValueError(f"a child pool needs at least one child, not {size}")
        self.size = size
        self._config_for = config_for
        self._ctx = multiprocessing.get_context(start_method)
        self._lease = lease
        self._start_timeout = start_timeout
        #: idle children, oldest first; `_changed` is notified when one is added
        self._idle: list[ChildProcess] = []
        self._changed = asyncio.Condition()
        self._busy: dict[uuid.UUID, ChildProcess] = {}
        self._all: set[ChildProcess] = set()
        self._replacing: set[asyncio.Task[None]] = set()
        self._closing = False
        self._last_error = ""

    @property
    def pids(self) -> list[int]:
        return sorted(child.pid for child in self._all)

    @property
    def code_loaded(self) -> list[str]:
        """The code versions live children have imported."""
        return sorted({child.code for child in self._all if child.code is not None})

    @property
    def start_seconds(self) -> list[float]:
        """Cold-start time of each live child."""
        return [child.start_seconds for child in self._all]

    async def start(self) -> None:
        """Start every child and wait until all are ready (or raise `ChildStartError`)."""
        children = [ChildProcess(self._ctx, self._config_for(i), self._lease) for i in range(self.size)]
        self._all.update(children)
        results = await asyncio.gather(
            *(child.start(self._start_timeout) for child in children), return_exceptions=True
        )
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            await self.close()
            raise errors[0]
        for child in children:
            await self._put_idle(child)

    async def _put_idle(self, child: ChildProcess) -> None:
        async with self._changed:
            self._idle.append(child)
            self._changed.notify_all()

    async def _acquire(self, code: str) -> ChildProcess:
        """An idle child for `code`: one that already runs it, else a fresh one, else the
        oldest idle child of another version is retired and a fresh child started in its place
        (`ChildStartError` if that fails); waits while every child is busy."""
        async with self._changed:
            while True:
                child = (next((c for c in self._idle if c.code == code), None)
                         or next((c for c in self._idle if c.code is None), None))
                if child is not None:
                    self._idle.remove(child)
                    return child
                if self._idle:
                    retired = self._idle.pop(0)
                    break
                await self._changed.wait()
        log.info("retiring a warm child of another code version", pid=retired.pid,
                 had=retired.code, wanted=code)
        self._all.discard(retired)
        try:
            await retired.stop()
        except BaseException:
            self._replace(retired)  # the slot is not lost: started again in the background
            raise
        child = ChildProcess(self._ctx, self._config_for(retired.config.index), self._lease)
        self._all.add(child)
        try:
            await child.start(self._start_timeout)
        except BaseException as exc:
            self._all.discard(child)
            if isinstance(exc, ChildStartError):
                self._last_error = str(exc)
            self._replace(child)  # reaped, and started again in the background
            raise
        return child

    async def run(
        self,
        flow_run_id: uuid.UUID,
        entrypoint: str,
        run_json: str | None = None,
        *,
        code: str = "env",
        root: str | None = None,
        acquire_timeout: float | None = None,
    ) -> Outcome:
        """Run a claimed flow run in a warm child that runs `code` (see `_acquire`); `root`:
        the unpacked bundle the entrypoint is relative to. Never raises for the child's death."""
        try:
            async with asyncio.timeout(acquire_timeout or self._start_timeout * 2):
                child = await self._acquire(code)
        except TimeoutError:
            return NoChild(f"no warm child process became free: {self._last_error or 'all busy'}")
        except ChildStartError as exc:
            return NoChild(f"no warm child process could be started for this code: {exc}")
        self._busy[flow_run_id] = child
        try:
            outcome = await child.run(flow_run_id, entrypoint, run_json, code, root)
        except BaseException:
            # Cancelled mid-run: the child's state is unknown, so it cannot be reused.
            child.kill()
            self._replace(child)
            raise
        finally:
            self._busy.pop(flow_run_id, None)
        if isinstance(outcome, ChildExited):
            self._replace(child)
        else:
            await self._put_idle(child)
        return outcome

    def terminate(self, flow_run_id: uuid.UUID) -> bool:
        """Kill the child running `flow_run_id` (its `run()` then returns `ChildExited`)."""
        child = self._busy.get(flow_run_id)
        if child is None:
            return False
        child.kill()
        return True

    def _replace(self, dead: ChildProcess) -> None:
        self._all.discard(dead)
        task = asyncio.get_running_loop().create_task(
            self._replacement(dead), name=f"flowrelay-child-replace-{dead.config.index}"
        )
        self._replacing.add(task)
        task.add_done_callback(self._replacing.discard)

    async def _replacement(self, dead: ChildProcess) -> None:
        await dead.reap()
        delay = 0.5
        while not self._closing:
            child = ChildProcess(self._ctx, self._config_for(dead.config.index), self._lease)
            self._all.add(child)
            try:
                await child.start(self._start_timeout)
            except ChildStartError as exc:
                self._all.discard(child)
                await child.stop(timeout=1.0)
                self._last_error = str(exc)
                log.error("could not replace a child process", error=str(exc), retry_in=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, _MAX_BACKOFF)
                continue
            except BaseException:
                self._all.discard(child)
                child.kill()
                await child.reap()
                raise
            if self._closing:
                self._all.discard(child)
                await child.stop()
                return
            log.info("replaced a child process", old_pid=dead.pid, new_pid=child.pid,
                     start_seconds=round(child.start_seconds, 3))
            await self._put_idle(child)
            return

    async def close(self) -> None:
        """Stop replacing, then stop every child (killing those that do not leave in time)."""
        self._closing = True
        for task in list(self._replacing):
            task.cancel()
        if self._replacing:
            await asyncio.wait(list(self._replacing), timeout=_STOP_TIMEOUT)
        children = list(self._all)
        self._all.clear()
        await asyncio.gather(*(child.stop() for child in children), return_exceptions=True)
