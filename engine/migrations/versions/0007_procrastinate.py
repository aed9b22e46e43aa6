"""procrastinate's queue on PostgreSQL (engine/jobs/procrastinate_queue.py): its tables, types and functions, as the
pinned procrastinate version ships them; nothing on SQLite, where the embedded queue needs none

Revision ID: 0007
Revises: 0006
"""

from alembic import op
from procrastinate.schema import SchemaManager

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        return
    # Its SQL holds '%' and ':' that the DB-API and SQLAlchemy would read as parameters: hand it to psycopg raw.
    with bind.connection.driver_connection.cursor() as cursor:  # type: ignore[union-attr]
        cursor.execute(SchemaManager.get_schema())


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(
        """
        DO $$
        DECLARE item record;
        BEGIN
            FOR item IN SELECT tablename FROM pg_tables
                        WHERE schemaname = current_schema() AND tablename LIKE 'procrastinate\\_%' LOOP
                EXECUTE format('DROP TABLE IF EXISTS %I CASCADE', item.tablename);
            END LOOP;
            FOR item IN SELECT p.oid::regprocedure AS signature FROM pg_proc p
                        JOIN pg_namespace n ON n.oid = p.pronamespace
                        WHERE n.nspname = current_schema() AND p.proname LIKE 'procrastinate\\_%' LOOP
                EXECUTE format('DROP FUNCTION IF EXISTS %s CASCADE', item.signature);
            END LOOP;
            FOR item IN SELECT t.typname FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
                        WHERE n.nspname = current_schema() AND t.typname LIKE 'procrastinate\\_%'
                              AND t.typtype IN ('e', 'c') LOOP
                EXECUTE format('DROP TYPE IF EXISTS %I CASCADE', item.typname);
            END LOOP;
        END $$
        """
    )
