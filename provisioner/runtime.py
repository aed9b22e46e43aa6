"""Assembles the running service: database, cluster view, job queue and its worker processes, reconciler, HTTP
application. This process records intents; the workers (provisioner/worker.py) run the playbooks."""

from __future__ import annotations

import logging
import shlex
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from starlette.types import Lifespan

from api import operator, seed, vm_keys, vm_logs, vms
from api.access import AuditTrail
from api.golem.listener import GolemListener
from common.files import make_private_dir, write_private
from discovery.client import RegistryClient
from discovery.server import RegistryHandle, start_registry
from discovery.settings import RegistrySettings
from discovery.signing import load_or_create_key, provider_id
from engine.advertiser import Advertisement, Advertiser, advertisement
from engine.capacity import building_reservations
from engine.db import Database
from engine.duties import DutyLease, holder_id
from engine.flavours import seed_flavours
from engine.guestkey import GuestKey
from engine.jobs import bell
from engine.jobs.procrastinate_queue import ProcrastinateQueue, sync_app
from engine.jobs.queue import JobQueue, StoreQueue
from engine.proxmox import ClusterView, ProxmoxConnection, Snapshot
from engine.reconciler import Reconciler
from engine.seeds import SeedTokens
from engine.service import Provisioner
from engine.settings import Settings
from engine.sshkeys import site_keys
from engine.store import Store
from provisioner.worker_spec import WorkerSpec, discovery_env
from provisioner.workers import WorkerProcesses
from web_provider import http as visa_http

log = logging.getLogger(__name__)

DUTY_LEASE_S = 30.0  # a dead API process's duties (reconciler, advertiser) move to another within this


class Runtime:
    """Everything the service runs; `start()` and `stop()` bracket its life (the app's lifespan)."""

    def __init__(
        self,
        settings: Settings,
        connection: ProxmoxConnection | None = None,
        registry_settings: RegistrySettings | None = None,
    ) -> None:
        self.settings = settings
        self.simulator: Any = None
        self.connection = connection
        self.registry_settings = registry_settings
        self.registry: RegistryHandle | None = None
        self.advertiser: Advertiser | None = None
        self.db = Database(settings.db_url)
        self.store = Store(self.db)
        self.seeds: SeedTokens  # from its key file, at start
        self.keys = site_keys(settings.ssh_public_keys, settings.ssh_public_key_files)
        self.cluster: ClusterView | None = None
        self.provisioner: Provisioner | None = None
        self.workers: WorkerProcesses | None = None
        self._runs_ended: RunsEnded | None = None
        self.reconciler: Reconciler | None = None
        self._queue_app: Any = None  # procrastinate's, with PROVISIONER_QUEUE=procrastinate
        self.holder = holder_id()  # this process, as the holder of the duties done once for all API processes

    def start(self) -> None:
        make_private_dir(self.settings.state_dir)
        if self.settings.provider_id is None:
            key = load_or_create_key(self.settings.provider_key_path)
            self.settings = self.settings.model_copy(update={"provider_id": provider_id(key)})
        settings = self.settings
        self.seeds = SeedTokens.from_file(settings.seed_key_path)
        if settings.guest_access:
            guest_key = GuestKey.load_or_create(settings.guest_key_path).public
            self.keys = [*(k for k in self.keys if k.split()[:2] != guest_key.split()[:2]), guest_key]
        self.db.migrate()
        with self.db.session() as session:
            added = seed_flavours(session, settings.flavours_file)
        if added:
            log.info("loaded %d flavours from %s", added, settings.flavours_file)
        if self.connection is None:
            self.connection = (
                self._start_simulator() if settings.simulated else ProxmoxConnection.from_settings(settings)
            )
        self.cluster = ClusterView(self.connection, settings.refresh_interval_s, settings.stale_after_s)
        discovery_env = self._start_discovery(self.cluster) if settings.discovery_enabled else {}
        self.workers = WorkerProcesses(
            WorkerSpec(
                settings,
                ansible_env=self.connection.ansible_env() | discovery_env,
                secrets=[self.connection.secret, *settings.secret_values(), *self._registry_secrets()],
                log_level=logging.getLevelName(logging.getLogger().getEffectiveLevel()),
            ),
            settings.workers,
        )
        queue = self._queue()
        self.provisioner = Provisioner(settings, self.store, self.seeds, self.cluster, self.keys, queue)
        self.provisioner.start()
        try:
            self.cluster.start()
        except Exception:
            log.warning("Proxmox is not reachable at start-up; serving with a stale cluster view")
        self._runs_ended = RunsEnded(settings, self.cluster.poke)
        self.workers.start()
        self.reconciler = Reconciler(
            self.store,
            self.seeds,
            self.cluster,
            settings,
            duty=DutyLease(self.store, "reconciler", self.holder, DUTY_LEASE_S),
        )
        self.reconciler.start()
        if self.advertiser is not None:
            self.advertiser.start()

    def stop(self) -> None:
        for part in (
            self.provisioner,
            self.reconciler,
            self.workers,
            self._runs_ended,
            self.advertiser,
            self.cluster,
            self.registry,
            self.simulator,
        ):
            if part is not None:
                part.stop()
        if self._queue_app is not None:
            self._queue_app.close()
        self.db.dispose()

    def _queue(self) -> JobQueue:
        if self.settings.queue_backend == "procrastinate":
            self._queue_app = sync_app(self.settings.db_url).open()
            return ProcrastinateQueue(self.store, self._queue_app)
        return StoreQueue(self.store, self.settings.bell_dir)

    def _start_discovery(self, cluster: ClusterView) -> dict[str, str]:
        """Registry (embedded unless DISCOVERY_URL is set), provider key, advertiser; the playbooks' DISCOVERY_*."""
        settings = self.settings
        logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per advertisement refresh otherwise
        key = load_or_create_key(settings.provider_key_path)
        own_id = provider_id(key)
        log.info("discovery provider id %s (key in %s)", own_id, settings.provider_key_path)
        url = settings.discovery_url
        if url is None:
            # The embedded registry takes writes from this provider, plus DISCOVERY_ALLOWED_PROVIDERS ('*': anyone).
            self.registry_settings = self.registry_settings or RegistrySettings(state_dir=settings.state_dir)
            self.registry = start_registry(self.registry_settings.allowing(own_id))
            url = self.registry.url
            log.info("embedded discovery registry at %s", url)
        self.advertiser = Advertiser(
            RegistryClient(url, key),
            lambda: self._advertisement(settings, cluster.snapshot()),
            settings.advertise_interval_s,
            duty=DutyLease(self.store, "advertiser", self.holder, DUTY_LEASE_S),
        )
        env = discovery_env(settings, url, own_id)
        write_env_file(settings.state_dir / "discovery.env", env)
        return env

    def _registry_secrets(self) -> list[str]:
        token = self.registry_settings.read_token if self.registry is not None and self.registry_settings else None
        return [token.get_secret_value()] if token else []

    def _advertisement(self, settings: Settings, snapshot: Snapshot | None) -> Advertisement | None:
        if snapshot is None:
            return None
        with self.db.session() as session:
            reservations = building_reservations(session, snapshot)
        return advertisement(settings, snapshot, reservations)

    def _start_simulator(self) -> ProxmoxConnection:
        from simulator import start_simulator

        s = self.settings
        logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
        self.simulator = start_simulator(
            s.state_dir / "simulator",
            host=s.sim_host,
            port=s.sim_port,
            time_scale=s.sim_time_scale,
            clone_secs=s.sim_clone_secs,
            start_secs=s.sim_start_secs,
            boot_secs=s.sim_boot_secs,
            guests=s.sim_guests,
            progress=lambda line: log.info("%s", line),
        )
        log.info("embedded Proxmox simulator at %s", self.simulator.url)
        if self.simulator.guest_gateway is not None:
            self._reach_seeds_from_guests()
        connection = ProxmoxConnection(
            host=self.simulator.host,
            port=self.simulator.port,
            user=self.simulator.token_id,
            secret=self.simulator.token_secret,
            timeout_s=s.proxmox_timeout_ms / 1000,
            verify=str(self.simulator.cafile),
        )
        write_env_file(s.state_dir / "proxmox.env", connection.ansible_env())
        return connection

    def _reach_seeds_from_guests(self) -> None:
        """Real guests reach the host at the guest network's gateway only: unless the seed URL is configured, it is
        this service's port there, forwarded to where the service listens."""
        s = self.settings
        if s.metadata_server:
            return
        target = "127.0.0.1" if s.server_host in ("0.0.0.0", "::", "") else s.server_host
        reachable = self.simulator.expose(s.server_port, target, s.server_port)
        s.metadata_server = f"http://{reachable}{s.seed_path_prefix}/"
        log.info("real guests (%s) fetch their seeds at %s", s.sim_guests, s.seed_base_url)


