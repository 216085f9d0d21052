"""Launched jobs: a run's exit code, its log, and cancellation requests.

Revision ID: 20261124_0004
Revises: 20261124_0003
Create Date: 2026-11-24

Why: `tunix-rt train` launches the training job itself, so the run row must say
how the job ended (exit code), where its whole log is kept, and whether someone
asked to cancel it (`tunix-rt runs cancel`), which the supervising task polls.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "20261124_0004"
down_revision = "20261124_0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("exit_code", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("log_uri", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("cancel_requested_at", sa.DateTime(timezone=True),
                                      nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.drop_column("cancel_requested_at")
        batch_op.drop_column("log_uri")
        batch_op.drop_column("exit_code")
