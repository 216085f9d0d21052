"""Leaderboard ranks at read time: each entry carries its sort key, each board a record.

Revision ID: 20261130_0013
Revises: 20261130_0012
Create Date: 2026-11-30

Why: a stored rank made every evaluation re-rank the whole board (an insert near the
top moves every rank below it): 612 ms at 20,000 runs on PostgreSQL, linear in the
board. Entries now carry their sort key (flagged, minus the score, minus the items
scored, the run's creation time; the run id ends it) under one ascending index, so one
evaluation updates one row and a page is read by seeking that index; ranks are counted
when read. ``leaderboard_boards`` records each board's size, a generation that every
change bumps, and the unscored threshold its flags were computed with: NULL for the
boards carried over here (unknown), so the next update of each rebuilds it once.

The sort keys are filled from the entries' own evaluations and runs, so the boards
keep their order (and so their ranks). The downgrade numbers the entries again in the
same order.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "20261130_0013"
down_revision = "20261130_0012"
branch_labels = None
depends_on = None

_ORDER = ["order_flagged", "order_score", "order_n_scored", "run_created_at", "run_id"]


def upgrade() -> None:
    op.create_table(
        "leaderboard_boards",
        sa.Column("dataset", sa.String(length=255), nullable=False),
        sa.Column("judge", sa.String(length=64), nullable=False),
        sa.Column("max_unscored", sa.Float(), nullable=True),
        sa.Column("n_entries", sa.Integer(), nullable=False),
        sa.Column("generation", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("dataset", "judge", name=op.f("pk_leaderboard_boards")),
    )
    with op.batch_alter_table("leaderboard_entries") as batch:
        batch.add_column(sa.Column("order_flagged", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("order_score", sa.Float(), nullable=True))
        batch.add_column(sa.Column("order_n_scored", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("run_created_at", sa.DateTime(timezone=True), nullable=True))
    op.execute(
        "UPDATE leaderboard_entries SET "
        "order_flagged = CASE WHEN flag IS NULL THEN 0 ELSE 1 END, "
        "order_score = -score, "
        "order_n_scored = -(SELECT e.n_scored FROM evaluations e "
        "WHERE e.id = leaderboard_entries.evaluation_id), "
        "run_created_at = (SELECT r.created_at FROM runs r "
        "WHERE r.id = leaderboard_entries.run_id)")
    op.execute(
        "INSERT INTO leaderboard_boards (dataset, judge, max_unscored, n_entries, generation, "
        "updated_at) SELECT dataset, judge, NULL, count(*), 1, max(updated_at) "
        "FROM leaderboard_entries GROUP BY dataset, judge")
    with op.batch_alter_table("leaderboard_entries") as batch:
        for name in ("order_flagged", "order_n_scored"):
            batch.alter_column(name, existing_type=sa.Integer(), nullable=False)
        batch.alter_column("order_score", existing_type=sa.Float(), nullable=False)
        batch.alter_column("run_created_at", existing_type=sa.DateTime(timezone=True),
                           nullable=False)
        batch.drop_constraint(op.f("uq_leaderboard_entries_dataset_judge_rank"), type_="unique")
        batch.drop_column("rank")
        batch.create_index(op.f("ix_leaderboard_entries_order"), ["dataset", "judge", *_ORDER])


def downgrade() -> None:
    with op.batch_alter_table("leaderboard_entries") as batch:
        batch.drop_index(op.f("ix_leaderboard_entries_order"))
        batch.add_column(sa.Column("rank", sa.Integer(), nullable=True))
    order = ", ".join(_ORDER)
    op.execute(
        "UPDATE leaderboard_entries SET rank = ranked.rank FROM ("
        "SELECT dataset, judge, run_id, row_number() OVER (PARTITION BY dataset, judge "
        f"ORDER BY {order}) AS rank FROM leaderboard_entries) AS ranked "
        "WHERE ranked.dataset = leaderboard_entries.dataset "
        "AND ranked.judge = leaderboard_entries.judge "
        "AND ranked.run_id = leaderboard_entries.run_id")
    with op.batch_alter_table("leaderboard_entries") as batch:
        batch.alter_column("rank", existing_type=sa.Integer(), nullable=False)
        batch.create_unique_constraint(op.f("uq_leaderboard_entries_dataset_judge_rank"),
                                       ["dataset", "judge", "rank"])
        for name in ("run_created_at", "order_n_scored", "order_score", "order_flagged"):
            batch.drop_column(name)
    op.drop_table("leaderboard_boards")
