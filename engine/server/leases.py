"""Server leases: several servers on one PostgreSQL database share the work that no request owns.

Requests (commands, claims, state reports, rule firings) are served by whichever server takes
them from the broker; their writes are fenced by the run's attempt (`engine.orchestration`). What
no request owns is split into `PARTITIONS` partitions, each leased by one live server at a time:

- **due runs** (by run id): the partition's owner loads its due runs into its dispatch timer when
  it takes the partition and whenever a server dies (a dead server's timer held runs of every
  partition); a server still dispatches the runs it created itself (it heard of them first), and
  a run dispatched twice is claimed once (the claim is compare-and-set);
- **schedules** (by deployment): only the owner makes a deployment's scheduled runs, and it
  catches up what a dead owner missed when it takes the partition;
- **dispatches whose message is gone** (by run id): when the owner takes a partition, starts, or
  is back from an outage, a run dispatched more than a heartbeat timeout ago, still unclaimed,
  whose pool queue is empty, is dispatched again.

The **outbox** is not partitioned by key but by writer: each row records the server that wrote it
and only that server's relay publishes it, so a relay never republishes what another may still be
publishing. When a server's lease runs out, one live server adopts its unsent rows (one UPDATE:
`engine.db.servers.tick`) and publishes them.

Every lease lasts `server.lease_seconds` (10) and is renewed every third of it, at least every 2 s
(a dead server is found within the lease + 2 s). A server acts on a
partition only while its lease is valid by its own monotonic clock, counted from when it sent the
renewal, so it stops acting before the database lets another server take the partition (the
database counts from when it received the renewal, later). A server paused past its lease (SIGSTOP,
a frozen VM) finds its partitions taken when it resumes and carries on with what it is given. Every
change of owner adds one to the partition's token (a fencing token: it only grows).

SQLite runs one server: at start it takes every partition and every unsent row at once (a server
restarted after a crash does not wait out its predecessor's lease).
"""

from __future__ import annotations

import asyncio
import time
import uuid
import zlib
from collections.abc import Awaitable, Callable
from typing import Any

import structlog

from engine.db import servers
from engine.db.servers import Tick

log = structlog.get_logger("flowrelay.leases")

#: Partitions of the server-side work (fixed: every server of a database must agree on it).
PARTITIONS = 64


def partition_of(key: str | uuid.UUID, partitions: int = PARTITIONS) -> int:
    """The partition of a run id or deployment name: the same in every process (CRC-32)."""
    return zlib.crc32(str(key).encode()) % partitions


