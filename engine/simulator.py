"""The project's Proxmox simulator: fakepve (used as a library, never patched) plus what provisioning needs.

* a stateful `PUT /nodes/{node}/qemu/{vmid}/resize` (a `resize` worker task, as qemu-server does since PVE 8)
  and a stateful `GET /cluster/tasks`;
* clone and start durations (`clone_secs`, `start_secs`: PVE seconds in front of `qmclone` / `qmstart`);
* one boot sidecar coroutine: `boot_secs` PVE seconds after a VM (re)starts it emulates cloud-init's NoCloud
  HTTP datasource (SMBIOS serial `ds=nocloud-net;s=<url>`: GET meta-data, user-data, vendor-data, then the
  `phone_home` POST) and brings the guest agent up with a stable per-VMID IPv4;
* `seed_cluster`: two nodes, `local` / `local-lvm` / shared RBD `ceph-vm`, two cloud-init templates and the
  security groups `default`, `ssh`, `web`;
* `start_simulator`: all of it over TLS on a private event loop in a daemon thread.

  python -m engine.simulator --state-dir DIR [--host 127.0.0.1 --port 8006 --time-scale 1 --clone-secs 3
                             --start-secs 2 --boot-secs 20]

Times are PVE seconds; fakepve's `time_scale` turns them into real ones (0: tasks finish before the request
returns and VMs boot on the sidecar's next tick).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import email
import hashlib
import ipaddress
import logging
import os
import re
import secrets
import signal
import struct
import sys
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from fakepve import FakePve, FakeVm, PveError, TaskError, settle
from fakepve.certs import make_cert

from engine.files import write_private
from guests import cidrive
from guests.backend import KINDS as GUEST_KINDS
from guests.backend import GuestBackend
from guests.power import GuestPower
from guests.spec import GuestSpec
from guests.system import GuestsUnavailable

log = logging.getLogger(__name__)

T = TypeVar("T")
TaskBody = Callable[[], Awaitable[Any]]

KIB, MIB, GIB, TIB = 1024, 1024**2, 1024**3, 1024**4
SIZE_UNITS = {"K": KIB, "M": MIB, "G": GIB, "T": TIB}
TOKEN_ID = "root@pam!provisioner"
NODES = ("pve1", "pve2")
CEPH_STORAGE = "ceph-vm"
SEED_FILES = ("meta-data", "user-data", "vendor-data")
NOCLOUD_IDS = ("nocloud", "nocloud-net")
# cloud-init's short keys on the command line / SMBIOS serial.
SEED_KEYS = {"h": "local-hostname", "i": "instance-id", "s": "seedfrom"}
PHONE_HOME_ALL = ("pub_key_rsa", "pub_key_ecdsa", "pub_key_ed25519", "instance_id", "hostname", "fqdn")
MAX_SEED_BYTES = 1024 * 1024  # kept of each seed body
START_TIMEOUT = 30.0
MAC_RE = re.compile(r"^[0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2}){5}$")
RESIZE_RE = re.compile(r"^(\+)?(\d+(?:\.\d+)?)([KMGT])?$")


# ------------------------------------------------------------------------------------------- strings


def split_props(text: str) -> tuple[str | None, dict[str, str]]:
    """(bare first value or None, {key: value}) of a PVE property string such as a drive or smbios1."""
    first, props = None, {}
    for n, part in enumerate(str(text).split(",")):
        key, eq, value = part.partition("=")
        if eq:
            props[key] = value
        elif part and n == 0:
            first = part
    return first, props


def join_props(first: str | None, props: dict[str, str]) -> str:
    """A property string as PVE prints it: the bare value first, then the options in alphabetical order."""
    return ",".join(([first] if first else []) + [f"{key}={props[key]}" for key in sorted(props)])


def format_size(size: int) -> str:
    """PVE::JSONSchema::format_size: the largest unit that divides the size (20G, 3584M, 1536K, 17)."""
    for unit in "TGMK":
        if size and size % SIZE_UNITS[unit] == 0:
            return f"{size // SIZE_UNITS[unit]}{unit}"
    return str(size)


def parse_size(text: str) -> int | None:
    """Bytes in a size such as 8G, 3584M or 1024 (bytes), or None."""
    found = re.fullmatch(r"(\d+(?:\.\d+)?)([KMGT])?", str(text).strip())
    if not found:
        return None
    return int(float(found.group(1)) * SIZE_UNITS.get(found.group(2) or "", 1))


def resized(current: int, request: str) -> int:
    """The new size in bytes for a resize request (`20G` absolute, `+5G` relative), as qemu-server computes it."""
    found = RESIZE_RE.match(request)
    if not found:
        raise PveError(500, "internal error")
    value = float(found.group(2)) * SIZE_UNITS.get(found.group(3) or "", 1)
    return int(value + current if found.group(1) else value)


def agent_enabled(config: dict[str, Any]) -> bool:
    """True if the VM config enables the QEMU guest agent (`1`, `enabled=1`, `1,fstrim_cloned_disks=1`)."""
    first, props = split_props(str(config.get("agent", "0")))
    value = props.get("enabled", first or "0")
    return value.lower() in ("1", "true", "yes", "on")


# ---------------------------------------------------------------------------------------- guest identity


# The emulated guests' addresses: in the test range 198.18.0.0/15 (RFC 2544), like the real guests', so nothing
# that talks to a made-up guest address ever reaches a private or public network.
EMULATED_NETWORK = ipaddress.IPv4Network("198.18.0.0/15")


def guest_ipv4(vmid: int) -> str:
    """A stable address per VMID in 198.18.0.0/15 (unique over any 131070 consecutive VMIDs)."""
    span = EMULATED_NETWORK.num_addresses - 2
    return str(EMULATED_NETWORK.network_address + 1 + vmid % span)


def guest_mac(config: dict[str, Any], vmid: int) -> str:
    """The MAC of the VM's first NIC (net0=virtio=BC:24:11:..), lower case as the agent reports it."""
    for key in sorted(k for k in config if re.fullmatch(r"net\d+", k)):
        for part in str(config[key]).split(","):
            value = part.partition("=")[2]
            if MAC_RE.match(value):
                return value.lower()
    return vmid_mac(vmid)


