"""The CLI's client of the service's HTTP API (`provisioner audit`, and the commands for people): where the service
is and which token to send, from flags, else the environment (PROVISIONER_URL, PROVISIONER_TOKEN), else a config file
(PROVISIONER_CONFIG, default ~/.config/provisioner/cli.toml: `url = "…"`, `token = "…"`).

Exit codes: 0 done, 1 the service refused or failed (its error printed), 2 bad input or no way to reach it.
"""

from __future__ import annotations

import argparse
import os
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

DEFAULT_URL = "http://127.0.0.1:4000"  # the service's default port
CONFIG = Path("~/.config/provisioner/cli.toml")


class ClientError(Exception):
    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def add_client_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", help=f"the service (PROVISIONER_URL, the config file; default {DEFAULT_URL})")
    parser.add_argument("--token", help="an API token (PROVISIONER_TOKEN, the config file)")
    parser.add_argument("--json", action="store_true", help="print JSON, for scripts")


@dataclass(frozen=True)
class ApiClient:
    url: str
    token: str
    timeout_s: float = 30.0

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> ApiClient:
        config = _config_file()
        url = args.url or os.environ.get("PROVISIONER_URL") or config.get("url") or DEFAULT_URL
        token = args.token or os.environ.get("PROVISIONER_TOKEN") or config.get("token")
        if not token:
            raise ClientError("no API token: --token, PROVISIONER_TOKEN or `token` in the config file", exit_code=2)
        return cls(str(url).rstrip("/"), str(token))

    def get(self, path: str, params: dict[str, Any] | None = None) -> Any:
        return self.request("GET", path, params=params)

    def request(self, method: str, path: str, headers: dict[str, str] | None = None, **kwargs: Any) -> Any:
        headers = {**(headers or {}), "Authorization": f"Bearer {self.token}"}
        try:
            response = httpx.request(method, self.url + path, headers=headers, timeout=self.timeout_s, **kwargs)
        except httpx.HTTPError as exc:
            raise ClientError(f"cannot reach {self.url}: {exc}", exit_code=2) from None
        if response.is_success:
            return response.json() if response.content else None
        try:
            body = response.json()
            message = f"{response.status_code} {body.get('code', '')}: {body.get('message', response.text)}"
        except ValueError:
            message = f"{response.status_code}: {response.text[:200]}"
        raise ClientError(message, exit_code=2 if response.status_code in (400, 401, 404, 422) else 1)


def _config_file() -> dict[str, Any]:
    path = Path(os.environ.get("PROVISIONER_CONFIG") or CONFIG).expanduser()
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        return {}
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ClientError(f"cannot read {path}: {exc}", exit_code=2) from None
