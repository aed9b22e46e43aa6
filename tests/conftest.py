"""Shared fixtures: a simulated cluster and the live service (uvicorn on a real port, as guests reach it)."""

from __future__ import annotations

import os
import re
import shlex
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from discovery.settings import RegistrySettings
from engine.db import Database
from engine.models import Instance
from engine.proxmox import ProxmoxConnection
from engine.settings import Settings
from provisioner.runtime import Runtime, create_app
from tests.helpers.guest_ssh import KeyPair
from tests.helpers.postgres import BACKENDS, TestPostgres, require_postgres

TOKEN = "test-visa-token-0123456789"
OPERATOR_TOKEN = "test-operator-token-0123456789"
SITE_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHVmPnHqL3iOx0hB3fm4tJq0pS0KyfHlLQ0n8Qd3JYJb site@example.org"
USER_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBfw4Zz7wqdTd6a6cvSfbDX0Qf3u4s0aS2xUwW3Sb3cV user@example.org"
MUTATING = ("POST", "PUT", "DELETE")
ROOT = Path(__file__).parents[1]

# The machines export a system CA bundle that requests would prefer over our explicit verify settings.
for _name in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
    os.environ.pop(_name, None)


def wait_for(
    predicate: Callable[[], Any], timeout: float = 60.0, interval: float = 0.2, what: str = "condition"
) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


@pytest.fixture(scope="module")
def simulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from simulator import start_simulator

    handle = start_simulator(tmp_path_factory.mktemp("simulator"), time_scale=0)
    yield handle
    handle.stop()


class LiveService:
    """The whole service on 127.0.0.1:<free port>, with httpx clients: `client` sends the VISA token, `operator` the
    operator token, `anonymous` none."""

    def __init__(self, runtime: Runtime, sock: socket.socket, root_path: str = "") -> None:
        self.runtime = runtime
        self.port = sock.getsockname()[1]
        self.base = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(
            create_app(runtime), log_level="warning", access_log=False, lifespan="on", root_path=root_path
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, daemon=True)
        self.thread.start()
        wait_for(lambda: self.server.started, timeout=30, what="the service to start")
        self.client = httpx.Client(base_url=self.base, headers={"X-Auth-Token": TOKEN}, timeout=30)
        bearer = {"Authorization": f"Bearer {OPERATOR_TOKEN}"}
        self.operator = httpx.Client(base_url=self.base, headers=bearer, timeout=30)
        self.anonymous = httpx.Client(base_url=self.base, timeout=30)

    @property
    def settings(self) -> Settings:
        return self.runtime.settings

    def stop(self) -> None:
        self.client.close()
        self.operator.close()
        self.anonymous.close()
        self.server.should_exit = True
        self.thread.join(timeout=30)

    def discovery_env(self) -> dict[str, str]:
        """The playbooks' DISCOVERY_* variables from <state dir>/discovery.env, as an operator sources it."""
        lines = (self.settings.state_dir / "discovery.env").read_text().splitlines()
        return dict(shlex.split(line)[0].split("=", 1) for line in lines if not line.startswith("#"))

    def instance(self, instance_id: str) -> dict[str, Any]:
        response = self.client.get(f"/api/instances/{instance_id}")
        assert response.status_code == 200, response.text
        return response.json()

    def stored(self, instance_id: str) -> Instance:
        """The instance's row in the service's database (detached)."""
        with self.runtime.db.session() as session:
            instance = session.get(Instance, int(instance_id))
            assert instance is not None
            session.expunge(instance)
            return instance

    def seed_token(self, instance_id: str) -> str:
        """The instance's seed token, as the service derives it (the store keeps only its digest)."""
        return self.runtime.seeds.token(self.stored(instance_id))

    def phoned_home(self, instance_id: str, timeout: float = 120) -> Instance:
        """The instance's row once its guest phoned home (cloud-init's final stage ran with our data)."""
        return wait_for(  # type: ignore[no-any-return]
            lambda: (i := self.stored(instance_id)).phoned_home_at is not None and i,
            timeout=timeout,
            what=f"instance {instance_id} to phone home",
        )

    def wait_idle(self, timeout: float = 120.0) -> None:
        """Until no job is pending or running: what Proxmox sees from then on comes from what the test does."""

        def idle() -> bool:
            jobs = self.operator.get
            return not any(jobs("/v1/jobs", params={"state": s, "limit": 1}).json() for s in ("pending", "running"))

        wait_for(idle, timeout=timeout, what="the service's jobs to finish")

    def wait_state(self, instance_id: str, state: str, timeout: float = 120.0) -> dict[str, Any]:
        def reached() -> dict[str, Any] | None:
            body = self.instance(instance_id)
            assert body["state"] != "ERROR" or state == "ERROR", body
            return body if body["state"] == state else None

        return wait_for(reached, timeout=timeout, what=f"instance {instance_id} to be {state}")


