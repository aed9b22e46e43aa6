"""The schema migrations, engine's and registry's, from an empty database to head and back, on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from sqlalchemy import MetaData, inspect, text

from common.db import make_engine
from discovery.app import MIGRATIONS as REGISTRY_MIGRATIONS
from discovery.models import Base as RegistryBase
from engine.db import MIGRATIONS
from engine.models import Base

SCHEMAS = {
    "engine": (MIGRATIONS, Base.metadata, "alembic_version"),
    "registry": (REGISTRY_MIGRATIONS, RegistryBase.metadata, "discovery_alembic_version"),
}


# The queue's tables on PostgreSQL (0007: procrastinate's own schema); SQLite needs none.
PROCRASTINATE_TABLES = {
    "procrastinate_jobs",
    "procrastinate_events",
    "procrastinate_workers",
    "procrastinate_periodic_defers",
}


def queue_tables(url: str, schema: str) -> set[str]:
    return PROCRASTINATE_TABLES if schema == "engine" and url.startswith("postgresql") else set()


def procrastinate_leftovers(url: str) -> list[str]:
    """procrastinate's functions and types left in a PostgreSQL database (none on SQLite)."""
    if not url.startswith("postgresql"):
        return []
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            query = text(
                "SELECT proname FROM pg_proc WHERE proname LIKE :prefix "
                "UNION ALL SELECT typname FROM pg_type WHERE typname LIKE :prefix"
            )
            return list(connection.execute(query, {"prefix": "procrastinate%"}).scalars())
    finally:
        engine.dispose()


def alembic(url: str, migrations: Path, action: str, revision: str) -> None:
    engine = make_engine(url)
    config = Config()
    config.set_main_option("script_location", str(migrations))
    try:
        with engine.begin() as connection:
            config.attributes["connection"] = connection
            getattr(command, action)(config, revision)
    finally:
        engine.dispose()


def _summary(difference: object) -> tuple[str, ...]:
    """(operation, table[, column]) of one of compare_metadata's differences."""
    if isinstance(difference, list):  # a column's changes: [(operation, schema, table, column, ...)]
        operation, _schema, table, column = difference[0][:4]
        return (operation, table, column)
    assert isinstance(difference, tuple)
    return (difference[0], str(getattr(difference[1], "name", difference[1])))


def _tables_of(metadata: MetaData) -> Callable[[str | None, str, object], bool]:
    return lambda name, kind, _parent: kind != "table" or name in metadata.tables


def schema_of(url: str) -> tuple[set[str], list[tuple[str, ...]]]:
    """The tables, and how they differ from the models (alembic autogenerate's comparison), for every schema."""
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            tables = set(inspect(connection).get_table_names())
            differences = []
            for _migrations, metadata, _version_table in SCHEMAS.values():
                context = MigrationContext.configure(connection, opts={"include_name": _tables_of(metadata)})
                differences += compare_metadata(context, metadata)
            return tables, [_summary(difference) for difference in differences]
    finally:
        engine.dispose()


def test_both_schemas_migrate_from_empty_to_head_as_the_models_say(empty_database_url: str):
    for migrations, _metadata, _table in SCHEMAS.values():
        alembic(empty_database_url, migrations, "upgrade", "head")
    tables, differences = schema_of(empty_database_url)
    expected = set(Base.metadata.tables) | set(RegistryBase.metadata.tables) | {v for *_, v in SCHEMAS.values()}
    assert tables == expected | queue_tables(empty_database_url, "engine")
    assert differences == [], "the migrated schema is the models'"


@pytest.mark.parametrize("schema", SCHEMAS)
def test_every_migration_goes_down_to_empty_and_up_again(empty_database_url: str, schema: str):
    migrations, metadata, version_table = SCHEMAS[schema]
    alembic(empty_database_url, migrations, "upgrade", "head")
    alembic(empty_database_url, migrations, "downgrade", "base")
    assert schema_of(empty_database_url)[0] == {version_table}
    assert procrastinate_leftovers(empty_database_url) == []
    alembic(empty_database_url, migrations, "upgrade", "head")
    tables, differences = schema_of(empty_database_url)
    assert tables == set(metadata.tables) | {version_table} | queue_tables(empty_database_url, schema)
    assert [d for d in differences if d[1] in metadata.tables] == []
