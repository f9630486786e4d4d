"""Alembic environment for flowrelay.

Normally run in process by `engine.db.engine.migrate()`, which passes an open connection (inside
its transaction) as ``config.attributes["connection"]``. Also usable from the command line:
``alembic -c engine/migrations/alembic.ini -x url=sqlite+aiosqlite:///path upgrade head``.
"""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy.engine import Connection

from engine.db.models import Base

config = context.config
target_metadata = Base.metadata


def _run_with(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()


def _url() -> str:
    url = context.get_x_argument(as_dictionary=True).get("url") or config.get_main_option(
        "sqlalchemy.url"
    )
    if not url:
        raise SystemExit("no database URL: pass -x url=... or set sqlalchemy.url")
    return url


async def _run_online(url: str) -> None:
    from engine.db.engine import create_db_engine, lock_for_migration

    engine = create_db_engine(url)
    try:
        async with engine.begin() as conn:
            await lock_for_migration(conn)
            await conn.run_sync(_run_with)
    finally:
        await engine.dispose()


connection = config.attributes.get("connection")
if connection is not None:
    _run_with(connection)
elif context.is_offline_mode():
    context.configure(url=_url(), target_metadata=target_metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()
else:
    asyncio.run(_run_online(_url()))
