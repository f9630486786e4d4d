"""Creating the async database engine and migrating its schema.

SQLite (aiosqlite) is tuned for one machine with several processes: WAL (readers never block the
writer), ``busy_timeout``, foreign keys, ``synchronous=NORMAL``. The sqlite3 driver's legacy
transaction control is switched off (``isolation_level = None``) and SQLAlchemy emits BEGIN
itself, through the ``connect``/``begin`` event hooks documented in SQLAlchemy's SQLite chapter:

- write transactions start with ``BEGIN IMMEDIATE``, so a transaction that reads then writes takes
  the write lock up front and waits (``busy_timeout``) instead of failing with SQLITE_BUSY when it
  upgrades from reader to writer;
- connections from :func:`read_only` start with a plain (deferred) ``BEGIN``: a snapshot read that
  never takes the write lock.

SQLite statements run on the event loop's thread (`_InlineConnection`), not on aiosqlite's
worker thread: a statement takes microseconds, while each hop to that thread and back costs more
than the statement itself (a state change is ~20 hops). A write transaction therefore runs from
BEGIN to COMMIT without yielding to the loop; the price is that a wait for another *process's*
write lock (``busy_timeout``) holds the loop, which one writer per database file never meets.

PostgreSQL goes through asyncpg with no special set-up.
"""

from __future__ import annotations

import sqlite3
from functools import partial
from pathlib import Path
from typing import Any

import aiosqlite
from alembic import command
from alembic.config import Config
from sqlalchemy import event, make_url, text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

#: Execution option marking a connection whose transactions only read (plain BEGIN on SQLite).
READ_ONLY_OPTION = "flowrelay_read_only"

#: Key of the PostgreSQL advisory lock that serialises concurrent migrations.
_MIGRATION_LOCK_KEY = 0x466C6F7752656C  # "FlowRel"

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"


def is_sqlite(engine: AsyncEngine) -> bool:
    return engine.dialect.name == "sqlite"


def create_db_engine(url: str, *, busy_timeout_ms: int = 5000) -> AsyncEngine:
    """An `AsyncEngine` for ``sqlite+aiosqlite:///path`` or ``postgresql+asyncpg://...``.

    For a SQLite file the parent folder is created. In-memory SQLite is refused: its single
    shared connection lets one coroutine's rollback discard another's work.
    """
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return create_async_engine(url, pool_pre_ping=True)

    database = parsed.database or ""
    if database in ("", ":memory:") or database.startswith("file::memory:"):
        raise ValueError(f"{url}: in-memory SQLite is not supported, use a file path")
    Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)

    args, kwargs = create_async_engine(url).dialect.create_connect_args(parsed)
    kwargs["check_same_thread"] = False  # opened on aiosqlite's thread, used on the loop's
    connector = partial(sqlite3.connect, *args, **kwargs)
    # A pool that keeps what a burst opened: a connection (and aiosqlite's thread) per checkout
    # beyond the default 5 cost more than the reads it served (10,000 runs made at once).
    engine = create_async_engine(
        url, async_creator=partial(_connect_inline, connector), pool_size=16, max_overflow=48
    )
    _install_sqlite_hooks(engine, busy_timeout_ms)
    return engine


class _InlineConnection(aiosqlite.Connection):
    """aiosqlite's connection with every call run at once on the caller's (the event loop's)
    thread; aiosqlite's own thread only opens and closes the connection."""

    async def _execute(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        if not self._running or not self._connection:
            raise ValueError("Connection closed")
        return fn(*args, **kwargs)


async def _connect_inline(connector: Any) -> aiosqlite.Connection:
    connection = _InlineConnection(connector, iter_chunk_size=64)
    connection._thread.daemon = True  # as SQLAlchemy does for aiosqlite's thread  # noqa: SLF001
    return await connection


def read_only(engine: AsyncEngine) -> AsyncEngine:
    """A view of `engine` (same pool) whose transactions are read-only snapshots."""
    return engine.execution_options(**{READ_ONLY_OPTION: True})


def _install_sqlite_hooks(engine: AsyncEngine, busy_timeout_ms: int) -> None:
    sync_engine = engine.sync_engine

    @event.listens_for(sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Take BEGIN away from the sqlite3 driver; the "begin" hook below emits it.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA synchronous=NORMAL")
        finally:
            cursor.close()

    @event.listens_for(sync_engine, "begin")
    def _on_begin(conn: Connection) -> None:
        if conn.get_execution_options().get(READ_ONLY_OPTION):
            conn.exec_driver_sql("BEGIN")
        else:
            conn.exec_driver_sql("BEGIN IMMEDIATE")


def alembic_config(connection: Connection | None = None) -> Config:
    """An Alembic config pointing at ``engine/migrations`` (no ini file needed)."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


def _upgrade(connection: Connection) -> None:
    command.upgrade(alembic_config(connection), "head")


async def migrate(engine: AsyncEngine) -> None:
    """Bring the schema to the latest revision. Idempotent; safe at every start.

    Runs in one transaction (write-locked on SQLite by BEGIN IMMEDIATE). On PostgreSQL a
    transaction-scoped advisory lock makes concurrent starts wait for each other: the second one
    finds the schema at head and does nothing.
    """
    async with engine.begin() as conn:
        await lock_for_migration(conn)
        await conn.run_sync(_upgrade)


async def lock_for_migration(conn: AsyncConnection) -> None:
    """Serialise migrations: a transaction-scoped advisory lock on PostgreSQL (on SQLite the
    BEGIN IMMEDIATE of the transaction already holds the write lock)."""
    if conn.dialect.name == "postgresql":
        await conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK_KEY})