class RunsEnded:
    """Refreshes the cluster view as soon as a worker says a run ended (a create's VM is then seen at once)."""

    def __init__(self, settings: Settings, poke: Callable[[], None]) -> None:
        self._listener = bell.Listener(settings.bell_dir, bell.RUNS)
        self._poke = poke
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="runs-ended", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            if self._listener.wait(5.0) and not self._stop.is_set():
                self._poke()

    def stop(self) -> None:
        self._stop.set()
        self._listener.interrupt()
        self._thread.join(timeout=5)
        self._listener.close()


def write_env_file(path: Path, env: dict[str, str]) -> None:
    """The playbooks' environment for running them by hand against `make run`'s defaults (mode 0600)."""
    lines = [f"{key}={shlex.quote(value)}\n" for key, value in sorted(env.items())]
    write_private(path, f"# written by `make run`; use with: set -a; . .run/{path.name}; set +a\n" + "".join(lines))


def create_app(runtime: Runtime) -> FastAPI:
    """The service's application: the runtime starts with it and stops with it."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        runtime.start()
        app.state.provisioner = runtime.provisioner
        golem = None
        try:
            if runtime.settings.golem_compat and runtime.provisioner is not None:
                golem = GolemListener(runtime.provisioner, runtime.db)
                await golem.start()
            yield
        finally:
            if golem is not None:
                await golem.stop()
            runtime.stop()

    return build_app(runtime.settings, lifespan)


def build_app(settings: Settings, lifespan: Lifespan[FastAPI] | None = None) -> FastAPI:
    """The HTTP application for these settings: both APIs behind their guards, health and the seeds. Every route takes
    the service from `app.state.provisioner`, which `create_app`'s lifespan sets (the unit tests set a fake)."""
    app = FastAPI(
        title="Proxmox provisioner", version="0.1.0", lifespan=lifespan, docs_url="/docs", openapi_url="/openapi.json"
    )
    visa_http.install_error_handlers(app)
    app.add_middleware(AuditTrail)  # innermost: inside the guards, so it sees who the caller is
    visa_http.install(app, settings.auth_token.get_secret_value() if settings.auth_token else None)
    if settings.operator_api:
        operator.install(app, settings.operator_token.get_secret_value() if settings.operator_token else None)
        app.include_router(vms.router)
        app.include_router(vm_keys.router)
        app.include_router(vm_logs.router)
    app.include_router(operator.health)
    app.include_router(seed.build_router(settings.seed_path_prefix))
    return app