def vmid_mac(vmid: int) -> str:
    """A MAC in Proxmox's BC:24:11 prefix derived from the VMID (lower case)."""
    return f"bc:24:11:{vmid // 65536 % 256:02x}:{vmid // 256 % 256:02x}:{vmid % 256:02x}"


def link_local(mac: str) -> str:
    """The EUI-64 IPv6 link-local address of a MAC."""
    octets = bytes.fromhex(mac.replace(":", ""))
    eui = bytes([octets[0] ^ 0x02]) + octets[1:3] + b"\xff\xfe" + octets[3:]
    return str(ipaddress.IPv6Address(b"\xfe\x80" + bytes(6) + eui))


def _address(ip: str, prefix: int) -> dict[str, Any]:
    kind = "ipv6" if ":" in ip else "ipv4"
    return {"ip-address": ip, "ip-address-type": kind, "prefix": prefix}


def guest_interfaces(vmid: int, mac: str) -> list[dict[str, Any]]:
    """network-get-interfaces as qemu-ga answers it: lo, then eth0 with the guest's IPv4 and link-local."""
    return [
        {
            "name": "lo",
            "hardware-address": "00:00:00:00:00:00",
            "ip-addresses": [_address("127.0.0.1", 8), _address("::1", 128)],
        },
        {
            "name": "eth0",
            "hardware-address": mac,
            "ip-addresses": [
                _address(guest_ipv4(vmid), EMULATED_NETWORK.prefixlen),
                _address(link_local(mac), 64),
            ],
        },
    ]


def _ssh_wire(*parts: bytes) -> str:
    return base64.b64encode(b"".join(struct.pack(">I", len(p)) + p for p in parts)).decode()


