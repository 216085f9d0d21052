"""Datasets (eval sets) as records, and coverage on evaluations, boards and gates.

Revision ID: 20261129_0007
Revises: 20261124_0005
Create Date: 2026-11-29

Why: a run could look better by answering less. Items missing from its predictions
file were never counted, and the gate paired only the items both runs had scored. The
dataset is now the answer key: a named, versioned set of items (ids, prompts,
references, a content hash). An evaluation is over the dataset's whole item set and
records how many items were missing (scored 0), how many lines named items outside
the dataset (not scored), and how many the judge could not score; board entries carry that coverage and a flag; a gate result counts the items
it left out.

Existing evaluations keep their scores, but their coverage is not known: n_missing
and dataset_id stay NULL ("unknown"), never invented, and their board entries are
flagged coverage_unknown until the run is evaluated again.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "20261129_0007"
down_revision = "20261124_0005"
branch_labels = None
depends_on = None

BigIntPK = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "datasets",
        sa.Column("id", BigIntPK, autoincrement=True, nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("content_hash", sa.String(length=64), nullable=False),
        sa.Column("n_items", sa.Integer(), nullable=False),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("source_run_id", sa.String(length=32), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("source IN ('registered', 'implicit')",
                           name=op.f("ck_datasets_source")),
        sa.ForeignKeyConstraint(["source_run_id"], ["runs.id"],
                                name=op.f("fk_datasets_source_run_id_runs"), ondelete="SET NULL"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_datasets")),
        sa.UniqueConstraint("name", "version", name=op.f("uq_datasets_name_version")),
    )
    op.create_table(
        "dataset_items",
        sa.Column("dataset_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
                  nullable=False),
        sa.Column("item_id", sa.String(length=255), nullable=False),
        sa.Column("prompt", sa.Text(), nullable=True),
        sa.Column("reference", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(["dataset_id"], ["datasets.id"],
                                name=op.f("fk_dataset_items_dataset_id_datasets"),
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("dataset_id", "item_id", name=op.f("pk_dataset_items")),
    )
    with op.batch_alter_table("evaluations", schema=None) as batch_op:
        batch_op.add_column(sa.Column("n_missing", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("n_extra", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("dataset_id", sa.BigInteger().with_variant(
            sa.Integer(), "sqlite"), nullable=True))
        batch_op.create_foreign_key(op.f("fk_evaluations_dataset_id_datasets"), "datasets",
                                    ["dataset_id"], ["id"], ondelete="RESTRICT")
        batch_op.create_index(op.f("ix_evaluations_dataset_id"), ["dataset_id"])
    with op.batch_alter_table("leaderboard_entries", schema=None) as batch_op:
        batch_op.add_column(sa.Column("n_missing", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("n_unscored", sa.Integer(), nullable=False,
                                      server_default="0"))
        batch_op.add_column(sa.Column("dataset_version", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("flag", sa.String(length=32), nullable=True))
    with op.batch_alter_table("gate_results", schema=None) as batch_op:
        batch_op.add_column(sa.Column("n_excluded", sa.Integer(), nullable=False,
                                      server_default="0"))
    # The entries on the boards now were ranked without coverage: say so.
    op.execute("UPDATE leaderboard_entries SET flag = 'coverage_unknown'")


def downgrade() -> None:
    with op.batch_alter_table("gate_results", schema=None) as batch_op:
        batch_op.drop_column("n_excluded")
    with op.batch_alter_table("leaderboard_entries", schema=None) as batch_op:
        batch_op.drop_column("flag")
        batch_op.drop_column("dataset_version")
        batch_op.drop_column("n_unscored")
        batch_op.drop_column("n_missing")
    with op.batch_alter_table("evaluations", schema=None) as batch_op:
        batch_op.drop_index(op.f("ix_evaluations_dataset_id"))
        batch_op.drop_constraint(op.f("fk_evaluations_dataset_id_datasets"), type_="foreignkey")
        batch_op.drop_column("dataset_id")
        batch_op.drop_column("n_extra")
        batch_op.drop_column("n_missing")
    op.drop_table("dataset_items")
    op.drop_table("datasets")
