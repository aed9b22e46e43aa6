"""`provisioner` command line: run the service or a worker, manage flavours and API tokens, read the audit log."""

from __future__ import annotations

import argparse
import json
import logging
import os
import secrets
import signal
import sys
from pathlib import Path
from typing import NoReturn

import uvicorn
from pydantic import ValidationError
from sqlalchemy.exc import SQLAlchemyError

from common.files import make_private_dir, write_private
from discovery.settings import RegistrySettings
from engine.db import Database
from engine.flavours import FlavourFileError, FlavourSpec, list_flavours, read_flavour_file, upsert_flavour
from engine.models import Flavour
from engine.settings import REFERENCE, Settings
from engine.sshkeys import InvalidSSHKey
from provisioner.client import add_client_arguments
from provisioner.postgres import LocalPostgres, PostgresUnavailable, local_postgres_dir
from provisioner.vm_cli import add_vm_commands

# The credentials `--dev-token` makes when the environment has none: setting, variable, file in the state directory.
DEV_TOKENS = (
    ("auth_token", REFERENCE + "SERVER_AUTH_TOKEN", "auth-token"),
    ("operator_token", "PROVISIONER_OPERATOR_TOKEN", "operator-token"),
)

# What `run --local-postgres` sets: the service's database, the embedded registry's.
DATABASE_VARIABLES = ("PROVISIONER_DATABASE_URL", "DISCOVERY_DB_URL")


def _dev_token(path: Path) -> str:
    """A token kept in the state directory (0600), made on first use: `make run` needs no configuration."""
    if path.exists():
        return path.read_text(encoding="utf-8").strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(24)
    write_private(path, token + "\n")
    return token


def _state_dir() -> Path:
    return Path(os.environ.get("PROVISIONER_STATE_DIR") or Settings.model_fields["state_dir"].default)


def _dev_tokens() -> dict[str, str]:
    """The dev-mode tokens for the credentials the environment does not set, by setting name."""
    state_dir = _state_dir()
    return {
        setting: _dev_token(state_dir / name) for setting, variable, name in DEV_TOKENS if not os.environ.get(variable)
    }


def _start_local_postgres() -> tuple[LocalPostgres, bool]:
    """`run --local-postgres`: this machine's PostgreSQL for the service's and the registry's databases, started
    unless it runs already, and their URLs in the environment the settings are read from. The server, and whether
    this run started it."""
    for variable in DATABASE_VARIABLES:
        if os.environ.get(variable):
            print(f"configuration error: --local-postgres sets {variable}; unset it", file=sys.stderr)
            raise SystemExit(2)
    state_dir = _state_dir()
    make_private_dir(state_dir)
    server, started = None, False
    try:
        server = LocalPostgres(local_postgres_dir(state_dir), _dev_token(state_dir / "postgres-password"))
        started = server.start()
        urls = [server.create_database(name, exist_ok=True) for name in ("provisioner", "discovery")]
    except (PostgresUnavailable, SQLAlchemyError) as exc:  # a connection error names no password
        if server is not None and started:
            server.stop()
        print(f"PostgreSQL: {str(exc).splitlines()[0] if isinstance(exc, SQLAlchemyError) else exc}", file=sys.stderr)
        raise SystemExit(2) from None
    for variable, url in zip(DATABASE_VARIABLES, urls, strict=True):
        os.environ[variable] = url.render_as_string(hide_password=False)
    how = "started" if started else "already running"
    print(
        f"PostgreSQL: 127.0.0.1:{server.port}, {how} (cluster in {server.directory}); databases provisioner and "
        f"discovery, user {urls[0].username}, password in {state_dir / 'postgres-password'}",
        flush=True,
    )
    return server, started


def _settings(made: dict[str, str]) -> Settings:
    try:
        return Settings(**made)  # type: ignore[arg-type]
    except ValidationError as exc:
        _exit_with_errors(exc)


def _registry_settings(settings: Settings) -> RegistrySettings | None:
    """The embedded registry's settings, checked before anything starts (None: no embedded registry)."""
    if not settings.discovery_enabled or settings.discovery_url is not None:
        return None
    try:
        return RegistrySettings(state_dir=settings.state_dir)
    except ValidationError as exc:
        _exit_with_errors(exc)


