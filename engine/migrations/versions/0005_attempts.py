"""Fenced attempts: ``flow_runs.attempts``.

The number of claims made of a run; each claim opens attempt ``attempts + 1``, whose number its
states carry in ``details.attempt`` (`engine.orchestration`). Existing runs start at 0: a run
claimed before this migration carries no attempt and is judged as before.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-05
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "flow_runs",
        sa.Column("attempts", sa.Integer(), nullable=False, server_default=sa.text("0")),
    )


def downgrade() -> None:
    with op.batch_alter_table("flow_runs") as batch:  # SQLite cannot drop a column in place
        batch.drop_column("attempts")
