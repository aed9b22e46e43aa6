"""Free capacity to advertise: the largest VM one node can still take, from committed resources.

Capacities and committed resources are placement's (engine.placement), so an advertised size is one that
placement accepts, and the best node is the one placement would pick. The Golem provider's thresholds apply
per node: a node whose committed vCPUs exceed the CPU threshold of its capacity, whose committed memory
exceeds the memory threshold, or with no image storage under the storage threshold, offers nothing.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from engine.placement import GiB, NodeLoad, Request, Reservation, choose_node, node_loads
from engine.proxmox import Snapshot, StorageInfo

ANY_SIZE = Request(cores=0, memory_mb=0, allowed_nodes=None)


@dataclass(frozen=True)
class Thresholds:
    """Fractions of capacity (committed vCPUs, committed memory, used storage) above which a node offers nothing."""

    cpu: float = 0.90
    memory: float = 0.85
    storage: float = 0.90


@dataclass(frozen=True)
class Offer:
    node: str
    cpu: int
    memory_gb: int
    storage_gb: int


def node_offer(load: NodeLoad, storages: Iterable[StorageInfo], thresholds: Thresholds) -> Offer | None:
    if load.cpu_committed > thresholds.cpu * load.cpu_capacity:
        return None
    if load.mem_committed > thresholds.memory * load.mem_capacity:
        return None
    free_storage = [s.total - s.used for s in storages if s.total > 0 and s.used <= thresholds.storage * s.total]
    if not free_storage:
        return None
    offer = Offer(load.node, int(load.cpu_free), int(load.mem_free // GiB), max(free_storage) // GiB)
    return offer if min(offer.cpu, offer.memory_gb, offer.storage_gb) >= 1 else None


def image_storages(snapshot: Snapshot, node: str, only: str | None = None) -> list[StorageInfo]:
    """The storages of a node that can hold VM disks (only the named one when the site fixes it)."""
    return [
        s for s in snapshot.storages if s.node == node and "images" in s.content and (only is None or s.name == only)
    ]


def largest_offer(
    snapshot: Snapshot,
    cpu_ratio: float,
    mem_ratio: float,
    select_coeff: int,
    thresholds: Thresholds,
    allowlist: frozenset[str] = frozenset(),
    storage: str | None = None,
    reservations: Iterable[Reservation] = (),
) -> Offer | None:
    """The offer of the node placement would choose among those offering anything; None when none does."""
    loads = node_loads(snapshot, reservations, cpu_ratio, mem_ratio, allowlist)
    offers = {}
    for name, load in loads.items():
        offer = node_offer(load, image_storages(snapshot, name, storage), thresholds)
        if offer is not None:
            offers[name] = offer
    if not offers:
        return None
    return offers[choose_node({name: loads[name] for name in offers}, ANY_SIZE, select_coeff)]
