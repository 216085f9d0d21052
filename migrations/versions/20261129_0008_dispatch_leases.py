"""Leases on dispatches: the sweeper re-runs only loops that stopped, never slow ones.

Revision ID: 20261129_0008
Revises: 20261129_0007
Create Date: 2026-11-29

Why: the sweeper counted a loop dispatched more than ten minutes ago without an
evaluation as owed, and gave each retry a new idempotency key. A slow LLM evaluation
was therefore started again every sweep, up to five loops in parallel, each paying
for the same judge calls; two sweepers at once could also both dispatch one row.

Now a dispatch holds a lease: ``lease_until`` is set when it is claimed or
dispatched, renewed by the running quality loop, and cleared when the loop ends. The
sweeper takes only rows whose lease has expired, claiming them with SELECT ... FOR
UPDATE SKIP LOCKED; ``claimed_by`` names the holder; ``claims`` counts the sweepers'
claims and names the lease period in the idempotency key, which is stable within a
period rather than new for every attempt.

Existing rows get no lease (NULL): for them the old rule stands, owed once the grace
period after their dispatch has passed, so nothing owed is forgotten by upgrading.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "20261129_0008"
down_revision = "20261129_0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("dispatches", schema=None) as batch_op:
        batch_op.add_column(sa.Column("lease_until", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("claimed_by", sa.String(length=255), nullable=True))
        batch_op.add_column(sa.Column("claims", sa.Integer(), nullable=False,
                                      server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("dispatches", schema=None) as batch_op:
        batch_op.drop_column("claims")
        batch_op.drop_column("claimed_by")
        batch_op.drop_column("lease_until")