def ssh_host_keys(seed: str, hostname: str) -> dict[str, str]:
    """The guest's SSH host public keys (the .pub files: `type AAAA… root@host` and a newline), stable per seed.

    ed25519 and ECDSA are real key pairs derived from the seed; the RSA one is well-formed but not a real key.
    """
    digest = hashlib.sha256(seed.encode()).digest()
    openssh = (serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    edkey = ed25519.Ed25519PrivateKey.from_private_bytes(digest).public_key().public_bytes(*openssh).decode()
    eckey = ec.derive_private_key(int.from_bytes(digest, "big") % (2**255) + 1, ec.SECP256R1())
    ecdsa = eckey.public_key().public_bytes(*openssh).decode()
    modulus = bytearray(hashlib.shake_256(digest).digest(256))
    modulus[0] |= 0x80  # a 2048-bit odd number: an mpint with its sign byte
    modulus[-1] |= 0x01
    rsa = "ssh-rsa " + _ssh_wire(b"ssh-rsa", b"\x01\x00\x01", b"\x00" + bytes(modulus))
    return {
        name: f"{key} root@{hostname}\n"
        for name, key in (("pub_key_ed25519", edkey), ("pub_key_ecdsa", ecdsa), ("pub_key_rsa", rsa))
    }


def guest_spec(vm: FakeVm) -> GuestSpec:
    """A real guest's hardware from the VM's config: SMBIOS serial (decoded) and uuid, net0's MAC, boot disk size."""
    config = vm.config
    try:
        serial = smbios_serial(config)
    except ValueError:
        log.warning("VM %s: smbios1 serial is not valid base64; the guest gets none", vm.vmid)
        serial = None
    _first, smbios = split_props(str(config.get("smbios1", "")))
    disk = 0
    boot = re.search(r"order=([a-z]+\d+)", str(config.get("boot", "")))
    for key in ([boot.group(1)] if boot else []) + ["scsi0", "virtio0", "sata0", "ide0"]:
        _volume, props = split_props(str(config.get(key, "")))
        disk = parse_size(props.get("size", "")) or 0
        if disk:
            break
    return GuestSpec(
        serial=serial,
        uuid=smbios.get("uuid"),
        mac=guest_mac(config, vm.vmid),
        disk_bytes=disk or 3 * GIB,
        cores=int(config.get("cores", 1)) * int(config.get("sockets", 1)),
        memory_mb=int(config.get("memory", 1024)),
        cloud_init=cidrive.documents(config, vm.vmid),
    )


# ------------------------------------------------------------------------------------------- cloud-init


@dataclass(frozen=True)
class SeedRef:
    """Where a guest's cloud-init finds its NoCloud seed (from the SMBIOS serial)."""

    mode: str  # nocloud-net or nocloud
    url: str  # the seedfrom URL; meta-data etc. are appended to it as cloud-init does
    overrides: dict[str, str] = field(default_factory=dict)  # h=/i= given on the serial

    def file_url(self, name: str) -> str:
        """cloud-init's read_seeded: `%s` in the URL is replaced, otherwise the name is appended."""
        return self.url.replace("%s", name) if "%s" in self.url else self.url + name


def smbios_serial(config: dict[str, Any]) -> str | None:
    """The SMBIOS serial of a VM config's smbios1 (base64-decoded when base64=1), or None."""
    _first, props = split_props(str(config.get("smbios1", "")))
    serial = props.get("serial")
    if not serial:
        return None
    if props.get("base64") in ("1", "true"):
        return base64.b64decode(serial, validate=True).decode()
    return serial


def parse_seed(serial: str | None) -> SeedRef | None:
    """The NoCloud seed of a `ds=nocloud-net;s=http://…/` serial (also `ds=nocloud;…`), or None."""
    if not serial:
        return None
    head, *pairs = serial.strip().split(";")
    key, _, mode = head.partition("=")
    if key != "ds" or mode not in NOCLOUD_IDS:
        return None
    found: dict[str, str] = {}
    for pair in pairs:
        name, _, value = pair.partition("=")
        if name:
            found[SEED_KEYS.get(name, name)] = value
    url = found.pop("seedfrom", "")
    if not url.startswith(("http://", "https://")):
        return None
    return SeedRef(mode, url, found)


def cloud_config(text: str) -> dict[str, Any]:
    """The cloud-config of a user-data / vendor-data body: `#cloud-config` YAML or the text/cloud-config parts
    of a MIME multipart; {} for scripts and anything else."""
    if text.startswith("#cloud-config"):
        return _yaml_dict(text)
    if not text.lstrip().lower().startswith(("content-type:", "mime-version:")):
        return {}
    merged: dict[str, Any] = {}
    for part in email.message_from_string(text).walk():
        payload = part.get_payload(decode=True)
        if part.get_content_type() == "text/cloud-config" and isinstance(payload, bytes):
            merged.update(_yaml_dict(payload.decode(errors="replace")))
    return merged


def _yaml_dict(text: str) -> dict[str, Any]:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError:
        return {}
    return data if isinstance(data, dict) else {}


@dataclass
class SeedFile:
    """One seed GET: status None when nothing answered (refused, timeout)."""

    url: str
    status: int | None = None
    body: str = ""
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


@dataclass
class CloudInitRun:
    """What the emulated cloud-init did at one boot of a VM."""

    vmid: int
    boot: int  # 1 at the VM's first boot seen by the simulator, +1 at every (re)start or reboot
    booted_at: float  # time.time() when the boot ran
    seed_mode: str | None = None  # nocloud-net / nocloud, None without a seed in the SMBIOS serial
    seed_url: str | None = None
    files: dict[str, SeedFile] = field(default_factory=dict)  # only those fetched, in order
    fetched_at: float | None = None
    datasource: str = "None"  # 'NoCloudNet' when the seed was applied, else 'None' (DataSourceNone)
    instance_id: str | None = None
    hostname: str | None = None
    phone_home_url: str | None = None
    phone_home_fields: dict[str, str] = field(default_factory=dict)
    phone_home_status: int | None = None
    phone_home_attempts: int = 0
    error: str | None = None
    finished_at: float | None = None  # set once cloud-init is done (phone_home included); None while it runs

    @property
    def done(self) -> bool:
        return self.finished_at is not None

    def status(self, name: str) -> int | None:
        """HTTP status of a seed file (meta-data, user-data, vendor-data); None if not fetched or unanswered."""
        fetched = self.files.get(name)
        return fetched.status if fetched else None

    def body(self, name: str) -> str | None:
        fetched = self.files.get(name)
        return fetched.body if fetched else None


@dataclass
class _Power:
    """The sidecar's view of one VM's current power cycle."""

    started_at: float | None  # vm.started_at of the cycle; a new value means a (re)start or reboot
    since: float  # when the cycle began (time.time())
    boot: int = 0  # boot number once the boot ran; 0 while waiting for boot_secs
    task: asyncio.Task[None] | None = None


# ---------------------------------------------------------------------------------------------- simulator


class ClusterSimulator(FakePve):  # type: ignore[misc]
    """fakepve with stateful resize and cluster task list, clone/start durations and a boot sidecar."""

    clone_secs: float = 0.0
    start_secs: float = 0.0
    boot_secs: float = 0.0
    # Real seconds between two sidecar passes, and per seed / phone-home request.
    sidecar_interval: float = 0.1
    seed_timeout: float = 5.0
    # PVE seconds between phone_home tries (cloud-init: 3).
    phone_home_retry_secs: float = 3.0
    # `ds=nocloud` (dsmode local) fetches the seed but ends as DataSourceNone, as on cloud-init 22.4
    # (shared cloud-init facts, point 1); False treats it like nocloud-net.
    strict_nocloud: bool = True
    node_cpus: int = 32
    node_memory: int = 128 * GIB
    node_disk: int = 100 * GIB
    # Boot records kept per VM (oldest dropped).
    max_runs_per_vm: int = 100

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # vmid -> cloud-init runs, one per boot, oldest first.
        self.cloud_init: dict[int, list[CloudInitRun]] = {}
        # vmid -> number of boots so far.
        self.boots: dict[int, int] = {}
        self._power: dict[int, _Power] = {}
        self._sidecar: asyncio.Task[None] | None = None
        self._http: aiohttp.ClientSession | None = None
        # Real guests (PROVISIONER_SIM_GUESTS=container|vm) instead of the emulated boot; None: emulated.
        self.guests: GuestPower | None = None

    def use_guests(self, backend: GuestBackend) -> None:
        """Boot real guests from now on: templates are mapped to the backend's images when seeded."""
        self.guests = GuestPower(backend, guest_spec, lambda vm: agent_enabled(vm.config))

    # ----------------------------------------------------------------------- queries

    def cloud_init_runs(self, vmid: int) -> list[CloudInitRun]:
        """Every cloud-init run of the VM (one per boot, the last one possibly still running), oldest first."""
        return list(self.cloud_init.get(vmid, ()))

    def last_cloud_init(self, vmid: int) -> CloudInitRun | None:
        """The VM's latest cloud-init run (still running unless `.done`), or None before its first boot."""
        runs = self.cloud_init.get(vmid)
        return runs[-1] if runs else None

    # --------------------------------------------------------------------- lifecycle

    async def start(self, certfile: str, keyfile: str) -> None:
        """Listen (as FakePve.start) and run the boot sidecar."""
        await super().start(certfile, keyfile)
        if self.guests is not None:
            self.guests.start(lambda: list(self.vms))
        else:
            self._sidecar = asyncio.ensure_future(self._sidecar_loop())

    async def stop(self) -> None:
        """Stop the sidecar, every boot in flight and the HTTP client, then stop listening."""
        tasks = [self._sidecar] + [p.task for p in self._power.values()]
        for task in tasks:
            if task is not None:
                task.cancel()
        await asyncio.gather(*(t for t in tasks if t is not None), return_exceptions=True)
        self._sidecar = None
        self._power.clear()
        if self.guests is not None:
            await self.guests.stop()
        if self._http is not None:
            await self._http.close()
            self._http = None
        self._drop_connections()
        await super().stop()

    def _drop_connections(self) -> None:
        """Abort the clients' connections: an idle TLS keep-alive would wait for a close_notify that never comes."""
        server = self.runner.server if self.runner is not None else None
        for connection in list(server.connections) if server is not None else ():
            if connection.transport is not None:
                connection.transport.abort()

    # ------------------------------------------------------------------ node sizes

    def _node_stats(self, online: bool) -> dict[str, Any]:
        stats: dict[str, Any] = super()._node_stats(online)
        if stats:
            stats.update(
                maxcpu=self.node_cpus, maxmem=self.node_memory, mem=self.node_memory // 16, maxdisk=self.node_disk
            )
        return stats

    # ------------------------------------------------------------------------ tasks

    async def task(
        self,
        node: str,
        ttype: str,
        tid: Any,
        user: str,
        body: TaskBody,
        vm: Any = None,
        lock: bool = True,
        log: Iterable[str] = (),
    ) -> str:
        """FakePve.task, with clone_secs / start_secs PVE seconds in front of qmclone / qmstart bodies."""
        extra = {"qmclone": self.clone_secs, "qmstart": self.start_secs}.get(ttype, 0)
        if extra:
            body = self._delayed(body, extra)
        if self.guests is not None:
            body = self.guests.wrap(ttype, tid, vm, body)
        upid: str = await super().task(node, ttype, tid, user, body, vm=vm, lock=lock, log=log)
        return upid

    async def _powerdown(self, vm: FakeVm, p: dict[str, Any]) -> str | None:
        """A clean shutdown (qmshutdown, and the first half of qmreboot): a real guest's own poweroff."""
        if self.guests is None:
            result: str | None = await super()._powerdown(vm, p)
            return result
        return await self.guests.powerdown(vm, p, self.shutdown_default_timeout)

    def _delayed(self, body: TaskBody, secs: float) -> TaskBody:
        async def delayed() -> Any:
            await self.pause(secs)
            return await body()

        return delayed

    def _routes_simulator(self) -> list[tuple[str, str, Callable[..., Awaitable[Any]]]]:
        return [
            ("PUT", "/nodes/{node}/qemu/{vmid}/resize", self._qm_resize),
            ("GET", "/cluster/tasks", self._cluster_tasks),
        ]

    async def _cluster_tasks(self, v: dict[str, Any], user: str) -> list[dict[str, Any]]:
        """The cluster-wide task list, newest first: `status` is the exit status once a task ended."""
        everything = self.allowed(user, "/", "Sys.Audit")
        seen = [t for t in self.tasklog if everything or user in (t["user"], t["user"].split("!")[0])]
        return [_task_entry(t) for t in sorted(seen, key=lambda t: -t["starttime"])]

    # ----------------------------------------------------------------------- resize

    async def _qm_resize(self, v: dict[str, Any], user: str) -> str:
        """qemu-server's resize_vm (PVE 8+): a `resize` worker holding the config lock does every check."""
        vm = self.find(v["node"], v["vmid"])
        if v.get("skiplock") and user != "root@pam":
            raise PveError(400, "Parameter verification failed.", {"skiplock": "Only root may use this option."})

        async def body() -> None:
            try:
                await self._resize_drive(vm, v, user)
            except PveError as e:
                raise TaskError(e.message) from e

        return await self.task(vm.node, "resize", vm.vmid, user, body, vm=vm)

    async def _resize_drive(self, vm: FakeVm, v: dict[str, Any], user: str) -> None:
        disk = v["disk"]
        if v.get("digest") and v["digest"] != vm.digest():
            raise PveError(500, "checksum mismatch (file change by other user?)")
        if vm.lock and not v.get("skiplock"):
            raise PveError(500, f"VM is locked ({vm.lock})")
        volume, props = self._drive(vm, disk)
        sid, _, volname = volume.partition(":")
        self.require(user, f"/storage/{sid}", "Datastore.AllocateSpace")
        record = self.storages.get(sid, {}).get("volumes", {}).get(volname)
        size = int(record.get("size") or 0) if record else parse_size(props.get("size", "")) or 0
        if not size:
            raise PveError(500, f"Could not determine current size of volume '{volume}'")
        new = resized(size, str(v["size"]))
        if new < size:
            raise PveError(500, "shrinking disks is not supported")
        if new == size:
            return
        await self.ceph_io(vm, [disk])
        if record is not None:
            record["size"] = new
        vm.config[disk] = join_props(volume, dict(props, size=format_size(new)))

    @staticmethod
    def _drive(vm: FakeVm, disk: str) -> tuple[str, dict[str, str]]:
        """(volume id, options) of a resizable drive of the VM, or PVE's error."""
        value = vm.config.get(disk)
        if not value:
            raise PveError(500, f"disk '{disk}' does not exist")
        volume, props = split_props(str(value))
        volume = volume or props.pop("file", None)
        if not volume:
            raise PveError(500, f"disk '{disk}' has no associated volume")
        if props.get("media") == "cdrom" or volume == "cdrom":
            raise PveError(500, "you can't resize a cdrom")
        return volume, props

    # ------------------------------------------------------------------ boot sidecar

    async def _sidecar_loop(self) -> None:
        while True:
            try:
                self.sidecar_pass(time.time())
            except Exception:
                log.exception("boot sidecar pass failed")
            await asyncio.sleep(self.sidecar_interval)

    def sidecar_pass(self, now: float) -> None:
        """One pass over every VM: notice stops and (re)starts, and boot the VMs whose boot_secs are up."""
        present: set[int] = set()
        for vm in list(self.vms):
            if vm.template:
                continue
            present.add(vm.vmid)
            self._watch(vm, now)
        for vmid in set(self._power) - present:
            self._forget(vmid)

    def _watch(self, vm: FakeVm, now: float) -> None:
        power = self._power.get(vm.vmid)
        if vm.status != "running":
            vm.agent = None
            if power is not None:
                self._forget(vm.vmid)
            return
        if power is None or power.started_at != vm.started_at:
            if power is not None:  # a reboot or reset: the guest and its agent went away and come back
                self._forget(vm.vmid)
                vm.agent = None
            power = self._power[vm.vmid] = _Power(vm.started_at, vm.started_at or now)
        if not power.boot and now - power.since >= self.boot_secs * self.time_scale:
            power.boot = self.boots[vm.vmid] = self.boots.get(vm.vmid, 0) + 1
            power.task = asyncio.ensure_future(self._boot(vm, power))

    def _forget(self, vmid: int) -> None:
        power = self._power.pop(vmid, None)
        if power is not None and power.task is not None and not power.task.done():
            power.task.cancel()

    async def _boot(self, vm: FakeVm, power: _Power) -> None:
        """The guest boots: cloud-init fetches its seed, the network and the agent come up, then cloud-init's final
        stage phones home. The agent answers whether or not cloud-init worked; a stop or reboot interrupts it all."""
        run = CloudInitRun(vm.vmid, power.boot, time.time())
        runs = self.cloud_init.setdefault(vm.vmid, [])
        runs.append(run)
        del runs[: -self.max_runs_per_vm]
        try:
            await self._cloud_init_network(vm, run)
            self._agent_up(vm, power, run)
            if run.datasource != "None":
                await self._phone_home(run)
        except asyncio.CancelledError:
            run.error = "interrupted: the guest stopped or rebooted"
            raise
        except Exception as e:  # a broken seed must never stop the guest from booting
            log.exception("cloud-init emulation of VM %s failed", vm.vmid)
            run.error = run.error or f"{type(e).__name__}: {e}"
        self._agent_up(vm, power, run)
        run.finished_at = time.time()

    def _agent_up(self, vm: FakeVm, power: _Power, run: CloudInitRun) -> None:
        current = self._power.get(vm.vmid) is power and vm.status == "running"
        if not current or vm.agent is not None or not agent_enabled(vm.config):
            return
        agent: dict[str, Any] = {"interfaces": guest_interfaces(vm.vmid, guest_mac(vm.config, vm.vmid))}
        if run.datasource != "None" and run.hostname:
            agent["get-host-name"] = {"host-name": run.hostname}
        vm.agent = agent

    # -------------------------------------------------------------------- cloud-init

    async def _cloud_init_network(self, vm: FakeVm, run: CloudInitRun) -> None:
        """cloud-init's init (network) stage: find the seed in the SMBIOS serial, fetch it, pick the datasource."""
        try:
            seed = parse_seed(smbios_serial(vm.config))
        except ValueError as e:
            run.error = f"unreadable smbios1 serial: {e}"
            return
        if seed is None:
            return
        run.seed_mode, run.seed_url = seed.mode, seed.url
        if not await self._fetch_seed(seed, run):
            return
        meta = _yaml_dict(run.files["meta-data"].body)
        meta.update(seed.overrides)
        run.instance_id = str(meta.get("instance-id") or "nocloud")
        run.hostname = str(meta.get("local-hostname") or vm.name)
        if seed.mode == "nocloud" and self.strict_nocloud:
            return  # dsmode local: the network stage never applies the seed
        run.datasource = "NoCloudNet"

    async def _fetch_seed(self, seed: SeedRef, run: CloudInitRun) -> bool:
        """GET meta-data, user-data, vendor-data in cloud-init's order; True if the first two answered 2xx.

        Like read_seeded, a failed meta-data or user-data ends the fetch; vendor-data is optional.
        """
        for name in SEED_FILES:
            fetched = run.files[name] = await self._get(seed.file_url(name))
            if name != "vendor-data" and not fetched.ok:
                break
        run.fetched_at = time.time()
        return all(name in run.files and run.files[name].ok for name in SEED_FILES[:2])

    async def _get(self, url: str) -> SeedFile:
        try:
            async with self._client().get(url) as response:
                raw = await response.read()
                return SeedFile(url, response.status, raw[:MAX_SEED_BYTES].decode(errors="replace"))
        except (TimeoutError, aiohttp.ClientError, ValueError) as e:
            return SeedFile(url, None, "", f"{type(e).__name__}: {e}")

    async def _phone_home(self, run: CloudInitRun) -> None:
        """cc_phone_home: POST the form fields it lists to the url (user-data's settings win over vendor-data's)."""
        user, vendor = (cloud_config(run.body(name) or "") for name in ("user-data", "vendor-data"))
        settings = user.get("phone_home") or vendor.get("phone_home")
        if not isinstance(settings, dict) or not settings.get("url"):
            return
        instance_id = run.instance_id or "nocloud"
        url = str(settings["url"]).replace("${INSTANCE_ID}", instance_id).replace("$INSTANCE_ID", instance_id)
        run.phone_home_url, run.phone_home_fields = url, self._phone_home_fields(settings.get("post", "all"), run)
        for attempt in range(_tries(settings.get("tries"))):
            if attempt:
                await self.pause(self.phone_home_retry_secs)
            run.phone_home_attempts += 1
            run.phone_home_status = await self._post(url, run.phone_home_fields)
            if run.phone_home_status is not None and 200 <= run.phone_home_status < 300:
                return

    @staticmethod
    def _phone_home_fields(post: Any, run: CloudInitRun) -> dict[str, str]:
        hostname = run.hostname or "localhost"
        known = {"instance_id": run.instance_id or "nocloud", "hostname": hostname.split(".")[0], "fqdn": hostname}
        known.update(ssh_host_keys(f"{run.vmid}:{run.instance_id}", hostname.split(".")[0]))
        names = PHONE_HOME_ALL if post == "all" or not isinstance(post, list) else [str(n) for n in post]
        return {name: known.get(name, "N/A") for name in names}

    async def _post(self, url: str, fields: dict[str, str]) -> int | None:
        try:
            async with self._client().post(url, data=fields) as response:
                await response.read()
                return response.status
        except (TimeoutError, aiohttp.ClientError, ValueError) as e:
            log.info("phone_home to %s failed: %s", url, e)
            return None

    def _client(self) -> aiohttp.ClientSession:
        """The guests' HTTP client: one pooled session, no proxy from the environment, cloud-init's user agent."""
        if self._http is None or self._http.closed:
            self._http = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.seed_timeout),
                trust_env=False,
                connector=aiohttp.TCPConnector(limit=64),
                headers={"User-Agent": "Cloud-Init/22.4.2"},
            )
        return self._http


