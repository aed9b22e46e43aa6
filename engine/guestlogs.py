"""Reading a guest's cloud-init output (/var/log/cloud-init-output.log) over SSH, for a VM's logs.

The login is the provisioner's guest key as the VM's user (sudo: the file is root's), trusting only the host key
the guest phoned home. A read that cannot be made (no address yet, the guest down, no key) is an answer with its
reason, never an error. The output names the VM's seed URL: its token is masked before anyone sees it.
"""

from __future__ import annotations

import asyncio
import tempfile
from dataclasses import dataclass
from pathlib import Path

from engine.jobs.redact import MASK

LOG = "/var/log/cloud-init-output.log"
MAX_READ = 256 * 1024  # bytes of output one read returns
CONNECT_TIMEOUT_S = 5
READ_TIMEOUT_S = 15.0


@dataclass(frozen=True)
class GuestLogin:
    address: str
    user: str
    host_key: str  # as the guest phoned it home: "ssh-ed25519 AAAA… root@host"
    key_file: Path
    port: int = 22


@dataclass(frozen=True)
class OutputRead:
    text: str  # the output read, the seed token masked
    next_offset: int  # where the next read starts (the bytes read so far)
    truncated: bool  # more output than one read returns was there (the tail, or the rest from next_offset)
    error: str | None = None

    @classmethod
    def failed(cls, offset: int | None, error: str) -> OutputRead:
        """No output, and why: the next read starts where this one would have."""
        return cls("", offset or 0, False, error)


async def read_output(login: GuestLogin, secret: str, offset: int | None = None) -> OutputRead:
    """The last MAX_READ bytes of the output (offset None), or those from `offset` on."""
    if offset is None:
        remote = f"sudo -n sh -c 'wc -c < {LOG} && tail -c {MAX_READ} {LOG}'"
    else:
        remote = f"sudo -n sh -c 'wc -c < {LOG} && tail -c +{offset + 1} {LOG} | head -c {MAX_READ}'"
    with tempfile.TemporaryDirectory(prefix="guest-logs-") as directory:
        known_hosts = Path(directory) / "known_hosts"
        host = login.address if login.port == 22 else f"[{login.address}]:{login.port}"
        known_hosts.write_text(f"{host} {' '.join(login.host_key.split()[:2])}\n", encoding="ascii")
        try:
            code, out, err = await _ssh(login, known_hosts, remote)
        except TimeoutError:
            return OutputRead.failed(offset, f"the guest did not answer within {READ_TIMEOUT_S:.0f} s")
    if code != 0:
        reason = err.decode(errors="replace").strip().splitlines()
        return OutputRead.failed(offset, f"reading {LOG} failed: {reason[-1] if reason else f'exit {code}'}")
    size_line, _, body = out.partition(b"\n")
    try:
        size = int(size_line.strip())
    except ValueError:
        return OutputRead.failed(offset, f"reading {LOG} failed: the guest answered no size")
    start = offset if offset is not None else max(0, size - len(body))
    text = body.decode(errors="replace").replace(secret, MASK) if secret else body.decode(errors="replace")
    return OutputRead(text, start + len(body), truncated=(start + len(body) < size) or (offset is None and start > 0))


async def _ssh(login: GuestLogin, known_hosts: Path, remote: str) -> tuple[int, bytes, bytes]:
    process = await asyncio.create_subprocess_exec(
        "ssh",
        *("-F", "/dev/null", "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes", "-i", str(login.key_file)),
        *("-o", f"UserKnownHostsFile={known_hosts}", "-o", "GlobalKnownHostsFile=/dev/null"),
        *("-o", "StrictHostKeyChecking=yes", "-o", f"ConnectTimeout={CONNECT_TIMEOUT_S}", "-p", str(login.port)),
        f"{login.user}@{login.address}",
        remote,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(), READ_TIMEOUT_S)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    return process.returncode or 0, out, err
