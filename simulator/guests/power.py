"""What the simulator's Proxmox API does to real guests: its power tasks drive them, their state drives the API.

* Tasks: ``qmstart`` boots the guest once the VM is running (a guest that cannot boot fails the task and the VM
  stays stopped); ``qmstop`` kills it; ``qmshutdown`` asks it to power off and waits for it, up to the task's
  timeout (then fails, or kills it with ``forceStop``); ``qmreboot`` is a clean poweroff then a boot on the same
  disk, ``qmreset`` a kill then a boot; ``qmdestroy`` removes its disk; ``qmclone`` hands the clone its source's
  image.
* Watch: about once a second every running VM's guest is looked at. A guest that powered itself off makes its VM
  ``stopped``; the guest agent answers ``network-get-interfaces`` with what the guest really has (None, i.e.
  "agent not running", until the guest is up), and only for VMs whose config enables the agent.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from fakepve import FakeVm, TaskError

from simulator.guests.backend import GuestBackend
from simulator.guests.forward import Forwarder
from simulator.guests.spec import GuestSpec

log = logging.getLogger(__name__)

TaskBody = Callable[[], Awaitable[Any]]
WATCH_INTERVAL_S = 1.0


class GuestPower:
    def __init__(
        self,
        backend: GuestBackend,
        spec_of: Callable[[FakeVm], GuestSpec],
        agent_enabled: Callable[[FakeVm], bool],
    ) -> None:
        self.backend = backend
        self.spec_of = spec_of
        self.agent_enabled = agent_enabled
        # vmid -> image name: templates from seeding, clones from their source.
        self.images: dict[int, str] = {}
        self._busy: set[int] = set()  # VMs with a power task in flight: the watch leaves them alone
        self._forwarders: list[Forwarder] = []
        self._watch: asyncio.Task[None] | None = None

    # --------------------------------------------------------------------------- life

    def start(self, vms: Callable[[], list[FakeVm]]) -> None:
        self._watch = asyncio.ensure_future(self._watch_loop(vms))

    async def stop(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            await asyncio.gather(self._watch, return_exceptions=True)
            self._watch = None
        for forwarder in self._forwarders:
            await forwarder.stop()
        self._forwarders.clear()

    async def expose(self, port: int, target_host: str, target_port: int) -> None:
        """Make target_host:target_port reachable from the guests at <gateway>:port."""
        forwarder = Forwarder(self.backend.gateway, port, target_host, target_port)
        self._forwarders.append(await forwarder.start())

    # -------------------------------------------------------------------------- tasks

    def wrap(self, ttype: str, tid: Any, vm: FakeVm | None, body: TaskBody) -> TaskBody:
        """The task body with what the real guest needs done around it."""
        if vm is None:
            return body
        if ttype == "qmclone":
            return self._after(body, lambda: self._inherit(int(tid), vm))
        steps: dict[str, tuple[Callable[[], Awaitable[None]] | None, Callable[[], Awaitable[None]] | None]] = {
            "qmstart": (None, lambda: self._boot(vm)),
            "qmstop": (lambda: self._call(self.backend.kill, vm.vmid), None),
            "qmreboot": (None, lambda: self._boot(vm)),
            "qmreset": (lambda: self._call(self.backend.kill, vm.vmid), lambda: self._boot(vm)),
            "qmdestroy": (None, lambda: self._call(self.backend.destroy, vm.vmid)),
        }
        if ttype not in steps:
            return body
        before, after = steps[ttype]

        async def wrapped() -> Any:
            self._busy.add(vm.vmid)
            try:
                if before is not None:
                    await before()
                result = await body()
                if after is not None:
                    await after()
                return result
            finally:
                self._busy.discard(vm.vmid)

        return wrapped

    @staticmethod
    def _after(body: TaskBody, then: Callable[[], None]) -> TaskBody:
        async def wrapped() -> Any:
            result = await body()
            then()
            return result

        return wrapped

    def _inherit(self, source: int, clone: FakeVm) -> None:
        if source in self.images:
            self.images[clone.vmid] = self.images[source]

    async def _boot(self, vm: FakeVm) -> None:
        if vm.status != "running":
            return
        try:
            await self._call(self.backend.start, vm.vmid, self.images.get(vm.vmid), self.spec_of(vm))
        except Exception as e:
            vm.status = vm.qmpstatus = "stopped"
            vm.agent = None
            log.warning("guest of VM %s did not start: %s", vm.vmid, e)
            raise TaskError(f"start failed: {e}") from e

    async def powerdown(self, vm: FakeVm, params: dict[str, Any], default_timeout: int) -> str | None:
        """A clean poweroff, waited for up to the timeout (real seconds), as qm shutdown does."""
        timeout = int(params.get("timeout") or default_timeout)
        await self._call(self.backend.shutdown, vm.vmid)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.backend.running(vm.vmid) and loop.time() < deadline:
            await asyncio.sleep(0.2)
        if not self.backend.running(vm.vmid):
            await self._call(self.backend.poll, vm.vmid)  # unplug and unmount
            self._stopped(vm)
            return None
        if str(params.get("forceStop", "0")) in ("1", "true"):
            await self._call(self.backend.kill, vm.vmid)
            self._stopped(vm)
            return "VM still running - terminating now with SIGTERM"
        raise TaskError("VM quit/powerdown failed - got timeout")

    @staticmethod
    def _stopped(vm: FakeVm) -> None:
        vm.status = vm.qmpstatus = "stopped"
        vm.agent = None

    @staticmethod
    async def _call(function: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.to_thread(function, *args)

    # -------------------------------------------------------------------------- watch

    async def _watch_loop(self, vms: Callable[[], list[FakeVm]]) -> None:
        while True:
            try:
                running = [vm for vm in vms() if not vm.template and vm.vmid not in self._busy]
                await asyncio.gather(*(self._look(vm) for vm in running))
            except Exception:
                log.exception("guest watch pass failed")
            await asyncio.sleep(WATCH_INTERVAL_S)

    async def _look(self, vm: FakeVm) -> None:
        if vm.status != "running":
            vm.agent = None
            return
        state = await self._call(self.backend.poll, vm.vmid)
        if vm.vmid in self._busy or vm.status != "running":
            return  # a power task started meanwhile: it decides
        if state == "stopped":
            log.info("VM %s: its guest powered off", vm.vmid)
            self._stopped(vm)
            return
        interfaces = await self._call(self.backend.interfaces, vm.vmid) if self.agent_enabled(vm) else None
        if vm.vmid not in self._busy and vm.status == "running":
            vm.agent = {"interfaces": interfaces} if interfaces is not None else None
