"""Initial schema: runs, evaluations, verdicts, leaderboards, baselines, gate results.

Revision ID: 20261124_0001
Revises: (none)
Create Date: 2026-11-24

Why: the system of record of the quality loop. Generated from tunix_rt/models.py and
read by hand. Verdicts get a table of their own (one row per item) rather than a JSON
blob on the evaluation, which is what made the earlier system"s rows grow without
bound; leaderboard entries are materialized per dataset and judge so reads page by
rank on an index; gate results are unique per candidate, judge, baseline and policy
so that re-running the loop updates instead of duplicating.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "20261124_0001"
down_revision = None
branch_labels = None
depends_on = None

JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
# SQLite only auto-increments an INTEGER PRIMARY KEY.
BIGINT_PK = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table("runs",
    sa.Column("id", sa.String(length=32), nullable=False),
    sa.Column("external_id", sa.String(length=255), nullable=True),
    sa.Column("name", sa.String(length=255), nullable=False),
    sa.Column("dataset", sa.String(length=255), nullable=False),
    sa.Column("model", sa.String(length=255), nullable=False),
    sa.Column("config", JSON, nullable=False),
    sa.Column("metrics", JSON, nullable=False),
    sa.Column("predictions_uri", sa.Text(), nullable=True),
    sa.Column("status", sa.String(length=16), nullable=False),
    sa.Column("dry_run", sa.Boolean(), nullable=False),
    sa.Column("origin", sa.String(length=16), nullable=False),
    sa.Column("error", sa.Text(), nullable=True),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("completed_at", sa.DateTime(timezone=True), nullable=True),
    sa.CheckConstraint("status IN ('pending', 'running', 'completed', 'failed')", name=op.f("ck_runs_status")),
    sa.PrimaryKeyConstraint("id", name=op.f("pk_runs")),
    sa.UniqueConstraint("external_id", name=op.f("uq_runs_external_id"))
    )
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.create_index("ix_runs_dataset_created_at", ["dataset", "created_at"], unique=False)
        batch_op.create_index("ix_runs_status", ["status"], unique=False)

    op.create_table("baseline_promotions",
    sa.Column("id", BIGINT_PK, autoincrement=True, nullable=False),
    sa.Column("dataset", sa.String(length=255), nullable=False),
    sa.Column("judge", sa.String(length=64), nullable=False),
    sa.Column("run_id", sa.String(length=32), nullable=False),
    sa.Column("previous_run_id", sa.String(length=32), nullable=True),
    sa.Column("source", sa.String(length=16), nullable=False),
    sa.Column("reason", sa.Text(), nullable=False),
    sa.Column("promoted_at", sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(["previous_run_id"], ["runs.id"], name=op.f("fk_baseline_promotions_previous_run_id_runs"), ondelete="SET NULL"),
    sa.ForeignKeyConstraint(["run_id"], ["runs.id"], name=op.f("fk_baseline_promotions_run_id_runs"), ondelete="CASCADE"),
    sa.PrimaryKeyConstraint("id", name=op.f("pk_baseline_promotions"))
    )
    with op.batch_alter_table("baseline_promotions", schema=None) as batch_op:
        batch_op.create_index("ix_baseline_promotions_dataset_judge", ["dataset", "judge", "promoted_at"], unique=False)

    op.create_table("baselines",
    sa.Column("dataset", sa.String(length=255), nullable=False),
    sa.Column("judge", sa.String(length=64), nullable=False),
    sa.Column("run_id", sa.String(length=32), nullable=False),
    sa.Column("promoted_at", sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(["run_id"], ["runs.id"], name=op.f("fk_baselines_run_id_runs"), ondelete="RESTRICT"),
    sa.PrimaryKeyConstraint("dataset", "judge", name=op.f("pk_baselines"))
    )
    with op.batch_alter_table("baselines", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_baselines_run_id"), ["run_id"], unique=False)

    op.create_table("evaluations",
    sa.Column("id", BIGINT_PK, autoincrement=True, nullable=False),
    sa.Column("run_id", sa.String(length=32), nullable=False),
    sa.Column("judge", sa.String(length=64), nullable=False),
    sa.Column("judge_version", sa.String(length=32), nullable=False),
    sa.Column("status", sa.String(length=16), nullable=False),
    sa.Column("score", sa.Float(), nullable=True),
    sa.Column("ci_low", sa.Float(), nullable=True),
    sa.Column("ci_high", sa.Float(), nullable=True),
    sa.Column("n_items", sa.Integer(), nullable=False),
    sa.Column("n_scored", sa.Integer(), nullable=False),
    sa.Column("n_unscored", sa.Integer(), nullable=False),
    sa.Column("error", sa.Text(), nullable=True),
    sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("finished_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("duration_s", sa.Float(), nullable=False),
    sa.CheckConstraint("status IN ('completed', 'failed')", name=op.f("ck_evaluations_status")),
    sa.ForeignKeyConstraint(["run_id"], ["runs.id"], name=op.f("fk_evaluations_run_id_runs"), ondelete="CASCADE"),
    sa.PrimaryKeyConstraint("id", name=op.f("pk_evaluations")),
    sa.UniqueConstraint("run_id", "judge", "judge_version", name=op.f("uq_evaluations_run_id_judge_judge_version"))
    )
    with op.batch_alter_table("evaluations", schema=None) as batch_op:
        batch_op.create_index("ix_evaluations_judge_status", ["judge", "status"], unique=False)
        batch_op.create_index(batch_op.f("ix_evaluations_run_id"), ["run_id"], unique=False)

    op.create_table("gate_results",
    sa.Column("id", BIGINT_PK, autoincrement=True, nullable=False),
    sa.Column("run_id", sa.String(length=32), nullable=False),
    sa.Column("dataset", sa.String(length=255), nullable=False),
    sa.Column("judge", sa.String(length=64), nullable=False),
    sa.Column("baseline_run_id", sa.String(length=32), nullable=True),
    sa.Column("baseline_key", sa.String(length=32), nullable=False),
    sa.Column("decision", sa.String(length=16), nullable=False),
    sa.Column("delta", sa.Float(), nullable=True),
    sa.Column("ci_low", sa.Float(), nullable=True),
    sa.Column("ci_high", sa.Float(), nullable=True),
    sa.Column("n_paired", sa.Integer(), nullable=False),
    sa.Column("reason", sa.Text(), nullable=False),
    sa.Column("policy", JSON, nullable=False),
    sa.Column("policy_digest", sa.String(length=16), nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    sa.CheckConstraint("decision IN ('pass', 'fail', 'inconclusive', 'no_baseline')", name=op.f("ck_gate_results_decision")),
    sa.ForeignKeyConstraint(["baseline_run_id"], ["runs.id"], name=op.f("fk_gate_results_baseline_run_id_runs"), ondelete="SET NULL"),
    sa.ForeignKeyConstraint(["run_id"], ["runs.id"], name=op.f("fk_gate_results_run_id_runs"), ondelete="CASCADE"),
    sa.PrimaryKeyConstraint("id", name=op.f("pk_gate_results")),
    sa.UniqueConstraint("run_id", "judge", "baseline_key", "policy_digest", name=op.f("uq_gate_results_run_id_judge_baseline_key_policy_digest"))
    )
    with op.batch_alter_table("gate_results", schema=None) as batch_op:
        batch_op.create_index("ix_gate_results_run_id_updated_at", ["run_id", "updated_at"], unique=False)

    op.create_table("leaderboard_entries",
    sa.Column("dataset", sa.String(length=255), nullable=False),
    sa.Column("judge", sa.String(length=64), nullable=False),
    sa.Column("run_id", sa.String(length=32), nullable=False),
    sa.Column("evaluation_id", BIGINT_PK, nullable=False),
    sa.Column("judge_version", sa.String(length=32), nullable=False),
    sa.Column("rank", sa.Integer(), nullable=False),
    sa.Column("score", sa.Float(), nullable=False),
    sa.Column("ci_low", sa.Float(), nullable=False),
    sa.Column("ci_high", sa.Float(), nullable=False),
    sa.Column("n_items", sa.Integer(), nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(["evaluation_id"], ["evaluations.id"], name=op.f("fk_leaderboard_entries_evaluation_id_evaluations"), ondelete="CASCADE"),
    sa.ForeignKeyConstraint(["run_id"], ["runs.id"], name=op.f("fk_leaderboard_entries_run_id_runs"), ondelete="CASCADE"),
    sa.PrimaryKeyConstraint("dataset", "judge", "run_id", name=op.f("pk_leaderboard_entries")),
    sa.UniqueConstraint("dataset", "judge", "rank", name=op.f("uq_leaderboard_entries_dataset_judge_rank"))
    )
    with op.batch_alter_table("leaderboard_entries", schema=None) as batch_op:
        batch_op.create_index("ix_leaderboard_entries_run_id", ["run_id"], unique=False)

    op.create_table("verdicts",
    sa.Column("id", BIGINT_PK, autoincrement=True, nullable=False),
    sa.Column("evaluation_id", BIGINT_PK, nullable=False),
    sa.Column("item_id", sa.String(length=255), nullable=False),
    sa.Column("score", sa.Float(), nullable=True),
    sa.Column("passed", sa.Boolean(), nullable=True),
    sa.Column("rationale", sa.Text(), nullable=False),
    sa.Column("raw", JSON, nullable=True),
    sa.ForeignKeyConstraint(["evaluation_id"], ["evaluations.id"], name=op.f("fk_verdicts_evaluation_id_evaluations"), ondelete="CASCADE"),
    sa.PrimaryKeyConstraint("id", name=op.f("pk_verdicts")),
    sa.UniqueConstraint("evaluation_id", "item_id", name=op.f("uq_verdicts_evaluation_id_item_id"))
    )


def downgrade() -> None:
    op.drop_table("verdicts")
    with op.batch_alter_table("leaderboard_entries", schema=None) as batch_op:
        batch_op.drop_index("ix_leaderboard_entries_run_id")

    op.drop_table("leaderboard_entries")
    with op.batch_alter_table("gate_results", schema=None) as batch_op:
        batch_op.drop_index("ix_gate_results_run_id_updated_at")

    op.drop_table("gate_results")
    with op.batch_alter_table("evaluations", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_evaluations_run_id"))
        batch_op.drop_index("ix_evaluations_judge_status")

    op.drop_table("evaluations")
    with op.batch_alter_table("baselines", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_baselines_run_id"))

    op.drop_table("baselines")
    with op.batch_alter_table("baseline_promotions", schema=None) as batch_op:
        batch_op.drop_index("ix_baseline_promotions_dataset_judge")

    op.drop_table("baseline_promotions")
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.drop_index("ix_runs_status")
        batch_op.drop_index("ix_runs_dataset_created_at")

    op.drop_table("runs")