def _task_entry(task: dict[str, Any]) -> dict[str, Any]:
    """A task as /cluster/tasks lists it: no log; `status` holds the exit status, absent while it runs."""
    entry = {k: v for k, v in task.items() if k not in ("log", "status", "exitstatus")}
    if task.get("exitstatus") is not None:
        entry["status"] = task["exitstatus"]
    if "!" in task["user"]:
        entry["tokenid"] = task["user"].partition("!")[2]
    return entry


def _tries(value: Any) -> int:
    """cc_phone_home's tries: an int, 10 when missing or unreadable (capped here at 10)."""
    try:
        return max(1, min(int(value), 10))
    except (TypeError, ValueError):
        return 10


# ----------------------------------------------------------------------------------------------- seeding


@dataclass(frozen=True)
class TemplateSpec:
    vmid: int
    name: str
    node: str
    disk_bytes: int
    cloud_init_drive: bool = False  # a Proxmox cloud-init drive (ide2), as many sites' templates carry
    image: str | None = None  # the real guest image its clones boot (guests.images), None: emulated only


TEMPLATES = (
    TemplateSpec(9000, "debian-12-cloud", "pve1", 3 * GIB, image="debian-12"),
    TemplateSpec(9001, "ubuntu-24.04-cloud", "pve2", 3584 * MIB, cloud_init_drive=True),
)
# With real guests: the templates whose images are built from Debian's packages (cloud-init 22.4 and 25.1).
REAL_GUEST_TEMPLATES = (
    TemplateSpec(9000, "debian-12-cloud", "pve1", 3 * GIB, image="debian-12"),
    TemplateSpec(9002, "debian-13-cloud", "pve2", 3 * GIB, cloud_init_drive=True, image="debian-13"),
)
SECURITY_GROUPS: dict[str, tuple[str, list[dict[str, Any]]]] = {
    "default": ("Baseline for every VM: ping", [{"type": "in", "action": "ACCEPT", "macro": "Ping", "enable": 1}]),
    "ssh": ("SSH from anywhere", [{"type": "in", "action": "ACCEPT", "macro": "SSH", "enable": 1}]),
    "web": (
        "HTTP and HTTPS from anywhere",
        [
            {"type": "in", "action": "ACCEPT", "macro": "HTTPS", "enable": 1},
            {"type": "in", "action": "ACCEPT", "macro": "HTTP", "enable": 1},
        ],
    ),
}


