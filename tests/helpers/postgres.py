"""PostgreSQL for the tests: one throw-away server per test session (per xdist worker), a fresh database per test.

The server is this machine's (Debian's `postgresql` package, `make postgres-deps`), run by provisioner.postgres in a
temporary directory: as root, as an unprivileged user that owns the directory. Without the binaries the PostgreSQL
variants of the tests are skipped, saying so, or fail where PostgreSQL is required (PROVISIONER_POSTGRES_REQUIRED=1,
which `.ci/run` sets).
"""

from __future__ import annotations

import itertools
import os
import shutil
import tempfile
from pathlib import Path

import pytest

from common.db import make_engine, migrate
from discovery.app import MIGRATIONS as REGISTRY_MIGRATIONS
from engine.db import MIGRATIONS
from provisioner.postgres import LocalPostgres, PostgresUnavailable, find_binaries, new_password

REQUIRED = "PROVISIONER_POSTGRES_REQUIRED"
BACKENDS = ["sqlite", "postgresql"]
TEMPLATE = "migrated_template"
# A throw-away cluster: nothing needs to survive a crash, so nothing waits for the disk. Its sessions' default time
# zone is not UTC, as on many servers: the engine asks for UTC itself.
SETTINGS = {
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "max_connections": "300",
    "timezone": "America/Sao_Paulo",
}


def require_postgres() -> None:
    """Skip a PostgreSQL test where the server binaries are missing, saying so; fail instead where PostgreSQL is
    required (PROVISIONER_POSTGRES_REQUIRED=1): there it is never skipped."""
    try:
        find_binaries()
    except PostgresUnavailable as exc:
        if os.environ.get(REQUIRED) == "1":
            pytest.fail(f"{exc} ({REQUIRED}=1)")
        pytest.skip(str(exc))


class TestPostgres:
    """A started server; databases made from a template already migrated to head (the engine's and the registry's
    schemas), or empty."""

    __test__ = False  # not a test class

    def __init__(self) -> None:
        self.directory = Path(tempfile.mkdtemp(prefix="provisioner-test-postgres-"))
        self.server = LocalPostgres(self.directory, new_password(), SETTINGS)
        self._names = itertools.count(1)
        try:
            self.server.start()
            self.server.create_database(TEMPLATE)
            engine = make_engine(self.url_string(TEMPLATE))
            try:
                migrate(engine, MIGRATIONS)
                migrate(engine, REGISTRY_MIGRATIONS)
            finally:
                engine.dispose()
        except BaseException:
            self.stop()
            raise

    def new_database(self, migrated: bool = True) -> str:
        """A new database's URL (with its password): a copy of the migrated template, or empty."""
        name = f"test_{os.getpid()}_{next(self._names)}"
        self.server.create_database(name, template=TEMPLATE if migrated else "template0")
        return self.url_string(name)

    def drop(self, url: str) -> None:
        self.server.drop_database(url.rsplit("/", 1)[1])

    def url_string(self, database: str) -> str:
        return self.server.url(database).render_as_string(hide_password=False)

    def stop(self) -> None:
        """Stop the server at once (nothing to keep) and remove its directory."""
        try:
            self.server.stop(mode="immediate")
        finally:
            shutil.rmtree(self.directory, ignore_errors=True)
