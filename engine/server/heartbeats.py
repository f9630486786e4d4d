"""Worker heartbeats: a worker that no server has heard for `heartbeat_timeout` has its runs
handled as lost.

A heartbeat reaches one server (workers share the command queue), which records it in the
database (`engine.db.workers`): every server on the database sees every heartbeat, whichever
server received it. A few times per timeout each monitor reads the workers whose last heartbeat
is older than the timeout and reaps each in one transaction (`EngineService.reap_lost_worker`):
the stale row is deleted only if it is still stale, so a worker heard meanwhile by any server is
left alone and two monitors never both act on one lost worker. Its runs:

- a deployment run still Pending (claimed, never started: the retry settings only come with
  Running) goes back to Scheduled and is dispatched again, without using a retry;
- any other run is proposed Crashed (the deployment's crash retries apply).

A live worker's heartbeat lists the runs it holds. A deployment run Pending for longer than the
timeout under a worker heard since then that does not list it was claimed for a worker that
never learnt it (the claim committed, its answer lost with a broker connection): it goes back to
Scheduled the same way, or nobody would ever run it.

At start, workers that hold runs but have no row are given one full timeout to be heard.

Leases. The reply to a heartbeat grants the worker a lease of `lease_seconds(timeout)` (80 % of
the timeout), counted by the worker from when it *sent* that heartbeat; it also lists the runs
the worker named whose attempt is over (`revoked`: the engine ended it, or a newer claim opened
another), which the worker stops at once. A server records a heartbeat no earlier than it was
sent and judges a worker only a full timeout after that, so a worker that stops its runs when its
lease runs out (`workers.worker`: the children watch it themselves, so a frozen worker process
cannot keep them going) has stopped them at least 20 % of a timeout before any server may hand
them to someone else.

Its own stalls. Crashed means "the owner is gone", never "I was busy": a server whose monitor
wakes up late (its event loop stalled, the process was stopped, the machine froze) and a server
that just started judge nobody for one timeout — heartbeats sent meanwhile are still queued for
it, and the silence it would measure is its own.

A database outage is waited out the same way: while the server's writes wait for the database
(`EngineService.unavailable_for`), heartbeats are answered with a lease without being recorded,
and nobody is judged until a timeout after the database is back.

Silence counts only while this server could hear: a server whose broker connection is down, or
came back less than a timeout ago (RabbitMQ restarted, connections closed), judges nobody — the
workers were cut off with it, their heartbeats and final states are on their way, and reaping
them would run their runs a second time. (`heard_for`: the broker's `connected_for`.)
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
import uuid
from collections.abc import Callable
from typing import Any

import structlog

from engine.states import utcnow

log = structlog.get_logger("flowrelay.heartbeats")

#: The lease a heartbeat grants, as a fraction of the heartbeat timeout (see the docstring).
LEASE_FRACTION = 0.8


def lease_seconds(timeout: float) -> float:
    """The lease a heartbeat grants its worker under `server.heartbeat_timeout_seconds`."""
    return round(timeout * LEASE_FRACTION, 3)


class HeartbeatMonitor:
    def __init__(
        self,
        service: Any,
        *,
        timeout: float,
        clock: Callable[[], dt.datetime] = utcnow,
        heard_for: Callable[[], float] = lambda: float("inf"),
    ) -> None:
        self.service = service
        self.timeout = timeout
        self.clock = clock
        self.heard_for = heard_for
        #: checks skipped because this server could not hear the workers for a full timeout
        self.deaf_checks = 0
        #: checks skipped because this server itself stalled or started less than a timeout ago
        self.stalled_checks = 0
        self._judge_after: dt.datetime | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.service.adopt_held_workers()
        self.stalled(0.0, why="started")  # its own downtime: the workers get one timeout
        self._task = asyncio.create_task(self._run(), name="flowrelay-heartbeat-monitor")

    def stalled(self, seconds: float, *, why: str = "stalled") -> None:
        """This server could not hear for `seconds` (it was stopped, its loop blocked, it was
        down): judge nobody until one full timeout from now."""
        self._judge_after = self.clock() + dt.timedelta(seconds=self.timeout)
        if seconds:
            log.warning("this server stalled: judging no worker for one heartbeat timeout",
                        stalled_seconds=round(seconds, 2), timeout=self.timeout, why=why)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def beat(
        self,
        worker_id: str,
        pool: str,
        flow_run_ids: list[str],
        attempts: dict[uuid.UUID, int] | None = None,
        info: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Record the heartbeat; reply with the worker's lease and the runs it must stop
        (`attempts`: the attempt of each run it is executing; `info`: what it says about itself,
        shown by ``flowrelay worker ls``).

        While the database is unavailable the heartbeat cannot be recorded, and nobody can be
        judged either (this server judges nobody until a timeout after it is back): the lease is
        granted all the same, so an outage is waited out, not turned into lost workers."""
        if self._database_down():
            return {"lease_seconds": lease_seconds(self.timeout), "revoked": []}
        await self.service.record_heartbeat(worker_id, pool, flow_run_ids, at=self.clock(), info=info)
        revoked = await self.service.superseded_attempts(attempts) if attempts else []
        for run_id in revoked:
            log.warning("worker runs a superseded attempt: telling it to stop",
                        worker_id=worker_id, flow_run_id=str(run_id), attempt=(attempts or {})[run_id])
        return {"lease_seconds": lease_seconds(self.timeout), "revoked": [str(r) for r in revoked]}

    def _database_down(self) -> bool:
        """Whether the database is unavailable to this server's writes (an outage is silence
        this server could not hear through: judge nobody until a timeout after it ends)."""
        if getattr(self.service, "unavailable_for", None) is None:
            return False
        self.stalled(0.0, why="database unavailable")
        return True

    async def _run(self) -> None:
        interval = max(0.2, min(self.timeout / 4, 5.0))
        # A wake-up later than this means the server itself stalled (not the workers).
        tolerance = max(1.0, interval)
        while True:
            slept = time.monotonic()
            await asyncio.sleep(interval)
            late = time.monotonic() - slept - interval
            if late > tolerance:
                self.stalled(late)
            try:
                await self.check()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - try again next round
                log.warning("checking worker heartbeats failed", error=f"{type(exc).__name__}: {exc}")

    async def check(self) -> None:
        """Reap every worker no server has heard for the timeout (while this one could hear)."""
        if self._database_down() or (self._judge_after is not None and self.clock() < self._judge_after):
            self.stalled_checks += 1
            return
        heard_for = self.heard_for()
        if heard_for < self.timeout:
            self.deaf_checks += 1
            log.debug("not judging worker heartbeats: the broker connection is down or new",
                      connected_for=round(heard_for, 2), timeout=self.timeout)
            return
        now = self.clock()
        before = now - dt.timedelta(seconds=self.timeout)
        for worker_id, last_seen in await self.service.silent_workers(before):
            silent_for = (now - last_seen).total_seconds()
            reason = (
                f"worker {worker_id!r} sent no heartbeat for {silent_for:.0f} s "
                f"(server.heartbeat_timeout_seconds={self.timeout:g})"
            )
            try:
                runs = await self.service.reap_lost_worker(
                    worker_id, before, reason, silent_for_seconds=silent_for
                )
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - try again next round
                log.warning("could not handle the runs of a lost worker", worker_id=worker_id,
                            error=f"{type(exc).__name__}: {exc}")
                continue
            for run in runs or ():
                log.warning("worker lost", worker_id=worker_id, flow_run_id=str(run.id),
                            state=run.state.name if run.state else None)
        for run in await self.service.release_orphaned_claims(before):
            extra = (run.state.details.model_extra or {}) if run.state else {}
            log.warning("orphaned run: its live worker does not hold it", flow_run_id=str(run.id),
                        worker_id=extra.get("lost_worker_id"),
                        state=run.state.name if run.state else None)
