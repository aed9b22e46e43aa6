"""kill -9 in the middle of a burst: the service process (then restarted on the same state), or only its playbook
processes. Afterwards every accepted create is ACTIVE or ERROR with a reason, every accepted delete ends with the VM
gone, every VM has its instance and every ACTIVE instance its VM, with its own name, and no playbook of the killed
process runs on after the restart.

Each case writes its counts to `<pytest basetemp>/crash/<case>.json` (the README's Reliability table).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from simulator import start_simulator
from tests.conftest import OPERATOR_TOKEN, ROOT, SITE_KEY, TOKEN, visa_body, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("crash")]

BURST = 50
DELETES = 20


class ServiceProcess:
    """`provisioner run` as a process of its own, on a simulator of the test's, with a state directory that
    outlives it."""

    def __init__(self, sim: Any, state_dir: Path, port: int) -> None:
        self.state_dir = state_dir
        self.base = f"http://127.0.0.1:{port}"
        self.env = {
            **{k: v for k, v in os.environ.items() if k not in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE")},
            "VISA_WEB_PROVIDER_PROXMOX_ENDPOINT": f"{sim.url}/api2/json/",
            "VISA_WEB_PROVIDER_PROXMOX_USER": sim.token_id,
            "VISA_WEB_PROVIDER_PROXMOX_PASSWORD": sim.token_secret,
            "PROVISIONER_PROXMOX_CA_FILE": sim.cafile,
            "VISA_WEB_PROVIDER_PROXMOX_SERVER_AUTH_TOKEN": TOKEN,
            "PROVISIONER_OPERATOR_TOKEN": OPERATOR_TOKEN,
            "VISA_WEB_PROVIDER_PROXMOX_SERVER_PORT": str(port),
            "PROVISIONER_STATE_DIR": str(state_dir),
            "PROVISIONER_SSH_PUBLIC_KEYS": SITE_KEY,
            "PROVISIONER_DISCOVERY": "false",
            "PROVISIONER_REFRESH_INTERVAL": "0.3",
            "PROVISIONER_JOB_NICE": "10",  # as in tests/conftest.py's start_service
            "PROVISIONER_LOG_LEVEL": "WARNING",
        }
        self.process: subprocess.Popen[bytes] | None = None
        self.client = httpx.Client(base_url=self.base, headers={"X-Auth-Token": TOKEN}, timeout=30)

    def start(self) -> None:
        log = (self.state_dir.parent / f"{self.state_dir.name}.log").open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "provisioner.cli", "run"], cwd=ROOT, env=self.env, stdout=log, stderr=log
        )
        wait_for(self._healthy, timeout=60, what="the service to start")

    def _healthy(self) -> bool:
        try:
            return httpx.get(self.base + "/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self.client.close()

    def playbooks(self) -> set[int]:
        """The ansible processes (ansible-playbook and its workers) running this service's runs."""
        runs = str(self.state_dir / "runs").encode()
        found = set()
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    if runs in (entry / "cmdline").read_bytes():
                        found.add(int(entry.name))
                except OSError:
                    continue
        return found


@dataclass
class Burst:
    accepted: dict[str, str] = field(default_factory=dict)  # id -> name
    unanswered: int = 0  # requests whose answer never came (the service died under them)
    refused: int = 0


def post_burst(service: ServiceProcess, names: list[str], kill_after: int | None = None) -> Burst:
    """Every create at once; with kill_after, the service is killed once that many were answered."""
    burst = Burst()
    answered = 0

    def create(name: str) -> tuple[str, httpx.Response | None]:
        try:
            return name, service.client.post("/api/instances", json=visa_body(name))
        except httpx.HTTPError:
            return name, None

    with ThreadPoolExecutor(len(names)) as pool:
        for name, response in pool.map(create, names) if kill_after is None else _killing(pool, create, names):
            answered += 1
            if response is None:
                burst.unanswered += 1
            elif response.status_code == 201:
                burst.accepted[response.json()["id"]] = name
            else:
                burst.refused += 1
            if kill_after is not None and answered == kill_after:
                service.kill()
    return burst


def _killing(pool: ThreadPoolExecutor, create: Callable[[str], Any], names: list[str]) -> Iterator[Any]:
    futures = [pool.submit(create, name) for name in names]
    from concurrent.futures import as_completed

    for future in as_completed(futures):
        yield future.result()


def vms(sim: Any) -> dict[int, str]:
    """The simulator's VMs (not templates): VMID -> name."""
    return {vm.vmid: vm.name for vm in list(sim.sim.vms) if not vm.template}


def instances(service: ServiceProcess) -> dict[str, dict[str, Any]]:
    return {body["id"]: body for body in service.client.get("/api/instances").json()}


def settled(service: ServiceProcess, ids: list[str], timeout: float = 300) -> dict[str, dict[str, Any]]:
    def done() -> dict[str, dict[str, Any]] | None:
        seen = instances(service)
        states = {i: seen[i]["state"] if i in seen else "MISSING" for i in ids}
        return seen if all(state in ("ACTIVE", "ERROR") for state in states.values()) else None

    return wait_for(done, timeout=timeout, interval=1, what="every accepted create to settle")  # type: ignore[no-any-return]


