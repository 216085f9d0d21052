"""The candidate's response on each verdict, so the gate's evidence can show it.

Revision ID: 20261129_0011
Revises: 20261129_0010
Create Date: 2026-11-29

Why: a verdict kept the judge's reading of an answer (its score, rationale and a small
``raw``) but not the answer itself, which lives in the predictions file: a file that can
be moved, deleted or out of the service's reach. The gate page shows, for each item on
which a run and its baseline disagree, both responses; they are now on the record,
cut to a bounded length (the cut is marked). NULL for verdicts stored before.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "20261129_0011"
down_revision = "20261129_0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("verdicts") as batch:
        batch.add_column(sa.Column("response", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("verdicts") as batch:
        batch.drop_column("response")
