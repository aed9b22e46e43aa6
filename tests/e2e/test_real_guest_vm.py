"""One real QEMU guest (TCG, Debian 12) behind the simulator: the SMBIOS serial path and the real guest agent.

The container guests cannot show these two: cloud-init ignores DMI inside a container, and a container has no
qemu-guest-agent. Here the VM's smbios1 serial reaches cloud-init as QEMU's SMBIOS type 1 serial, and the address
VISA gets comes from qemu-ga's guest-network-get-interfaces over its virtio-serial port. It takes one to two minutes
of a core (no KVM here), so there is exactly one.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import LiveService, leftovers, pve_api, require_real_guests, start_service, wait_for
from tests.helpers.guest_ssh import KeyPair
from tests.helpers.real_guests import create, login

pytestmark = [
    pytest.mark.slow,
    pytest.mark.real_guest,
    pytest.mark.real_guest_vm,
    pytest.mark.xdist_group("real_guests"),
]
BOOT_TIMEOUT = 600  # TCG: a boot to SSH took 40-50 s alone, more beside other work


@pytest.fixture(scope="module")
def vm_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    require_real_guests("vm")
    from simulator import start_simulator

    state = tmp_path_factory.mktemp("simulator")
    handle = start_simulator(state, time_scale=0, guests="vm", guest_images=["debian-12"])
    index = handle.sim.guests.backend.network.index
    yield handle
    handle.stop()
    assert leftovers(index, state) == []


def test_a_qemu_guest_takes_its_seed_from_the_smbios_serial_and_reports_through_its_agent(
    vm_cluster: Any, tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    keys = KeyPair.generate(tmp_path, "site")
    live: LiveService = start_service(
        tmp_path_factory.mktemp("service"),
        vm_cluster,
        ssh_public_keys=keys.public,
        address_timeout_s=BOOT_TIMEOUT,
        job_timeout_s=2 * BOOT_TIMEOUT,
    )
    try:
        instance_id = create(live, "VISA-INSTANCE-QEMU", "9000", keys)
        active = live.wait_state(instance_id, "ACTIVE", timeout=BOOT_TIMEOUT)
        ssh = login(live, tmp_path, instance_id, keys, timeout=BOOT_TIMEOUT)

        vm = vm_cluster.sim.vm(int(instance_id))
        smbios = dict(part.split("=", 1) for part in vm.config["smbios1"].split(",") if "=" in part)
        serial = base64.b64decode(smbios["serial"]).decode()
        assert ssh.check("sudo cat /sys/class/dmi/id/product_serial").strip() == serial
        assert ssh.check("sudo cat /sys/class/dmi/id/product_uuid").strip().lower() == smbios["uuid"].lower()
        assert ssh.check("systemd-detect-virt").strip() == "qemu"
        status = ssh.run("cloud-init status --wait --long")
        assert status.returncode in (0, 2) and "dmi" in status.stdout, status.stdout
        assert ssh.check("cat /var/tmp/bootcommand.out").split() == ["owner=alice", "uid=0"]

        assert ssh.check("systemctl is-active qemu-guest-agent").strip() == "active"
        inside = ssh.check("ip -4 -o addr show scope global").split()
        assert f"{active['address']}/24" in inside
        reported = guest_agent_interfaces(vm_cluster, vm.node, int(instance_id))  # qemu-ga's answer, via PVE's API
        names_inside = set(ssh.check("ls /sys/class/net").split())
        assert {i["name"] for i in reported} == names_inside and "eth0" not in names_inside  # a VM's NIC names
        assert any(a["ip-address"] == active["address"] for i in reported for a in i.get("ip-addresses", []))

        assert live.client.delete(f"/api/instances/{instance_id}").status_code == 200
        wait_for(lambda: live.client.get(f"/api/instances/{instance_id}").status_code == 404, timeout=180)
        assert int(instance_id) not in vm_cluster.sim.guests.backend.vmids()
        assert live.stored(instance_id).lifecycle == "deleted"
    finally:
        live.stop()


def guest_agent_interfaces(cluster: Any, node: str, vmid: int) -> list[dict[str, Any]]:
    return list(pve_api(cluster).nodes(node).qemu(vmid).agent("network-get-interfaces").get()["result"])
