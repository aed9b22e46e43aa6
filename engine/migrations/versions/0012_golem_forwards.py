"""Golem compatibility: the SSH port each Golem VM is forwarded on (persisted, so a restart keeps it)

Revision ID: 0012
Revises: 0011
"""

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "forwards",
        sa.Column("port", sa.Integer(), primary_key=True, autoincrement=False),
        sa.Column("instance_id", sa.Integer(), sa.ForeignKey("instances.id"), nullable=False, unique=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("forwards")
