"""provisioner.proxmox.vm: its parts' decisions (pure functions) and its plan (the module against the simulator:
tests/integration/test_vm_module_simulator.py)."""

from __future__ import annotations

from typing import Any

import yaml
from ansible_collections.community.proxmox.plugins.module_utils.proxmox import proxmox_auth_argument_spec
from ansible_collections.provisioner.proxmox.plugins.module_utils import (
    vm_address,
    vm_checks,
    vm_config,
    vm_disk,
    vm_firewall,
    vm_seed,
)
from ansible_collections.provisioner.proxmox.plugins.module_utils.vm_plan import Change, carry_out
from ansible_collections.provisioner.proxmox.plugins.modules import vm as vm_module

from tests.conftest import SITE_KEY, USER_KEY

# --------------------------------------------------------------------------------------- decisions


def params(**overrides: Any) -> dict[str, Any]:
    values = dict.fromkeys(("name", "template_vmid", "template_node", "cores", "memory_mb", "disk_gb", "tags"))
    values.update(
        dict.fromkeys(("cloud_init_user", "cloud_init_ssh_keys", "cloud_init_ipconfig0", "cloud_init_nameserver"))
    )
    values.update(cloud_init_drive="ide2", cloud_init_drive_storage=None)
    values.update(
        vmid=4600,
        node="pve1",
        disk="scsi0",
        description=None,
        agent=None,
        cloud_init_seed_url=None,
        cloud_init_datasource="nocloud-net",
        remove_cloud_init_drives=False,
        firewall_groups=[],
        firewall_groups_absent=[],
        state="present",
        force=False,
        wait_for_address=False,
    )
    values.update(overrides)
    return values


def test_input_problems_name_every_bad_value_at_once():
    problems = vm_checks.input_problems(
        params(vmid=99, name="bad_name", cores=0, memory_mb=8, disk_gb=0, disk="hda", cloud_init_seed_url="ftp://x")
    )
    assert problems == [
        "vmid must be between 100 and 999999999 (got 99)",
        "name 'bad_name' is not a valid DNS name",
        "cores must be at least 1 (got 0)",
        "memory_mb must be at least 16 (got 8)",
        "disk_gb must be at least 1 (got 0)",
        "disk 'hda' is not a disk key such as scsi0",
        "cloud_init_seed_url must be an http(s) URL ending in '/' without ';', ',' or spaces",
    ]
    assert vm_checks.input_problems(params(firewall_groups=["ssh"], firewall_groups_absent=["ssh"])) == [
        "groups both wanted and unwanted: ssh"
    ]
    assert vm_checks.input_problems(params(name="VISA-INSTANCE-42", cores=1, memory_mb=16, disk_gb=1)) == []


def test_cluster_problems_refuse_foreign_vmids_and_wrong_templates():
    nodes = {"pve1": {"status": "online"}, "pve2": {"status": "offline"}}
    guests = {
        4600: {"vmid": 4600, "type": "lxc", "name": "ct", "node": "pve1"},
        9000: {"vmid": 9000, "type": "qemu", "name": "tpl", "node": "pve1", "template": 1},
        9100: {"vmid": 9100, "type": "qemu", "name": "plain", "node": "pve1"},
    }
    taken = vm_checks.cluster_problems(params(name="mine"), guests, nodes, [])
    assert taken == ["VMID 4600 is lxc 'ct' on node pve1, not VM 'mine' on node pve1; refusing to adopt it"]
    fresh = params(vmid=4601, name="mine", template_vmid=9100, template_node="pve1", node="pve2")
    assert vm_checks.cluster_problems(fresh, guests, nodes, ["ssh"]) == [
        "node pve2 is not online (status offline)",
        "guest 9100 (plain) is not a QEMU template",
    ]
    elsewhere = params(vmid=4601, name="mine", template_vmid=9000, template_node="pve2", firewall_groups=["db", "x"])
    assert vm_checks.cluster_problems(elsewhere, guests, nodes, ["ssh"]) == [
        "template 9000 is on node pve1, not on pve2",
        "unknown firewall security groups db, x (the cluster has: ssh)",
    ]
    assert vm_checks.cluster_problems(params(vmid=4601, node="pve9"), guests, nodes, [])[0].startswith(
        "node 'pve9' is not a node of the cluster (nodes: pve1, pve2)"
    )


def test_config_changes_send_only_what_differs():
    config = {
        "name": "module-test",
        "cores": 2,
        "memory": "1024",
        "tags": "test;provisioner",
        "agent": "0,fstrim_cloned_disks=1",
        "smbios1": "uuid=abcd",
        "ide2": "ceph-vm:vm-4600-cloudinit,media=cdrom",
        "ide0": "none,media=cdrom",
        "scsi0": "ceph-vm:vm-4600-disk-0,size=3G",
    }
    p = params(
        name="module-test",
        cores=2,
        memory_mb=2048,
        tags=["provisioner", "test"],
        agent=True,
        remove_cloud_init_drives=True,
    )
    updates, deletes = vm_config.update(p, config, "c2VyaWFs")
    assert updates == {
        "memory": 2048,
        "agent": "enabled=1,fstrim_cloned_disks=1",
        "smbios1": "base64=1,serial=c2VyaWFs,uuid=abcd",
    }
    assert deletes == ["ide2"]
    converged = dict(config, memory="2048", agent="enabled=1", smbios1="base64=1,serial=c2VyaWFs,uuid=abcd")
    del converged["ide2"]
    assert vm_config.update(p, converged, "c2VyaWFs") == ({}, [])