def seed_cluster(sim: ClusterSimulator) -> None:
    """Nodes pve1/pve2, storages local/local-lvm/ceph-vm, the cloud-init templates and the security groups.

    Calling it again adds only what is missing.
    """
    for node in NODES:
        if node not in sim.nodes:
            sim.add_node(node)
    if CEPH_STORAGE not in sim.storages:
        sim.add_ceph_storage(CEPH_STORAGE, pool="vm")
        sim.storages[CEPH_STORAGE]["total"] = 4 * TIB
    sim.storages["local-lvm"].setdefault("total", 800 * GIB)
    for spec in REAL_GUEST_TEMPLATES if sim.guests is not None else TEMPLATES:
        if sim.vm(spec.vmid) is None:
            _add_template(sim, spec)
        if sim.guests is not None and spec.image:
            sim.guests.images[spec.vmid] = spec.image
    groups = sim.firewall_config("cluster")
    for name, (comment, rules) in SECURITY_GROUPS.items():
        if name not in groups["groups"]:
            groups["groups"][name] = [dict(rule) for rule in rules]
            groups["group_comments"][name] = comment


def _add_template(sim: ClusterSimulator, spec: TemplateSpec) -> None:
    """A cloud-init template as `qm importdisk` + `qm template` leave it: its base volume on the shared storage."""
    volname = f"base-{spec.vmid}-disk-0"
    sim.storages[CEPH_STORAGE].setdefault("volumes", {})[volname] = {
        "content": "images",
        "format": "raw",
        "size": spec.disk_bytes,
        "vmid": spec.vmid,
        "ctime": int(time.time()),
    }
    mac = vmid_mac(spec.vmid).upper()
    sim.add_vm(
        spec.vmid,
        spec.name,
        node=spec.node,
        template=True,
        config={
            "scsi0": f"{CEPH_STORAGE}:{volname},size={format_size(spec.disk_bytes)}",
            "scsihw": "virtio-scsi-pci",
            "boot": "order=scsi0",
            "net0": f"virtio={mac},bridge=vmbr0,firewall=1",
            "agent": "enabled=1",
            "serial0": "socket",
            "vga": "serial0",
            "ostype": "l26",
            "cores": 1,
            "memory": 1024,
            "template": 1,
            "smbios1": f"uuid={uuid.uuid4()}",
            **({"ide2": f"{CEPH_STORAGE}:base-{spec.vmid}-cloudinit,media=cdrom"} if spec.cloud_init_drive else {}),
        },
    )


