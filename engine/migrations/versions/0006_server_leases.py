"""Servers and their leases: ``servers``, ``server_partitions``, ``events.writer``.

Each live server has a row in ``servers`` it renews (`lease_until`); the work that is not tied to
one request (dispatch timers, outbox sweeps, schedules) is split into partitions, each leased by
one live server at a time (``server_partitions``: owner, fencing token that only grows, lease).
An outbox row records the server that wrote it (``events.writer``): a relay sweeps only its own
rows, and the rows of a server whose lease ran out are adopted by one live server
(`engine.server.leases`).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-05
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "servers",
        sa.Column("id", sa.String(100), nullable=False),
        sa.Column("started", sa.DateTime(timezone=True), nullable=False),
        sa.Column("lease_until", sa.DateTime(timezone=True), nullable=False),
        sa.Column("api_url", sa.String(255), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_servers")),
    )
    op.create_table(
        "server_partitions",
        sa.Column("partition", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("owner", sa.String(100), nullable=True),
        sa.Column("token", sa.BigInteger(), nullable=False),
        sa.Column("lease_until", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("partition", name=op.f("pk_server_partitions")),
    )
    op.add_column("events", sa.Column("writer", sa.String(100), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("events") as batch:  # SQLite cannot drop a column in place
        batch.drop_column("writer")
    op.drop_table("server_partitions")
    op.drop_table("servers")
