"""Webhook deliveries and the dispatch outbox.

Revision ID: 20261124_0002
Revises: 20261124_0001
Create Date: 2026-11-24

Why: a training job's "run finished" must never be lost, acted on twice, or acted on
unverified. Each verified delivery is stored under its webhook-id (a second copy
finds the row and does nothing), and the quality loop it calls for is written to
an outbox in the same transaction as the run change, so a crash between the 202 and
the dispatch leaves a pending row for the sweeper instead of a silent gap.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "20261124_0002"
down_revision = "20261124_0001"
branch_labels = None
depends_on = None

JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
BIGINT_PK = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
TIMESTAMP = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "dispatches",
        sa.Column("id", BIGINT_PK, autoincrement=True, nullable=False),
        sa.Column("key", sa.String(length=255), nullable=False),
        sa.Column("run_id", sa.String(length=32), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("target", sa.String(length=32), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.Column("dispatched_at", TIMESTAMP, nullable=True),
        sa.CheckConstraint("status IN ('pending', 'dispatched')", name=op.f("ck_dispatches_status")),
        sa.ForeignKeyConstraint(["run_id"], ["runs.id"], name=op.f("fk_dispatches_run_id_runs"),
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_dispatches")),
        sa.UniqueConstraint("key", name=op.f("uq_dispatches_key")),
    )
    op.create_index(op.f("ix_dispatches_run_id"), "dispatches", ["run_id"])
    op.create_index("ix_dispatches_status_created_at", "dispatches", ["status", "created_at"])

    op.create_table(
        "webhook_deliveries",
        sa.Column("id", sa.String(length=255), nullable=False),
        sa.Column("event_type", sa.String(length=32), nullable=False),
        sa.Column("payload", JSON, nullable=False),
        sa.Column("run_id", sa.String(length=32), nullable=True),
        sa.Column("received_at", TIMESTAMP, nullable=False),
        sa.ForeignKeyConstraint(["run_id"], ["runs.id"],
                                name=op.f("fk_webhook_deliveries_run_id_runs"), ondelete="SET NULL"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_webhook_deliveries")),
    )
    op.create_index("ix_webhook_deliveries_received_at", "webhook_deliveries", ["received_at"])


def downgrade() -> None:
    op.drop_index("ix_webhook_deliveries_received_at", table_name="webhook_deliveries")
    op.drop_table("webhook_deliveries")
    op.drop_index("ix_dispatches_status_created_at", table_name="dispatches")
    op.drop_index(op.f("ix_dispatches_run_id"), table_name="dispatches")
    op.drop_table("dispatches")