def add_running_vms(sim: ClusterSimulator, count: int, first_vmid: int, prefix: str) -> list[int]:
    """`count` running VMs named `<prefix>-<vmid>` and tagged `provisioner`, as if created long ago (their
    disks are linked clones of template 9000); a provider that lost its database adopts them."""
    made: list[int] = []
    vmid = first_vmid
    while len(made) < count:
        if sim.vm(vmid) is None:
            vm = sim.add_vm(
                vmid,
                f"{prefix}-{vmid}",
                node=NODES[vmid % len(NODES)],
                status="running",
                config={
                    "scsi0": f"{CEPH_STORAGE}:base-9000-disk-0/vm-{vmid}-disk-0,size=20G",
                    "net0": f"virtio={vmid_mac(vmid).upper()},bridge=vmbr0,firewall=1",
                    "agent": "enabled=1",
                    "cores": 2,
                    "memory": 4096,
                    "ostype": "l26",
                    "tags": "provisioner",
                },
            )
            vm.started_at = time.time() - 3600
            made.append(vmid)
        vmid += 1
    return made


# ------------------------------------------------------------------------------------------------ serving


class SimulatorHandle:
    """A seeded ClusterSimulator served over TLS on its own event loop in a daemon thread."""

    token_id = TOKEN_ID

    def __init__(self, sim: ClusterSimulator, cafile: str, token_secret: str, token_file: str) -> None:
        self.sim = sim
        self.cafile = cafile
        self.token_secret = token_secret
        self.token_file = token_file
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name=f"simulator-{id(sim)}", daemon=True)
        self._stopped = False
        self._thread.start()

    @property
    def host(self) -> str:
        return str(self.sim.host)

    @property
    def port(self) -> int:
        return int(self.sim.port)

    @property
    def url(self) -> str:
        """https://host:port (the API is under /api2/json)."""
        return f"https://{self.host}:{self.port}"

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_forever()

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = START_TIMEOUT) -> T:
        """Run a coroutine on the simulator's loop and wait for its result (thread-safe)."""
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    @property
    def guest_gateway(self) -> str | None:
        """With real guests: the simulator's address on the guest network; None with the emulated boot."""
        return self.sim.guests.backend.gateway if self.sim.guests is not None else None

    def expose(self, port: int, target_host: str, target_port: int) -> str:
        """Make a host service reachable from real guests at <gateway>:port; returns that address as host:port."""
        if self.sim.guests is None:
            raise RuntimeError("the simulator runs no real guests")
        self.call(self.sim.guests.expose(port, target_host, target_port))
        return f"{self.guest_gateway}:{port}"

    def stop(self) -> None:
        """Stop serving, cancel whatever still runs on the loop and end the thread, then remove every real guest
        and the guest network (idempotent)."""
        if self._stopped:
            return
        self._stopped = True
        try:
            self.call(settle())
            self.call(self.sim.stop())
            self.call(_cancel_pending())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(START_TIMEOUT)
            if not self._thread.is_alive():
                self._loop.close()
            if self.sim.guests is not None:
                self.sim.guests.backend.close()

    def __enter__(self) -> SimulatorHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


