"""a run's process group on its jobs; when a delete was first asked

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("jobs", sa.Column("run_pgid", sa.Integer(), nullable=True))
    op.add_column("instances", sa.Column("delete_requested_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    op.drop_column("instances", "delete_requested_at")
    op.drop_column("jobs", "run_pgid")
