"""Reads from Proxmox: one cluster-wide `/cluster/resources` snapshot, refreshed in the background.

Mutations never happen here (they are Ansible jobs). Request handlers read the latest snapshot and
never wait on Proxmox; when the snapshot is stale they report UNKNOWN instead of failing.
"""

from __future__ import annotations

import contextlib
import logging
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from proxmoxer import ProxmoxAPI

from engine.metrics import PROXMOX_READS
from engine.settings import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ProxmoxConnection:
    host: str
    port: int
    user: str
    secret: str
    timeout_s: float
    verify: bool | str  # True, False or a CA bundle path

    def client(self) -> ProxmoxAPI:
        auth: dict[str, str]
        if "!" in self.user:
            user, token_name = self.user.split("!", 1)
            auth = {"user": user, "token_name": token_name, "token_value": self.secret}
        else:
            auth = {"user": self.user, "password": self.secret}
        return ProxmoxAPI(
            self.host, port=self.port, verify_ssl=self.verify, timeout=self.timeout_s, service="PVE", **auth
        )

    def ansible_env(self) -> dict[str, str]:
        """The PROXMOX_* environment community.proxmox modules read their connection from."""
        env = {
            "PROXMOX_URL": f"https://{self.host}:{self.port}",  # the inventory plugin's name for the endpoint
            "PROXMOX_HOST": self.host,
            "PROXMOX_PORT": str(self.port),
            "PROXMOX_VALIDATE_CERTS": "true" if self.verify else "false",
        }
        if "!" in self.user:
            user, token_name = self.user.split("!", 1)
            env |= {"PROXMOX_USER": user, "PROXMOX_TOKEN_ID": token_name, "PROXMOX_TOKEN_SECRET": self.secret}
        else:
            env |= {"PROXMOX_USER": self.user, "PROXMOX_PASSWORD": self.secret}
        if isinstance(self.verify, str):
            env["REQUESTS_CA_BUNDLE"] = self.verify
            env["CURL_CA_BUNDLE"] = self.verify
        return env

    @classmethod
    def from_ansible_env(cls, env: Mapping[str, str], timeout_s: float = 10.0) -> ProxmoxConnection:
        """The connection the playbooks get (the inverse of ansible_env), for commands a playbook runs.

        Raises KeyError naming the first missing variable."""
        if env.get("PROXMOX_TOKEN_ID"):
            user, secret = f"{env['PROXMOX_USER']}!{env['PROXMOX_TOKEN_ID']}", env["PROXMOX_TOKEN_SECRET"]
        else:
            user, secret = env["PROXMOX_USER"], env["PROXMOX_PASSWORD"]
        verify: bool | str = env.get("PROXMOX_VALIDATE_CERTS", "true").lower() not in ("false", "no", "0")
        if verify and env.get("REQUESTS_CA_BUNDLE"):
            verify = env["REQUESTS_CA_BUNDLE"]
        port = int(env.get("PROXMOX_PORT") or 8006)
        return cls(host=env["PROXMOX_HOST"], port=port, user=user, secret=secret, timeout_s=timeout_s, verify=verify)

    @classmethod
    def from_settings(cls, settings: Settings) -> ProxmoxConnection:
        assert settings.proxmox_password is not None
        verify: bool | str = settings.proxmox_verify_tls
        if verify and settings.proxmox_ca_file:
            verify = str(settings.proxmox_ca_file)
        return cls(
            host=settings.proxmox_host,
            port=settings.proxmox_port,
            user=settings.proxmox_user,
            secret=settings.proxmox_password.get_secret_value(),
            timeout_s=settings.proxmox_timeout_ms / 1000,
            verify=verify,
        )


@dataclass(frozen=True)
class NodeInfo:
    name: str
    online: bool
    maxcpu: int
    maxmem: int  # bytes


@dataclass(frozen=True)
class VmInfo:
    vmid: int
    name: str
    node: str
    status: str  # running | stopped | paused | unknown ...
    template: bool
    maxcpu: int
    maxmem: int  # bytes
    maxdisk: int  # bytes
    lock: str | None
    tags: frozenset[str]


@dataclass(frozen=True)
class StorageInfo:
    name: str
    node: str
    shared: bool
    content: frozenset[str]
    total: int
    used: int


@dataclass(frozen=True)
class Snapshot:
    taken_at: float
    nodes: dict[str, NodeInfo] = field(default_factory=dict)
    vms: dict[int, VmInfo] = field(default_factory=dict)
    storages: list[StorageInfo] = field(default_factory=list)

    @classmethod
    def parse(cls, resources: list[dict[str, Any]], taken_at: float) -> Snapshot:
        nodes: dict[str, NodeInfo] = {}
        vms: dict[int, VmInfo] = {}
        storages: list[StorageInfo] = []
        for item in resources:
            kind = item.get("type")
            if kind == "node":
                nodes[item["node"]] = NodeInfo(
                    item["node"],
                    item.get("status") == "online",
                    int(item.get("maxcpu") or 0),
                    int(item.get("maxmem") or 0),
                )
            elif kind == "qemu":
                tags = frozenset(t for t in str(item.get("tags") or "").replace(",", ";").split(";") if t)
                vms[int(item["vmid"])] = VmInfo(
                    vmid=int(item["vmid"]),
                    name=str(item.get("name") or ""),
                    node=item["node"],
                    status=str(item.get("status") or "unknown"),
                    template=bool(int(item.get("template") or 0)),
                    maxcpu=int(item.get("maxcpu") or 0),
                    maxmem=int(item.get("maxmem") or 0),
                    maxdisk=int(item.get("maxdisk") or 0),
                    lock=item.get("lock"),
                    tags=tags,
                )
            elif kind == "storage":
                storages.append(
                    StorageInfo(
                        name=item["storage"],
                        node=item["node"],
                        shared=bool(int(item.get("shared") or 0)),
                        content=frozenset(str(item.get("content") or "").split(",")),
                        total=int(item.get("maxdisk") or 0),
                        used=int(item.get("disk") or 0),
                    )
                )
        return cls(taken_at=taken_at, nodes=nodes, vms=vms, storages=storages)

    @property
    def templates(self) -> list[VmInfo]:
        return sorted((vm for vm in self.vms.values() if vm.template), key=lambda vm: vm.vmid)