async def _cancel_pending() -> None:
    """Cancel the tasks left on the loop (tasks still running at time_scale > 0) and wait for them."""
    current = asyncio.current_task()
    pending = [t for t in asyncio.all_tasks() if t is not current]
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)


def start_simulator(
    state_dir: str | os.PathLike[str],
    host: str = "127.0.0.1",
    port: int = 0,
    time_scale: float = 0.0,
    clone_secs: float = 0,
    start_secs: float = 0,
    boot_secs: float = 0,
    seed: bool = True,
    *,
    node_cpus: int = 32,
    node_memory_gib: int = 128,
    guests: str = "none",
    progress: Callable[[str], None] | None = None,
    guest_images: Iterable[str] | None = None,
) -> SimulatorHandle:
    """Serve a (seeded) ClusterSimulator at https://host:port (port 0: a free one) with the boot sidecar running.

    state_dir receives simulator.crt (the CA to verify against), simulator.key and token (the secret of
    root@pam!provisioner, mode 0600). guests: none (emulated boot), container or vm (real guests: their images
    are built first if the cache lacks them, `progress` hears about it; guests.system.GuestsUnavailable when the
    host cannot run them). guest_images: the images to make ready (default: every real template's); a VM of a
    template whose image is not among them fails to start.
    """
    if guests not in GUEST_KINDS:
        raise ValueError(f"guests must be one of {', '.join(GUEST_KINDS)}, not {guests!r}")
    state = Path(state_dir)
    state.mkdir(parents=True, exist_ok=True)
    certfile, keyfile, _der = make_cert(str(state), name="simulator", hosts=(host,))
    sim = ClusterSimulator(host=host, port=port)
    sim.time_scale = time_scale
    sim.clone_secs, sim.start_secs, sim.boot_secs = clone_secs, start_secs, boot_secs
    sim.node_cpus, sim.node_memory = node_cpus, node_memory_gib * GIB
    if guests != "none":
        backend = GuestBackend(guests, state / "guests", progress=progress)
        wanted = [spec.image for spec in REAL_GUEST_TEMPLATES if spec.image]
        backend.open(wanted if guest_images is None else [name for name in wanted if name in set(guest_images)])
        sim.use_guests(backend)
    if seed:
        seed_cluster(sim)
    secret = secrets.token_urlsafe(32)
    sim.apitokens[TOKEN_ID] = secret
    token_file = state / "token"
    write_private(token_file, secret + "\n")
    try:
        handle = SimulatorHandle(sim, certfile, secret, str(token_file))
    except BaseException:
        if sim.guests is not None:
            sim.guests.backend.close()
        raise
    try:
        handle.call(sim.start(certfile, keyfile))
    except BaseException:
        handle.stop()
        raise
    return handle


