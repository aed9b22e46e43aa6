"""Host commands the guest backends run, and the checks that the host can run real guests at all."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

log = logging.getLogger(__name__)

# (command, Debian package) each backend needs on the host.
NEEDS: dict[str, tuple[tuple[str, str], ...]] = {
    "container": (
        ("ip", "iproute2"),
        ("mmdebstrap", "mmdebstrap"),
        ("systemd-nspawn", "systemd-container"),
        ("dnsmasq", "dnsmasq-base"),
    ),
    "vm": (
        ("ip", "iproute2"),
        ("mmdebstrap", "mmdebstrap"),
        ("mkfs.ext4", "e2fsprogs"),
        ("dnsmasq", "dnsmasq-base"),
        ("qemu-system-x86_64", "qemu-system-x86"),
        ("qemu-img", "qemu-utils"),
        ("genisoimage", "genisoimage"),  # Proxmox cloud-init drives
    ),
}


class GuestsUnavailable(RuntimeError):
    """This host cannot run real guests of the asked kind (the message says what is missing and how to fix it)."""


def missing(kind: str) -> tuple[list[str], list[str]]:
    """(what is missing, the Debian packages that provide it) for a backend kind."""
    lacking, packages = [], []
    if os.geteuid() != 0:
        lacking.append("root")
    for command, package in NEEDS[kind]:
        if shutil.which(command) is None:
            lacking.append(command)
            packages.append(package)
    return lacking, packages


def require(kind: str) -> None:
    """Raise GuestsUnavailable with one line naming what is missing and the command that fixes it."""
    lacking, packages = missing(kind)
    if not lacking:
        return
    fix = []
    if packages:
        fix.append(f"apt-get install --no-install-recommends {' '.join(dict.fromkeys(packages))} (or: make guest-deps)")
    if "root" in lacking:
        fix.append("run as root")
    raise GuestsUnavailable(
        f"real guests ({kind}) need {', '.join(lacking)}: {'; '.join(fix)}; "
        "or PROVISIONER_SIM_GUESTS=none for the emulated boot"
    )


class CommandFailed(RuntimeError):
    pass


def run(command: Sequence[str], check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run a host command; on failure raise CommandFailed with its stderr."""
    result = subprocess.run(list(command), capture_output=True, text=True, timeout=timeout, check=False)
    if check and result.returncode != 0:
        raise CommandFailed(f"{' '.join(command)}: exit {result.returncode}: {result.stderr.strip()[-500:]}")
    return result


def quiet(*command: str) -> None:
    """Run a clean-up command whose failure only means there was nothing to clean."""
    run(command, check=False)


def mounted(path: Path) -> bool:
    target = str(path)
    with open("/proc/self/mounts") as mounts:
        return any(line.split()[1] == target for line in mounts)


def mounts_under(path: Path) -> list[Path]:
    """Mount points at or below path, deepest first."""
    prefix = str(path).rstrip("/") + "/"
    with open("/proc/self/mounts") as mounts:
        points = [line.split()[1] for line in mounts]
    return [Path(p) for p in sorted({p for p in points if p.startswith(prefix)}, key=len, reverse=True)]


def unmount(path: Path) -> None:
    if mounted(path):
        quiet("umount", str(path))
        if mounted(path):
            quiet("umount", "-l", str(path))


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    state = Path(f"/proc/{pid}/stat")
    try:
        return state.read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def process_matches(pid: int, executable: str) -> bool:
    """True if pid runs `executable` (its argv[0] ends with that name): a recorded pid may have been reused."""
    try:
        argv0 = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0", 1)[0].decode(errors="replace")
    except OSError:
        return False
    return Path(argv0).name == executable


def kill_recorded(pidfile: Path, executable: str, grace_s: float = 5.0) -> None:
    """Stop the process a pid file names, if it still runs that executable: SIGTERM, then SIGKILL."""
    try:
        pid = int(pidfile.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return
    if not process_matches(pid, executable):
        return
    terminate(pid, grace_s)


def terminate(pid: int, grace_s: float = 5.0) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace_s
    while process_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if process_alive(pid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            return


def kill_now(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def netns_pids(name: str) -> list[int]:
    """The processes in a network namespace (none if it does not exist)."""
    return [int(pid) for pid in run(["ip", "netns", "pids", name], check=False).stdout.split()]


def remove_netns(name: str) -> None:
    """Kill whatever runs in a network namespace, then delete it (nothing to do if it is gone)."""
    for pid in netns_pids(name):
        kill_now(pid)
    quiet("ip", "netns", "del", name)
