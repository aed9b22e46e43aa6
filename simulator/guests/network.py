"""The simulated cluster network: one bridge with a DHCP server per simulator, in 198.18.0.0/15 only.

Each simulator claims a /24 of the test range 198.18.0.0/15 (RFC 2544) by holding an exclusive lock on
``/run/proxmox-provisioner-guests/net-<n>.lock``, so parallel simulators never share a subnet. The lock is held for
the simulator's life; a lock that can be taken while its record is still there belongs to a simulator that died, and
whatever that record names (bridge, guest namespaces and links, mounts, processes) is removed before the subnet is
used again.

On the subnet: the bridge ``pgbr<n>`` holds ``.1`` (the gateway: the seed server is reached there), dnsmasq hands out
``.10`` to ``.250`` with no router and no DNS server, so guests reach nothing beyond the bridge; every guest's link is
named ``pg<n>-<vmid>`` and a container guest's network namespace ``pg<n>-<vmid>`` too.
"""

from __future__ import annotations

import fcntl
import ipaddress
import json
import logging
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from simulator.guests import system

log = logging.getLogger(__name__)

TEST_RANGE = ipaddress.IPv4Network("198.18.0.0/15")
SUBNETS = 512  # the /24s of the test range
REGISTRY = Path(os.environ.get("PROVISIONER_GUEST_REGISTRY", "/run/proxmox-provisioner-guests"))
PIDFILE_NAMES = {"dnsmasq.pid": "dnsmasq", "nspawn.pid": "systemd-nspawn", "qemu.pid": "qemu-system-x86_64"}


def subnet(index: int) -> ipaddress.IPv4Network:
    return ipaddress.IPv4Network((int(TEST_RANGE.network_address) + index * 256, 24))


@dataclass(frozen=True)
class Record:
    """What a simulator's network made, written before it is made, so a successor can remove it."""

    index: int
    workdir: str
    owner_pid: int

    @property
    def prefix(self) -> str:
        return f"pg{self.index}-"

    @property
    def bridge(self) -> str:
        return f"pgbr{self.index}"


