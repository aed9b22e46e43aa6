"""The simulator's real-guest backend: one per simulator, owning its network, images and guests.

`PROVISIONER_SIM_GUESTS` picks it: ``none`` (the simulator's emulated boot, no backend), ``container``
(systemd-nspawn) or ``vm`` (QEMU, TCG). The methods block (they run host commands); the simulator calls them from
worker threads. Every guest is keyed by its VMID; the backend starts, stops and removes it when the simulator's
Proxmox API says so, and nothing else reaches it.
"""

from __future__ import annotations

import logging
import shutil
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Protocol

from simulator.guests import images, system
from simulator.guests.network import GuestNetwork
from simulator.guests.spec import GuestSpec

log = logging.getLogger(__name__)

KINDS = ("none", "container", "vm")


class Guest(Protocol):
    vmid: int
    spec: GuestSpec | None

    def start(self, spec: GuestSpec) -> None: ...
    def running(self) -> bool: ...
    def poll(self) -> str: ...
    def shutdown(self) -> None: ...
    def kill(self) -> None: ...
    def destroy(self) -> None: ...
    def interfaces(self) -> list[dict[str, Any]] | None: ...
    def memory_bytes(self) -> int: ...


class GuestBackend:
    """Real guests of one kind on one simulated cluster network."""

    def __init__(self, kind: str, workdir: Path, progress: Callable[[str], None] | None = None) -> None:
        if kind not in ("container", "vm"):
            raise ValueError(f"guest backend must be container or vm, not {kind!r}")
        self.kind = kind
        self.workdir = workdir
        self.progress = progress
        self.network = GuestNetwork(workdir / "network", scope=workdir)
        self._images: dict[str, images.Image] = {}
        self._guests: dict[int, Guest] = {}
        self._lock = threading.Lock()
        self._vm_locks: dict[int, threading.Lock] = {}

    # ---------------------------------------------------------------------------------- life

    def open(self, image_names: Iterable[str]) -> GuestBackend:
        """Check the host, build the missing images (saying so), claim a subnet and start its DHCP server."""
        system.require(self.kind)
        for name in image_names:
            self._images[name] = images.ensure(images.recipe(name, self.kind), progress=self.progress)
        self.network.open()
        guests_dir = self.workdir / "guests"
        if guests_dir.exists():  # disks of an earlier run of this state directory: the VMs they belonged to are gone
            for point in system.mounts_under(guests_dir):
                system.unmount(point)
            shutil.rmtree(guests_dir)
        return self

    def close(self) -> None:
        """Stop every guest hard, remove their disks, the network and its DHCP server (idempotent)."""
        with self._lock:
            guests, self._guests = list(self._guests.values()), {}
        for guest in guests:
            try:
                guest.destroy()
            except Exception:
                log.exception("removing guest %s failed", guest.vmid)
        self.network.close()

    @property
    def gateway(self) -> str:
        """The simulator's address on the guest network (the seed server is reached there)."""
        return self.network.gateway

    def has_image(self, name: str | None) -> bool:
        return name in self._images

    # --------------------------------------------------------------------------------- guests

    def start(self, vmid: int, image_name: str | None, spec: GuestSpec) -> None:
        """Boot the VM's guest on its disk (made from the image at the first start)."""
        with self._vm_lock(vmid):
            guest = self._guests.get(vmid)
            if guest is None:
                image = self._images.get(image_name or "")
                if image is None:
                    known = ", ".join(sorted(self._images)) or "none"
                    raise system.GuestsUnavailable(
                        f"VM {vmid} has no guest image (its template maps to {image_name!r}; images: {known})"
                    )
                guest = self._make(vmid, image)
                with self._lock:
                    self._guests[vmid] = guest
            guest.start(spec)

    def _make(self, vmid: int, image: images.Image) -> Guest:
        workdir = self.workdir / "guests" / str(vmid)
        if self.kind == "container":
            from simulator.guests.container import ContainerGuest

            return ContainerGuest(vmid, image, self.network, workdir)
        from simulator.guests.qemu import QemuGuest

        return QemuGuest(vmid, image, self.network, workdir)

    def poll(self, vmid: int) -> str:
        """'running', 'rebooted' or 'stopped' ('stopped' also when the VM never had a guest)."""
        guest = self._guests.get(vmid)
        if guest is None:
            return "stopped"
        with self._vm_lock(vmid):
            return guest.poll()

    def running(self, vmid: int) -> bool:
        guest = self._guests.get(vmid)
        return guest is not None and guest.running()

    def shutdown(self, vmid: int) -> None:
        guest = self._guests.get(vmid)
        if guest is not None:
            with self._vm_lock(vmid):
                guest.shutdown()

    def kill(self, vmid: int) -> None:
        guest = self._guests.get(vmid)
        if guest is not None:
            with self._vm_lock(vmid):
                guest.kill()

    def destroy(self, vmid: int) -> None:
        with self._lock:
            guest = self._guests.pop(vmid, None)
        if guest is not None:
            with self._vm_lock(vmid):
                guest.destroy()

    def interfaces(self, vmid: int) -> list[dict[str, Any]] | None:
        guest = self._guests.get(vmid)
        return guest.interfaces() if guest is not None else None

    def memory_bytes(self, vmid: int) -> int:
        guest = self._guests.get(vmid)
        return guest.memory_bytes() if guest is not None and guest.running() else 0

    def vmids(self) -> list[int]:
        return sorted(self._guests)

    def _vm_lock(self, vmid: int) -> threading.Lock:
        with self._lock:
            return self._vm_locks.setdefault(vmid, threading.Lock())
