"""Deployment dispatch: ``flow_runs.dispatched_at``.

Set when a deployment run is handed to its pool (its ``flow-run.dispatched`` outbox row written
in the same transaction); NULL while the run waits for its start time, a concurrency slot or a
retry. The concurrency limit counts dispatched-but-unclaimed runs, and the server's start-up timer
loads the undispatched ones (`engine.deployments.due_runs`).

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # A nullable column: a plain ALTER TABLE ... ADD COLUMN on both SQLite and PostgreSQL.
    op.add_column(
        "flow_runs", sa.Column("dispatched_at", sa.DateTime(timezone=True), nullable=True)
    )


def downgrade() -> None:
    with op.batch_alter_table("flow_runs") as batch:  # SQLite cannot drop a column in place
        batch.drop_column("dispatched_at")
