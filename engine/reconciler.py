"""Periodic reconciliation of our store with Proxmox.

* fills in the address of running instances that have none (VMs started outside a job, adopted VMs);
* adopts VMs that carry our tag or the VISA name prefix but are missing from the store (after data loss,
  or VMs created by the reference provider), so VISA keeps seeing them;
* marks provisioned instances that disappeared from Proxmox (absent from several consecutive fresh
  snapshots) as deleted.
"""

from __future__ import annotations

import logging
import secrets
import threading

from sqlalchemy import select

from engine.db import Database
from engine.jobs.kinds import MANAGED_TAG
from engine.models import Instance, Job, JobState, Lifecycle, utcnow
from engine.naming import vm_name
from engine.proxmox import ClusterView, Snapshot, VmInfo

log = logging.getLogger(__name__)

VANISHED_AFTER = 3  # consecutive fresh snapshots without the VM
ADDRESS_LOOKUPS_PER_PASS = 20


class Reconciler:
    def __init__(self, db: Database, cluster: ClusterView, name_prefix: str, interval_s: float = 10.0) -> None:
        self._db = db
        self._cluster = cluster
        self._prefix = name_prefix
        self._interval = interval_s
        self._missing: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="reconciler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=5)

    def _loop(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self.reconcile()
            except Exception:
                log.exception("reconciliation pass failed")

    def reconcile(self) -> None:
        snapshot = self._cluster.snapshot()
        if snapshot is None:
            return
        with self._db.session() as session:
            busy = set(
                session.scalars(select(Job.instance_id).where(Job.state.in_((JobState.PENDING, JobState.RUNNING))))
            )
            known = {i.id: i for i in session.scalars(select(Instance))}
            lookups = 0
            for instance in known.values():
                if instance.lifecycle != Lifecycle.PROVISIONED or instance.id in busy:
                    continue
                vm = snapshot.vms.get(instance.id)
                if vm is None:
                    self._note_missing(instance)
                    continue
                self._missing.pop(instance.id, None)
                instance.node = vm.node  # follows migrations
                if vm.status == "running" and not instance.address and lookups < ADDRESS_LOOKUPS_PER_PASS:
                    lookups += 1
                    instance.address = self._cluster.guest_ipv4(vm.node, vm.vmid)
            for vm in self._adoptable(snapshot, known):
                log.info("adopting VM %s (%s) found in Proxmox", vm.vmid, vm.name)
                session.add(
                    Instance(
                        id=vm.vmid,
                        name=vm.name,
                        vm_name=vm_name(vm.name, vm.vmid),
                        image_id="",
                        flavour_id="",
                        node=vm.node,
                        cores=vm.maxcpu,
                        memory_mb=vm.maxmem // 1024**2,
                        disk_gb=vm.maxdisk // 1024**3,
                        lifecycle=Lifecycle.PROVISIONED,
                        seed_token=secrets.token_urlsafe(32),
                        adopted=True,
                    )
                )

    def _note_missing(self, instance: Instance) -> None:
        count = self._missing.get(instance.id, 0) + 1
        self._missing[instance.id] = count
        if count >= VANISHED_AFTER:
            log.warning("instance %s is gone from Proxmox; marking it deleted", instance.id)
            instance.lifecycle = Lifecycle.DELETED
            instance.deleted_at = utcnow()
            self._missing.pop(instance.id, None)

    def _adoptable(self, snapshot: Snapshot, known: dict[int, Instance]) -> list[VmInfo]:
        return [
            vm
            for vm in snapshot.vms.values()
            if not vm.template
            and vm.vmid not in known
            and vm.lock is None
            and (MANAGED_TAG in vm.tags or (self._prefix and vm.name.startswith(self._prefix)))
        ]