class LeaseKeeper:
    def __init__(
        self,
        service: Any,
        *,
        lease_seconds: float,
        single: bool,
        partitions: int = PARTITIONS,
        api_url: str | None = None,
        on_change: Callable[[Tick], Awaitable[None]] | None = None,
        on_tick: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.service = service
        self.server_id: str = service.server_id
        self.lease_seconds = lease_seconds
        self.single = single
        self.partitions = partitions
        self.api_url = api_url
        self.on_change = on_change
        #: called after every renewal (`Server`: looks for a broker reconnect)
        self.on_tick = on_tick
        #: partition -> fencing token, as of the last successful tick
        self.owned: dict[int, int] = {}
        self.live: list[str] = [self.server_id]
        self._valid_until = float("-inf")
        self._failing = False
        self._task: asyncio.Task[None] | None = None
        #: counters (tests, metrics)
        self.ticks = 0
        self.takeovers = 0
        self.adopted = 0

    def valid(self) -> bool:
        """Whether this server's leases are still valid by its own clock."""
        return time.monotonic() < self._valid_until

    def owns_partition(self, partition: int) -> bool:
        """Whether this server owns partition `partition` (of `partitions`) now."""
        return self.valid() and partition in self.owned

    def owns(self, key: str | uuid.UUID) -> bool:
        """Whether this server owns the partition of `key` now (a run id or deployment name)."""
        return self.valid() and partition_of(key, self.partitions) in self.owned

    async def start(self) -> None:
        await self.tick(take_all=self.single)
        self._task = asyncio.create_task(self._run(), name="flowrelay-lease-keeper")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        if self.owned or self.valid():
            try:  # hand the partitions over at once (bounded: a database outage must not hang stop)
                async with asyncio.timeout(min(self.lease_seconds, 5.0)):
                    await self.service.write(lambda s: servers.leave(s, self.server_id), events=False)
            except Exception as exc:  # noqa: BLE001 - they expire with their lease
                log.warning("could not give the partitions back; they expire with the lease",
                            server_id=self.server_id, error=f"{type(exc).__name__}: {exc}")
            self.owned = {}
            self._valid_until = float("-inf")

    async def tick(self, *, take_all: bool = False) -> Tick:
        """Renew, balance and take over (one transaction: `engine.db.servers.tick`)."""
        sent = time.monotonic()
        held = dict(self.owned) if self.valid() else {}
        result: Tick = await self.service.write(
            lambda session: servers.tick(
                session, self.server_id, lease_seconds=self.lease_seconds,
                partitions=self.partitions, held=held, take_all=take_all, api_url=self.api_url,
            ),
            events=False,
        )
        self.ticks += 1
        was = set(self.owned)
        self.owned = result.owned
        self.live = result.live
        self._valid_until = sent + self.lease_seconds
        recovered, self._failing = self._failing, False
        self.adopted += result.adopted
        # held nothing valid (a pause past the lease): whatever it had and has no more is lost
        lost = result.lost if held else sorted(was - set(result.owned))
        if result.gained or result.died:
            self.takeovers += 1
            log.info("partitions taken over", server_id=self.server_id, gained=len(result.gained),
                     owned=len(result.owned), live_servers=len(result.live), dead_servers=result.died,
                     adopted_events=result.adopted)
        elif result.adopted:
            log.info("adopted unsent events of dead servers", server_id=self.server_id,
                     adopted_events=result.adopted)
        if lost:
            log.warning("partitions lost to another server (this server's lease ran out)",
                        server_id=self.server_id, lost=len(lost))
        if result.released:
            log.info("partitions given back for another server", server_id=self.server_id,
                     released=len(result.released), live_servers=len(result.live))
        changed = result.gained or result.died or result.adopted or lost or result.released
        if changed or recovered:
            await self._changed(Tick(owned=result.owned, live=result.live, died=result.died,
                                     adopted=result.adopted, gained=result.gained, lost=lost,
                                     released=result.released))
        return result

    async def _run(self) -> None:
        # A dead server is found within lease + interval: at most 2 s over the lease.
        interval = min(self.lease_seconds / 3, 2.0)
        while True:
            await asyncio.sleep(interval)
            try:
                async with asyncio.timeout(self.lease_seconds):
                    await self.tick()
                if self.on_tick is not None:
                    await self.on_tick()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - an outage: the lease runs out, others take over
                self._failing = True
                log.warning("renewing this server's leases failed; retrying",
                            server_id=self.server_id, valid=self.valid(),
                            error=f"{type(exc).__name__}: {exc}")
                if not self.valid() and self.owned:  # let go of everything until renewed
                    lost, self.owned = sorted(self.owned), {}
                    log.warning("this server's leases ran out: it acts on no partition until "
                                "it renews them", server_id=self.server_id, lost=len(lost))
                    await self._changed(Tick(owned={}, live=self.live, died=[], adopted=0,
                                             gained=[], lost=lost))

    async def _changed(self, tick: Tick) -> None:
        if self.on_change is None:
            return
        try:
            await self.on_change(tick)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - taken up again after the next tick
            self._failing = True  # the next successful tick hands the change over again
            log.warning("could not take over what the lease change gave this server",
                        server_id=self.server_id, error=f"{type(exc).__name__}: {exc}")


__all__ = ["PARTITIONS", "LeaseKeeper", "Tick", "partition_of"]