def _announce_credentials(settings: Settings, made: dict[str, str]) -> None:
    """Name each API's credential: a token this run made is printed (it is in the state directory), never one
    from the environment."""
    credentials = [("X-Auth-Token", "auth_token")]
    if settings.operator_api:
        credentials.append(("Operator token (/v1, Authorization: Bearer)", "operator_token"))
    for label, setting in credentials:
        if getattr(settings, setting) is None:
            print(f"WARNING: {label}: none, authentication is disabled (PROVISIONER_INSECURE_NO_AUTH)", flush=True)
        else:
            print(f"{label}: {made.get(setting, '<from the environment>')}", flush=True)


def _configure_logging() -> None:
    logging.basicConfig(
        level=os.environ.get("PROVISIONER_LOG_LEVEL", "INFO"), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )


def _exit_with_errors(exc: ValidationError) -> NoReturn:
    for error in exc.errors():
        where = ".".join(str(p) for p in error["loc"]) or "settings"
        print(f"configuration error: {where}: {error['msg']}", file=sys.stderr)
    raise SystemExit(2) from None


def run(args: argparse.Namespace) -> None:
    if not args.local_postgres:
        _run(args)
        return
    # uvicorn raises the signal that stopped it again once it is done: a SIGTERM must end in the `finally` below.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    server, started = _start_local_postgres()
    try:
        _run(args)
    except KeyboardInterrupt:
        pass
    finally:
        if started:
            print("PostgreSQL: stopping", flush=True)
            server.stop()


def _run(args: argparse.Namespace) -> None:
    from provisioner.runtime import Runtime, create_app

    made = _dev_tokens() if args.dev_token else {}
    settings = _settings(made)
    registry_settings = _registry_settings(settings)
    _configure_logging()
    try:
        runtime = Runtime(settings, registry_settings=registry_settings)
        read_flavour_file(settings.flavours_file)
    except (InvalidSSHKey, FlavourFileError) as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    if settings.simulated and settings.sim_guests != "none":
        from simulator.guests.system import GuestsUnavailable, require

        try:
            require(settings.sim_guests)
        except GuestsUnavailable as exc:
            print(f"configuration error: {exc}", file=sys.stderr)
            raise SystemExit(2) from None
        print(f"Real guests: {settings.sim_guests} (images are built on first use, about a minute each)", flush=True)
    app = create_app(runtime)
    base = f"http://{settings.server_host}:{settings.server_port}"
    print(f"VISA web provider: {base}  (VISA_CLOUD_WEB_PROVIDER_URL={base})", flush=True)
    _announce_credentials(settings, made)
    if settings.golem_compat:
        print(
            f"Golem-compatible provider (no authentication): http://{settings.golem_listen_host}:{settings.golem_port}"
        )
    if settings.simulated:
        print(f"Proxmox: embedded simulator (state in {settings.state_dir / 'simulator'})", flush=True)
    uvicorn.run(
        app,
        host=settings.server_host,
        port=settings.server_port,
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=10,
    )


def worker(_args: argparse.Namespace) -> None:
    """A worker process on this machine, for the store at PROVISIONER_DATABASE_URL; until SIGTERM (drain) or SIGINT."""
    from provisioner.worker import serve
    from provisioner.worker_spec import WorkerSetupError, standalone_spec

    settings = _settings({})
    _configure_logging()
    try:
        spec = standalone_spec(settings)
    except (WorkerSetupError, OSError, ValueError) as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    serve(spec)


def discovery(_args: argparse.Namespace) -> None:
    from discovery.server import serve

    try:
        settings = RegistrySettings()
    except ValidationError as exc:
        _exit_with_errors(exc)
    _configure_logging()
    try:
        serve(settings, lambda url: print(f"Discovery registry: {url}/api/v1", flush=True))
    except RuntimeError as exc:  # cannot listen
        print(exc, file=sys.stderr)
        raise SystemExit(1) from None


