"""Waiting for flow runs by listening to their events — never by polling.

One `RunWaiter` per process lives on the engine loop with one private, auto-deleted queue on
`flowrelay.events`, bound to `flow-run.<flow>.*` for each flow it has been asked about. A wait
binds first, then reads the run once (it may already be final), then takes its events.

The read is skipped when the waiter was bound to the flow before the run was created (the caller
says when it started creating it): every event of the run then reached the waiter, and a final
event that arrived before anyone waited for that run is kept for the wait that comes for it.

A broker outage loses the events published while the waiter's queue was gone (it is temporary:
the broker drops it with the connection). So the waiter watches its broker connection (one task,
`Broker.connected_for` every `RECHECK_SECONDS`: a local check, no I/O); when it comes back, the
waiter declares a fresh queue with all its bindings and consumer (not left to the client
library's restore, whose timing and completeness it cannot see), then tells every wait, which
reads its run: an event published after the new bindings reaches the wait, a run that finished
before them is seen by the read. A run that finished meanwhile is returned at once, not at the
wait's timeout.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pydantic
import structlog

from engine.broker import Broker
from engine.broker.base import IncomingMessage
from engine.broker.topology import Names, QueueSpec
from engine.errors import WaitTimeout
from engine.ports import EngineAPI
from engine.schemas import Event, FlowRun
from engine.states import FINAL_TYPES

log = structlog.get_logger("flowrelay.wait")

FINAL_TYPE_NAMES = {t.value for t in FINAL_TYPES}
#: How many final events of runs nobody waits for (yet) a waiter keeps.
KEEP_FINAL_EVENTS = 10_000
#: How often the waiter looks whether its broker connection was re-established (a local check).
RECHECK_SECONDS = 0.5
#: Put in every wait's queue once the waiter listens again after a reconnect: read the run.
RECONNECTED = Event(event="flowrelay.waiter.reconnected", resource={"id": "waiter"})


def _key_word(value: str) -> str:
    return str(value).replace(".", "_") or "_"


class RunWaiter:
    def __init__(self, broker: Broker, names: Names | None = None) -> None:
        self.broker = broker
        self.names = names or Names()
        self._listeners: dict[uuid.UUID, set[asyncio.Queue[Event]]] = {}
        #: flow name → `time.monotonic()` once its binding was in place
        self._bound: dict[str, float] = {}
        #: final events of runs nobody was waiting for when they arrived, oldest first
        self._finals: collections.OrderedDict[uuid.UUID, Event] = collections.OrderedDict()
        self._queue: str | None = None
        self._consumer: Any = None
        self._lock = asyncio.Lock()
        #: `time.monotonic()` when the queue was last (re)declared
        self._declared_at = 0.0
        self._watcher: asyncio.Task[None] | None = None

    async def close(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
            self._watcher = None
        if self._consumer is not None:
            await self._consumer.cancel(grace=1.0)
            self._consumer = None
        if self._queue is not None:
            try:
                await self.broker.delete_queue(self._queue)
            except Exception:  # noqa: BLE001 - an auto-delete queue goes anyway
                pass
            self._queue = None

    async def _ensure_bound(self, flow_name: str) -> float:
        """Bind to the flow's run events (once); the `time.monotonic()` when that was done."""
        bound_at = self._bound.get(flow_name)
        if bound_at is not None:
            return bound_at
        async with self._lock:
            if self._queue is None:
                await self._declare()
            if flow_name not in self._bound:
                assert self._queue is not None
                await self.broker.bind(self._queue, self.names.events, f"flow-run.{_key_word(flow_name)}.*")
                self._bound[flow_name] = time.monotonic()
            return self._bound[flow_name]

    async def _declare(self) -> None:
        """A new temporary queue and its consumer, bound to every flow bound so far. Hold the
        lock."""
        spec = QueueSpec.temporary(prefix=f"{self.names.prefix}.wait")
        self._declared_at = time.monotonic()
        self._queue = await self.broker.declare_queue(spec)
        self._consumer = await self.broker.consume(
            self._queue, self._on_message, prefetch=512, auto_ack=True
        )
        for flow_name in self._bound:
            await self.broker.bind(self._queue, self.names.events, f"flow-run.{_key_word(flow_name)}.*")
            self._bound[flow_name] = self._declared_at  # events before it may be lost: read
        if self._watcher is None:
            self._watcher = asyncio.get_running_loop().create_task(
                self._watch(), name="flowrelay-waiter-reconnects"
            )

    async def _watch(self) -> None:
        """Once the broker connection is re-established: a fresh queue, then every wait reads."""
        while True:
            await asyncio.sleep(RECHECK_SECONDS)
            up = self.broker.connected_for()
            if up <= 0 or time.monotonic() - up <= self._declared_at:
                continue  # down, or no reconnect since the queue was declared
            try:
                await self._redeclare()
            except Exception as exc:  # noqa: BLE001 - the broker not quite back: next round
                log.info("could not listen again yet", error=f"{type(exc).__name__}: {exc}")
                continue
            for queues in self._listeners.values():
                for queue in queues:
                    queue.put_nowait(RECONNECTED)

    async def _redeclare(self) -> None:
        """Declare the queue afresh (after a reconnect)."""
        async with self._lock:
            old_consumer, old_queue = self._consumer, self._queue
            self._consumer = self._queue = None
            if old_consumer is not None:
                with contextlib.suppress(Exception):
                    await old_consumer.cancel(grace=0.5)
            if old_queue is not None:
                with contextlib.suppress(Exception):
                    await self.broker.delete_queue(old_queue)
            declared_at = self._declared_at
            try:
                await self._declare()
            except BaseException:
                self._declared_at = declared_at  # try again at the next round
                raise
            log.info("broker connection re-established: waiting on a fresh queue",
                     flows=len(self._bound))

    async def _on_message(self, message: IncomingMessage) -> None:
        await message.ack()
        try:
            data = json.loads(message.body)
            run_id = uuid.UUID(str(data["resource"]["id"]).removeprefix("flow-run/"))
            final = data.get("payload", {}).get("type") in FINAL_TYPE_NAMES
            listeners = self._listeners.get(run_id)
            if not listeners and not final:
                return  # nobody needs it: spare the parsing
            event = Event.model_validate(data)
        except (ValueError, KeyError, TypeError, AttributeError, pydantic.ValidationError):
            log.warning("ignored a malformed flow-run event", routing_key=message.routing_key)
            return
        if listeners:
            for queue in listeners:
                queue.put_nowait(event)
        else:
            self._finals[run_id] = event
            while len(self._finals) > KEEP_FINAL_EVENTS:
                self._finals.popitem(last=False)

    async def events(self, api: EngineAPI, run: FlowRun) -> AsyncIterator[Event]:
        """The run's state events from now on (the caller stops iterating when it has enough)."""
        queue: asyncio.Queue[Event] = asyncio.Queue()
        self._listeners.setdefault(run.id, set()).add(queue)
        try:
            await self._ensure_bound(run.flow_name)
            while True:
                yield await queue.get()
        finally:
            listeners = self._listeners.get(run.id)
            if listeners is not None:
                listeners.discard(queue)
                if not listeners:
                    del self._listeners[run.id]

    async def follow(
        self, api: EngineAPI, flow_run_id: uuid.UUID, timeout: float | None
    ) -> AsyncIterator[Event | FlowRun]:
        """The run's state events as they happen, then the final run (for `--watch`)."""
        queue: asyncio.Queue[Event] = asyncio.Queue()
        self._listeners.setdefault(flow_run_id, set()).add(queue)
        try:
            run = await api.read_flow_run(flow_run_id)
            await self._ensure_bound(run.flow_name)
            run = await api.read_flow_run(flow_run_id)
            if run.state is not None and run.state.is_final():
                yield run
                return
            async with asyncio.timeout(timeout):
                while True:
                    item = await self._next(api, flow_run_id, queue)
                    if isinstance(item, FlowRun):  # read after a reconnect: it is final
                        yield item
                        return
                    yield item
                    if item.payload.get("type") in FINAL_TYPE_NAMES:
                        yield await api.read_flow_run(flow_run_id)
                        return
        finally:
            listeners = self._listeners.get(flow_run_id)
            if listeners is not None:
                listeners.discard(queue)
                if not listeners:
                    del self._listeners[flow_run_id]

    async def _next(
        self, api: EngineAPI, flow_run_id: uuid.UUID, queue: asyncio.Queue[Event]
    ) -> Event | FlowRun:
        """The run's next event; or the run itself, final, read once the waiter listens again
        after a reconnect (its final event may have been published while the queue was gone)."""
        while True:
            event = await queue.get()
            if event is not RECONNECTED:
                return event
            while True:
                try:
                    run = await api.read_flow_run(flow_run_id)
                    break
                except Exception as exc:  # noqa: BLE001 - the engine not back yet: read again
                    log.debug("could not read the awaited run yet", error=f"{type(exc).__name__}: {exc}")
                    await asyncio.sleep(1.0)
            if run.state is not None and run.state.is_final():
                return run

    async def wait(
        self,
        api: EngineAPI,
        flow_run_id: uuid.UUID,
        timeout: float | None,
        *,
        flow_name: str | None = None,
        created_since: float | None = None,
    ) -> FlowRun:
        """The run once it is final; `WaitTimeout` after `timeout` seconds. Give the run's
        `flow_name` when known (it saves reading the run to find it), and `created_since`, a
        `time.monotonic()` taken before the run was created, when known (see the module
        docstring)."""
        queue: asyncio.Queue[Event] = asyncio.Queue()
        self._listeners.setdefault(flow_run_id, set()).add(queue)
        try:
            if flow_name is None:
                flow_name = (await api.read_flow_run(flow_run_id)).flow_name
            bound_at = await self._ensure_bound(flow_name)
            if self._finals.pop(flow_run_id, None) is not None:
                return await api.read_flow_run(flow_run_id)
            if created_since is None or bound_at >= created_since:
                run = await api.read_flow_run(flow_run_id)  # it may have finished before we bound
                if run.state is not None and run.state.is_final():
                    return run
            try:
                async with asyncio.timeout(timeout):
                    while True:
                        item = await self._next(api, flow_run_id, queue)
                        if isinstance(item, FlowRun):
                            return item
                        if item.payload.get("type") in FINAL_TYPE_NAMES:
                            return await api.read_flow_run(flow_run_id)
            except TimeoutError:
                current = await api.read_flow_run(flow_run_id)
                if current.state is not None and current.state.is_final():
                    return current
                raise WaitTimeout(
                    f"flow run {current.name!r} ({flow_run_id}) did not finish within {timeout:g} s; "
                    f"it is {current.state_name}"
                ) from None
        finally:
            listeners = self._listeners.get(flow_run_id)
            if listeners is not None:
                listeners.discard(queue)
                if not listeners:
                    del self._listeners[flow_run_id]
