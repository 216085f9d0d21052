"""Tuning: studies, trials and every reported result; run lineage to its trial.

Revision ID: 20261124_0003
Revises: 20261124_0002
Create Date: 2026-11-24

Why: a sweep fans out many Ray Tune trials, and every trial and every result it
reports must be on record, not only the winner: to compare, to resume without
duplicates (unique per study + trial, and per trial + iteration), and to show that a
scheduler really stopped trials early. A run registered from the best trial points
back to its study and trial.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = '20261124_0003'
down_revision = '20261124_0002'
branch_labels = None
depends_on = None

JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
BIGINT_PK = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
TIMESTAMP = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table('studies',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('name', sa.String(length=255), nullable=False),
    sa.Column('dataset', sa.String(length=255), nullable=False),
    sa.Column('metric', sa.String(length=64), nullable=False),
    sa.Column('mode', sa.String(length=8), nullable=False),
    sa.Column('spec', JSON, nullable=False),
    sa.Column('storage_path', sa.Text(), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('best_trial_id', sa.String(length=64), nullable=True),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('created_at', TIMESTAMP, nullable=False),
    sa.Column('finished_at', TIMESTAMP, nullable=True),
    sa.CheckConstraint("status IN ('running', 'completed', 'interrupted', 'failed')", name=op.f('ck_studies_status')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_studies'))
    )
    with op.batch_alter_table('studies', schema=None) as batch_op:
        batch_op.create_index('ix_studies_name_created_at', ['name', 'created_at'], unique=False)

    op.create_table('trials',
    sa.Column('id', BIGINT_PK, autoincrement=True, nullable=False),
    sa.Column('study_id', sa.String(length=32), nullable=False),
    sa.Column('trial_id', sa.String(length=64), nullable=False),
    sa.Column('config', JSON, nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('iterations', sa.Integer(), nullable=False),
    sa.Column('last_metrics', JSON, nullable=False),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('predictions_uri', sa.Text(), nullable=True),
    sa.Column('run_id', sa.String(length=32), nullable=True),
    sa.Column('started_at', TIMESTAMP, nullable=True),
    sa.Column('finished_at', TIMESTAMP, nullable=True),
    sa.CheckConstraint("status IN ('pending', 'running', 'completed', 'stopped', 'failed')", name=op.f('ck_trials_status')),
    sa.ForeignKeyConstraint(['run_id'], ['runs.id'], name=op.f('fk_trials_run_id_runs'), ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['study_id'], ['studies.id'], name=op.f('fk_trials_study_id_studies'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_trials')),
    sa.UniqueConstraint('study_id', 'trial_id', name=op.f('uq_trials_study_id_trial_id'))
    )
    op.create_table('trial_results',
    sa.Column('id', BIGINT_PK, autoincrement=True, nullable=False),
    sa.Column('trial_pk', BIGINT_PK, nullable=False),
    sa.Column('iteration', sa.Integer(), nullable=False),
    sa.Column('metrics', JSON, nullable=False),
    sa.Column('reported_at', TIMESTAMP, nullable=False),
    sa.ForeignKeyConstraint(['trial_pk'], ['trials.id'], name=op.f('fk_trial_results_trial_pk_trials'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_trial_results')),
    sa.UniqueConstraint('trial_pk', 'iteration', name=op.f('uq_trial_results_trial_pk_iteration'))
    )
    with op.batch_alter_table('runs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('study_id', sa.String(length=32), nullable=True))
        batch_op.add_column(sa.Column('trial_id', sa.String(length=64), nullable=True))
        batch_op.create_index(batch_op.f('ix_runs_study_id'), ['study_id'], unique=False)
        batch_op.create_foreign_key(batch_op.f('fk_runs_study_id_studies'), 'studies', ['study_id'], ['id'], ondelete='SET NULL')



def downgrade() -> None:
    with op.batch_alter_table('runs', schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f('fk_runs_study_id_studies'), type_='foreignkey')
        batch_op.drop_index(batch_op.f('ix_runs_study_id'))
        batch_op.drop_column('trial_id')
        batch_op.drop_column('study_id')

    op.drop_table('trial_results')
    op.drop_table('trials')
    with op.batch_alter_table('studies', schema=None) as batch_op:
        batch_op.drop_index('ix_studies_name_created_at')

    op.drop_table('studies')
