"""What runs inside a warm child process (see `workers.children` for the parent's side).

A child is started once (``spawn``: a fresh interpreter, no inherited threads or loop), opens its
own way to the engine through `embedded.set_api_factory` (by default a `RemoteEngine` over its own
broker connection), tells the parent it is ready, then serves runs one at a time:

    parent → child   ("run", flow_run_id, entrypoint, flow_run_json | None, code, root | None)
                     ("stop",)
    child → parent   ("ready", pid)   ("failed", reason)
                     ("done", flow_run_id, state_name, state_message, start_ms)

Loaded entrypoints are kept (imported once per child), so starting a run costs a pipe message and
a dictionary lookup: the flow engine itself then proposes Running with the worker's id and the
code it runs. A child runs one code version for its life (`code`: a bundle's hash, whose
unpacked `root` becomes its working directory and first import path; or "env", the code installed
in the worker's environment): the parent sends a run of another version to another child.

The child's life belongs to its parent: it ignores SIGINT/SIGTERM (a Ctrl-C or a systemd stop
reaches the whole process group; the parent drains instead), leaves on ("stop",) or when the
pipe closes, and kills itself if the parent dies, so a run is never left executing while the
server declares it Crashed and hands it to another worker. For the same reason it watches the
worker's lease (a deadline in shared memory that the parent moves on each answered heartbeat):
a run still executing past it is stopped at once (exit code `EXIT_LEASE_LOST`), even if the
parent itself is frozen (SIGSTOP, a VM paused) and cannot stop it.
"""

from __future__ import annotations

import functools
import importlib
import os
import signal
import sys
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import structlog

from engine.broker.topology import DEFAULT_PREFIX

if TYPE_CHECKING:
    from engine.ports import EngineAPI
    from engine.runtime.flows import Flow
    from engine.states import State

__all__ = ["LOCAL_API", "REMOTE_API", "ChildConfig", "local_api", "main", "remote_api"]

#: The default: the engine service of `flowrelay server`, over the broker (`broker.url`).
REMOTE_API = "workers.child_main:remote_api"
#: The engine service in the child itself, over `database.url` (tests, single-machine setups).
LOCAL_API = "workers.child_main:local_api"

#: Imported at start-up, so the first run does not pay for them. `engine.service` is there
#: because `RemoteEngine` reads return types from its hints on first use (~0.5 s of SQLAlchemy
#: and alembic imports otherwise paid by the first run).
_PRELOAD = ("engine.runtime.flows", "engine.runtime.tasks", "engine.entrypoints", "engine.service")

EXIT_ORPHANED = 70
EXIT_LEASE_LOST = 71
_PARENT_CHECK_SECONDS = 0.2
_API_OPEN_TIMEOUT = 60.0
_REPORT_TIMEOUT = 30.0


@dataclass(frozen=True)
class ChildConfig:
    """What a child needs to know, pickled to it at start."""

    worker_id: str
    pool: str
    #: ``module:function``; the function takes this config and returns an awaitable EngineAPI.
    api_factory: str = REMOTE_API
    prefix: str = DEFAULT_PREFIX
    index: int = 0
    extra_details: dict[str, Any] = field(default_factory=dict)


async def remote_api(config: ChildConfig) -> EngineAPI:
    """A `RemoteEngine` over a broker connection of the child's own (closed with it)."""
    from engine.broker import Names, from_url
    from engine.remote import RemoteEngine
    from engine.settings import get_settings

    class _OwningRemoteEngine(RemoteEngine):
        async def close(self) -> None:
            try:
                await super().close()
            finally:
                await self.broker.close()

    settings = get_settings()
    broker = from_url(
        settings.broker.url, connection_name=f"flowrelay-worker-{config.worker_id}-{config.index}"
    )
    await broker.connect()
    try:
        api = _OwningRemoteEngine(
            broker, timeout=settings.broker.rpc_timeout_seconds, names=Names(config.prefix)
        )
        await api.start()
    except BaseException:
        await broker.close()
        raise
    return cast("EngineAPI", api)