def start_service(
    tmp_path: Path, simulator: Any, registry: RegistrySettings | None = None, root_path: str = "", **overrides: Any
) -> LiveService:
    """The service on a free port; no discovery registry unless `discovery_enabled=True` (then on `registry`);
    `root_path` as uvicorn's --root-path (the service behind a proxy that strips that prefix)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    if getattr(simulator, "guest_gateway", None):  # real guests reach the seeds at the gateway, forwarded here
        reachable = simulator.expose(sock.getsockname()[1], "127.0.0.1", sock.getsockname()[1])
        overrides.setdefault("metadata_server", f"http://{reachable}/seed/")
        overrides.setdefault("sim_guests", "container")  # not emulated: key changes and logs log in to the guests
    values: dict[str, Any] = {
        "auth_token": TOKEN,
        "operator_token": OPERATOR_TOKEN,
        "state_dir": tmp_path,
        "server_host": "127.0.0.1",
        "server_port": sock.getsockname()[1],
        "ssh_public_keys": SITE_KEY,
        "batch_window_ms": 100,
        "refresh_interval_s": 0.3,
        # The suite's two workers share the machine: playbooks whose sessions yield to everything (the default, 19)
        # would run at the pace of the other worker's load. The default's effect has its own test.
        "job_nice": 10,
        "address_timeout_s": 60,
        "job_timeout_s": 300,
        "discovery_enabled": False,
    }
    values.update(overrides)
    settings = Settings(**values)
    connection = ProxmoxConnection(
        host=simulator.host,
        port=simulator.port,
        user=simulator.token_id,
        secret=simulator.token_secret,
        timeout_s=10,
        verify=str(simulator.cafile),
    )
    return LiveService(Runtime(settings, connection=connection, registry_settings=registry), sock, root_path)


def require_real_guests(kind: str) -> None:
    """Skip a real-guest test on a host that cannot run real guests of this kind, with what is missing; where they
    are required (`.ci/run` sets PROVISIONER_REAL_GUESTS_REQUIRED=1), fail instead: they are never skipped there."""
    from simulator.guests.system import GuestsUnavailable, require

    try:
        require(kind)
    except GuestsUnavailable as e:
        if os.environ.get("PROVISIONER_REAL_GUESTS_REQUIRED") == "1":
            pytest.fail(str(e))
        pytest.skip(str(e))


@pytest.fixture(scope="session")
def postgres() -> Iterator[TestPostgres]:
    """This session's PostgreSQL server (tests/helpers/postgres.py); stopped and removed at the end."""
    require_postgres()
    server = TestPostgres()
    yield server
    server.stop()


@pytest.fixture(params=BACKENDS)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh database of each kind, migrated to head on PostgreSQL (a copy of the template), empty on SQLite (a
    new file): the tests that use it run once on each."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'store.db'}"
        return
    server: TestPostgres = request.getfixturevalue("postgres")
    url = server.new_database()
    yield url
    server.drop(url)


@pytest.fixture
def db(database_url: str) -> Iterator[Database]:
    """The store's database on `database_url`, migrated to head (both kinds)."""
    database = Database(database_url)
    database.migrate()
    yield database
    database.dispose()


@pytest.fixture(params=BACKENDS)
def empty_database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh database of each kind, with no table at all (migration tests)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'empty.db'}"
        return
    server: TestPostgres = request.getfixturevalue("postgres")
    url = server.new_database(migrated=False)
    yield url
    server.drop(url)


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory, simulator: Any) -> Iterator[LiveService]:
    live = start_service(tmp_path_factory.mktemp("service"), simulator)
    yield live
    live.stop()


