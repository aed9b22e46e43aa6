"""A Golem requestor's VM on a real Debian guest (systemd-nspawn): made through the Golem listener as the CLI makes it,
reached the way the CLI reaches it, `ssh -p <ssh_port> ubuntu@<advertised address>`, through the listener's forward,
with the key it posted; stopped, started, kept across a restart of the service, deleted with its port closed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import LiveService, start_service, wait_for
from tests.helpers.golem import free_ports, golem_settings, listening
from tests.helpers.guest_ssh import GuestSSH, KeyPair

pytestmark = [pytest.mark.slow, pytest.mark.real_guest, pytest.mark.xdist_group("real_guests")]

BOOT_S = 240


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, KeyPair]:
    directory = tmp_path_factory.mktemp("golem-keys")
    return {name: KeyPair.generate(directory, name) for name in ("site", "requestor", "stranger")}


def test_a_requestor_rents_a_guest_sshes_through_the_forward_and_the_forward_outlives_a_restart(
    tmp_path_factory: pytest.TempPathFactory, guest_cluster: Any, keys: dict[str, KeyPair], tmp_path: Path
) -> None:
    ports = free_ports(4)
    state = tmp_path_factory.mktemp("golem-service")
    settings = golem_settings(ports, ssh_public_keys=keys["site"].public, address_timeout_s=180)
    service: LiveService = start_service(state, guest_cluster, **settings)
    golem = httpx.Client(base_url=f"http://127.0.0.1:{ports[0]}", timeout=BOOT_S + 60)
    try:
        body = {
            "name": "rented",
            "resources": {"cpu": 1, "memory": 1, "storage": 10},
            "ssh_key": keys["requestor"].public,
        }
        created = golem.post("/api/v1/vms", json=body)  # synchronous, as the CLI up to 0.1.54: running, with a port
        assert created.status_code == 200, created.text
        vm = created.json()
        assert vm["status"] == "running" and vm["ssh_port"] in ports[1:]
        access = golem.get("/api/v1/vms/rented/access").json()
        assert (access["ssh_host"], access["ssh_port"]) == ("127.0.0.1", vm["ssh_port"])

        host_key = service.phoned_home(access["multipass_name"], BOOT_S).host_key or ""
        requestor = GuestSSH(tmp_path, "127.0.0.1", "ubuntu", keys["requestor"], host_key, port=vm["ssh_port"])
        requestor.wait(BOOT_S)
        assert requestor.check("id -un").strip() == "ubuntu"
        assert requestor.check("sudo -n id -u").strip() == "0"
        stranger = GuestSSH(tmp_path, "127.0.0.1", "ubuntu", keys["stranger"], host_key, port=vm["ssh_port"])
        assert stranger.run("true").returncode != 0

        stopped = golem.post("/api/v1/vms/rented/stop")
        assert stopped.status_code == 200 and stopped.json()["status"] == "stopped"
        assert requestor.run("true", timeout=30).returncode != 0, "nothing answers through the forward"
        started = golem.post("/api/v1/vms/rented/start")
        assert started.status_code == 200, started.text
        requestor.wait(BOOT_S)

        # A restart of the service: the port map is the store's; the forward listens again on the same port.
        golem.close()
        service.stop()
        wait_for(lambda: not listening(vm["ssh_port"]), what="the forward to close with the service")
        service = start_service(state, guest_cluster, **settings)
        golem = httpx.Client(base_url=f"http://127.0.0.1:{ports[0]}", timeout=BOOT_S + 60)
        wait_for(lambda: golem.get("/api/v1/vms/rented").json()["status"] == "running", timeout=60)
        assert golem.get("/api/v1/vms/rented").json()["ssh_port"] == vm["ssh_port"]
        assert requestor.check("id -un").strip() == "ubuntu"

        assert golem.delete("/api/v1/vms/rented").status_code == 200
        wait_for(lambda: golem.get("/api/v1/vms/rented").status_code == 404, timeout=180, what="the VM to go")
        wait_for(lambda: not listening(vm["ssh_port"]), what="its forward to close")
        assert int(access["multipass_name"]) not in guest_cluster.sim.guests.backend.vmids()
    finally:
        golem.close()
        service.stop()
