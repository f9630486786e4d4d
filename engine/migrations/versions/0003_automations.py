"""Automations: definitions, durable trigger state, firings.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-24
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON = sa.JSON(none_as_null=True)


def _ts(name: str, nullable: bool = False) -> sa.Column:  # type: ignore[type-arg]
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "automations",
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("definition", JSON, nullable=False),
        sa.Column("source", sa.String(1024), nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("counters", JSON, nullable=False),
        _ts("created"),
        _ts("updated"),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_automations")),
    )
    op.create_table(
        "automation_state",
        sa.Column("automation", sa.String(200), nullable=False),
        sa.Column("key", sa.String(1024), nullable=False),
        sa.Column("state", JSON, nullable=False),
        _ts("updated"),
        sa.ForeignKeyConstraint(
            ["automation"], ["automations.name"], ondelete="CASCADE",
            name=op.f("fk_automation_state_automation_automations"),
        ),
        sa.PrimaryKeyConstraint("automation", "key", name=op.f("pk_automation_state")),
    )
    op.create_table(
        "automation_firings",
        sa.Column("id", sa.String(128), nullable=False),
        sa.Column("automation", sa.String(200), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        _ts("at"),
        sa.Column("bucket", sa.String(1024), nullable=False),
        sa.Column("correlation", sa.String(1024), nullable=True),
        sa.Column("event_ids", JSON, nullable=False),
        sa.Column("context", JSON, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("results", JSON, nullable=False),
        _ts("updated"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_automation_firings")),
    )
    op.create_index(
        "ix_automation_firings_automation_at", "automation_firings", ["automation", "at"]
    )


def downgrade() -> None:
    op.drop_index("ix_automation_firings_automation_at", table_name="automation_firings")
    op.drop_table("automation_firings")
    op.drop_table("automation_state")
    op.drop_table("automations")
