"""Real Debian guests (systemd-nspawn) behind the simulator's Proxmox API: VISA creates them, users log in.

Nothing here talks to the guest except as a user would: the service's seed reaches it only through the VM's
SMBIOS serial (the container init's command line) and the DHCP network, and the tests log in over SSH with the
site key or the key VISA sent, trusting only the host key the guest phoned home.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from discovery import signing
from engine.naming import hostname
from tests.conftest import (
    ROOT,
    LiveService,
    leftovers,
    pve_api,
    require_real_guests,
    start_service,
    wait_for,
)
from tests.helpers.guest_ssh import GuestSSH, KeyPair, scanned_host_key
from tests.helpers.real_guests import create, login
from tests.helpers.workers import delete_all

pytestmark = [pytest.mark.slow, pytest.mark.real_guest, pytest.mark.xdist_group("real_guests")]

IMAGES = {"9000": "Debian 12, cloud-init 22.4", "9002": "Debian 13, cloud-init 25.1"}
GUEST_NETWORK_PREFIX = "198.1"  # 198.18.0.0/15
READ_TOKEN = "real-guests-read-token-0123"


@pytest.fixture(scope="module")
def service(
    tmp_path_factory: pytest.TempPathFactory, guest_cluster: Any, guest_keys: dict[str, KeyPair]
) -> Iterator[LiveService]:
    from discovery.settings import RegistrySettings

    state = tmp_path_factory.mktemp("service")
    registry = RegistrySettings(host="127.0.0.1", port=0, read_token=READ_TOKEN, state_dir=state / "registry")
    live = start_service(
        state,
        guest_cluster,
        registry=registry,
        discovery_enabled=True,
        ssh_public_keys=guest_keys["site"].public,
        address_timeout_s=180,
    )
    yield live
    live.stop()


def seed_status(service: LiveService, token: str) -> int:
    return httpx.get(f"{service.base}/seed/{token}/meta-data", timeout=10).status_code


@pytest.mark.parametrize("image", sorted(IMAGES), ids=[IMAGES[i] for i in sorted(IMAGES)])
def test_a_visa_instance_is_a_guest_users_log_in_to(
    image: str, service: LiveService, guest_cluster: Any, guest_keys: dict[str, KeyPair], tmp_path: Path
) -> None:
    instance_id = create(service, f"VISA-INSTANCE-G{image}", image, guest_keys["user"])
    assert service.instance(instance_id)["state"] == "BUILDING"
    active = service.wait_state(instance_id, "ACTIVE", timeout=240)
    assert active["address"].startswith(GUEST_NETWORK_PREFIX), active
    leases = (guest_cluster.sim.guests.backend.network.workdir / "dnsmasq.leases").read_text()
    assert f" {active['address']} " in leases, "the address must be the one the DHCP server leased"

    site = login(service, tmp_path, instance_id, guest_keys["site"])
    host_key = service.stored(instance_id).host_key or ""
    user = GuestSSH(tmp_path, site.address, site.user, guest_keys["user"], host_key)
    assert user.check("id -un").strip() == service.settings.cloud_init_user
    stranger = GuestSSH(tmp_path, site.address, site.user, guest_keys["stranger"], host_key)
    assert stranger.run("true").returncode != 0

    status = site.run("cloud-init status --wait --long")
    assert status.returncode in (0, 2), status.stdout + status.stderr  # 2: done, with nocloud-net's deprecation
    assert "NoCloudNet" in status.stdout or "nocloud-net" in status.stdout.lower(), status.stdout
    assert site.check("hostname").strip() == hostname(f"VISA-INSTANCE-G{image}", int(instance_id))
    meta = json.loads(site.check("cloud-init query ds.meta_data.meta"))
    assert meta == {"owner": "alice", "id": "7", "instruments": "", "sshPublicKey": guest_keys["user"].public}
    assert site.check("cat /var/tmp/bootcommand.out").split() == ["owner=alice", "uid=0"]
    assert site.check("sudo -n id -u").strip() == "0"
    authorized = site.check("cat ~/.ssh/authorized_keys")
    assert guest_keys["site"].public in authorized and guest_keys["user"].public in authorized

    # Reboot: the same disk, the same host key (the pinned known_hosts still matches), cloud-init ran again.
    site.check("echo kept > /var/tmp/disk-marker; sudo touch /run/boot-marker")
    boots_before = len(site.check("sudo journalctl --list-boots --no-pager").splitlines())
    assert service.client.post(f"/api/instances/{instance_id}/reboot").status_code == 200
    service.wait_state(instance_id, "ACTIVE", timeout=180)
    site.wait()
    assert site.check("cat /var/tmp/disk-marker").strip() == "kept"
    assert site.run("test -e /run/boot-marker").returncode != 0, "the guest did not reboot"
    assert len(site.check("sudo journalctl --list-boots --no-pager").splitlines()) == boots_before + 1

    # Shutdown is the guest's own clean poweroff; start boots it again on the same disk.
    assert service.client.post(f"/api/instances/{instance_id}/shutdown").status_code == 200
    service.wait_state(instance_id, "STOPPED", timeout=120)
    assert not guest_cluster.sim.guests.backend.running(int(instance_id))
    assert site.run("true", timeout=20).returncode != 0
    assert service.client.post(f"/api/instances/{instance_id}/start").status_code == 200
    service.wait_state(instance_id, "ACTIVE", timeout=180)
    site.wait()
    assert site.check("cat /var/tmp/disk-marker").strip() == "kept"

    # A guest that powers itself off is a stopped VM.
    site.run("sudo systemctl poweroff", timeout=20)
    service.wait_state(instance_id, "STOPPED", timeout=120)
    assert guest_cluster.sim.vm(int(instance_id)).status == "stopped"

    # Delete: the guest, its disk and its seed are gone.
    token = service.seed_token(instance_id)
    assert seed_status(service, token) == 200
    disk = guest_cluster.sim.guests.backend.workdir / "guests" / instance_id
    assert disk.exists()
    assert service.client.delete(f"/api/instances/{instance_id}").status_code == 200
    wait_for(
        lambda: service.client.get(f"/api/instances/{instance_id}").status_code == 404,
        timeout=120,
        what="the instance to be gone",
    )
    assert int(instance_id) not in guest_cluster.sim.guests.backend.vmids()
    assert not disk.exists()
    assert seed_status(service, token) == 404


def test_a_guest_with_a_wrong_seed_token_gets_no_user_and_refuses_the_key(
    service: LiveService, guest_cluster: Any, guest_keys: dict[str, KeyPair], tmp_path: Path
) -> None:
    """A VM made by hand whose serial names a seed that does not exist: cloud-init falls back to no datasource."""
    api = pve_api(guest_cluster)
    vmid = 190500
    api.nodes("pve1").qemu(9000).clone.post(newid=vmid, name="wrong-token", full=1)
    serial = f"ds=nocloud-net;s={service.settings.seed_base_url}{'x' * 43}/"
    import base64

    encoded = base64.b64encode(serial.encode()).decode()
    api.nodes("pve1").qemu(vmid).config.put(smbios1=f"base64=1,serial={encoded}")
    api.nodes("pve1").qemu(vmid).status.start.post()
    try:
        address = wait_for(lambda: guest_address(api, vmid), timeout=120, what="the guest's DHCP address")
        ssh = GuestSSH(
            tmp_path, address, service.settings.cloud_init_user, guest_keys["site"], scanned_host_key(address)
        )
        # cloud-init's final stage wrote its result on the guest's disk: whatever it was going to set up, it has.
        result = guest_cluster.sim.guests.backend.workdir / "guests" / str(vmid) / "root/var/lib/cloud/data/result.json"
        wait_for(result.exists, timeout=120, what="cloud-init to finish in the guest")
        refused = ssh.run("true")
        assert refused.returncode == 255 and "Permission denied" in refused.stderr, refused.stderr
    finally:
        api.nodes("pve1").qemu(vmid).status.stop.post()
        wait_for(lambda: api.nodes("pve1").qemu(vmid).status.current.get()["status"] == "stopped", timeout=60)
        api.nodes("pve1").qemu(vmid).delete()


def test_a_guest_that_cannot_reach_its_seed_is_an_instance_fault_never_a_5xx(
    tmp_path_factory: pytest.TempPathFactory, guest_cluster: Any, guest_keys: dict[str, KeyPair], tmp_path: Path
) -> None:
    with socket.socket() as probe:  # a port on the gateway nothing listens on
        probe.bind((guest_cluster.guest_gateway, 0))
        port = probe.getsockname()[1]
    live = start_service(
        tmp_path_factory.mktemp("unreachable"),
        guest_cluster,
        ssh_public_keys=guest_keys["site"].public,
        address_timeout_s=180,
        # ACTIVE from its address until this long after the create: long enough to be seen on a loaded machine.
        ready_timeout_s=60,
        metadata_server=f"http://{guest_cluster.guest_gateway}:{port}/seed/",
    )
    try:
        instance_id = create(live, "VISA-INSTANCE-NOSEED", "9000", guest_keys["user"])
        states: list[str] = []

        def failed() -> dict[str, Any] | None:
            response = live.client.get(f"/api/instances/{instance_id}")
            assert response.status_code == 200, response.text
            states.append(response.json()["state"])
            return response.json() if states[-1] == "ERROR" else None

        body = wait_for(failed, timeout=240, interval=1, what="the instance to report the fault")
        assert "ACTIVE" in states and states[0] == "BUILDING", states
        assert body["fault"]["message"] == "the guest did not finish cloud-init"
        assert body["address"] in body["fault"]["details"] and "seed" in body["fault"]["details"]
        assert live.stored(instance_id).phoned_home_at is None
        ssh = GuestSSH(
            tmp_path,
            body["address"],
            live.settings.cloud_init_user,
            guest_keys["site"],
            scanned_host_key(body["address"]),
        )
        assert ssh.run("true").returncode == 255
        assert live.client.delete(f"/api/instances/{instance_id}").status_code == 200
        wait_for(lambda: live.client.get(f"/api/instances/{instance_id}").status_code == 404, timeout=120)
    finally:
        live.stop()


def guest_address(api: Any, vmid: int, node: str = "pve1") -> str | None:
    try:
        interfaces = api.nodes(node).qemu(vmid).agent("network-get-interfaces").get()["result"]
    except Exception:
        return None
    for interface in interfaces:
        for address in interface.get("ip-addresses", []):
            if address["ip-address-type"] == "ipv4" and address["ip-address"].startswith(GUEST_NETWORK_PREFIX):
                return str(address["ip-address"])
    return None


def test_ten_concurrent_creates_all_accept_ssh(
    service: LiveService, guest_keys: dict[str, KeyPair], tmp_path: Path, guest_cluster: Any
) -> None:
    ids = [create(service, f"VISA-INSTANCE-C{n}", "9000", guest_keys["user"]) for n in range(10)]
    for instance_id in ids:
        service.wait_state(instance_id, "ACTIVE", timeout=300)
    with ThreadPoolExecutor(10) as pool:
        logins = list(pool.map(lambda i: login(service, tmp_path, i, guest_keys["user"]), ids))
    addresses = {ssh.address for ssh in logins}
    assert len(addresses) == 10
    for ssh, instance_id in zip(logins, ids, strict=True):
        assert ssh.check("hostname").strip() == hostname(f"VISA-INSTANCE-C{ids.index(instance_id)}", int(instance_id))
    delete_all(service, ids)
    assert not {int(i) for i in ids} & set(guest_cluster.sim.guests.backend.vmids())


def test_the_discovery_inventory_reaches_the_guests_the_service_made(
    service: LiveService, guest_keys: dict[str, KeyPair], tmp_path: Path
) -> None:
    """`ansible -i inventory/discovery.yml visa -m ping` as an operator runs it, with the site key."""
    instance_id = create(service, "VISA-INSTANCE-DISCO", "9002", guest_keys["user"])
    service.wait_state(instance_id, "ACTIVE", timeout=240)
    ssh = login(service, tmp_path, instance_id, guest_keys["site"])
    known_hosts = ssh.known_hosts  # the pinned host key
    assert service.runtime.registry is not None
    env = {
        **os.environ,
        "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"),
        "DISCOVERY_URL": service.runtime.registry.url,
        "DISCOVERY_READ_TOKEN": READ_TOKEN,
        "DISCOVERY_TRUSTED_PROVIDERS": signing.provider_id(signing.load_key(service.settings.provider_key_path)),
        "ANSIBLE_PRIVATE_KEY_FILE": str(guest_keys["site"].private),
        "ANSIBLE_SSH_ARGS": f"-F /dev/null -o UserKnownHostsFile={known_hosts} -o StrictHostKeyChecking=yes "
        "-o IdentitiesOnly=yes",
    }
    pinged = subprocess.run(
        [
            str(Path(sys.executable).parent / "ansible"),
            "-i",
            "inventory/discovery.yml",
            "visa",
            "-m",
            "ansible.builtin.ping",
        ],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert pinged.returncode == 0, pinged.stdout + pinged.stderr
    assert "VISA-INSTANCE-DISCO | SUCCESS" in pinged.stdout and '"ping": "pong"' in pinged.stdout
    assert service.client.delete(f"/api/instances/{instance_id}").status_code == 200
    wait_for(lambda: service.client.get(f"/api/instances/{instance_id}").status_code == 404, timeout=120)


def test_create_yml_by_hand_with_a_proxmox_cloud_init_drive_gives_a_guest_to_log_in_to(
    guest_cluster: Any, guest_keys: dict[str, KeyPair], tmp_path: Path
) -> None:
    """An operator without the service: native cloud-init (ciuser, sshkeys on the VM's cloud-init drive)."""
    import yaml

    from tests.conftest import ansible_env

    variables = yaml.safe_load((ROOT / "examples" / "vm.yml").read_text())
    variables.pop("proxmox_vm_cloud_init_seed_url")
    variables |= {"proxmox_vm_vmid": 4243, "proxmox_vm_destroy_vmid": 4243, "proxmox_vm_address_timeout": 180}
    variables |= {"proxmox_vm_cloud_init_user": "alice", "proxmox_vm_cloud_init_ssh_keys": [guest_keys["user"].public]}
    extra = tmp_path / "vm.yml"
    extra.write_text(yaml.safe_dump(variables))
    binary = Path(sys.executable).parent / "ansible-playbook"

    def playbook(name: str) -> subprocess.CompletedProcess[str]:
        command = [str(binary), "-i", "inventory/hosts.yml", f"playbooks/{name}", "-e", f"@{extra}"]
        env = {k: v for k, v in ansible_env(guest_cluster).items() if not k.startswith("DISCOVERY_")}
        return subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)

    created = playbook("create.yml")
    assert created.returncode == 0, created.stdout[-3000:]
    address = wait_for(lambda: guest_address_on(guest_cluster, "pve2", 4243), timeout=60, what="the guest's address")
    ssh = GuestSSH(tmp_path, address, "alice", guest_keys["user"], scanned_host_key(address))
    ssh.wait()
    assert ssh.check("hostname").strip() == "example-vm"
    assert ssh.check("sudo -n id -un").strip() == "root"
    assert "NoCloud" in ssh.check("cloud-init status --wait --long || true")
    deleted = playbook("delete.yml")
    assert deleted.returncode == 0, deleted.stdout[-3000:]
    assert 4243 not in guest_cluster.sim.guests.backend.vmids()


