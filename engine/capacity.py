"""What a group of creates may take: the instance quota, room on the nodes and free VMIDs.

Read from the store once per group, then updated in memory as each create of the group is placed, so the
creates of one group count each other exactly as they count the committed ones.
"""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from engine.errors import NoCapacityError, QuotaExceeded, QuotaLimit
from engine.models import Instance, Lifecycle
from engine.placement import NoCapacity, Request, Reservation, choose_node, node_loads, place
from engine.proxmox import Snapshot
from engine.settings import Settings
from engine.tokens import Quotas
from engine.vmids import VmidAllocator

ACTIVE_LIFECYCLES = (Lifecycle.BUILDING, Lifecycle.PROVISIONED, Lifecycle.ERROR)  # what the quota counts


def instances_in_quota(session: Session) -> int:
    return session.scalar(select(func.count(Instance.id)).where(Instance.lifecycle.in_(ACTIVE_LIFECYCLES))) or 0


def building_reservations(session: Session, snapshot: Snapshot) -> list[Reservation]:
    """Instances being built that Proxmox does not show yet: their resources are committed all the same."""
    rows = session.execute(
        select(Instance.id, Instance.node, Instance.cores, Instance.memory_mb).where(
            Instance.lifecycle == Lifecycle.BUILDING
        )
    )
    return [Reservation(*row) for row in rows if row[0] not in snapshot.vms]


class Capacity:
    def __init__(self, session: Session, snapshot: Snapshot, settings: Settings, vmids: VmidAllocator) -> None:
        self._settings = settings
        self._used = instances_in_quota(session)
        self._loads = node_loads(
            snapshot,
            building_reservations(session, snapshot),
            settings.cpu_overcommit,
            settings.memory_overcommit,
            settings.node_allowlist,
        )
        self._free_vmids = vmids.free_ids(session, snapshot.vms)

    def reserve(self, request: Request) -> Reservation:
        """A quota slot, a node and a VMID for one create, counted for the next ones."""
        if self._used >= self._settings.max_instances:
            raise QuotaExceeded(f"the instance quota ({self._settings.max_instances}) is used up")
        try:
            node = choose_node(self._loads, request, self._settings.select_coeff)
        except NoCapacity as exc:
            raise NoCapacityError(str(exc)) from exc
        vmid = next(self._free_vmids, None)
        if vmid is None:
            raise NoCapacityError("no free VMID left in the configured range")
        reservation = Reservation(vmid, node, request.cores, request.memory_mb)
        place(self._loads, reservation)
        self._used += 1
        return reservation


class OwnerUsage:
    """What each owner's VMs hold (the quota's lifecycles), read once per owner and group, plus the group's earlier
    creates; a create over its owner's quota is refused naming the limit."""

    def __init__(self, session: Session) -> None:
        self._session = session
        self._used: dict[str, list[int]] = {}  # owner: [vms, vcpus, memory_mb, disk_gb]

    def check(self, owner: str, quotas: Quotas, cpus: int, memory_mb: int, disk_gb: int) -> None:
        used = self._of(owner)
        limits = (
            ("vms", quotas.max_vms, used[0] + 1, "VMs"),
            ("vcpus", quotas.max_vcpus, used[1] + cpus, "vCPUs"),
            ("memory_mb", quotas.max_memory_mb, used[2] + memory_mb, "MB of memory"),
            ("disk_gb", quotas.max_disk_gb, used[3] + disk_gb, "GB of disk"),
        )
        for name, limit, wanted, unit in limits:
            if limit is not None and wanted > limit:
                raise QuotaLimit(name, f"{owner!r} may hold {limit} {unit}; this VM would make it {wanted}")

    def add(self, owner: str, cpus: int, memory_mb: int, disk_gb: int) -> None:
        used = self._of(owner)
        for index, amount in enumerate((1, cpus, memory_mb, disk_gb)):
            used[index] += amount

    def _of(self, owner: str) -> list[int]:
        if owner not in self._used:
            row = self._session.execute(
                select(
                    func.count(Instance.id),
                    func.coalesce(func.sum(Instance.cores), 0),
                    func.coalesce(func.sum(Instance.memory_mb), 0),
                    func.coalesce(func.sum(Instance.disk_gb), 0),
                ).where(Instance.owner == owner, Instance.lifecycle.in_(ACTIVE_LIFECYCLES))
            ).one()
            self._used[owner] = [int(value) for value in row]
        return self._used[owner]
