"""The real-guest backend's pure parts: host checks, image recipes, Proxmox cloud-init drives, agent answers,
subnets and link names. No root needed."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest
import yaml

from simulator.guests import cidrive, images, network, system
from simulator.guests.spec import agent_interfaces
from simulator.identity import guest_spec
from simulator.serve import parse_forward


def test_a_host_without_the_tools_is_refused_in_one_line_naming_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(system.os, "geteuid", lambda: 1000)
    monkeypatch.setattr(system.shutil, "which", lambda command: None if command in ("dnsmasq", "mmdebstrap") else "/x")
    with pytest.raises(system.GuestsUnavailable) as refused:
        system.require("container")
    message = str(refused.value)
    assert "\n" not in message
    assert "root" in message and "mmdebstrap" in message and "dnsmasq" in message
    assert "apt-get install --no-install-recommends mmdebstrap dnsmasq-base" in message
    assert "make guest-deps" in message and "PROVISIONER_SIM_GUESTS=none" in message


def test_qemu_guests_need_qemu_and_genisoimage(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(system.os, "geteuid", lambda: 0)
    monkeypatch.setattr(system.shutil, "which", lambda command: None if command.startswith(("qemu", "gen")) else "/x")
    lacking, packages = system.missing("vm")
    assert lacking == ["qemu-system-x86_64", "qemu-img", "genisoimage"]
    assert packages == ["qemu-system-x86", "qemu-utils", "genisoimage"]
    assert system.missing("container") == ([], [])


def test_image_recipes_are_keyed_by_everything_that_goes_into_them() -> None:
    bookworm, trixie = images.recipe("debian-12", "container"), images.recipe("debian-13", "container")
    vm = images.recipe("debian-12", "vm")
    assert bookworm.key == images.recipe("debian-12", "container").key  # stable
    assert len({bookworm.key, trixie.key, vm.key}) == 3
    assert {"cloud-init", "openssh-server", "sudo", "locales"} <= set(bookworm.packages)
    assert "isc-dhcp-client" in bookworm.packages and "netplan.io" in trixie.packages
    assert {"qemu-guest-agent", "linux-image-cloud-amd64"} <= set(vm.packages)
    assert "qemu-guest-agent" not in bookworm.packages
    assert bookworm.dirname.startswith("debian-12-container-")
    with pytest.raises(ValueError, match="no guest image recipe named 'centos'"):
        images.recipe("centos", "container")


def test_a_cached_image_is_found_only_once_complete(tmp_path: Path) -> None:
    recipe = images.recipe("debian-12", "container")
    assert images.cached(recipe, tmp_path) is None
    (tmp_path / recipe.dirname).mkdir()
    assert images.cached(recipe, tmp_path) is None  # an interrupted build
    (tmp_path / recipe.dirname / images.READY).write_text("{}")
    found = images.cached(recipe, tmp_path)
    assert found is not None and found.rootfs == tmp_path / recipe.dirname / "rootfs"
    assert images.ensure(recipe, tmp_path) == found  # nothing to build


CONFIG = {
    "name": "web-1",
    "ciuser": "alice",
    "sshkeys": "ssh-ed25519%20AAAAC3NzaC1lZDI1NTE5AAAAIBfw%20a%40x%0A"
    "ssh-ed25519%20AAAAC3NzaC1lZDI1NTE5AAAAIHVm%20b%40y",
    "ipconfig0": "ip=192.0.2.10/24,gw=192.0.2.1",
    "nameserver": "192.0.2.53",
    "searchdomain": "example.org",
    "net0": "virtio=BC:24:11:AA:BB:CC,bridge=vmbr0,firewall=1",
    "ide2": "ceph-vm:vm-4242-cloudinit,media=cdrom",
    "smbios1": "uuid=5b0c1a52-1f6e-4f57-9a43-2f6f1c0ad3a1",
}


def test_the_cloud_init_drive_holds_what_qemu_server_generates() -> None:
    files = cidrive.documents(CONFIG, 4242)
    assert files is not None and set(files) == {"meta-data", "user-data", "network-config"}
    user = yaml.safe_load(files["user-data"])
    assert files["user-data"].startswith("#cloud-config\n")
    assert user["hostname"] == "web-1" and user["fqdn"] == "web-1.example.org" and user["user"] == "alice"
    assert user["ssh_authorized_keys"] == [
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBfw a@x",
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHVm b@y",
    ]
    assert user["users"] == ["default"] and user["package_upgrade"] is True
    net = yaml.safe_load(files["network-config"])
    assert net == {
        "version": 1,
        "config": [
            {
                "type": "physical",
                "name": "eth0",
                "mac_address": "bc:24:11:aa:bb:cc",
                "subnets": [
                    {"type": "static", "address": "192.0.2.10", "netmask": "255.255.255.0", "gateway": "192.0.2.1"}
                ],
            },
            {"type": "nameserver", "address": ["192.0.2.53"], "search": ["example.org"]},
        ],
    }
    assert yaml.safe_load(files["meta-data"])["instance-id"] == cidrive.documents(CONFIG, 4242)["meta-data"][13:-1]
    changed = cidrive.documents(CONFIG | {"ciuser": "bob"}, 4242)
    assert changed is not None and changed["meta-data"] != files["meta-data"]  # a new instance for cloud-init
    assert cidrive.documents({k: v for k, v in CONFIG.items() if k != "ide2"}, 4242) is None
    dhcp = yaml.safe_load(cidrive.documents(CONFIG | {"ipconfig0": "ip=dhcp,ip6=auto"}, 4242)["network-config"])
    assert dhcp["config"][0]["subnets"] == [{"type": "dhcp4"}, {"type": "ipv6_slaac"}]
    no_upgrade = yaml.safe_load(cidrive.documents(CONFIG | {"ciupgrade": 0}, 4242)["user-data"])
    assert "package_upgrade" not in no_upgrade


def test_a_container_finds_the_drive_in_its_seed_directory_matched_by_name(tmp_path: Path) -> None:
    files = cidrive.documents(CONFIG, 4242)
    assert files is not None
    cidrive.write_seed_dir(tmp_path, files)
    seed = tmp_path / cidrive.SEED_DIR
    assert (seed / "user-data").read_text() == files["user-data"]
    net = yaml.safe_load((seed / "network-config").read_text())
    assert "mac_address" not in net["config"][0] and net["config"][0]["name"] == "eth0"
    cidrive.remove_seed_dir(tmp_path)
    assert list(seed.iterdir()) == []


def test_the_guest_spec_comes_from_the_vm_config() -> None:
    import base64

    from fakepve import FakeVm

    serial = "ds=nocloud-net;s=http://198.18.3.1:4000/seed/tok/"
    vm = FakeVm(100, "web-1")
    vm.config = CONFIG | {
        "smbios1": f"base64=1,serial={base64.b64encode(serial.encode()).decode()},uuid=5b0c1a52",
        "scsi0": "ceph-vm:vm-100-disk-0,size=20G",
        "boot": "order=scsi0",
        "cores": 2,
        "memory": 2048,
    }
    spec = guest_spec(vm)
    assert (spec.serial, spec.uuid, spec.mac) == (serial, "5b0c1a52", "bc:24:11:aa:bb:cc")
    assert (spec.disk_bytes, spec.cores, spec.memory_mb) == (20 * 1024**3, 2, 2048)
    assert spec.cloud_init is not None
    vm.config["smbios1"] = "base64=1,serial=%%%"
    assert guest_spec(vm).serial is None  # a serial that does not decode reaches no guest


def test_the_agent_answers_what_ip_reports() -> None:
    links = [
        {
            "ifname": "lo",
            "address": "00:00:00:00:00:00",
            "addr_info": [{"family": "inet", "local": "127.0.0.1", "prefixlen": 8}],
        },
        {
            "ifname": "eth0",
            "address": "bc:24:11:aa:bb:cc",
            "addr_info": [
                {"family": "inet", "local": "198.18.3.57", "prefixlen": 24},
                {"family": "inet6", "local": "fe80::be24:11ff:feaa:bbcc", "prefixlen": 64},
            ],
        },
        {"ifname": "eth1", "address": "bc:24:11:aa:bb:cd", "addr_info": []},
    ]
    assert agent_interfaces(links) == [
        {
            "name": "lo",
            "hardware-address": "00:00:00:00:00:00",
            "ip-addresses": [{"ip-address": "127.0.0.1", "ip-address-type": "ipv4", "prefix": 8}],
        },
        {
            "name": "eth0",
            "hardware-address": "bc:24:11:aa:bb:cc",
            "ip-addresses": [
                {"ip-address": "198.18.3.57", "ip-address-type": "ipv4", "prefix": 24},
                {"ip-address": "fe80::be24:11ff:feaa:bbcc", "ip-address-type": "ipv6", "prefix": 64},
            ],
        },
        {"name": "eth1", "hardware-address": "bc:24:11:aa:bb:cd", "ip-addresses": []},
    ]


def test_subnets_are_disjoint_24s_of_the_test_range_and_link_names_fit() -> None:
    nets = [network.subnet(i) for i in range(network.SUBNETS)]
    assert nets[0] == ipaddress.ip_network("198.18.0.0/24") and nets[-1] == ipaddress.ip_network("198.19.255.0/24")
    assert all(n.subnet_of(network.TEST_RANGE) for n in nets) and len(set(nets)) == network.SUBNETS
    net = network.GuestNetwork(Path("/nonexistent"))
    net.record = network.Record(511, "/nonexistent", 1)
    assert net.link_name(999999999) == "pg511-999999999" and net.gateway == "198.19.255.1"
    with pytest.raises(ValueError, match="too long"):
        net.link_name(9999999999)


def test_expose_takes_port_equals_host_colon_port() -> None:
    assert parse_forward("8642=127.0.0.1:8643") == (8642, "127.0.0.1", 8643)
    for bad in ("8642", "x=127.0.0.1:1", "1=127.0.0.1", "1=:2"):
        with pytest.raises(ValueError):
            parse_forward(bad)
