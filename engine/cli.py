"""`provisioner` command line: run the service, manage flavours."""

from __future__ import annotations

import argparse
import logging
import os
import secrets
import sys
from pathlib import Path

import uvicorn
from pydantic import ValidationError

from engine.flavours import FlavourFileError, read_flavour_file
from engine.settings import REFERENCE, Settings
from engine.sshkeys import InvalidSSHKey


def _dev_token(state_dir: Path) -> str:
    """A token kept in the state directory (0600), made on first use: `make run` needs no configuration."""
    path = state_dir / "auth-token"
    if path.exists():
        return path.read_text(encoding="utf-8").strip()
    state_dir.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(24)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(token + "\n")
    return token


def _settings(args: argparse.Namespace) -> Settings:
    overrides: dict[str, object] = {}
    if args.dev_token and not os.environ.get(REFERENCE + "SERVER_AUTH_TOKEN"):
        state_dir = Path(os.environ.get("PROVISIONER_STATE_DIR") or Settings.model_fields["state_dir"].default)
        overrides["auth_token"] = _dev_token(state_dir)
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        for error in exc.errors():
            where = ".".join(str(p) for p in error["loc"]) or "settings"
            print(f"configuration error: {where}: {error['msg']}", file=sys.stderr)
        raise SystemExit(2) from None


def run(args: argparse.Namespace) -> None:
    from engine.runtime import Runtime, create_app

    settings = _settings(args)
    logging.basicConfig(
        level=os.environ.get("PROVISIONER_LOG_LEVEL", "INFO"), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        runtime = Runtime(settings)
        read_flavour_file(settings.flavours_file)
    except (InvalidSSHKey, FlavourFileError) as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    app = create_app(runtime)
    base = f"http://{settings.server_host}:{settings.server_port}"
    print(f"VISA web provider: {base}  (VISA_CLOUD_WEB_PROVIDER_URL={base})", flush=True)
    if settings.auth_token:
        shown = settings.auth_token.get_secret_value() if args.dev_token else "<from the environment>"
        print(f"X-Auth-Token: {shown}", flush=True)
    else:
        print("WARNING: authentication is disabled (PROVISIONER_INSECURE_NO_AUTH)", flush=True)
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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="provisioner", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run_parser = sub.add_parser("run", help="serve the VISA web provider, the operator API and the seeds")
    run_parser.add_argument(
        "--dev-token",
        action="store_true",
        help="without a configured token, make one in the state directory and print it",
    )
    run_parser.set_defaults(func=run)
    args = parser.parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()
