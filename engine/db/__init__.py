"""The database layer: engine creation and migrations (`engine.db.engine`), tables
(`engine.db.models`)."""

from engine.db.engine import create_db_engine, is_sqlite, migrate, read_only

__all__ = ["create_db_engine", "is_sqlite", "migrate", "read_only"]
