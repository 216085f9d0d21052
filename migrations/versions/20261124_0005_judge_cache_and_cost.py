"""Judge cache, and the cost and self-consistency of an evaluation.

Revision ID: 20261124_0005
Revises: 20261124_0004
Create Date: 2026-11-24

Why: an LLM judge costs money and time per item. Its verdicts are cached under a
key of everything that decides them, so re-scoring a run, or re-running after a
crash, calls the provider only for what is missing; each evaluation records what
it cost (calls, cache hits, tokens) when the judge reports it, and, when asked to
repeat its gradings, how often they agreed.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "20261124_0005"
down_revision = "20261124_0004"
branch_labels = None
depends_on = None

JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    op.create_table(
        "judge_cache",
        sa.Column("key", sa.String(length=64), nullable=False),
        sa.Column("judge", sa.String(length=64), nullable=False),
        sa.Column("judge_version", sa.String(length=32), nullable=False),
        sa.Column("verdict", JSON, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_judge_cache")),
    )
    op.create_index("ix_judge_cache_judge_version", "judge_cache", ["judge", "judge_version"])
    with op.batch_alter_table("evaluations", schema=None) as batch_op:
        batch_op.add_column(sa.Column("cost", JSON, nullable=True))
        batch_op.add_column(sa.Column("agreement_rate", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("agreement_repeats", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("evaluations", schema=None) as batch_op:
        batch_op.drop_column("agreement_repeats")
        batch_op.drop_column("agreement_rate")
        batch_op.drop_column("cost")
    op.drop_index("ix_judge_cache_judge_version", table_name="judge_cache")
    op.drop_table("judge_cache")
