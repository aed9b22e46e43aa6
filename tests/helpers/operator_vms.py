"""Operator VMs as the /v1 tests watch them: a VM reaching a state, and a key's fingerprint as OpenSSH prints it."""

from __future__ import annotations

import subprocess
from typing import Any

import httpx

from tests.conftest import wait_for


def wait_vm(client: httpx.Client, vm_id: str, state: str, timeout: float = 120) -> dict[str, Any]:
    """The VM once it is in `state`; an `error` on the way fails the test."""

    def reached() -> dict[str, Any] | None:
        body = client.get(f"/v1/vms/{vm_id}").json()
        assert body.get("state") != "error", body
        return body if body.get("state") == state else None

    return wait_for(reached, timeout=timeout, what=f"VM {vm_id} to be {state}")  # type: ignore[no-any-return]


def fingerprint(public_key: str) -> str:
    """`ssh-keygen -l`'s fingerprint of an OpenSSH public key line (SHA256:…)."""
    listed = subprocess.run(
        ["ssh-keygen", "-l", "-f", "-"], input=public_key, capture_output=True, text=True, check=True
    )
    return listed.stdout.split()[1]
