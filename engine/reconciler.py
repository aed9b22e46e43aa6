"""Periodic reconciliation of our store with Proxmox, through the store's transitions.

* fills in the address of running instances that have none (VMs started outside a job, adopted VMs), and follows
  migrations;
* marks provisioned instances that disappeared from Proxmox (absent from several consecutive fresh snapshots)
  as deleted;
* finishes deletions: a DELETING instance whose VM is gone becomes DELETED, and one whose deletes all failed gets
  a new delete job, with a growing backoff, until its VM is gone;
* registers in the discovery registry the instances whose create could not (a register job, with the same
  backoff);
* adopts VMs of ours the store does not know (after data loss): only VMs tagged with this provider's owner tag
  (`kinds.owner_tag`), inside its VMID range; with `PROVISIONER_ADOPT_REFERENCE_VMS`, also VMs named with VISA's
  prefix (the reference provider's, when a site switches over).
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import datetime, timedelta

from sqlalchemy import func, select

from engine.duties import DutyLease
from engine.jobs.kinds import owner_tag
from engine.models import Instance, Job, JobKind, JobState, Lifecycle, utcnow
from engine.naming import vm_name
from engine.proxmox import ClusterView, Snapshot, VmInfo
from engine.seeds import SeedTokens
from engine.settings import Settings
from engine.store import OPEN, Store, aware

IDEMPOTENCY_KEPT = timedelta(hours=48)  # an Idempotency-Key answers the same VM again for at least 24 h
KEY_CLEANUP_EVERY_S = 600.0

log = logging.getLogger(__name__)

VANISHED_AFTER = 3  # consecutive fresh snapshots without the VM
ADDRESS_LOOKUPS_PER_PASS = 20
BACKOFF_S = (0, 30, 60, 120, 300, 600)  # after 0, 1, 2… failed follow-up jobs (deletes, registrations); then the last
FAILURES = (JobState.FAILED, JobState.ERROR)


class Reconciler:
    def __init__(
        self,
        store: Store,
        seeds: SeedTokens,
        cluster: ClusterView,
        settings: Settings,
        interval_s: float = 10.0,
        duty: DutyLease | None = None,
    ) -> None:
        self._store = store
        self._duty = duty  # with several API processes, the one holding it reconciles
        self._seeds = seeds
        self._cluster = cluster
        self._settings = settings
        self._interval = interval_s
        self._missing: dict[int, int] = {}
        self._next_key_cleanup = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="reconciler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=5)
        if self._duty is not None:
            self._duty.release()

    def _loop(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self.tick()
            except Exception:
                log.exception("reconciliation pass failed")

    def tick(self) -> bool:
        """One pass, if this process holds the reconciler's duty; True if it reconciled."""
        if self._duty is not None and not self._duty.held():
            return False
        self.reconcile()
        return True

    def reconcile(self) -> None:
        for vmid in self._store.end_leases(utcnow()):
            log.info("instance %s: its lease ended; deleting it", vmid)
        if time.monotonic() >= self._next_key_cleanup:
            self._next_key_cleanup = time.monotonic() + KEY_CLEANUP_EVERY_S
            self._store.forget_idempotency_keys(utcnow() - IDEMPOTENCY_KEPT)
        snapshot = self._cluster.snapshot()
        if snapshot is None:
            return
        with self._store.read() as session:
            busy = set(session.scalars(select(Job.instance_id).where(Job.state.in_(OPEN))))
            instances = list(session.scalars(select(Instance)))
            known = {i.id: (Lifecycle(i.lifecycle), i.address) for i in instances}
            unregistered = {i.id for i in instances if i.registration_pending}
            failed = session.execute(
                select(Job.instance_id, Job.kind, func.count(Job.id), func.max(Job.finished_at))
                .where(Job.kind.in_((JobKind.DELETE, JobKind.REGISTER)), Job.state.in_(FAILURES))
                .group_by(Job.instance_id, Job.kind)
            )
            failures = {(vmid, kind): (count, last) for vmid, kind, count, last in failed}
        lookups = 0
        for vmid, (lifecycle, address) in known.items():
            if vmid in busy:
                continue
            vm = snapshot.vms.get(vmid)
            if lifecycle == Lifecycle.DELETING:
                self._finish_delete(vmid, vm, *failures.get((vmid, JobKind.DELETE), (0, None)))
                continue
            if lifecycle != Lifecycle.PROVISIONED:
                continue
            if vm is None:
                self._note_missing(vmid)
                continue
            self._missing.pop(vmid, None)
            found = None
            if vm.status == "running" and not address and lookups < ADDRESS_LOOKUPS_PER_PASS:
                lookups += 1
                found = self._cluster.guest_ipv4(vm.node, vm.vmid)
            self._store.follow_vm(vmid, vm.node, found)
            if vmid in unregistered and self._settings.discovery_enabled:
                self._register(vmid, *failures.get((vmid, JobKind.REGISTER), (0, None)))
        for vm in self._adoptable(snapshot, set(known)):
            if self._store.adopt(adopted_row(vm, self._seeds)):
                log.info("adopted VM %s (%s) found in Proxmox", vm.vmid, vm.name)

    def _finish_delete(self, vmid: int, vm: VmInfo | None, failures: int, last: datetime | None) -> None:
        if vm is None:
            if self._store.confirm_deleted(vmid):
                log.info("instance %s: its VM is gone; deleted", vmid)
            return
        if failures and self._store.retry_delete(vmid, backoff(failures, last)):
            log.warning("instance %s: its VM is still there after %d failed delete(s); deleting again", vmid, failures)

    def _register(self, vmid: int, failures: int, last: datetime | None) -> None:
        if self._store.request_registration(vmid, backoff(failures, last)):
            log.info("instance %s: registering it in the discovery registry (%d failed before)", vmid, failures)

    def _note_missing(self, vmid: int) -> None:
        count = self._missing.get(vmid, 0) + 1
        self._missing[vmid] = count
        if count >= VANISHED_AFTER:
            self._missing.pop(vmid, None)
            if self._store.mark_vanished(vmid):
                log.warning("instance %s is gone from Proxmox; marked deleted", vmid)

    def _adoptable(self, snapshot: Snapshot, known: set[int]) -> list[VmInfo]:
        return [
            vm
            for vm in snapshot.vms.values()
            if not vm.template and vm.vmid not in known and vm.lock is None and self._ours(vm)
        ]

    def _ours(self, vm: VmInfo) -> bool:
        settings = self._settings
        owner = owner_tag(settings)
        if owner and owner in vm.tags and settings.vmid_min <= vm.vmid <= settings.vmid_max:
            return True
        prefix = settings.server_name_prefix
        return settings.adopt_reference_vms and bool(prefix) and vm.name.startswith(prefix)


def backoff(failures: int, last: datetime | None) -> datetime:
    """When the next follow-up job is due, after `failures` failed ones (the last one finished at `last`)."""
    wait = BACKOFF_S[min(failures, len(BACKOFF_S) - 1)]
    return (aware(last) if last else utcnow()) + timedelta(seconds=wait)


def adopted_row(vm: VmInfo, seeds: SeedTokens) -> dict[str, object]:
    return {
        "id": vm.vmid,
        "name": vm.name,
        "vm_name": vm_name(vm.name, vm.vmid),
        "image_id": "",
        "flavour_id": "",
        "node": vm.node,
        "cores": vm.maxcpu,
        "memory_mb": vm.maxmem // 1024**2,
        "disk_gb": vm.maxdisk // 1024**3,
        **seeds.new(vm.vmid),
    }
