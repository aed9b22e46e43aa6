"""Choosing a node for a new VM from committed (allocated) resources, never from CPU load.

A node's capacity is its CPUs x the CPU overcommit ratio and its memory x the memory overcommit ratio;
what is committed is every non-template VM's configured cores and memory plus the reservations of
instances we accepted that Proxmox does not show yet. The score is the reference provider's idea with
its units fixed: free vCPUs x SELECT_COEFF + free memory in bytes (4 GiB per vCPU by default).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace

from engine.proxmox import Snapshot

MiB = 1024**2
GiB = 1024**3


@dataclass(frozen=True)
class Reservation:
    vmid: int
    node: str
    cores: int
    memory_mb: int


@dataclass(frozen=True)
class Request:
    cores: int
    memory_mb: int
    allowed_nodes: frozenset[str] | None  # None: any node


@dataclass(frozen=True)
class NodeLoad:
    node: str
    cpu_capacity: float
    mem_capacity: float  # bytes
    cpu_committed: int
    mem_committed: int  # bytes

    @property
    def cpu_free(self) -> float:
        return self.cpu_capacity - self.cpu_committed

    @property
    def mem_free(self) -> float:
        return self.mem_capacity - self.mem_committed


class NoCapacity(Exception):
    pass


def node_loads(
    snapshot: Snapshot,
    reservations: Iterable[Reservation],
    cpu_ratio: float,
    mem_ratio: float,
    allowlist: frozenset[str] = frozenset(),
) -> dict[str, NodeLoad]:
    cpu: dict[str, int] = {}
    mem: dict[str, int] = {}
    for vm in snapshot.vms.values():
        if not vm.template:
            cpu[vm.node] = cpu.get(vm.node, 0) + vm.maxcpu
            mem[vm.node] = mem.get(vm.node, 0) + vm.maxmem
    for r in reservations:
        if r.vmid not in snapshot.vms:
            cpu[r.node] = cpu.get(r.node, 0) + r.cores
            mem[r.node] = mem.get(r.node, 0) + r.memory_mb * MiB
    return {
        n.name: NodeLoad(n.name, n.maxcpu * cpu_ratio, n.maxmem * mem_ratio, cpu.get(n.name, 0), mem.get(n.name, 0))
        for n in snapshot.nodes.values()
        if n.online and (not allowlist or n.name in allowlist)
    }


def choose_node(loads: dict[str, NodeLoad], request: Request, select_coeff: int) -> str:
    """The candidate node where the request fits with the best score; NoCapacity when none fits."""
    best: tuple[float, str] | None = None  # (score, node): highest score wins, then the first name
    for load in loads.values():
        if request.allowed_nodes is not None and load.node not in request.allowed_nodes:
            continue
        if load.cpu_free < request.cores or load.mem_free < request.memory_mb * MiB:
            continue
        score = (load.cpu_free - request.cores) * select_coeff + (load.mem_free - request.memory_mb * MiB)
        if best is None or score > best[0] or (score == best[0] and load.node < best[1]):
            best = (score, load.node)
    if best is None:
        raise NoCapacity(f"no node has {request.cores} vCPUs and {request.memory_mb} MB uncommitted")
    return best[1]


def place(loads: dict[str, NodeLoad], reservation: Reservation) -> None:
    """Count a reservation just made in its node's load, for the next choice from the same loads."""
    load = loads[reservation.node]
    loads[reservation.node] = replace(
        load,
        cpu_committed=load.cpu_committed + reservation.cores,
        mem_committed=load.mem_committed + reservation.memory_mb * MiB,
    )
