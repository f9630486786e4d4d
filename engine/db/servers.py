"""Servers, partition leases and outbox adoption in the database (`engine.server.leases`).

One `tick` is one transaction, run by each server every third of its lease (at least every 2 s):

1. its own row in ``servers`` is renewed (inserted again if a live server removed it after it
   had let its lease run out: paused for longer than the lease);
2. the rows of servers whose lease ran out are deleted, and the unsent outbox rows written by a
   server that is not live any more (or by no server) are adopted: one UPDATE moves them to this
   server, so exactly one live server publishes them (on PostgreSQL two concurrent adopters are
   serialised by the rows' locks, and the second finds them written by a live server);
3. (the partition rows are locked first, all of them in one order: the ticks of several servers
   take turns) this server renews the partitions it owns, gives back those above its fair share
   (`ceil(partitions / live servers)`: a server that joins gets its share within a lease), and
   takes free or expired ones up to it. Every change of owner adds one to the partition's token.

Times are the database's clock on PostgreSQL (`clock_timestamp()`: servers on several machines
need no synchronised clocks for their leases) and this machine's on SQLite (one machine).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
import os
import secrets
import socket

from sqlalchemy import delete, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from engine.db.models import EventRow, PartitionRow, ServerRow
from engine.db.repository import insert_ignoring_conflicts
from engine.states import utcnow


@dataclasses.dataclass(frozen=True)
class Tick:
    """What one tick found and did."""

    #: partitions this server owns after the tick -> their fencing token
    owned: dict[int, int]
    #: live servers (this one included)
    live: list[str]
    #: servers found dead (lease run out) and removed in this tick
    died: list[str]
    #: unsent outbox rows adopted from dead servers in this tick
    adopted: int
    #: partitions taken in this tick (owned by another server or by nobody before)
    gained: list[int]
    #: partitions this server owned before the tick and another server took (its lease ran out)
    lost: list[int]
    #: partitions this server gave back in this tick (above its fair share: for a newcomer)
    released: list[int] = dataclasses.field(default_factory=list)


def new_server_id() -> str:
    """A server's identity: its host, process and a random part (a restarted server is another)."""
    return f"{socket.gethostname()[:60]}-{os.getpid()}-{secrets.token_hex(3)}"


async def db_now(session: AsyncSession) -> dt.datetime:
    """The database's clock (PostgreSQL) or this machine's (SQLite), timezone-aware UTC."""
    if session.get_bind().dialect.name == "postgresql":
        now: dt.datetime | None = await session.scalar(select(func.clock_timestamp()))
        assert now is not None
        return now.astimezone(dt.UTC)
    return utcnow()


async def tick(
    session: AsyncSession,
    server_id: str,
    *,
    lease_seconds: float,
    partitions: int,
    held: dict[int, int],
    take_all: bool = False,
    api_url: str | None = None,
) -> Tick:
    """Renew `server_id`'s lease and partitions, remove dead servers, adopt their unsent rows,
    balance the partitions (see the module docstring). `held`: the partitions (and tokens) the
    server believes it owns; `take_all`: take every partition whoever owns it (SQLite, where one
    server runs: a server starting after a crash takes over at once)."""
    dialect = session.get_bind().dialect.name
    if not held:  # the partition rows exist once any server ran a tick
        await session.execute(
            insert_ignoring_conflicts(dialect, PartitionRow, ["partition"]),
            [{"partition": p, "owner": None, "token": 0, "lease_until": utcnow()} for p in range(partitions)],
        )
    query = select(PartitionRow).where(PartitionRow.partition < partitions).order_by(PartitionRow.partition)
    if dialect == "postgresql":  # first: the ticks of several servers take turns (no deadlock)
        query = query.with_for_update()
    rows = list(await session.scalars(query))
    now = await db_now(session)
    until = now + dt.timedelta(seconds=lease_seconds)
    renewed = await session.execute(
        update(ServerRow).where(ServerRow.id == server_id).values(lease_until=until, api_url=api_url)
    )
    if not getattr(renewed, "rowcount", 0):
        await session.execute(
            insert_ignoring_conflicts(dialect, ServerRow, ["id"]),
            [{"id": server_id, "started": now, "lease_until": until, "api_url": api_url}],
        )
    servers = (await session.execute(select(ServerRow.id, ServerRow.lease_until))).all()
    live = sorted(sid for sid, lease in servers if lease > now or sid == server_id)
    died = sorted(sid for sid, lease in servers if lease <= now and sid != server_id)
    if take_all:  # the only server: any other row is a predecessor's that crashed
        died, live = sorted(set(died) | set(live) - {server_id}), [server_id]
    if died:
        gone = delete(ServerRow).where(ServerRow.id.in_(died))
        await session.execute(gone if take_all else gone.where(ServerRow.lease_until <= now))
    adopted = await session.execute(
        update(EventRow)
        .where(EventRow.sent_at.is_(None), or_(EventRow.writer.is_(None), EventRow.writer.not_in(live)))
        .values(writer=server_id)
        .execution_options(synchronize_session=False)
    )

    share = math.ceil(partitions / max(len(live), 1))
    mine = [row for row in rows if row.owner == server_id]
    gained: list[int] = []
    released: list[int] = []
    if take_all:
        for row in rows:
            if row.owner != server_id:
                row.owner, row.token = server_id, row.token + 1
                gained.append(row.partition)
            row.lease_until = until
    else:
        for row in mine[share:]:  # above the fair share: given back for a newcomer to take
            row.owner, row.lease_until = None, now
            released.append(row.partition)
        mine = mine[:share]
        for row in mine:
            row.lease_until = until
        free = [row for row in rows if row.owner is None or (row.owner != server_id and row.lease_until <= now)]
        for row in free[: max(share - len(mine), 0)]:
            row.owner, row.token, row.lease_until = server_id, row.token + 1, until
            gained.append(row.partition)
    owned = {row.partition: row.token for row in rows if row.owner == server_id}
    await session.flush()
    lost = sorted(p for p, token in held.items() if owned.get(p) != token and p not in released)
    return Tick(owned=owned, live=live, died=died, adopted=int(getattr(adopted, "rowcount", 0) or 0),
                gained=sorted(gained), lost=lost, released=released)


async def leave(session: AsyncSession, server_id: str) -> None:
    """A server stopping cleanly: its partitions are free at once (no lease to wait out) and its
    row is removed (its unsent outbox rows are adopted by the next tick of a live server)."""
    now = await db_now(session)
    await session.execute(
        update(PartitionRow).where(PartitionRow.owner == server_id).values(owner=None, lease_until=now)
    )
    await session.execute(delete(ServerRow).where(ServerRow.id == server_id))


async def live_servers(session: AsyncSession) -> list[dict[str, object]]:
    """Live servers with the partitions they own (for /metrics)."""
    now = await db_now(session)
    servers = (await session.execute(
        select(ServerRow).where(ServerRow.lease_until > now).order_by(ServerRow.started)
    )).scalars().all()
    owned: dict[str, list[int]] = {}
    for partition, owner in await session.execute(
        select(PartitionRow.partition, PartitionRow.owner).where(PartitionRow.lease_until > now)
    ):
        if owner:
            owned.setdefault(owner, []).append(partition)
    return [
        {"id": s.id, "started": s.started.isoformat(), "lease_until": s.lease_until.isoformat(),
         "api_url": s.api_url, "partitions": sorted(owned.get(s.id, []))}
        for s in servers
    ]