def advertisement(_args: argparse.Namespace) -> None:
    """Print (JSON) the advertisement this provider would post now, from Proxmox as the PROXMOX_* variables say."""
    from engine.advertiser import advertisement as compose
    from engine.proxmox import ClusterView, ProxmoxConnection, ProxmoxUnavailable

    try:
        settings = Settings(insecure_no_auth=True)
        connection = ProxmoxConnection.from_ansible_env(os.environ)
    except ValidationError as exc:
        _exit_with_errors(exc)
    except KeyError as exc:
        print(f"configuration error: {exc.args[0]} is not set", file=sys.stderr)
        raise SystemExit(2) from None
    try:
        snapshot = ClusterView(connection, settings.refresh_interval_s, settings.stale_after_s).refresh()
    except ProxmoxUnavailable as exc:
        print(f"Proxmox is unreachable: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    print(json.dumps(compose(settings, snapshot)))


def _database() -> Database:
    """The service's database, migrated; the flavour commands serve nothing, so no token is needed."""
    settings = Settings(insecure_no_auth=True)
    database = Database(settings.db_url)
    database.migrate()
    return database


def flavours(args: argparse.Namespace) -> None:
    database = _database()
    try:
        with database.write() as session:  # beside a running service: its writers wait, not fail
            if args.action == "set":
                try:
                    spec = FlavourSpec(
                        id=args.id,
                        name=args.name,
                        cpus=args.cpus,
                        ram_mb=args.ram_mb,
                        disk_gb=args.disk_gb,
                        full_clone=args.full_clone,
                    )
                except ValidationError as exc:
                    raise SystemExit(
                        f"invalid flavour: {exc.errors()[0]['loc'][0]}: {exc.errors()[0]['msg']}"
                    ) from None
                upsert_flavour(session, spec)
            elif args.action == "delete":
                row = session.get(Flavour, args.id)
                if row is None:
                    raise SystemExit(f"no flavour {args.id!r}")
                session.delete(row)
            elif args.action == "import":
                try:
                    specs = read_flavour_file(Path(args.file))
                except FlavourFileError as exc:
                    raise SystemExit(str(exc)) from None
                for spec in specs:
                    upsert_flavour(session, spec)
            session.flush()
            for row in list_flavours(session):
                clone = "" if row.full_clone is None else (" full" if row.full_clone else " linked")
                print(f"{row.id:<16} {row.cpus:>4} vCPU {row.ram_mb:>7} MB {row.disk_gb:>5} GB{clone}  {row.name}")
    finally:
        database.dispose()


def tokens(args: argparse.Namespace) -> None:
    """API tokens for /v1 (the service's database): made, listed, revoked; each in the audit log."""
    from engine.audit import AuditLog, Entry
    from engine.errors import ProvisionerError
    from engine.models import TokenRole
    from engine.tokens import Quotas, Tokens

    database = _database()
    book, audit = Tokens(database), AuditLog(database)
    actor = f"cli:{_login_name()}"
    try:
        if args.action == "create":
            quotas = Quotas(args.max_vms, args.max_vcpus, args.max_memory_mb, args.max_disk_gb)
            token = book.create(args.name, TokenRole(args.role), quotas)
            params = {"role": args.role, **{k: v for k, v in vars(quotas).items() if v is not None}}
            audit.record_now(Entry(actor, "create_token", f"token={args.name}", 201, params))
            print(token)
            print(f"token {args.name!r} ({args.role}): shown once, keep it now", file=sys.stderr)
        elif args.action == "revoke":
            book.revoke(args.name)
            audit.record_now(Entry(actor, "revoke_token", f"token={args.name}", 200))
            print(f"token {args.name!r} revoked", file=sys.stderr)
        else:
            for info in book.list():
                limits = ", ".join(f"{k}={v}" for k, v in vars(info.quotas).items() if v is not None) or "no quota"
                state = "revoked" if info.revoked else "active"
                print(f"{info.name:<24} {info.role:<9} {state:<8} {info.created_at}  {limits}")
    except ProvisionerError as exc:
        print(exc.message, file=sys.stderr)
        raise SystemExit(2 if exc.status < 500 else 1) from None
    finally:
        database.dispose()


def _login_name() -> str:
    try:
        return os.getlogin()
    except OSError:
        return os.environ.get("USER") or str(os.getuid())


def audit(args: argparse.Namespace) -> None:
    """The audit log, newest first, from the service's API (an admin token)."""
    from provisioner.client import ApiClient, ClientError

    try:
        client = ApiClient.from_args(args)
        query = {k: v for k, v in (("actor", args.actor), ("action", args.action), ("target", args.target)) if v}
        page = client.get("/v1/audit", params=query | {"limit": args.limit})
    except ClientError as exc:
        print(exc, file=sys.stderr)
        raise SystemExit(exc.exit_code) from None
    if args.json:
        print(json.dumps(page["entries"], indent=2))
        return
    for entry in page["entries"]:
        print(
            f"{entry['at']}  {entry['actor']:<16} {entry['action']:<24} {entry['target'] or '-':<28} {entry['status']}"
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="provisioner", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run_parser = sub.add_parser("run", help="serve the VISA web provider, the operator API and the seeds")
    run_parser.add_argument(
        "--dev-token",
        action="store_true",
        help="for each API token the environment does not set (VISA, operator), make one in the state directory "
        "and print it",
    )
    run_parser.add_argument(
        "--local-postgres",
        action="store_true",
        help="PostgreSQL for the service and the registry: this machine's server binaries, a cluster in the state "
        "directory (as root: beside it), started unless it runs and stopped at exit if this run started it "
        "(`make run-postgres`)",
    )
    run_parser.set_defaults(func=run)
    flavour_parser = sub.add_parser("flavours", help="list, set, delete or import flavours (the service's database)")
    actions = flavour_parser.add_subparsers(dest="action")
    set_parser = actions.add_parser("set", help="create or replace a flavour")
    set_parser.add_argument("id")
    set_parser.add_argument("--name", required=True)
    set_parser.add_argument("--cpus", type=int, required=True)
    set_parser.add_argument("--ram-mb", type=int, required=True)
    set_parser.add_argument("--disk-gb", type=int, required=True)
    clone = set_parser.add_mutually_exclusive_group()
    clone.add_argument("--full-clone", dest="full_clone", action="store_true", default=None)
    clone.add_argument("--linked-clone", dest="full_clone", action="store_false")
    actions.add_parser("delete", help="remove a flavour").add_argument("id")
    actions.add_parser("import", help="create or replace the flavours of a YAML file").add_argument("file")
    actions.add_parser("list", help="list the flavours")
    flavour_parser.set_defaults(func=flavours, action="list")
    sub.add_parser(
        "worker", help="run jobs (playbooks) for the service whose database PROVISIONER_DATABASE_URL names"
    ).set_defaults(func=worker)
    sub.add_parser("discovery", help="serve the discovery registry alone (DISCOVERY_* variables)").set_defaults(
        func=discovery
    )
    sub.add_parser(
        "advertisement", help="print the advertisement this provider would post (Proxmox from PROXMOX_*)"
    ).set_defaults(func=advertisement)
    add_vm_commands(sub)
    token_parser = sub.add_parser("tokens", help="make, list or revoke /v1 API tokens (the service's database)")
    token_actions = token_parser.add_subparsers(dest="action")
    create_parser = token_actions.add_parser("create", help="make a token and print it (once)")
    create_parser.add_argument("name")
    create_parser.add_argument("--role", choices=["admin", "operator", "viewer"], required=True)
    for quota in ("vms", "vcpus", "memory-mb", "disk-gb"):
        create_parser.add_argument(f"--max-{quota}", type=int, default=None, metavar="N")
    token_actions.add_parser("revoke", help="stop a token working, at once").add_argument("name")
    token_actions.add_parser("list", help="list the tokens (never the tokens themselves)")
    token_parser.set_defaults(func=tokens, action="list")
    audit_parser = sub.add_parser("audit", help="the audit log, newest first (over the HTTP API, an admin token)")
    add_client_arguments(audit_parser)
    audit_parser.add_argument("--actor")
    audit_parser.add_argument("--action")
    audit_parser.add_argument("--target")
    audit_parser.add_argument("--limit", type=int, default=50)
    audit_parser.set_defaults(func=audit)
    args = parser.parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()
