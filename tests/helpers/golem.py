"""The Golem listener in tests: free ports for it and its SSH forwards, and which ports listen (read from the kernel's
socket table: connecting to a forward would reach for its guest)."""

from __future__ import annotations

import random
import socket
import subprocess
from typing import Any


def free_ports(count: int) -> range:
    """`count` consecutive ports on 127.0.0.1 that nothing listens on now."""
    for _ in range(200):
        start = random.randrange(30000, 60000 - count)
        if all(_free(port) for port in range(start, start + count)):
            return range(start, start + count)
    raise RuntimeError(f"no {count} consecutive free ports")


def _free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def listening(port: int) -> bool:
    out = subprocess.run(["ss", "-Hltn", f"sport = :{port}"], capture_output=True, text=True, check=True).stdout
    return bool(out.strip())


def golem_settings(ports: range, **extra: Any) -> dict[str, Any]:
    """start_service overrides: the listener on ports[0], the SSH forwards on the rest."""
    return {
        "golem_compat": True,
        "golem_host": "127.0.0.1",
        "golem_port": ports[0],
        "golem_ssh_ports": f"{ports[1]}-{ports[-1]}",
        "golem_max_vms": min(5, len(ports) - 1),
        **extra,
    }
