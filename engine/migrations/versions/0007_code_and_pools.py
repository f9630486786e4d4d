"""Code that travels with deployments, and work pools: ``code_bundles``, ``deployments.code``,
``deployment_versions.code``, ``work_pools``, ``worker_heartbeats.info``.

A deployment of a flow file records the content-addressed bundle of its project
(``{"bundle": "sha256:...", ...}``) or, for code installed in the workers' environment, the
distribution and its version; the bundles themselves are stored in ``code_bundles`` (unless the
server keeps them in a directory, `code.bundle_dir`). A work pool gets a row once it has a
concurrency limit; a worker's heartbeat carries what it reports about itself (concurrency, runs
held, code loaded) in ``info``.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-05
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "code_bundles",
        sa.Column("hash", sa.String(80), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=True),
        sa.Column("created", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("hash", name=op.f("pk_code_bundles")),
    )
    op.add_column("deployments", sa.Column("code", sa.JSON(none_as_null=True), nullable=True))
    op.add_column("deployment_versions", sa.Column("code", sa.JSON(none_as_null=True), nullable=True))
    op.create_table(
        "work_pools",
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("concurrency_limit", sa.Integer(), nullable=True),
        sa.Column("created", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_work_pools")),
    )
    op.add_column("worker_heartbeats", sa.Column("info", sa.JSON(none_as_null=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("worker_heartbeats") as batch:  # SQLite cannot drop in place
        batch.drop_column("info")
    op.drop_table("work_pools")
    with op.batch_alter_table("deployment_versions") as batch:
        batch.drop_column("code")
    with op.batch_alter_table("deployments") as batch:
        batch.drop_column("code")
    op.drop_table("code_bundles")