def guest_address_on(guest_cluster: Any, node: str, vmid: int) -> str | None:
    return guest_address(pve_api(guest_cluster), vmid, node)


CRASHING = """
import sys, time
from pathlib import Path
from simulator.guests.backend import GuestBackend
from simulator.guests.spec import GuestSpec
backend = GuestBackend("container", Path(sys.argv[1])).open(["debian-12"])
backend.start(4321, "debian-12", GuestSpec(serial=None, uuid=None, mac="bc:24:11:00:43:21", disk_bytes=1 << 30))
print(backend.network.index, flush=True)
time.sleep(600)
"""


def test_what_a_crashed_simulator_left_is_removed_by_the_next_one(tmp_path: Path) -> None:
    require_real_guests("container")
    from simulator.guests.network import GuestNetwork

    crashed = tmp_path / "crashed"
    process = subprocess.Popen(
        [sys.executable, "-c", CRASHING, str(crashed)], stdout=subprocess.PIPE, text=True, cwd=ROOT
    )
    try:
        index = int(process.stdout.readline() if process.stdout else "")
        left = leftovers(index, crashed)
        assert {f"netns pg{index}-4321", f"link pgbr{index}", f"link pg{index}-4321"} <= set(left), left
        assert any(item.startswith("mount ") for item in left) and any("nspawn" in item for item in left), left
    finally:
        process.kill()
        process.wait()
    # Killed (no teardown ran) and reaped: nothing of the simulator is left to remove what it made.
    assert leftovers(index, crashed), "a killed simulator's guests outlive it (they run in their own session)"
    successor = GuestNetwork(tmp_path / "next").open()
    successor.close()
    assert leftovers(index, crashed) == []