async def local_api(config: ChildConfig) -> EngineAPI:
    """The engine service over `database.url`, in the child (no server involved)."""
    from engine.service import EngineService
    from engine.settings import get_settings

    settings = get_settings()
    return await EngineService.open(
        settings.database.url,
        result_max_bytes=settings.results.max_bytes,
        busy_timeout_ms=settings.database.busy_timeout_ms,
    )


def resolve_factory(spec: str) -> Callable[[ChildConfig], Awaitable[EngineAPI]]:
    """The function named by ``module:function``."""
    module_name, sep, name = spec.partition(":")
    if not sep or not module_name or not name:
        raise ValueError(f"api factory {spec!r}: expected 'package.module:function'")
    factory = getattr(importlib.import_module(module_name), name, None)
    if not callable(factory):
        raise ValueError(f"api factory {spec!r}: {module_name} has no function {name!r}")
    return cast("Callable[[ChildConfig], Awaitable[EngineAPI]]", factory)


#: Set while this child executes a run (read by the watchdog thread).
_busy = threading.Event()


def main(conn: Connection, config: ChildConfig, lease: Any = None) -> None:
    """The child's entry point (the target of its `multiprocessing.Process`). `lease`: the
    worker's lease deadline (see the module docstring); None: no lease is watched."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _watch_parent(os.getppid(), lease)

    from engine.logging import configure_logging, get_logger
    from engine.runtime import embedded

    configure_logging()
    log = get_logger("workers.child").bind(
        worker_id=config.worker_id, pool=config.pool, child=config.index, pid=os.getpid()
    )
    try:
        factory = resolve_factory(config.api_factory)
        embedded.set_api_factory(functools.partial(factory, config))
        embedded.set_worker_identity(config.worker_id, config.extra_details)
        embedded.call_sync(_open, timeout=_API_OPEN_TIMEOUT)  # the first run must not pay for it
        for module in _PRELOAD:
            importlib.import_module(module)
    except Exception as exc:  # noqa: BLE001 - reported to the parent, which decides
        log.error("child could not reach the engine", error=f"{type(exc).__name__}: {exc}")
        _send(conn, ("failed", f"{type(exc).__name__}: {exc}"))
        embedded.reset()
        return
    _send(conn, ("ready", os.getpid()))
    log.info("warm child ready")
    flows: dict[str, Flow[..., Any]] = {}
    try:
        while True:
            try:
                message = conn.recv()
            except (EOFError, OSError):
                break  # the parent closed the pipe
            if message[0] == "stop":
                break
            if message[0] == "run":
                _, run_id, entrypoint, run_json, code, root = message
                _busy.set()
                try:
                    name, text, start_ms = _run(flows, run_id, entrypoint, run_json, code, root,
                                                config)
                finally:
                    _busy.clear()
                if not _send(conn, ("done", run_id, name, text, start_ms)):
                    break
    finally:
        embedded.reset()
        log.info("warm child stopped")


async def _open(api: EngineAPI) -> None:
    return None


def _send(conn: Connection, message: tuple[Any, ...]) -> bool:
    try:
        conn.send(message)
    except (OSError, ValueError):
        return False
    return True


def _watch_parent(ppid: int, lease: Any) -> None:
    """Exit at once if the parent dies, or if a run is executing past the worker's lease: an
    orphan, or a run whose worker can no longer prove it is alive, must not keep running a run
    the server will declare Crashed (and may retry elsewhere)."""

    def watch() -> None:
        while True:
            time.sleep(_PARENT_CHECK_SECONDS)
            if os.getppid() != ppid:
                os._exit(EXIT_ORPHANED)
            if lease is not None and _busy.is_set() and time.monotonic() > lease.value:
                from engine.runtime.flows import bodies_running

                if bodies_running():  # a body done and reporting cannot run twice: let it
                    os.write(2, b"flowrelay child: the worker's lease ran out; stopping the run\n")
                    os._exit(EXIT_LEASE_LOST)

    threading.Thread(target=watch, name="flowrelay-parent-watch", daemon=True).start()


#: The code this child runs (set by its first run; the parent never sends it another).
_code: list[str] = []


def _enter_code(code: str, root: str | None) -> None:
    """Make this child run `code`: a bundle's unpacked `root` becomes the working directory and
    the first place imports look (as the project's root is where it was deployed from)."""
    if _code:
        if _code[0] != code:  # a parent bug, never a silent wrong version
            raise RuntimeError(f"this child runs code {_code[0]}, not {code}")
        return
    _code.append(code)
    if root is not None:
        os.chdir(root)
        sys.path.insert(0, root)


def _run(
    flows: dict[str, Flow[..., Any]], run_id: str, entrypoint: str, run_json: str | None,
    code: str = "env", root: str | None = None, config: ChildConfig | None = None,
) -> tuple[str, str | None, float]:
    """Run one flow run to its final state: `(state name, message, start cost in ms)`."""
    from engine.entrypoints import load_flow
    from engine.runtime import embedded
    from engine.runtime.failures import describe
    from engine.schemas import FlowRun
    from engine.states import Crashed, Failed

    received = time.perf_counter()
    flow_run_id = uuid.UUID(run_id)
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(flow_run_id=run_id)
    log = structlog.get_logger("workers.child")
    fence: int | None = None  # the attempt the worker's claim opened: its reports carry it
    try:
        flow_run: FlowRun | None = None
        if run_json is not None:
            flow_run = FlowRun.model_validate_json(run_json)
            fence = flow_run.state.details.attempt if flow_run.state is not None else None
        _enter_code(code, root)
        if config is not None:  # the Running state records the code this child executes
            embedded.set_worker_identity(config.worker_id, {**config.extra_details, "code": code})
        flow = flows.get(entrypoint)
        if flow is None:
            target = entrypoint if root is None else str(Path(root) / entrypoint)
            flow = flows[entrypoint] = load_flow(target)
        if flow_run is None:
            flow_run = embedded.call_sync(lambda api: api.read_flow_run(flow_run_id))
            fence = flow_run.state.details.attempt if flow_run.state is not None else None
    except Exception as exc:  # noqa: BLE001 - EntrypointError, or the engine unreachable
        state: State = Failed(message=f"could not start the flow run: {exc}", attempt=fence)
        if exc.__cause__ is not None:  # the flow's module raised while imported: where, in it
            state.details.error = describe(exc.__cause__)
        log.warning("flow run could not start", entrypoint=entrypoint, error=str(exc))
        _report(flow_run_id, state)
        return state.name, state.message, _ms(received)
    start_ms = _ms(received)
    try:
        state = embedded.engine_loop().run(flow.run_existing(flow_run))
    except Exception as exc:  # noqa: BLE001 - a runtime bug or the engine lost: never silent
        log.exception("the flow engine failed")
        state = Crashed(message=f"the flow engine failed: {type(exc).__name__}: {exc}", attempt=fence)
        state.details.error = describe(exc, trim=False)  # the engine's own frames are the story
        _report(flow_run_id, state)
    return state.name, state.message, start_ms


def _report(flow_run_id: uuid.UUID, state: State) -> None:
    from engine.runtime import embedded

    try:
        embedded.call_sync(
            lambda api: api.set_flow_run_state(flow_run_id, state), timeout=_REPORT_TIMEOUT
        )
    except Exception:  # noqa: BLE001 - the parent still learns the outcome from the pipe
        structlog.get_logger("workers.child").exception("could not report the state", state=state.name)


def _ms(since: float) -> float:
    return round((time.perf_counter() - since) * 1000, 3)