class ProxmoxUnavailable(RuntimeError):
    pass


class ClusterView:
    """The latest cluster snapshot plus cached firewall groups, refreshed by a background thread."""

    def __init__(
        self,
        connection: ProxmoxConnection,
        refresh_interval_s: float,
        stale_after_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._connection = connection
        self._api = connection.client()
        self._interval = refresh_interval_s
        self._stale_after = stale_after_s
        self._clock = clock
        self._snapshot: Snapshot | None = None
        self._groups: tuple[float, list[str]] | None = None
        self._template_storages: dict[int, tuple[float, frozenset[str]]] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.last_error: str | None = None

    # --- lifecycle

    def start(self) -> None:
        self.refresh()
        self._thread = threading.Thread(target=self._loop, name="cluster-view", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread:
            self._thread.join(timeout=5)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self._interval)
            self._wake.clear()
            if self._stop.is_set():
                return
            with contextlib.suppress(ProxmoxUnavailable):  # logged; readers see the snapshot go stale
                self.refresh()

    def poke(self) -> None:
        """Refresh soon (after a job changed something)."""
        self._wake.set()

    # --- reads

    def _count(self) -> None:
        PROXMOX_READS.inc()

    def refresh(self) -> Snapshot:
        try:
            self._count()
            resources = self._api.cluster.resources.get()
        except Exception as exc:  # proxmoxer raises requests/ResourceException/AuthenticationError
            self.last_error = type(exc).__name__
            log.warning("Proxmox cluster read failed: %s", _describe(exc))
            raise ProxmoxUnavailable(_describe(exc)) from exc
        snapshot = Snapshot.parse(resources, self._clock())
        with self._lock:
            self._snapshot = snapshot
        self.last_error = None
        return snapshot

    def snapshot(self) -> Snapshot | None:
        """The latest snapshot, or None when there is none or it is too old to trust."""
        with self._lock:
            snapshot = self._snapshot
        if snapshot is None or self._clock() - snapshot.taken_at > self._stale_after:
            return None
        return snapshot

    def fresh_snapshot(self, max_age_s: float = 1.0) -> Snapshot:
        """A snapshot at most max_age_s old, reading Proxmox if needed (for validation on writes)."""
        with self._lock:
            snapshot = self._snapshot
        if snapshot is not None and self._clock() - snapshot.taken_at <= max_age_s:
            return snapshot
        return self.refresh()

    def firewall_groups(self, max_age_s: float = 30.0) -> list[str]:
        with self._lock:
            cached = self._groups
        if cached and self._clock() - cached[0] <= max_age_s:
            return cached[1]
        try:
            self._count()
            groups = sorted(str(g["group"]) for g in self._api.cluster.firewall.groups.get())
        except Exception as exc:
            log.warning("Proxmox firewall group read failed: %s", _describe(exc))
            raise ProxmoxUnavailable(_describe(exc)) from exc
        with self._lock:
            self._groups = (self._clock(), groups)
        return groups

    def template_storages(self, node: str, vmid: int, max_age_s: float = 60.0) -> frozenset[str]:
        """The storages holding a template's disks (cloud-init drives and CD-ROMs excluded), cached."""
        cached = self._template_storages.get(vmid)
        if cached and self._clock() - cached[0] <= max_age_s:
            return cached[1]
        try:
            self._count()
            config = self._api.nodes(node).qemu(vmid).config.get()
        except Exception as exc:
            raise ProxmoxUnavailable(_describe(exc)) from exc
        storages = frozenset(disk_storages(config))
        self._template_storages[vmid] = (self._clock(), storages)
        return storages

    def guest_ipv4(self, node: str, vmid: int) -> str | None:
        """The guest agent's first global IPv4, or None (agent not up yet, or no address)."""
        try:
            self._count()
            answer = self._api.nodes(node).qemu(vmid).agent("network-get-interfaces").get()
        except Exception:
            return None
        return first_global_ipv4(answer.get("result", []) if isinstance(answer, dict) else [])


DISK_KEY = re.compile(r"^(ide|sata|scsi|virtio|efidisk|tpmstate)\d+$")


def disk_storages(config: dict[str, Any]) -> set[str]:
    storages = set()
    for key, value in config.items():
        text = str(value)
        if DISK_KEY.match(key) and "media=cdrom" not in text and "cloudinit" not in text and ":" in text:
            storages.add(text.split(":", 1)[0])
    return storages


def first_global_ipv4(interfaces: list[dict[str, Any]]) -> str | None:
    for interface in interfaces:
        if interface.get("name") == "lo":
            continue
        for address in interface.get("ip-addresses") or []:
            ip = str(address.get("ip-address") or "")
            if address.get("ip-address-type") == "ipv4" and not ip.startswith(("127.", "169.254.")):
                return ip
    return None


def _describe(exc: BaseException) -> str:
    """An error description safe to log: the exception type and PVE's status line, never request data."""
    status = getattr(exc, "status_code", None)
    if status is not None:
        return f"{type(exc).__name__} {status} {getattr(exc, 'status_message', '')}".strip()
    return type(exc).__name__
