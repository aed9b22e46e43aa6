"""seed tokens stored as digests (engine/seeds.py); the clear column kept for instances stored before

Revision ID: 0003
Revises: 0002
"""

import hashlib

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("instances") as batch:
        batch.add_column(sa.Column("seed_nonce", sa.String(length=32), nullable=True))
        batch.add_column(sa.Column("seed_token_hash", sa.String(length=64), nullable=True))
        batch.alter_column("seed_token", existing_type=sa.String(length=64), nullable=True)
    instances = sa.table(
        "instances", sa.column("id", sa.Integer), sa.column("seed_token", sa.String), sa.column("seed_token_hash")
    )
    connection = op.get_bind()
    for vmid, token in connection.execute(sa.select(instances.c.id, instances.c.seed_token)).all():
        digest = hashlib.sha256(token.encode()).hexdigest()
        connection.execute(sa.update(instances).where(instances.c.id == vmid).values(seed_token_hash=digest))
    with op.batch_alter_table("instances") as batch:
        batch.create_index("ix_instances_seed_token_hash", ["seed_token_hash"], unique=True)


def downgrade() -> None:
    with op.batch_alter_table("instances") as batch:
        batch.drop_index("ix_instances_seed_token_hash")
        batch.drop_column("seed_token_hash")
        batch.drop_column("seed_nonce")