def check_consistency(service: ServiceProcess, sim: Any, burst: Burst) -> dict[str, int]:
    seen = settled(service, list(burst.accepted))
    machines = vms(sim)
    for instance_id in burst.accepted:
        body = seen[instance_id]
        assert body["state"] in ("ACTIVE", "ERROR"), body
        if body["state"] == "ERROR":
            assert body["fault"] and (body["fault"]["details"] or body["fault"]["message"]), body
    for vmid, name in machines.items():
        assert str(vmid) in seen, f"VM {vmid} ({name}) has no instance"
        assert seen[str(vmid)]["name"] == name, "a VM carries another instance's name"
    active = [i for i, body in seen.items() if body["state"] == "ACTIVE"]
    assert all(int(i) in machines for i in active), "an ACTIVE instance without its VM"
    return {
        "accepted": len(burst.accepted),
        "unanswered": burst.unanswered,
        "committed without an answer": len(set(seen) - set(burst.accepted)),
        "active": sum(seen[i]["state"] == "ACTIVE" for i in burst.accepted),
        "error": sum(seen[i]["state"] == "ERROR" for i in burst.accepted),
        "lost": sum(i not in seen for i in burst.accepted),
        "vms": len(machines),
    }


@pytest.fixture
def sim(tmp_path: Path) -> Iterator[Any]:
    handle = start_simulator(tmp_path / "simulator", time_scale=0)
    yield handle
    handle.stop()


@pytest.fixture
def service(tmp_path: Path, sim: Any) -> Iterator[ServiceProcess]:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    process = ServiceProcess(sim, tmp_path / "service", port)
    process.start()
    yield process
    process.stop()


def record(tmp_path_factory: pytest.TempPathFactory, case: str, counts: dict[str, int]) -> None:
    folder = tmp_path_factory.getbasetemp() / "crash"
    folder.mkdir(exist_ok=True)
    (folder / f"{case}.json").write_text(json.dumps(counts, indent=1))


KILL_POINTS: dict[str, Callable[[Any, ServiceProcess], bool] | None] = {
    "during the POSTs": None,  # after half of them were answered
    "all accepted, none run": lambda sim, service: True,
    "first clones": lambda sim, service: len(vms(sim)) >= 5,
    "half the VMs made": lambda sim, service: len(vms(sim)) >= BURST // 2,
    "most VMs made": lambda sim, service: len(vms(sim)) >= BURST - 10,
}


@pytest.mark.parametrize("point", list(KILL_POINTS))
def test_killing_the_service_during_a_create_burst_loses_and_doubles_nothing(
    point: str, sim: Any, service: ServiceProcess, tmp_path_factory: pytest.TempPathFactory
):
    names = [f"VISA-INSTANCE-CRASH-{n}" for n in range(BURST)]
    reached = KILL_POINTS[point]
    if reached is None:
        burst = post_burst(service, names, kill_after=BURST // 2)
    else:
        burst = post_burst(service, names)
        assert len(burst.accepted) == BURST
        wait_for(lambda: reached(sim, service), timeout=180, interval=0.05, what=point)
        service.kill()
    survivors = service.playbooks()
    service.start()
    counts = check_consistency(service, sim, burst)
    # The restarted service's worker found the killed one's runs and killed them before running their jobs again.
    assert not survivors & service.playbooks(), "a playbook of the killed service is still running"
    assert counts["lost"] == 0
    record(tmp_path_factory, f"create - {point}", counts | {"playbook processes the kill left": len(survivors)})


def test_killing_only_the_playbooks_mid_burst_ends_every_create(
    sim: Any, service: ServiceProcess, tmp_path_factory: pytest.TempPathFactory
):
    burst = post_burst(service, [f"VISA-INSTANCE-PLAYBOOK-{n}" for n in range(BURST)])
    wait_for(lambda: len(vms(sim)) >= 10 and service.playbooks(), timeout=180, interval=0.05, what="clones")
    killed = service.playbooks()
    for pid in killed:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            continue
    counts = check_consistency(service, sim, burst)
    assert counts["lost"] == 0
    operator = {"Authorization": f"Bearer {OPERATOR_TOKEN}"}
    jobs = httpx.get(f"{service.base}/v1/jobs", params={"limit": 1000}, headers=operator).json()
    tried_again = [job for job in jobs if job["kind"] == "create" and job["attempts"] == 2]
    assert tried_again, "the creates whose playbook was killed ran again"
    assert all(job["state"] == "successful" for job in tried_again)
    record(tmp_path_factory, "create - playbook processes killed", counts | {"creates run again": len(tried_again)})


def test_killing_the_service_during_a_delete_burst_deletes_every_vm(
    sim: Any, service: ServiceProcess, tmp_path_factory: pytest.TempPathFactory
):
    burst = post_burst(service, [f"VISA-INSTANCE-DELETE-{n}" for n in range(DELETES)])
    settled(service, list(burst.accepted))
    before = len(vms(sim))

    def delete(instance_id: str) -> int:
        return service.client.delete(f"/api/instances/{instance_id}").status_code

    with ThreadPoolExecutor(DELETES) as pool:
        assert set(pool.map(delete, burst.accepted)) == {200}
    wait_for(lambda: len(vms(sim)) <= before - 5, timeout=180, interval=0.05, what="the first deletes")
    service.kill()
    service.start()
    wait_for(lambda: not vms(sim), timeout=300, interval=1, what="every VM to be deleted")
    wait_for(
        lambda: all(service.client.get(f"/api/instances/{i}").status_code == 404 for i in burst.accepted),
        timeout=120,
        what="every instance to be gone",
    )
    record(tmp_path_factory, "delete - service killed", {"accepted": DELETES, "vms left": len(vms(sim))})
