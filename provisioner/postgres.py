"""A PostgreSQL server of our own from this machine's binaries (Debian's `postgresql` package): `make run-postgres`
and the tests' PostgreSQL.

The cluster lives in one directory: `data/` (initdb'd on first use), `socket/` (the server's Unix socket, so it
never uses the system's) and `server.log`. The server listens on 127.0.0.1 only, on a free port picked at each
start, and asks for a password (SCRAM) on every connection. PostgreSQL refuses to run as root: as root, initdb and
the server run as an unprivileged user (`postgres`, or `nobody` without it) that owns the directory, which must
then be reachable by that user (no private directory above it).
"""

from __future__ import annotations

import os
import pwd
import secrets
import shlex
import shutil
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import URL, column, create_engine, select, table

DEBIAN_BINARIES = Path("/usr/lib/postgresql")
SERVER_USERS = ("postgres", "nobody")
SUPERUSER = "provisioner"
START_ATTEMPTS = 3  # a free port may be taken between our check and the server's bind


class PostgresUnavailable(RuntimeError):
    """The binaries are missing, or the server cannot be set up or started (the message says why)."""


def find_binaries() -> Path:
    """The directory of initdb, pg_ctl and postgres: Debian's newest /usr/lib/postgresql/<version>/bin, else PATH."""
    versions = sorted(DEBIAN_BINARIES.glob("*/bin/initdb"), key=lambda p: _version(p.parent.parent.name))
    if versions:
        return versions[-1].parent
    initdb = shutil.which("initdb")
    if initdb and shutil.which("pg_ctl") and shutil.which("postgres"):
        return Path(initdb).parent
    raise PostgresUnavailable(
        "PostgreSQL's server binaries (initdb, pg_ctl, postgres) are not installed: `apt-get install postgresql` "
        "(or `make postgres-deps` as root)"
    )


def _version(name: str) -> tuple[int, ...]:
    return tuple(int(part) for part in name.split(".") if part.isdigit())


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class ServerUser:
    """Who runs initdb and the server: ourselves, or (as root) an unprivileged account."""

    name: str
    uid: int
    gid: int

    @classmethod
    def for_this_process(cls) -> ServerUser:
        if os.geteuid() != 0:
            entry = pwd.getpwuid(os.geteuid())
            return cls(entry.pw_name, entry.pw_uid, entry.pw_gid)
        for name in SERVER_USERS:
            try:
                entry = pwd.getpwnam(name)
            except KeyError:
                continue
            return cls(name, entry.pw_uid, entry.pw_gid)
        raise PostgresUnavailable(f"running as root, and none of the users {', '.join(SERVER_USERS)} exists")

    @property
    def is_us(self) -> bool:
        return self.uid == os.geteuid()

    def command(self, argv: list[str]) -> list[str]:
        """argv as this user (setpriv, from util-linux, when we are root)."""
        if self.is_us:
            return argv
        return ["setpriv", f"--reuid={self.uid}", f"--regid={self.gid}", "--clear-groups", "--", *argv]


