"""SQLAlchemy engines, sessions and Alembic migrations, shared by the service and the discovery registry."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, Engine, create_engine, event, func, make_url, select
from sqlalchemy.orm import Session, sessionmaker

from common.files import make_private_dir

WRITE_OPTION = "write_transaction"  # execution option: this connection's transactions take the write lock first
# The PostgreSQL advisory lock of write transactions: any 64-bit integer, one per schema (the registry has its own), so
# the service and a registry sharing a database do not queue behind each other.
WRITE_LOCK_KEY = 0x70726F76  # "prov"


def make_engine(url: str, immediate: bool = False, lock_key: int = WRITE_LOCK_KEY) -> Engine:
    """An engine for url whose write transactions hold the database's write lock from their first statement.

    Which transactions: those of `Database.write()` (the WRITE_OPTION execution option), or every one with
    immediate. Services whose every request writes (the discovery registry: nonces, upserts) take it up front.

    SQLite: BEGIN IMMEDIATE. Without it, pysqlite opens a deferred transaction that reads first and asks for the
    write lock later; two of those that have both read cannot both upgrade, and SQLite answers "database is
    locked" at once instead of waiting. With it, concurrent writers queue on SQLite's busy timeout.

    PostgreSQL: `pg_advisory_xact_lock(lock_key)` as the first statement, released at commit or rollback. PostgreSQL
    never blocks a writer on another's reads, so without it two compare-and-sets that read the same row both pass
    their check and both write. Under READ COMMITTED (set here: each statement sees what committed before it
    started) every statement after the lock sees all that the previous holder committed, so the transactions run
    one after the other exactly as on SQLite. Readers (`Database.session()`) take no lock and never wait.
    """
    sa_url = make_url(url)
    if sa_url.drivername == "postgresql":  # SQLAlchemy's default driver would be psycopg2, not a dependency
        sa_url = sa_url.set(drivername="postgresql+psycopg")
    if sa_url.get_backend_name() == "sqlite":
        # immediate: as many connections as request threads (Starlette's pool has 40), so a request waiting
        # for the write lock never also waits for a connection held by a request queued behind it.
        pool = {"pool_size": 48, "max_overflow": 0} if immediate else {}
        engine = create_engine(
            url, connect_args={"check_same_thread": False, "timeout": 30}, hide_parameters=True, **pool
        )

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record):  # type: ignore[no-untyped-def]
            cursor = dbapi_conn.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()
            dbapi_conn.isolation_level = None  # SQLAlchemy's begin event below opens the transactions

        @event.listens_for(engine, "begin")
        def _begin(connection):  # type: ignore[no-untyped-def]
            connection.exec_driver_sql("BEGIN IMMEDIATE" if _takes_write_lock(connection, immediate) else "BEGIN")

        return engine
    if sa_url.get_backend_name() != "postgresql":
        return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20, hide_parameters=True)
    # immediate: more connections than request threads, as for SQLite above.
    pool = {"pool_size": 48, "max_overflow": 0} if immediate else {"pool_size": 10, "max_overflow": 20}
    # Aware datetimes come back in UTC, as they were written (unless the URL sets the session's options itself).
    options = {} if "options" in sa_url.query else {"options": "-c timezone=UTC"}
    engine = create_engine(
        sa_url,
        pool_pre_ping=True,
        hide_parameters=True,
        isolation_level="READ COMMITTED",
        connect_args=options,
        **pool,
    )
    lock = select(func.pg_advisory_xact_lock(lock_key))

    @event.listens_for(engine, "begin")
    def _write_lock(connection):  # type: ignore[no-untyped-def]
        if _takes_write_lock(connection, immediate):
            connection.execute(lock)

    @event.listens_for(engine, "handle_error")
    def _first_line_only(context):  # type: ignore[no-untyped-def]
        # PostgreSQL's errors carry the row's values on their next lines ("DETAIL: Failing row contains (...)", "Key
        # (...)=(...) already exists"): what hide_parameters keeps out of errors and logs. Only the first line stays,
        # in the driver's error and in SQLAlchemy's, which quotes it.
        for error in (context.original_exception, context.sqlalchemy_exception):
            if error is not None and error.args and isinstance(error.args[0], str):
                error.args = (error.args[0].split("\n", 1)[0], *error.args[1:])

    return engine


def _takes_write_lock(connection: Connection, immediate: bool) -> bool:
    return immediate or bool(connection.get_execution_options().get(WRITE_OPTION, False))


def private_sqlite_file(path: Path) -> None:
    """The database file (and its WAL and shared-memory files, which SQLite creates with the file's mode) readable
    by the owner only; its directory is made private if this makes it."""
    if not path.parent.exists():
        make_private_dir(path.parent)
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
    for file in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        if file.exists():
            os.chmod(file, 0o600)


def migrate(engine: Engine, migrations: Path) -> None:
    """Bring the schema to the newest revision of a migrations directory."""
    config = Config()
    config.set_main_option("script_location", str(migrations))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "head")


class Database:
    def __init__(self, url: str, migrations: Path, immediate: bool = False, lock_key: int = WRITE_LOCK_KEY) -> None:
        self.migrations = migrations
        if url.startswith("sqlite:///"):
            private_sqlite_file(Path(url.removeprefix("sqlite:///")))
        self.engine = make_engine(url, immediate, lock_key)
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)
        self.writers = sessionmaker(self.engine.execution_options(**{WRITE_OPTION: True}), expire_on_commit=False)

    def migrate(self) -> None:
        migrate(self.engine, self.migrations)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session that commits on success and rolls back on error."""
        with self._transaction(self.sessions) as session:
            yield session

    @contextmanager
    def write(self) -> Iterator[Session]:
        """A session whose transaction holds the write lock from its first statement (SQLite: BEGIN IMMEDIATE;
        PostgreSQL: a transaction-scoped advisory lock, see `make_engine`).

        No other write transaction runs until it ends, so a read-then-write in it is a compare-and-set on both.
        """
        with self._transaction(self.writers) as session:
            yield session

    @staticmethod
    @contextmanager
    def _transaction(factory: sessionmaker[Session]) -> Iterator[Session]:
        session = factory()
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise
        finally:
            session.close()

    def dispose(self) -> None:
        self.engine.dispose()
