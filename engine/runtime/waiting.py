"""Waiting for flow runs by listening to their events — never by polling.

One `RunWaiter` per process lives on the engine loop with one private, auto-deleted queue on
`flowrelay.events`, bound to `flow-run.<flow>.*` for each flow it has been asked about. A wait
binds first, then reads the run once (it may already be final), then takes its events.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

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


def _key_word(value: str) -> str:
    return str(value).replace(".", "_") or "_"


class RunWaiter:
    def __init__(self, broker: Broker, names: Names | None = None) -> None:
        self.broker = broker
        self.names = names or Names()
        self._listeners: dict[uuid.UUID, set[asyncio.Queue[Event]]] = {}
        self._bound: set[str] = set()
        self._queue: str | None = None
        self._consumer: Any = None
        self._lock = asyncio.Lock()

    async def close(self) -> None:
        if self._consumer is not None:
            await self._consumer.cancel(grace=1.0)
            self._consumer = None
        if self._queue is not None:
            try:
                await self.broker.delete_queue(self._queue)
            except Exception:  # noqa: BLE001 - an auto-delete queue goes anyway
                pass
            self._queue = None

    async def _ensure_bound(self, flow_name: str) -> None:
        async with self._lock:
            if self._queue is None:
                spec = QueueSpec.temporary(prefix=f"{self.names.prefix}.wait")
                self._queue = await self.broker.declare_queue(spec)
                self._consumer = await self.broker.consume(self._queue, self._on_message, prefetch=512)
            if flow_name not in self._bound:
                await self.broker.bind(self._queue, self.names.events, f"flow-run.{_key_word(flow_name)}.*")
                self._bound.add(flow_name)

    async def _on_message(self, message: IncomingMessage) -> None:
        await message.ack()
        try:
            event = Event.model_validate_json(message.body)
            run_id = uuid.UUID(str(event.resource.get("id", "")).removeprefix("flow-run/"))
        except ValueError:
            log.warning("ignored a malformed flow-run event", routing_key=message.routing_key)
            return
        for queue in self._listeners.get(run_id, ()):
            queue.put_nowait(event)

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
                    event = await queue.get()
                    yield event
                    if event.payload.get("type") in FINAL_TYPE_NAMES:
                        yield await api.read_flow_run(flow_run_id)
                        return
        finally:
            listeners = self._listeners.get(flow_run_id)
            if listeners is not None:
                listeners.discard(queue)
                if not listeners:
                    del self._listeners[flow_run_id]

    async def wait(
        self,
        api: EngineAPI,
        flow_run_id: uuid.UUID,
        timeout: float | None,
        *,
        flow_name: str | None = None,
    ) -> FlowRun:
        """The run once it is final; `WaitTimeout` after `timeout` seconds. Give the run's
        `flow_name` when known (it saves reading the run to find it)."""
        queue: asyncio.Queue[Event] = asyncio.Queue()
        self._listeners.setdefault(flow_run_id, set()).add(queue)
        try:
            if flow_name is None:
                flow_name = (await api.read_flow_run(flow_run_id)).flow_name
            await self._ensure_bound(flow_name)
            run = await api.read_flow_run(flow_run_id)  # it may have finished before we bound
            if run.state is not None and run.state.is_final():
                return run
            try:
                async with asyncio.timeout(timeout):
                    while True:
                        event = await queue.get()
                        if event.payload.get("type") in FINAL_TYPE_NAMES:
                            return await api.read_flow_run(flow_run_id)
            except TimeoutError:
                current = await api.read_flow_run(flow_run_id)
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