class GuestNetwork:
    """A claimed subnet with its bridge and DHCP server; `close()` removes all of it."""

    def __init__(self, workdir: Path, scope: Path | None = None, registry: Path = REGISTRY) -> None:
        self.workdir = workdir
        # Where the guests on this network keep their pid files and mounts (removed with a stale network).
        self.scope = scope or workdir
        self.registry = registry
        self._lock: IO[str] | None = None
        self.record: Record | None = None
        self._dnsmasq: subprocess.Popen[bytes] | None = None

    # ------------------------------------------------------------------ addresses and names

    @property
    def index(self) -> int:
        assert self.record is not None, "the network is not open"
        return self.record.index

    @property
    def network(self) -> ipaddress.IPv4Network:
        return subnet(self.index)

    @property
    def gateway(self) -> str:
        return str(self.network.network_address + 1)

    @property
    def bridge(self) -> str:
        assert self.record is not None
        return self.record.bridge

    def link_name(self, vmid: int) -> str:
        """The guest's link (veth host end or tap) and container namespace name: at most 15 characters."""
        assert self.record is not None
        name = f"{self.record.prefix}{vmid}"
        if len(name) > 15:
            raise ValueError(f"VMID {vmid} is too long for a link name on network {self.index}")
        return name

    # ---------------------------------------------------------------------------- life

    def open(self) -> GuestNetwork:
        self.registry.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.workdir.mkdir(parents=True, exist_ok=True)
        sweep_stale(self.registry)
        for index in range(SUBNETS):
            handle = _try_lock(self.registry / f"net-{index}.lock")
            if handle is None:
                continue
            self._lock = handle
            record = self.registry / f"net-{index}.json"
            if record.exists():  # its owner died after the sweep
                remove_stale(record)
            self.record = Record(index, str(self.scope), os.getpid())
            record.write_text(json.dumps(self.record.__dict__) + "\n")
            break
        else:
            raise system.GuestsUnavailable(f"all {SUBNETS} guest subnets of {TEST_RANGE} are in use")
        try:
            self._make_bridge()
            self._start_dnsmasq()
        except BaseException:
            self.close()
            raise
        log.info("guest network %s on %s (gateway %s, DHCP)", self.network, self.bridge, self.gateway)
        return self

    def close(self) -> None:
        """Stop the DHCP server and remove the bridge; the guests must be gone already (idempotent)."""
        if self.record is None:
            return
        if self._dnsmasq is not None:
            system.terminate(self._dnsmasq.pid)
            self._dnsmasq.wait(5)
            self._dnsmasq = None
        remove_links(self.record)
        (self.registry / f"net-{self.record.index}.json").unlink(missing_ok=True)
        self.record = None
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def _make_bridge(self) -> None:
        bridge = self.bridge
        system.quiet("ip", "link", "del", bridge)
        system.run(["ip", "link", "add", bridge, "type", "bridge"])
        system.run(["ip", "addr", "add", f"{self.gateway}/{self.network.prefixlen}", "dev", bridge])
        system.run(["ip", "link", "set", bridge, "up"])

    def _start_dnsmasq(self) -> None:
        hosts = list(self.network.hosts())
        leases = self.workdir / "dnsmasq.leases"
        leases.touch()
        command = [
            "dnsmasq",
            "--keep-in-foreground",
            "--conf-file=/dev/null",
            "--port=0",  # no DNS
            f"--interface={self.bridge}",
            "--bind-interfaces",
            "--except-interface=lo",
            f"--dhcp-range={hosts[9]},{hosts[249]},{self.network.netmask},12h",
            "--dhcp-option=option:router",  # no default route: guests reach the bridge only
            "--dhcp-option=option:dns-server",
            "--dhcp-authoritative",
            "--no-ping",  # the guests' addresses are ours to give: no 3 s ICMP probe before each offer
            f"--dhcp-leasefile={leases}",
            f"--pid-file={self.workdir / 'dnsmasq.pid'}",
            "--user=root",
            "--log-dhcp",
            f"--log-facility={self.workdir / 'dnsmasq.log'}",
        ]
        self._dnsmasq = subprocess.Popen(command, stdin=subprocess.DEVNULL, start_new_session=True)
        (self.workdir / "dnsmasq.pid").write_text(f"{self._dnsmasq.pid}\n")
        try:
            self._dnsmasq.wait(0.3)
        except subprocess.TimeoutExpired:
            return
        raise system.CommandFailed(
            f"dnsmasq exited with {self._dnsmasq.returncode}: see {self.workdir / 'dnsmasq.log'}"
        )


def _try_lock(path: Path) -> IO[str] | None:
    """The lock file, opened and exclusively locked, or None when a live simulator holds it."""
    handle = open(path, "a")  # noqa: SIM115 (held for the network's life)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return None
    return handle


def sweep_stale(registry: Path) -> None:
    """Remove every network whose simulator died (its lock is free but its record is still there)."""
    for record in sorted(registry.glob("net-*.json")):
        handle = _try_lock(record.with_suffix(".lock"))
        if handle is None:
            continue
        with handle:
            if record.exists():
                remove_stale(record)


def remove_links(record: Record) -> None:
    """Delete the record's guest namespaces and links, then its bridge."""
    namespaces = system.run(["ip", "netns", "list"], check=False).stdout.split("\n")
    for line in namespaces:
        name = line.split(" ")[0]
        if name.startswith(record.prefix):
            system.remove_netns(name)
    links = system.run(["ip", "-o", "link", "show"], check=False).stdout.split("\n")
    for line in links:
        fields = line.split(": ")
        if len(fields) > 1 and fields[1].split("@")[0].startswith(record.prefix):
            system.quiet("ip", "link", "del", fields[1].split("@")[0])
    system.quiet("ip", "link", "del", record.bridge)


def remove_stale(path: Path) -> None:
    """Remove what a dead simulator's network left: its processes, mounts, links, namespaces and bridge."""
    try:
        record = Record(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        path.unlink(missing_ok=True)
        return
    log.warning("removing guest network %s left by a simulator that stopped without cleaning up", record.bridge)
    workdir = Path(record.workdir)
    if workdir.is_dir():
        for pidfile in sorted(workdir.rglob("*.pid")):
            executable = PIDFILE_NAMES.get(pidfile.name)
            if executable:
                system.kill_recorded(pidfile, executable)
        for point in system.mounts_under(workdir):
            system.unmount(point)
    remove_links(record)
    path.unlink(missing_ok=True)
