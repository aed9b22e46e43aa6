"""Faults a test, or a person, switches on in a running simulator, by name.

They are fakepve's own fault model (`FakePve.fail`, `hold_config_lock`, `slow_network`, `flaky_network`,
`set_node_offline`), given names, checked arguments and a way to clear them all. The simulator serves them at
`/simulator/faults` (authenticated like the Proxmox API):

    POST   /simulator/faults  {"fault": "lock", "vmid": 100001, "seconds": 20}
    POST   /simulator/faults  {"fault": "error", "method": "POST", "path": "/clone", "status": 500, "times": 2}
    POST   /simulator/faults  {"fault": "task_error", "method": "POST", "path": "/status/start",
                               "error": "start_failed"}
    POST   /simulator/faults  {"fault": "slow", "seconds": 2}
    POST   /simulator/faults  {"fault": "node_offline", "node": "pve2"}
    POST   /simulator/faults  {"fault": "refuse"}                  (every connection reset: Proxmox unreachable)
    GET    /simulator/faults  the faults on now
    DELETE /simulator/faults  every fault off
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from fakepve import FakePve


class FaultError(ValueError):
    """A fault that cannot be switched on as asked (the message says why)."""


def _text(spec: dict[str, Any], key: str, default: str | None = None) -> str:
    value = spec.get(key, default)
    if not isinstance(value, str) or not value:
        raise FaultError(f"{key!r} must be a non-empty string")
    return value


def _number(spec: dict[str, Any], key: str, default: float | None = None, minimum: float = 0) -> float:
    value = spec.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or value < minimum:
        raise FaultError(f"{key!r} must be a number of at least {minimum}")
    return float(value)


def _times(spec: dict[str, Any]) -> int | None:
    value = spec.get("times")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise FaultError("'times' must be a positive integer (or absent: every request)")
    return value


async def _lock(sim: FakePve, spec: dict[str, Any]) -> str:
    vmid, seconds = int(_number(spec, "vmid", minimum=1)), _number(spec, "seconds", minimum=0.1)
    if sim.vm(vmid) is None:
        raise FaultError(f"no VM {vmid}")
    await sim.hold_config_lock(vmid, seconds)
    return f"VM {vmid} locked for {seconds:g} s"


async def _error(sim: FakePve, spec: dict[str, Any]) -> str:
    method, path = _text(spec, "method").upper(), _text(spec, "path")
    status = int(_number(spec, "status", 500, minimum=400))
    message = _text(spec, "message", "injected fault")
    sim.fail(method, path, status, message, times=_times(spec))
    return f"{method} …{path} answers {status}"


async def _task_error(sim: FakePve, spec: dict[str, Any]) -> str:
    method, path, error = _text(spec, "method").upper(), _text(spec, "path"), _text(spec, "error")
    sim.fail(method, path, error=error, times=_times(spec))
    return f"{method} …{path} fails with {error}"


async def _slow(sim: FakePve, spec: dict[str, Any]) -> str:
    seconds = _number(spec, "seconds", minimum=0)
    sim.slow_network(seconds)
    return f"every answer {seconds:g} s late"


async def _node_offline(sim: FakePve, spec: dict[str, Any]) -> str:
    node = _text(spec, "node")
    if node not in sim.nodes:
        raise FaultError(f"no node {node!r}")
    sim.set_node_offline(node)
    return f"node {node} offline"


async def _refuse(sim: FakePve, _spec: dict[str, Any]) -> str:
    sim.flaky_network(drop_rate=1.0)
    return "every connection reset"


FAULTS: dict[str, Callable[[FakePve, dict[str, Any]], Awaitable[str]]] = {
    "lock": _lock,
    "error": _error,
    "task_error": _task_error,
    "slow": _slow,
    "node_offline": _node_offline,
    "refuse": _refuse,
}


class Faults:
    """The faults switched on in one simulator, and their undoing."""

    def __init__(self, sim: FakePve) -> None:
        self._sim = sim
        self.active: list[str] = []

    async def switch_on(self, spec: dict[str, Any]) -> str:
        name = spec.get("fault")
        if name not in FAULTS:
            raise FaultError(f"'fault' must be one of {', '.join(sorted(FAULTS))}")
        described = await FAULTS[name](self._sim, spec)
        self.active.append(described)
        return described

    def clear(self) -> None:
        sim = self._sim
        sim.failures.clear()
        sim.slow_network(0.0)
        sim.flaky_network()
        for node in list(sim.nodes):
            sim.set_node_offline(node, offline=False)
        for vm in list(sim.vms):
            sim.release(vm, "scenario")  # only the locks `lock` took: a task's own lock stays
        self.active.clear()
