"""Migrations: idempotent, safe to run concurrently, and identical to the models."""

from __future__ import annotations

import asyncio

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect, text

from engine.db import create_db_engine, migrate
from engine.db.models import Base


async def test_migrate_twice_is_a_no_op(db_url: str) -> None:
    engine = create_db_engine(db_url)
    try:
        await migrate(engine)
        await migrate(engine)

        async with engine.connect() as conn:
            version = (await conn.execute(text("SELECT version_num FROM alembic_version"))).all()
            tables = await conn.run_sync(lambda c: set(inspect(c).get_table_names()))
    finally:
        await engine.dispose()

    assert version == [("0007",)]
    assert set(Base.metadata.tables) | {"alembic_version"} == tables


async def test_migration_matches_the_models(db_url: str) -> None:
    engine = create_db_engine(db_url)
    try:
        await migrate(engine)
        async with engine.connect() as conn:
            diff = await conn.run_sync(
                lambda c: compare_metadata(MigrationContext.configure(c), Base.metadata)
            )
    finally:
        await engine.dispose()

    assert diff == []


async def test_concurrent_starts_migrate_once(db_url: str) -> None:
    engines = [create_db_engine(db_url) for _ in range(4)]
    try:
        await asyncio.gather(*(migrate(engine) for engine in engines))
        async with engines[0].connect() as conn:
            version = (await conn.execute(text("SELECT version_num FROM alembic_version"))).all()
    finally:
        for engine in engines:
            await engine.dispose()

    assert version == [("0007",)]


async def test_sqlite_file_gets_its_folder_and_pragmas(tmp_path) -> None:
    path = tmp_path / "nested" / "deeper" / "flowrelay.db"
    engine = create_db_engine(f"sqlite+aiosqlite:///{path}", busy_timeout_ms=1234)
    try:
        async with engine.connect() as conn:
            pragmas = {
                name: (await conn.exec_driver_sql(f"PRAGMA {name}")).scalar()
                for name in ("journal_mode", "busy_timeout", "foreign_keys", "synchronous")
            }
    finally:
        await engine.dispose()

    assert path.parent.is_dir()
    assert pragmas == {
        "journal_mode": "wal",
        "busy_timeout": 1234,
        "foreign_keys": 1,
        "synchronous": 1,
    }
