"""SSH into real guests the way a user does: a key of theirs, the guest's host key pinned, nothing accepted blindly."""

from __future__ import annotations

import subprocess
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class KeyPair:
    private: Path
    public: str  # the OpenSSH public key line

    @classmethod
    def generate(cls, directory: Path, name: str) -> KeyPair:
        path = directory / name
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"{name}@tests", "-f", str(path)], check=True
        )
        return cls(path, path.with_suffix(".pub").read_text().strip())


class GuestSSH:
    """ssh to user@address with one key, trusting exactly the host key given (what the guest phoned home)."""

    def __init__(self, workdir: Path, address: str, user: str, key: KeyPair, host_key: str, port: int = 22) -> None:
        self.address = address
        self.user = user
        self.key = key
        self.port = port
        self.known_hosts = workdir / f"known_hosts-{address}-{port}"
        key_type, key_data = host_key.split()[:2]
        host = address if port == 22 else f"[{address}]:{port}"
        self.known_hosts.write_text(f"{host} {key_type} {key_data}\n")

    def command(self, remote: str, log_level: str = "ERROR") -> list[str]:
        return [
            "ssh",
            "-F", "/dev/null",
            "-i", str(self.key.private),
            "-o", "IdentitiesOnly=yes",
            "-o", "BatchMode=yes",
            "-o", "StrictHostKeyChecking=yes",
            "-o", f"UserKnownHostsFile={self.known_hosts}",
            "-o", "ConnectTimeout=5",
            "-o", f"LogLevel={log_level}",
            "-p", str(self.port),
            f"{self.user}@{self.address}",
            remote,
        ]  # fmt: skip

    def run(self, remote: str, timeout: float = 60, log_level: str = "ERROR") -> subprocess.CompletedProcess[str]:
        command = self.command(remote, log_level)
        return subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)

    def check(self, remote: str, timeout: float = 60) -> str:
        """The command's stdout; an AssertionError with its stderr if it failed."""
        result = self.run(remote, timeout)
        assert result.returncode == 0, f"ssh {self.user}@{self.address} {remote!r}: {result.returncode} {result.stderr}"
        return result.stdout

    def wait(self, timeout: float = 120) -> None:
        """Until a login works (sshd up, the user and key in place)."""
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            # INFO: a refusal before authentication ("Connection closed by", a nologin banner) is said only at INFO.
            last = self.run("true", timeout=15, log_level="INFO")
            if last.returncode == 0:
                return
            time.sleep(1)
        said = last and f"exit {last.returncode}: {last.stderr.strip()}"
        raise AssertionError(f"no SSH login to {self.user}@{self.address} within {timeout} s ({said})")


def scanned_host_key(address: str, timeout: float = 60) -> str:
    """The guest's ed25519 host key as ssh-keyscan reads it (for guests that never phone home)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = subprocess.run(
            ["ssh-keyscan", "-T", "3", "-t", "ed25519", address], capture_output=True, text=True, check=False
        )
        for line in result.stdout.splitlines():
            if not line.startswith("#") and " ssh-ed25519 " in line:
                return line.split(" ", 1)[1]
        time.sleep(1)
    raise AssertionError(f"no SSH host key from {address} within {timeout} s")
