"""The webhook source of a run: a job's secret changes only the runs its source created.

Revision ID: 20261129_0009
Revises: 20261129_0008
Create Date: 2026-11-29

Why: any job holding the webhook secret could rewrite any run by its external id,
including runs registered by hand or launched by `tunix-rt train`. The receiver now
changes only runs of origin ``webhook``, and, when operators give a secret per source
(TUNIX_RT_WEBHOOK_SECRETS, ``source=whsec_...``), only those that the delivery's own
source created. ``runs.source`` names that source: the one whose secret verified the
run's first delivery.

Existing rows get NULL, the anonymous source of TUNIX_RT_WEBHOOK_SECRET, which is the
only one there was before: their webhooks keep working unchanged.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "20261129_0009"
down_revision = "20261129_0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("source", sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.drop_column("source")
