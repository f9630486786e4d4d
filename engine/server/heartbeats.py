"""Worker heartbeats: a worker silent for `heartbeat_timeout` has its runs marked Crashed.

Heartbeats arrive as commands; the monitor keeps the last one per worker in memory and checks
its own table (no database query) a few times per timeout. At start, runs held by workers are
given one full timeout to be claimed by a heartbeat before they are crashed.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import structlog

from engine.schemas import Event, FlowRunFilter
from engine.states import Crashed

log = structlog.get_logger("flowrelay.heartbeats")


class HeartbeatMonitor:
    def __init__(self, service: Any, *, timeout: float) -> None:
        self.service = service
        self.timeout = timeout
        self.last_seen: dict[str, float] = {}
        self.pools: dict[str, str] = {}
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        now = time.monotonic()
        held = FlowRunFilter(state_names=["Pending", "Running"], limit=100_000)
        for run in await self.service.read_flow_runs(held):
            worker_id = run.state.details.worker_id if run.state else None
            if worker_id:
                self.last_seen.setdefault(worker_id, now)
        self._task = asyncio.create_task(self._run(), name="flowrelay-heartbeat-monitor")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def beat(self, worker_id: str, pool: str, flow_run_ids: list[str]) -> dict[str, Any]:
        self.last_seen[worker_id] = time.monotonic()
        self.pools[worker_id] = pool
        return {}

    async def _run(self) -> None:
        interval = max(0.2, min(self.timeout / 4, 5.0))
        while True:
            await asyncio.sleep(interval)
            now = time.monotonic()
            for worker_id, seen in list(self.last_seen.items()):
                if now - seen > self.timeout:
                    await self._crash_worker(worker_id, now - seen)

    async def _crash_worker(self, worker_id: str, silent_for: float) -> None:
        try:
            runs = await self.service.runs_held_by(worker_id)
            for run in runs:
                state = Crashed(
                    message=f"worker {worker_id!r} sent no heartbeat for {silent_for:.0f} s "
                    f"(server.heartbeat_timeout_seconds={self.timeout:g}); its run is presumed lost"
                )
                await self.service.set_flow_run_state(run.id, state)
                log.warning("run crashed: worker lost", flow_run_id=str(run.id), worker_id=worker_id)
            self.last_seen.pop(worker_id, None)
            self.pools.pop(worker_id, None)
            if runs:
                await self.service.emit_event(Event(
                    event="worker.lost", resource={"id": f"worker/{worker_id}"},
                    payload={"runs": [str(r.id) for r in runs], "silent_for_seconds": silent_for},
                ))
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - try again next round
            log.warning("could not crash runs of a lost worker", worker_id=worker_id,
                        error=f"{type(exc).__name__}: {exc}")
