"""Alembic environment of the registry: runs on the connection handed over by common.db.migrate."""

from alembic import context

from discovery.models import Base

connection = context.config.attributes["connection"]
# Its own version table, so the registry may share a database with the provisioner.
context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=True,
    version_table="discovery_alembic_version",
)
with context.begin_transaction():
    context.run_migrations()