class LocalPostgres:
    """One cluster in `directory`; `start()` makes it if needed and starts it unless it runs already."""

    def __init__(self, directory: Path, password: str, settings: dict[str, str] | None = None) -> None:
        self.directory = directory
        self.data = directory / "data"
        self.socket_dir = directory / "socket"
        self.log = directory / "server.log"
        self.password = password
        self.settings = settings or {}  # extra server settings (`-c name=value`), e.g. fsync=off for tests
        self.bin = find_binaries()
        self.user = ServerUser.for_this_process()
        self.port: int | None = None

    # ------------------------------------------------------------ life cycle

    def start(self) -> bool:
        """Make the cluster if it has none, then start the server unless it runs already; True if this started it."""
        self._prepare_directory()
        if not (self.data / "PG_VERSION").exists():
            self._initdb()
        running = self.running_port()
        if running is not None:
            self.port = running
            return False
        failure = ""
        for _ in range(START_ATTEMPTS):
            port = free_port()
            done = self._run(self._pg_ctl("start", "-w", "-t", "60", "-l", str(self.log), "-o", self._options(port)))
            if done.returncode == 0:
                self.port = port
                return True
            failure = self._log_tail() or done.stderr.strip() or done.stdout.strip()
        raise PostgresUnavailable(f"PostgreSQL did not start (its log, {self.log}):\n{failure}")

    def stop(self, mode: str = "fast") -> None:
        """Stop the server and wait until it is gone (`immediate`: no checkpoint, for clusters thrown away)."""
        if (self.data / "postmaster.pid").exists():
            done = self._run(self._pg_ctl("stop", "-w", "-t", "60", "-m", mode))
            if done.returncode != 0 and self.running_port() is not None:
                raise PostgresUnavailable(f"PostgreSQL did not stop: {done.stderr.strip() or done.stdout.strip()}")
        self.port = None

    def running_port(self) -> int | None:
        """The port of this cluster's server if it runs (pg_ctl status), else None."""
        pid_file = self.data / "postmaster.pid"
        if not pid_file.exists() or self._run(self._pg_ctl("status")).returncode != 0:
            return None
        lines = pid_file.read_text(encoding="utf-8").splitlines()
        return int(lines[3]) if len(lines) > 3 and lines[3].isdigit() else None

    # ------------------------------------------------------------ clients

    def url(self, database: str = "postgres") -> URL:
        """The SQLAlchemy URL of a database of this server (its string form hides the password:
        `url.render_as_string(hide_password=False)` shows it)."""
        if self.port is None:
            raise PostgresUnavailable("the server is not started")
        return URL.create(
            "postgresql+psycopg",
            username=SUPERUSER,
            password=self.password,
            host="127.0.0.1",
            port=self.port,
            database=database,
        )

    def create_database(self, name: str, template: str | None = None, exist_ok: bool = False) -> URL:
        """A new database (a copy of `template` when given), and its URL."""
        if exist_ok and name in self.databases():
            return self.url(name)
        statement = f"CREATE DATABASE {_identifier(name)}"
        if template:
            statement += f" TEMPLATE {_identifier(template)}"
        self._admin(statement)
        return self.url(name)

    def drop_database(self, name: str) -> None:
        self._admin(f"DROP DATABASE IF EXISTS {_identifier(name)} WITH (FORCE)")

    def databases(self) -> set[str]:
        engine = create_engine(self.url(), isolation_level="AUTOCOMMIT", hide_parameters=True)
        try:
            with engine.connect() as connection:
                return set(connection.scalars(select(column("datname")).select_from(table("pg_database"))))
        finally:
            engine.dispose()

    def _admin(self, statement: str) -> None:
        """A statement no transaction may hold (CREATE/DROP DATABASE): SQLAlchemy has no construct for them."""
        engine = create_engine(self.url(), isolation_level="AUTOCOMMIT", hide_parameters=True)
        try:
            with engine.connect() as connection:
                connection.exec_driver_sql(statement)
        finally:
            engine.dispose()

    # ------------------------------------------------------------ helpers

    def _prepare_directory(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.socket_dir.mkdir(exist_ok=True, mode=0o700)
        if not self.user.is_us:
            for path in (self.directory, self.socket_dir):
                os.chown(path, self.user.uid, self.user.gid)
            if self._run(self.user.command(["test", "-w", str(self.directory)])).returncode != 0:
                raise PostgresUnavailable(
                    f"PostgreSQL runs as {self.user.name} here (never as root), and {self.user.name} cannot reach "
                    f"{self.directory}: a directory above it is private"
                )
        os.chmod(self.directory, 0o700)

    def _initdb(self) -> None:
        password_file = self.directory / "initdb-password"
        fd = os.open(password_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(self.password + "\n")
        if not self.user.is_us:
            os.chown(password_file, self.user.uid, self.user.gid)
        try:
            done = self._run(
                self.user.command(
                    [
                        str(self.bin / "initdb"),
                        "--pgdata",
                        str(self.data),
                        "--username",
                        SUPERUSER,
                        "--pwfile",
                        str(password_file),
                        "--auth",
                        "scram-sha-256",
                        "--encoding",
                        "UTF8",
                        "--locale",
                        "C",  # byte order, as SQLite compares text
                        "--no-sync",
                    ]
                )
            )
        finally:
            password_file.unlink(missing_ok=True)
        if done.returncode != 0:
            shutil.rmtree(self.data, ignore_errors=True)
            raise PostgresUnavailable(f"initdb failed:\n{done.stderr.strip() or done.stdout.strip()}")

    def _options(self, port: int) -> str:
        """The server's command-line options (pg_ctl passes them through a shell, hence the quoting)."""
        settings = {
            "listen_addresses": "127.0.0.1",
            "port": str(port),
            "unix_socket_directories": str(self.socket_dir),
            **self.settings,
        }
        return " ".join(f"-c {shlex.quote(f'{name}={value}')}" for name, value in settings.items())

    def _pg_ctl(self, action: str, *args: str) -> list[str]:
        return self.user.command([str(self.bin / "pg_ctl"), action, "--pgdata", str(self.data), *args])

    def _run(self, argv: list[str]) -> subprocess.CompletedProcess[str]:
        # From the cluster's directory, which its user can enter (it may not be able to enter ours).
        return subprocess.run(
            argv, cwd=self.directory, capture_output=True, text=True, timeout=120, env=_server_env(), check=False
        )

    def _log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def _server_env() -> dict[str, str]:
    """What initdb, pg_ctl and the server get: no PG* variable of ours, no secret of the service."""
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}


def _identifier(name: str) -> str:
    if not name.replace("_", "").isalnum() or not name.isascii():
        raise ValueError(f"not a plain database name: {name!r}")
    return f'"{name}"'


def local_postgres_dir(state_dir: Path) -> Path:
    """Where `make run-postgres` keeps its cluster: in the state directory; as root, beside it (`<state dir>-postgres`),
    since the server's unprivileged user cannot enter the private state directory."""
    if os.geteuid() != 0:
        return state_dir / "postgres"
    return state_dir.parent / f"{state_dir.name}-postgres"


def new_password() -> str:
    return secrets.token_urlsafe(24)