def ansible_env(simulator: Any) -> dict[str, str]:
    """The environment an operator runs ansible with against the simulator (docs/contract.md section 1)."""
    connection = ProxmoxConnection(
        simulator.host, simulator.port, simulator.token_id, simulator.token_secret, 10, str(simulator.cafile)
    )
    return {**os.environ, **connection.ansible_env(), "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg")}


def recap(output: str) -> dict[str, dict[str, int]]:
    """The PLAY RECAP of an ansible-playbook run: host -> {ok, changed, failed, ...}."""
    hosts = {}
    for host, counts in re.findall(r"^(\S+)\s+: (ok=.*)$", output, re.M):
        hosts[host] = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", counts)}
    return hosts


def pve_api(simulator: Any) -> Any:
    """A proxmoxer client of the simulator, as root@pam!provisioner (what an operator's scripts would use)."""
    from proxmoxer import ProxmoxAPI

    user, _, token = simulator.token_id.partition("!")
    return ProxmoxAPI(
        simulator.host,
        port=simulator.port,
        user=user,
        token_name=token,
        token_value=simulator.token_secret,
        verify_ssl=simulator.cafile,
    )


def mutations(simulator: Any, since: int = 0) -> list[tuple[str, str]]:
    """The mutating requests the simulator recorded since an index."""
    return [(m, p) for m, p, _ in list(simulator.sim.requests)[since:] if m in MUTATING]


def visa_body(name: str = "VISA-INSTANCE-42", image: str = "9000", flavour: str = "small", **extra: Any) -> dict:
    """The create body exactly as VISA 3.x sends it: "" metadata values, no bootCommand key."""
    body = {
        "name": name,
        "imageId": image,
        "flavourId": flavour,
        "securityGroups": ["default"],
        "metadata": {
            "owner": "bob",
            "uid": "d3f1",
            "screenWidth": "1920",
            "screenHeight": "1080",
            "keyboardLayout": "en-gb-qwerty",
            "instruments": "",
            "proposals": "",
            "id": "42",
        },
    }
    body.update(extra)
    return body


class FakeClock:
    """Unix seconds that only move when a test says so."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def start_test_registry(tmp_path: Path, clock: Callable[[], float] = time.time, **settings: Any) -> Any:
    """A discovery registry on a free loopback port with its own SQLite file; returns its handle."""
    from discovery.server import start_registry

    values: dict[str, Any] = {"host": "127.0.0.1", "port": 0, "state_dir": tmp_path, **settings}
    return start_registry(RegistrySettings(**values), clock=clock)


@pytest.fixture(scope="module")
def guest_keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, KeyPair]:
    """SSH key pairs for real-guest tests: the site's, a user's (VISA metadata) and a stranger's."""
    directory = tmp_path_factory.mktemp("keys")
    return {name: KeyPair.generate(directory, name) for name in ("site", "user", "stranger")}


@pytest.fixture(scope="module")
def guest_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A simulator whose VMs are real container guests; afterwards nothing of it may be left on the machine."""
    require_real_guests("container")
    from simulator import start_simulator

    state = tmp_path_factory.mktemp("simulator")
    handle = start_simulator(state, time_scale=0, guests="container")
    index = handle.sim.guests.backend.network.index
    yield handle
    handle.stop()
    assert leftovers(index, state) == []


def leftovers(index: int, directory: Path) -> list[str]:
    """What is still on the machine of guest network `index` and of the guests kept under `directory`."""
    found = []
    namespaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    found += [f"netns {line.split()[0]}" for line in namespaces.splitlines() if line.startswith(f"pg{index}-")]
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True, check=True).stdout
    for line in links.splitlines():
        name = line.split(": ")[1].split("@")[0]
        if name.startswith(f"pg{index}-") or name == f"pgbr{index}":
            found.append(f"link {name}")
    with open("/proc/self/mounts") as mounts:
        found += [f"mount {m.split()[1]}" for m in mounts if m.split()[1].startswith(str(directory))]
    for process in Path("/proc").glob("[0-9]*"):
        try:
            argv = (process / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if str(directory) in argv and ("nspawn" in argv or "dnsmasq" in argv or "qemu" in argv):
            found.append(f"process {process.name}: {argv[:80]}")
    return found
