"""Migration 0002 (`flow_runs.dispatched_at`) upgrades a 0001 database with runs in it, and
downgrades again."""

from __future__ import annotations

import datetime as dt
import uuid

from alembic import command
from sqlalchemy import inspect, text

from engine.db.engine import alembic_config, create_db_engine


async def test_upgrade_from_0001_keeps_runs_and_downgrades(db_url: str) -> None:
    engine = create_db_engine(db_url)
    now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    flow_id, run_id = uuid.uuid4(), uuid.uuid4()
    try:
        async with engine.begin() as conn:
            await conn.run_sync(lambda c: command.upgrade(alembic_config(c), "0001"))
            await conn.execute(
                text("INSERT INTO flows (id, name, created) VALUES (:id, 'etl', :now)"),
                {"id": flow_id.hex if conn.dialect.name == "sqlite" else flow_id, "now": now},
            )
            await conn.execute(
                text(
                    "INSERT INTO flow_runs (id, name, flow_id, flow_name, parameters, tags, "
                    "created, updated, run_count, event_seq) VALUES (:id, 'r', :flow, 'etl', "
                    "'{}', '[]', :now, :now, 0, 0)"
                ),
                {
                    "id": run_id.hex if conn.dialect.name == "sqlite" else run_id,
                    "flow": flow_id.hex if conn.dialect.name == "sqlite" else flow_id,
                    "now": now,
                },
            )
        async with engine.begin() as conn:
            await conn.run_sync(lambda c: command.upgrade(alembic_config(c), "0002"))
            columns = await conn.run_sync(
                lambda c: {col["name"] for col in inspect(c).get_columns("flow_runs")}
            )
            kept = (await conn.execute(text("SELECT name, dispatched_at FROM flow_runs"))).all()
        async with engine.begin() as conn:
            await conn.run_sync(lambda c: command.downgrade(alembic_config(c), "0001"))
            after = await conn.run_sync(
                lambda c: {col["name"] for col in inspect(c).get_columns("flow_runs")}
            )
            still = (await conn.execute(text("SELECT name FROM flow_runs"))).all()
    finally:
        await engine.dispose()

    assert "dispatched_at" in columns and kept == [("r", None)]
    assert "dispatched_at" not in after and still == [("r",)]
