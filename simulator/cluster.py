"""The project's Proxmox simulator: fakepve (used as a library, never patched) plus what provisioning needs.

* a stateful `PUT /nodes/{node}/qemu/{vmid}/resize` (a `resize` worker task, as qemu-server does since PVE 8)
  and a stateful `GET /cluster/tasks`;
* clone and start durations (`clone_secs`, `start_secs`: PVE seconds in front of `qmclone` / `qmstart`);
* one boot sidecar coroutine: `boot_secs` PVE seconds after a VM (re)starts it emulates cloud-init's NoCloud
  HTTP datasource (SMBIOS serial `ds=nocloud-net;s=<url>`: GET meta-data, user-data, vendor-data, then the
  `phone_home` POST) and brings the guest agent up with a stable per-VMID IPv4;
* `seed_cluster`: two nodes, `local` / `local-lvm` / shared RBD `ceph-vm`, two cloud-init templates and the
  security groups `default`, `ssh`, `web`;
* faults to switch on and off while it runs (`/simulator/faults`, simulator/faults.py);
* `start_simulator`: all of it over TLS on a private event loop in a daemon thread.

  python -m simulator --state-dir DIR [--host 127.0.0.1 --port 8006 --time-scale 1 --clone-secs 3
                             --start-secs 2 --boot-secs 20]

Times are PVE seconds; fakepve's `time_scale` turns them into real ones (0: tasks finish before the request
returns and VMs boot on the sidecar's next tick).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

import aiohttp
from aiohttp import web
from fakepve import FakePve, FakeVm, PveError, TaskError

from simulator.cloudinit import CloudInitRun, SeedFile, SeedRef, cloud_config, parse_seed, smbios_serial, yaml_dict
from simulator.faults import FaultError, Faults
from simulator.guests.backend import GuestBackend
from simulator.guests.power import GuestPower
from simulator.identity import guest_interfaces, guest_mac, guest_spec, ssh_host_keys
from simulator.properties import GIB, agent_enabled, format_size, join_props, parse_size, resized, split_props

log = logging.getLogger(__name__)

T = TypeVar("T")
TaskBody = Callable[[], Awaitable[Any]]

SEED_FILES = ("meta-data", "user-data", "vendor-data")
PHONE_HOME_ALL = ("pub_key_rsa", "pub_key_ecdsa", "pub_key_ed25519", "instance_id", "hostname", "fqdn")
MAX_SEED_BYTES = 1024 * 1024  # kept of each seed body
FAULTS_PATH = "/simulator/faults"


@dataclass
class _Power:
    """The sidecar's view of one VM's current power cycle."""

    started_at: float | None  # vm.started_at of the cycle; a new value means a (re)start or reboot
    since: float  # when the cycle began (time.time())
    boot: int = 0  # boot number once the boot ran; 0 while waiting for boot_secs
    task: asyncio.Task[None] | None = None


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
        self.faults = Faults(self)

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

    def _build_app(self) -> web.Application:
        """fakepve's application, plus the fault switches at /simulator/faults (simulator/faults.py), which no fault
        reaches: they are served ahead of fakepve's middleware (network faults, injected errors)."""
        app: web.Application = super()._build_app()
        app.middlewares.insert(0, self._faults_control)
        app.router.add_get(FAULTS_PATH, self._faults_list)
        app.router.add_post(FAULTS_PATH, self._faults_on)
        app.router.add_delete(FAULTS_PATH, self._faults_off)
        return app

    @web.middleware
    async def _faults_control(self, request: web.Request, handler: Callable[..., Awaitable[Any]]) -> Any:
        if request.path != FAULTS_PATH:
            return await handler(request)
        try:
            user = self._authenticate(request)
        except PveError as exc:
            return web.json_response({"message": exc.message}, status=exc.status)
        if not self.allowed(user, "/", "Sys.Modify"):
            return web.json_response({"message": "Permission check failed (/, Sys.Modify)"}, status=403)
        return await request.match_info.handler(request)

    async def _faults_list(self, _request: web.Request) -> web.Response:
        return web.json_response({"data": list(self.faults.active)})

    async def _faults_on(self, request: web.Request) -> web.Response:
        try:
            spec = await request.json()
            described = await self.faults.switch_on(spec if isinstance(spec, dict) else {})
        except (ValueError, FaultError) as exc:
            return web.json_response({"errors": {"fault": str(exc)}, "message": str(exc)}, status=400)
        log.warning("fault switched on: %s", described)
        return web.json_response({"data": described})

    async def _faults_off(self, _request: web.Request) -> web.Response:
        self.faults.clear()
        log.warning("every fault switched off")
        return web.json_response({"data": None})

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
        meta = yaml_dict(run.files["meta-data"].body)
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
