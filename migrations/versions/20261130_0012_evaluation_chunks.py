"""Chunked scoring: an evaluation may be running, and its finished chunks are recorded.

Revision ID: 20261130_0012
Revises: 20261129_0011
Create Date: 2026-11-30

Why: a large predictions file is scored in chunks, each a Prefect task that writes its
verdicts as it finishes, so memory does not grow with the eval set. Until every chunk
is in, the evaluation is ``running`` (never ranked, never gated); each finished chunk
leaves a row in ``evaluation_chunks`` (its byte range and a digest of its bytes, in the
same transaction as its verdicts), so a killed evaluation resumes where it stopped:
a chunk whose row matches the file as it is now is not scored again.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "20261130_0012"
down_revision = "20261129_0011"
branch_labels = None
depends_on = None

_BIG = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_JSON = sa.JSON().with_variant(sa.dialects.postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    with op.batch_alter_table("evaluations") as batch:
        batch.drop_constraint(op.f("ck_evaluations_status"), type_="check")
        batch.create_check_constraint(op.f("ck_evaluations_status"), "status IN ('completed', 'failed', 'running')")
    op.create_table(
        "evaluation_chunks",
        sa.Column("evaluation_id", _BIG, nullable=False),
        sa.Column("chunk_index", sa.Integer(), nullable=False),
        sa.Column("byte_start", sa.BigInteger(), nullable=False),
        sa.Column("byte_end", sa.BigInteger(), nullable=False),
        sa.Column("first_line", sa.Integer(), nullable=False),
        sa.Column("digest", sa.String(length=64), nullable=False),
        sa.Column("n_verdicts", sa.Integer(), nullable=False),
        sa.Column("n_extra", sa.Integer(), nullable=False),
        sa.Column("cost", _JSON, nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["evaluation_id"], ["evaluations.id"], ondelete="CASCADE",
                                name=op.f("fk_evaluation_chunks_evaluation_id_evaluations")),
        sa.PrimaryKeyConstraint("evaluation_id", "chunk_index", name=op.f("pk_evaluation_chunks")),
    )


def downgrade() -> None:
    op.drop_table("evaluation_chunks")
    op.execute("DELETE FROM evaluations WHERE status = 'running'")
    with op.batch_alter_table("evaluations") as batch:
        batch.drop_constraint(op.f("ck_evaluations_status"), type_="check")
        batch.create_check_constraint(op.f("ck_evaluations_status"), "status IN ('completed', 'failed')")