# ---------------------------------------------------------------------------------------------------- CLI


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m engine.simulator", description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--state-dir", required=True, help="certificate, key and token file go here")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8006)
    parser.add_argument("--time-scale", type=float, default=1.0, help="real seconds per PVE second")
    parser.add_argument("--clone-secs", type=float, default=3.0)
    parser.add_argument("--start-secs", type=float, default=2.0)
    parser.add_argument("--boot-secs", type=float, default=20.0)
    parser.add_argument("--no-seed", action="store_true", help="an empty cluster (one node, no templates)")
    parser.add_argument(
        "--running-vms",
        type=int,
        default=0,
        help="add this many running VISA-INSTANCE-<vmid> VMs (vmid 190000 up) to be adopted",
    )
    parser.add_argument(
        "--guests",
        choices=GUEST_KINDS,
        default=os.environ.get("PROVISIONER_SIM_GUESTS", "none"),
        help="real guests: container (systemd-nspawn) or vm (QEMU); none: the emulated boot "
        "(default: PROVISIONER_SIM_GUESTS or none)",
    )
    parser.add_argument(
        "--expose",
        action="append",
        default=[],
        metavar="PORT=HOST:PORT",
        help="with real guests: forward <guest gateway>:PORT to HOST:PORT (a seed server on loopback); repeatable",
    )
    parser.add_argument("--node-cpus", type=int, default=32)
    parser.add_argument("--node-memory-gib", type=int, default=128)
    return parser.parse_args(argv)


async def _add_running(sim: ClusterSimulator, count: int) -> None:
    add_running_vms(sim, count, 190000, "VISA-INSTANCE")


def _forward(spec: str) -> tuple[int, str, int]:
    """PORT=HOST:PORT as (gateway port, target host, target port)."""
    port, _, target = spec.partition("=")
    host, _, target_port = target.rpartition(":")
    if not (port.isdigit() and target_port.isdigit() and host):
        raise ValueError(f"{spec!r} is not PORT=HOST:PORT")
    return int(port), host, int(target_port)


def _start_from(args: argparse.Namespace) -> SimulatorHandle:
    return start_simulator(
        args.state_dir,
        args.host,
        args.port,
        args.time_scale,
        args.clone_secs,
        args.start_secs,
        args.boot_secs,
        seed=not args.no_seed,
        node_cpus=args.node_cpus,
        node_memory_gib=args.node_memory_gib,
        guests=args.guests,
        progress=lambda line: print(line, file=sys.stderr, flush=True),  # noqa: T201
    )


def main(argv: list[str] | None = None) -> int:
    """Serve until SIGINT or SIGTERM; print the URL, the CA and the token file (never the secret)."""
    args = _arguments(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    done = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: done.set())
    try:
        handle = _start_from(args)
    except GuestsUnavailable as e:
        sys.stderr.write(f"{e}\n")
        return 2
    if args.running_vms:
        handle.call(_add_running(handle.sim, args.running_vms))
    try:
        exposed = [handle.expose(*_forward(spec)) for spec in args.expose]
    except (ValueError, RuntimeError, OSError) as e:
        handle.stop()
        sys.stderr.write(f"--expose: {e}\n")
        return 2
    sys.stdout.write(
        f"simulator ready\nurl: {handle.url}\nca: {handle.cafile}\ntoken id: {handle.token_id}\n"
        f"token secret file: {handle.token_file}\n"
        + (f"guest gateway: {handle.guest_gateway}\n" if handle.guest_gateway else "")
        + "".join(f"exposed to guests: {address}\n" for address in exposed)
    )
    sys.stdout.flush()
    try:
        while not done.wait(0.5):
            pass
    finally:
        handle.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
