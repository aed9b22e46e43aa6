"""SSH keys on running VMs: the keys removed through the API (kept absent from the guest) and whether the last
key change waits for the VM's next start

Revision ID: 0011
Revises: 0010
"""

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("instances") as batch:
        batch.add_column(sa.Column("ssh_keys_removed", sa.JSON(), nullable=False, server_default=sa.text("'[]'")))
        batch.add_column(sa.Column("ssh_keys_pending", sa.Boolean(), nullable=False, server_default=sa.false()))


def downgrade() -> None:
    with op.batch_alter_table("instances") as batch:
        batch.drop_column("ssh_keys_pending")
        batch.drop_column("ssh_keys_removed")
