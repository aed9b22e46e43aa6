"""every instance has its seed token's digest (0003 filled it in for the instances stored before): NOT NULL, as the
model says

Revision ID: 0008
Revises: 0007
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("instances") as batch:
        batch.alter_column("seed_token_hash", existing_type=sa.String(length=64), nullable=False)


def downgrade() -> None:
    with op.batch_alter_table("instances") as batch:
        batch.alter_column("seed_token_hash", existing_type=sa.String(length=64), nullable=True)
