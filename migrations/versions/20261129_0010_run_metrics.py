"""Run metrics as a time series: the loss curve of a run, point by point.

Revision ID: 20261129_0010
Revises: 20261129_0009
Create Date: 2026-11-29

Why: runs kept only the last value of each metric (``runs.metrics``), so a training
run's loss curve was lost. ``run.progress`` deliveries (a Tunix trainer's hook) and the
metrics of jobs launched by ``tunix-rt train`` now add one row per metric and step.
The key (run, name, step) makes a repeated point a no-op. Rows go with their run.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "20261129_0010"
down_revision = "20261129_0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "run_metrics",
        sa.Column("run_id", sa.String(length=32), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("step", sa.BigInteger(), nullable=False),
        sa.Column("value", sa.Float(), nullable=True),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["run_id"], ["runs.id"], name=op.f("fk_run_metrics_run_id_runs"),
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("run_id", "name", "step", name=op.f("pk_run_metrics")),
    )


def downgrade() -> None:
    op.drop_table("run_metrics")
