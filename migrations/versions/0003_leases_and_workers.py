"""leased execution: run leases with a fencing generation, recoveries, end reason, workers

A run is executed by whoever holds its lease (`owner`, `lease_expires_at`); every claim
bumps `lease_generation`, and an owner's writes are conditional on the generation it
claimed, so a process that lost its lease cannot overwrite its successor's work.
`recoveries` counts automatic takeovers of runs whose owner died; `error_code` is the
typed reason a run ended. `workers` lists the executing processes for operators.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02 17:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TIMESTAMP = sa.DateTime(timezone=True)


def upgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.add_column(sa.Column("lease_expires_at", TIMESTAMP, nullable=True))
        batch.add_column(
            sa.Column("lease_generation", sa.Integer(), server_default="0", nullable=False)
        )
        batch.add_column(sa.Column("recoveries", sa.Integer(), server_default="0", nullable=False))
        batch.add_column(sa.Column("error_code", sa.String(length=32), nullable=True))
        batch.add_column(
            sa.Column("reserved_tokens", sa.Integer(), server_default="0", nullable=False)
        )
        batch.add_column(
            sa.Column("reserved_cost_usd", sa.Float(), server_default="0", nullable=False)
        )
    # Workers look for claimable runs by status and lease, oldest first.
    op.create_index("ix_runs_status_lease_expires_at", "runs", ["status", "lease_expires_at"])
    op.create_table(
        "workers",
        sa.Column("id", sa.String(length=255), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("host", sa.String(length=255), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("max_runs", sa.Integer(), server_default="1", nullable=False),
        sa.Column("runs_held", sa.Integer(), server_default="0", nullable=False),
        sa.Column("started_at", TIMESTAMP, nullable=False),
        sa.Column("heartbeat_at", TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_workers")),
    )
    op.create_index("ix_workers_heartbeat_at", "workers", ["heartbeat_at"])


def downgrade() -> None:
    op.drop_index("ix_workers_heartbeat_at", table_name="workers")
    op.drop_table("workers")
    op.drop_index("ix_runs_status_lease_expires_at", table_name="runs")
    with op.batch_alter_table("runs") as batch:
        for name in (
            "reserved_cost_usd",
            "reserved_tokens",
            "error_code",
            "recoveries",
            "lease_generation",
            "lease_expires_at",
        ):
            batch.drop_column(name)
