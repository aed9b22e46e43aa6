"""SQLAlchemy engines, sessions and Alembic migrations, shared by the service and the discovery registry."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

from common.files import make_private_dir

WRITE_OPTION = "write_transaction"  # execution option: this connection's transactions take the write lock first


def make_engine(url: str, immediate: bool = False) -> Engine:
    """An engine for url. immediate (SQLite): every transaction starts with BEGIN IMMEDIATE.

    Without it, pysqlite opens a deferred transaction that reads first and asks for the write lock later; two
    of those that have both read cannot both upgrade, and SQLite answers "database is locked" at once instead of
    waiting. Services whose every request writes (the discovery registry: nonces, upserts) take the write lock
    up front, so concurrent requests queue on SQLite's busy timeout instead of failing. Other engines take it
    up front only for the connections of `Database.write()`.
    """
    if url.startswith("sqlite"):
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
            up_front = immediate or connection.get_execution_options().get(WRITE_OPTION, False)
            connection.exec_driver_sql("BEGIN IMMEDIATE" if up_front else "BEGIN")

        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20, hide_parameters=True)


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
    def __init__(self, url: str, migrations: Path, immediate: bool = False) -> None:
        self.migrations = migrations
        if url.startswith("sqlite:///"):
            private_sqlite_file(Path(url.removeprefix("sqlite:///")))
        self.engine = make_engine(url, immediate)
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
        """A session whose transaction holds the write lock from its first statement (SQLite: BEGIN IMMEDIATE).

        What it reads cannot change before it commits, so a read-then-write in it is a compare-and-set; on
        other databases, lock the rows it reads (`with_for_update`).
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