def test_ssh_keys_are_checked_like_the_service_checks_them():
    from engine.sshkeys import InvalidSSHKey, normalise_key

    def service_accepts(key: str) -> bool:
        try:
            normalise_key(key)
        except InvalidSSHKey:
            return False
        return True

    ed25519_blob = SITE_KEY.split()[1]
    corpus = [
        SITE_KEY,
        USER_KEY,
        f"ssh-ed25519 {ed25519_blob}",
        f"ssh-rsa {ed25519_blob} type inside the blob differs",
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAA",
        "ssh-ed25519 not-base64!",
        "ssh-dss AAAAB3NzaC1kc3MAAACBAP",
        "ssh-ed25519",
        "",
    ]
    for key in corpus:
        assert (vm_seed.ssh_key_problem(key) is None) == service_accepts(key), key


def test_disk_sizes_are_compared_in_bytes():
    assert vm_disk.disk_bytes("ceph-vm:vm-1-disk-0,size=3584M") == 3584 << 20
    assert vm_disk.disk_bytes("local:vm-1-disk-0,cache=none,size=8G,ssd=1") == 8 << 30
    assert vm_disk.disk_bytes("local:vm-1-disk-0") == -1
    assert vm_disk.size_label(3584 << 20) == "3584M"


def test_firewall_plan_enables_adds_and_deletes_group_rules_only():
    rules = [
        {"pos": 0, "type": "in", "action": "ACCEPT", "enable": 1},
        {"pos": 1, "type": "group", "action": "ssh", "enable": 0},
        {"pos": 2, "type": "group", "action": "default", "enable": 1},
        {"pos": 3, "type": "group", "action": "old", "enable": 1},
        {"pos": 4, "type": "group", "action": "old"},
    ]
    assert vm_firewall.plan(rules, ["ssh", "default", "web", "web"], ["old"]) == (["web"], [1], [4, 3])
    assert vm_firewall.plan(rules, ["default"], []) == ([], [], [])


def test_first_ipv4_skips_loopback_and_link_local():
    interfaces = [
        {"name": "lo", "ip-addresses": [{"ip-address-type": "ipv4", "ip-address": "127.0.0.1"}]},
        {
            "name": "eth0",
            "ip-addresses": [
                {"ip-address-type": "ipv6", "ip-address": "fe80::1"},
                {"ip-address-type": "ipv4", "ip-address": "169.254.3.4"},
                {"ip-address-type": "ipv4", "ip-address": "10.1.2.3"},
            ],
        },
    ]
    assert vm_address.first_ipv4(interfaces) == "10.1.2.3"
    assert vm_address.first_ipv4([]) is None


def test_the_documentation_parses_and_names_every_option():
    documented = yaml.safe_load(vm_module.DOCUMENTATION)["options"]
    own = set(vm_module.ARGUMENT_SPEC) - set(proxmox_auth_argument_spec())  # the doc fragment's
    assert own == set(documented)
    for option, spec in documented.items():
        assert spec["type"] == vm_module.ARGUMENT_SPEC[option]["type"], option
        assert spec.get("default") == vm_module.ARGUMENT_SPEC[option].get("default"), option
    assert yaml.safe_load(vm_module.EXAMPLES) and set(yaml.safe_load(vm_module.RETURN)) == {
        "vmid",
        "node",
        "changes",
        "status",
        "address",
        "retries",
    }


class NothingToRead:
    """A VM whose reads fail the test: a part that was not asked for must not look at the VM."""

    def read_config(self) -> dict[str, Any]:
        raise AssertionError("read the config")

    def read_firewall_rules(self) -> list[dict[str, Any]]:
        raise AssertionError("read the firewall rules")


class RulesOnly(NothingToRead):
    def read_firewall_rules(self) -> list[dict[str, Any]]:
        return [{"pos": 0, "type": "group", "action": "web", "enable": 1}]


def test_a_power_only_call_reads_and_plans_nothing_but_the_power_state():
    power_only = params(state="started")
    assert vm_module.observe(NothingToRead(), power_only, from_template=False) == (None, None)
    changes, status = vm_module.plan(NothingToRead(), power_only, None, None, "stopped")
    assert [c.label for c in changes] == ["start"] and status == "running"
    assert vm_module.plan(NothingToRead(), power_only, None, None, "running")[0] == []


def test_a_firewall_only_call_reads_the_rules_and_plans_only_them():
    firewall_only = params(firewall_groups=["ssh"], firewall_groups_absent=["web"])
    config, rules = vm_module.observe(RulesOnly(), firewall_only, from_template=False)
    assert config is None and rules == RulesOnly().read_firewall_rules()
    changes, status = vm_module.plan(RulesOnly(), firewall_only, config, rules, "running")
    assert [c.label for c in changes] == ["delete the firewall group rules at 0", "add firewall groups ssh"]
    assert status == "running"


def test_the_agent_option_is_left_alone_unless_asked_for():
    config = {"cores": 2, "agent": "0", "scsi0": "ceph-vm:vm-4600-disk-0,size=3G"}
    assert vm_config.update(params(cores=2, disk_gb=3), config, None) == ({}, [])
    assert vm_config.update(params(cores=2, agent=True), config, None) == ({"agent": "enabled=1"}, [])


def test_check_mode_reports_the_planned_changes_and_applies_none():
    applied: list[str] = []
    changes = [Change("first", lambda: applied.append("first")), Change("second", lambda: applied.append("second"))]
    reported: list[str] = []
    carry_out(changes, True, reported)
    assert reported == ["first", "second"] and applied == []
    done: list[str] = []
    carry_out(changes, False, done)
    assert done == reported and applied == ["first", "second"]
