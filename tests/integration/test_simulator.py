"""The Proxmox simulator (simulator): seeding, resize, task list, durations, boot sidecar and cloud-init."""

from __future__ import annotations

import asyncio
import base64
import functools
import ipaddress
import os
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from proxmoxer import ProxmoxAPI
from proxmoxer.core import ResourceException

from simulator import SimulatorHandle, guest_ipv4, seed_cluster, start_simulator
from simulator.cloudinit import CloudInitRun, cloud_config, parse_seed
from simulator.cluster import ClusterSimulator
from simulator.properties import agent_enabled, format_size, resized
from simulator.serve import TOKEN_ID
from tests.conftest import ROOT, pve_api
from tests.conftest import wait_for as conftest_wait_for

GIB = 1024**3
Serve = Callable[..., SimulatorHandle]


# ------------------------------------------------------------------------------------------- helpers


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Serve]:
    """start_simulator(tmp_path/…, **kwargs); every simulator started is stopped after the test."""
    handles: list[SimulatorHandle] = []

    def start(**kwargs: Any) -> SimulatorHandle:
        handle = start_simulator(tmp_path / f"sim{len(handles)}", **kwargs)
        handles.append(handle)
        return handle

    yield start
    for handle in handles:
        handle.stop()


# The simulator answers fast: poll often, give up soon.
wait_for = functools.partial(conftest_wait_for, timeout=5.0, interval=0.02)


def task_done(api: ProxmoxAPI, node: str, upid: str) -> dict[str, Any]:
    def status() -> dict[str, Any] | None:
        data: dict[str, Any] = api.nodes(node).tasks(upid).status.get()
        return data if data["status"] == "stopped" else None

    result: dict[str, Any] = wait_for(status)
    return result


def clone(api: ProxmoxAPI, newid: int, template: int = 9000, node: str = "pve1") -> None:
    upid = api.nodes(node).qemu(template).clone.post(newid=newid, name=f"vm-{newid}")
    assert task_done(api, node, upid)["exitstatus"] == "OK"


def agent_address(api: ProxmoxAPI, node: str, vmid: int) -> str | None:
    try:
        answer = api.nodes(node).qemu(vmid).agent("network-get-interfaces").get()
    except ResourceException:
        return None
    eth0 = answer["result"][1]
    return next(a["ip-address"] for a in eth0["ip-addresses"] if a["ip-address-type"] == "ipv4")


def finished(handle: SimulatorHandle, vmid: int, boots: int = 1) -> CloudInitRun | None:
    """The VM's latest cloud-init run once its boot number `boots` is done, else None."""
    runs = handle.sim.cloud_init_runs(vmid)
    return runs[-1] if len(runs) >= boots and runs[-1].done else None


def smbios_with_seed(seed: str) -> str:
    serial = base64.b64encode(seed.encode()).decode()
    return f"base64=1,serial={serial},uuid=8d3a2a61-1b7b-4d44-9a39-3f5f6f6b1d10"


class SeedServer:
    """A NoCloud seed and phone_home endpoint on 127.0.0.1:<free port>, recording every request."""

    def __init__(self) -> None:
        self.files: dict[str, tuple[int, str]] = {}
        self.requests: list[tuple[str, str]] = []
        self.posts: list[tuple[str, dict[str, str]]] = []
        self.post_status = 200
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def seed(
        self,
        name: str,
        *,
        user_data: str | None = "#cloud-config\n{}\n",
        vendor_data: str = "",
        instance_id: str = "i-1",
        hostname: str = "vm-1",
    ) -> str:
        """Serve /seed/<name>/{meta-data,user-data,vendor-data} (user_data None: 404); the seed URL."""
        prefix = f"/seed/{name}/"
        self.files[prefix + "meta-data"] = (200, f"instance-id: {instance_id}\nlocal-hostname: {hostname}\n")
        if user_data is not None:
            self.files[prefix + "user-data"] = (200, user_data)
        self.files[prefix + "vendor-data"] = (200, vendor_data)
        return self.base + prefix

    def gets(self, prefix: str) -> list[str]:
        return [path for method, path in self.requests if method == "GET" and path.startswith(prefix)]

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server.requests.append(("GET", self.path))
                status, body = server.files.get(self.path, (404, "not found"))
                self._answer(status, body)

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                form = dict(urllib.parse.parse_qsl(self.rfile.read(length).decode()))
                server.requests.append(("POST", self.path))
                server.posts.append((self.path, form))
                self._answer(server.post_status, "")

            def _answer(self, status: int, body: str) -> None:
                data = body.encode()
                self.send_response(status)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def seeds() -> Iterator[SeedServer]:
    server = SeedServer()
    yield server
    server.close()


def phone_home_vendor_data(server: SeedServer) -> str:
    return (
        "#cloud-config\nusers:\n  - name: alice\nphone_home:\n"
        f"  url: {server.base}/phone/$INSTANCE_ID\n"
        "  post: [instance_id, hostname, pub_key_ed25519]\n  tries: 2\n"
    )


# ------------------------------------------------------------------------------------------- pure helpers


def test_guest_ipv4_is_in_the_test_range_unique_and_stable() -> None:
    assert guest_ipv4(100) == "198.18.0.101"
    assert guest_ipv4(70000) == "198.19.17.113"
    vmids = range(100000, 200000)
    addresses = {guest_ipv4(vmid) for vmid in vmids}
    assert len(addresses) == len(vmids)
    assert all(ipaddress.ip_address(a) in ipaddress.ip_network("198.18.0.0/15") for a in addresses)
    assert not {"198.18.0.0", "198.19.255.255"} & addresses
    assert guest_ipv4(4242) == guest_ipv4(4242)


def test_sizes_are_spelled_and_resized_like_pve() -> None:
    assert [format_size(n) for n in (20 * GIB, 3584 * 1024**2, 1536 * 1024, 17, 1024 * GIB)] == [
        "20G",
        "3584M",
        "1536K",
        "17",
        "1T",
    ]
    assert resized(3 * GIB, "20G") == 20 * GIB
    assert resized(3 * GIB, "+5G") == 8 * GIB
    assert resized(3 * GIB, "+0.5G") == 3584 * 1024**2


def test_seed_strings_and_cloud_configs_parse_as_cloud_init_reads_them() -> None:
    seed = parse_seed("ds=nocloud-net;s=http://10.0.0.1:8080/seed/abc/;h=host-1")
    assert seed is not None and seed.mode == "nocloud-net" and seed.url == "http://10.0.0.1:8080/seed/abc/"
    assert seed.file_url("meta-data") == "http://10.0.0.1:8080/seed/abc/meta-data"
    assert seed.overrides == {"local-hostname": "host-1"}
    assert parse_seed("ds=nocloud;s=http://x/")
    assert parse_seed("ds=configdrive;s=http://x/") is None
    assert parse_seed("Proxmox serial 1234") is None
    multipart = (
        "Content-Type: multipart/mixed; boundary=XX\nMIME-Version: 1.0\n\n--XX\n"
        "Content-Type: text/cloud-config\n\nphone_home: {url: 'http://h/p'}\n--XX\n"
        "Content-Type: text/x-shellscript\n\n#!/bin/sh\necho hi\n--XX--\n"
    )
    assert cloud_config(multipart) == {"phone_home": {"url": "http://h/p"}}
    assert cloud_config("#!/bin/bash\necho hi\n") == {}
    assert [agent_enabled({"agent": v}) for v in ("1", "enabled=1", "1,fstrim_cloned_disks=1", "0", 1)] == [
        True,
        True,
        True,
        False,
        True,
    ]
    assert not agent_enabled({})


# ------------------------------------------------------------------------------------------- seeding


def test_seeded_cluster_has_nodes_storages_templates_and_groups(serve: Serve) -> None:
    handle = serve()
    api = pve_api(handle)
    nodes = {n["node"]: n for n in api.nodes.get()}
    assert set(nodes) == {"pve1", "pve2"}
    assert nodes["pve1"]["maxcpu"] == 32 and nodes["pve1"]["maxmem"] == 128 * GIB
    storages = {s["storage"]: s for s in api.nodes("pve2").storage.get()}
    assert storages["local"]["type"] == "dir" and storages["local-lvm"]["type"] == "lvmthin"
    assert storages["ceph-vm"]["type"] == "rbd" and storages["ceph-vm"]["shared"] == 1
    assert storages["local-lvm"]["shared"] == 0
    templates = {r["vmid"]: r for r in api.cluster.resources.get(type="vm")}
    assert templates[9000]["name"] == "debian-12-cloud" and templates[9000]["node"] == "pve1"
    assert templates[9001]["name"] == "ubuntu-24.04-cloud" and templates[9001]["node"] == "pve2"
    assert all(t["template"] == 1 for t in templates.values())
    config = api.nodes("pve1").qemu(9000).config.get()
    assert config["scsi0"] == "ceph-vm:base-9000-disk-0,size=3G"
    assert config["net0"].startswith("virtio=") and config["net0"].endswith(",bridge=vmbr0,firewall=1")
    assert {k: config[k] for k in ("scsihw", "boot", "agent", "serial0", "vga", "ostype", "cores", "memory")} == {
        "scsihw": "virtio-scsi-pci",
        "boot": "order=scsi0",
        "agent": "enabled=1",
        "serial0": "socket",
        "vga": "serial0",
        "ostype": "l26",
        "cores": 1,
        "memory": "1024",
    }
    assert config["smbios1"].startswith("uuid=")
    assert api.nodes("pve2").qemu(9001).config.get()["scsi0"] == "ceph-vm:base-9001-disk-0,size=3584M"
    volumes = {v["volid"]: v for v in api.nodes("pve1").storage("ceph-vm").content.get()}
    assert volumes["ceph-vm:base-9000-disk-0"]["size"] == 3 * GIB
    groups = [g["group"] for g in api.cluster.firewall.groups.get()]
    assert groups == ["default", "ssh", "web"]
    assert api.cluster.firewall.groups("ssh").get()[0]["macro"] == "SSH"


def test_seed_cluster_again_adds_nothing_twice() -> None:
    sim = ClusterSimulator(host="127.0.0.1", port=0)
    seed_cluster(sim)
    seed_cluster(sim)
    assert sorted(vm.vmid for vm in sim.vms) == [9000, 9001]


def test_start_simulator_writes_ca_and_private_token(serve: Serve) -> None:
    handle = serve()
    token = Path(handle.token_file)
    assert token.read_text().strip() == handle.token_secret
    assert stat.S_IMODE(token.stat().st_mode) == 0o600
    assert Path(handle.cafile).read_text().startswith("-----BEGIN CERTIFICATE-----")
    assert handle.token_id == TOKEN_ID == "root@pam!provisioner"
    assert handle.url == f"https://127.0.0.1:{handle.port}" and handle.port > 0
    assert pve_api(handle).version.get()["version"]


# ------------------------------------------------------------------------------------- clone and resize


def test_linked_clone_copies_the_template_disk_size(serve: Serve) -> None:
    api = pve_api(serve())
    upid = api.nodes("pve2").qemu(9001).clone.post(newid=150, name="vm-150", target="pve1")
    assert ":qmclone:9001:" in upid and task_done(api, "pve2", upid)["exitstatus"] == "OK"
    config = api.nodes("pve1").qemu(150).config.get()
    assert config["scsi0"] == "ceph-vm:vm-150-disk-0,size=3584M"
    assert "template" not in config


def test_resize_grows_the_disk_in_a_resize_task(serve: Serve) -> None:
    handle = serve()
    api = pve_api(handle)
    clone(api, 101)
    upid = api.nodes("pve1").qemu(101).resize.put(disk="scsi0", size="20G")
    assert upid.startswith("UPID:pve1:") and ":resize:101:root@pam!provisioner:" in upid
    assert task_done(api, "pve1", upid)["exitstatus"] == "OK"
    assert api.nodes("pve1").qemu(101).config.get()["scsi0"] == "ceph-vm:vm-101-disk-0,size=20G"
    assert handle.sim.storages["ceph-vm"]["volumes"]["vm-101-disk-0"]["size"] == 20 * GIB
    upid = api.nodes("pve1").qemu(101).resize.put(disk="scsi0", size="+5G")
    assert task_done(api, "pve1", upid)["exitstatus"] == "OK"
    assert api.nodes("pve1").qemu(101).config.get()["scsi0"].endswith(",size=25G")
    upid = api.nodes("pve1").qemu(101).resize.put(disk="scsi0", size="25G")  # same size: OK, nothing to do
    assert task_done(api, "pve1", upid)["exitstatus"] == "OK"


def test_resize_refuses_shrinking_and_unknown_disks_in_the_task(serve: Serve) -> None:
    api = pve_api(serve())
    clone(api, 102)
    before = api.nodes("pve1").qemu(102).config.get()
    upid = api.nodes("pve1").qemu(102).resize.put(disk="scsi0", size="2G")
    assert task_done(api, "pve1", upid)["exitstatus"] == "shrinking disks is not supported"
    upid = api.nodes("pve1").qemu(102).resize.put(disk="scsi5", size="20G")
    assert task_done(api, "pve1", upid)["exitstatus"] == "disk 'scsi5' does not exist"
    assert api.nodes("pve1").qemu(102).config.get() == before
    log = [line["t"] for line in api.nodes("pve1").tasks(upid).log.get()]
    assert log[-1] == "TASK ERROR: disk 'scsi5' does not exist"


def test_resize_rejects_bad_parameters_and_unknown_vms(serve: Serve) -> None:
    api = pve_api(serve())
    clone(api, 103)
    with pytest.raises(ResourceException) as bad:
        api.nodes("pve1").qemu(103).resize.put(disk="scsi0", size="20 GB")
    assert bad.value.status_code == 400
    with pytest.raises(ResourceException) as missing:
        api.nodes("pve1").qemu(404).resize.put(disk="scsi0", size="20G")
    assert missing.value.status_code == 500


# --------------------------------------------------------------------------------- tasks and durations


def test_cluster_tasks_lists_the_real_task_log(serve: Serve) -> None:
    api = pve_api(serve(time_scale=0.01, clone_secs=50))
    upid = api.nodes("pve1").qemu(9000).clone.post(newid=110, name="vm-110")
    running = {t["upid"]: t for t in api.cluster.tasks.get()}
    assert upid in running and "status" not in running[upid]
    assert running[upid]["type"] == "qmclone" and running[upid]["tokenid"] == "provisioner"
    task_done(api, "pve1", upid)
    ended = {t["upid"]: t for t in api.cluster.tasks.get()}
    assert ended[upid]["status"] == "OK"


def test_clone_and_start_take_their_configured_time(serve: Serve) -> None:
    api = pve_api(serve(time_scale=0.01, clone_secs=50, start_secs=50))
    began = time.monotonic()
    upid = api.nodes("pve1").qemu(9000).clone.post(newid=111, name="vm-111")
    assert api.nodes("pve1").tasks(upid).status.get()["status"] == "running"
    task_done(api, "pve1", upid)
    assert time.monotonic() - began >= 0.5
    began = time.monotonic()
    upid = api.nodes("pve1").qemu(111).status.start.post()
    assert api.nodes("pve1").qemu(111).status.current.get()["status"] == "stopped"
    task_done(api, "pve1", upid)
    assert time.monotonic() - began >= 0.5
    assert api.nodes("pve1").qemu(111).status.current.get()["status"] == "running"


# ---------------------------------------------------------------------------------- boot and guest agent


def test_agent_answers_with_the_guest_address_after_boot_secs(serve: Serve) -> None:
    api = pve_api(serve(time_scale=0.01, boot_secs=50))
    clone(api, 120)
    began = time.monotonic()
    task_done(api, "pve1", api.nodes("pve1").qemu(120).status.start.post())
    assert agent_address(api, "pve1", 120) is None  # still booting: agent not running
    assert wait_for(lambda: agent_address(api, "pve1", 120)) == guest_ipv4(120)
    assert time.monotonic() - began >= 0.5
    interfaces = api.nodes("pve1").qemu(120).agent("network-get-interfaces").get()["result"]
    mac = api.nodes("pve1").qemu(120).config.get()["net0"].split(",")[0].split("=")[1]
    assert interfaces[0]["name"] == "lo" and interfaces[1]["hardware-address"] == mac.lower()


def test_stop_takes_the_agent_away_and_a_start_boots_again(serve: Serve) -> None:
    handle = serve()
    api = pve_api(handle)
    clone(api, 121)
    api.nodes("pve1").qemu(121).status.start.post()
    wait_for(lambda: agent_address(api, "pve1", 121))
    api.nodes("pve1").qemu(121).status.stop.post()
    wait_for(lambda: handle.sim.vm(121).agent is None)
    assert agent_address(api, "pve1", 121) is None
    api.nodes("pve1").qemu(121).status.start.post()
    assert wait_for(lambda: agent_address(api, "pve1", 121)) == guest_ipv4(121)
    assert handle.sim.boots[121] == 2


def test_vm_without_agent_enabled_never_gets_an_agent(serve: Serve) -> None:
    handle = serve()
    api = pve_api(handle)
    clone(api, 122)
    clone(api, 123)
    api.nodes("pve1").qemu(122).config.put(agent="enabled=0")
    api.nodes("pve1").qemu(122).status.start.post()
    api.nodes("pve1").qemu(123).status.start.post()
    # Both boots are over (an agent comes up during its boot or never), and the one that may has its agent.
    wait_for(lambda: finished(handle, 122) and finished(handle, 123) and agent_address(api, "pve1", 123))
    assert handle.sim.vm(122).agent is None and agent_address(api, "pve1", 122) is None


def test_sidecar_is_one_loop_for_hundreds_of_vms(serve: Serve) -> None:
    handle = serve()
    sim = handle.sim

    async def add_running_vms() -> None:
        for vmid in range(1000, 1300):
            sim.add_vm(vmid, f"vm-{vmid}", node="pve1", status="running", config={"agent": "1"})

    handle.call(add_running_vms())
    wait_for(lambda: all(sim.vm(vmid).agent and finished(handle, vmid) for vmid in range(1000, 1300)))

    async def tasks_left() -> int:
        return len(asyncio.all_tasks())

    assert handle.call(tasks_left()) <= 3  # the sidecar (and this coroutine); no task per VM
    assert (
        len({sim.vm(vmid).agent["interfaces"][1]["ip-addresses"][0]["ip-address"] for vmid in range(1000, 1300)}) == 300
    )


# ------------------------------------------------------------------------------------------- cloud-init


def test_boot_fetches_the_seed_and_phones_home(serve: Serve, seeds: SeedServer) -> None:
    handle = serve()
    api = pve_api(handle)
    clone(api, 130)
    url = seeds.seed("vm130", vendor_data=phone_home_vendor_data(seeds), instance_id="i-130", hostname="web-130")
    api.nodes("pve1").qemu(130).config.put(smbios1=smbios_with_seed(f"ds=nocloud-net;s={url}"))
    api.nodes("pve1").qemu(130).status.start.post()
    run = wait_for(lambda: finished(handle, 130))
    assert seeds.gets("/seed/vm130/") == ["/seed/vm130/meta-data", "/seed/vm130/user-data", "/seed/vm130/vendor-data"]
    assert run.datasource == "NoCloudNet" and run.seed_mode == "nocloud-net" and run.seed_url == url
    assert [run.status(name) for name in ("meta-data", "user-data", "vendor-data")] == [200, 200, 200]
    assert run.body("user-data") == "#cloud-config\n{}\n" and run.fetched_at is not None
    assert (run.instance_id, run.hostname) == ("i-130", "web-130")
    path, form = seeds.posts[0]
    assert path == "/phone/i-130" and run.phone_home_url == seeds.base + "/phone/i-130"
    assert set(form) == {"instance_id", "hostname", "pub_key_ed25519"}
    assert form["instance_id"] == "i-130" and form["hostname"] == "web-130"
    kind, blob, comment = form["pub_key_ed25519"].split()
    assert (kind, comment) == ("ssh-ed25519", "root@web-130") and blob.startswith("AAAA")
    assert base64.b64decode(blob)[4:15] == b"ssh-ed25519"
    assert run.phone_home_status == 200 and run.phone_home_attempts == 1
    assert wait_for(lambda: agent_address(api, "pve1", 130)) == guest_ipv4(130)
    hostname = api.nodes("pve1").qemu(130).agent("get-host-name").get()["result"]["host-name"]
    assert hostname == "web-130"


def test_user_data_404_means_datasource_none_but_the_agent_still_comes_up(serve: Serve, seeds: SeedServer) -> None:
    handle = serve()
    api = pve_api(handle)
    clone(api, 131)
    url = seeds.seed("vm131", user_data=None, vendor_data=phone_home_vendor_data(seeds))
    api.nodes("pve1").qemu(131).config.put(smbios1=smbios_with_seed(f"ds=nocloud-net;s={url}"))
    api.nodes("pve1").qemu(131).status.start.post()
    run = wait_for(lambda: finished(handle, 131))
    assert run.datasource == "None"
    assert (run.status("meta-data"), run.status("user-data"), run.status("vendor-data")) == (200, 404, None)
    assert seeds.posts == [] and run.phone_home_status is None
    assert wait_for(lambda: agent_address(api, "pve1", 131)) == guest_ipv4(131)


def test_failing_phone_home_is_retried_and_never_holds_the_agent_back(serve: Serve, seeds: SeedServer) -> None:
    handle = serve()
    api = pve_api(handle)
    clone(api, 136)
    seeds.post_status = 503
    url = seeds.seed("vm136", vendor_data=phone_home_vendor_data(seeds), instance_id="i-136")
    api.nodes("pve1").qemu(136).config.put(smbios1=smbios_with_seed(f"ds=nocloud-net;s={url}"))
    api.nodes("pve1").qemu(136).status.start.post()
    run = wait_for(lambda: finished(handle, 136))
    assert run.datasource == "NoCloudNet" and run.phone_home_status == 503 and run.phone_home_attempts == 2
    assert [path for path, _form in seeds.posts] == ["/phone/i-136"] * 2  # tries: 2
    assert agent_address(api, "pve1", 136) == guest_ipv4(136)


def test_unreachable_seed_is_recorded_as_datasource_none(serve: Serve) -> None:
    handle = serve()
    api = pve_api(handle)
    clone(api, 132)
    with socket.socket() as probe:  # a port nothing listens on once the probe closes
        probe.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{probe.getsockname()[1]}"
    api.nodes("pve1").qemu(132).config.put(smbios1=smbios_with_seed(f"ds=nocloud-net;s={dead}/seed/x/"))
    api.nodes("pve1").qemu(132).status.start.post()
    run = wait_for(lambda: finished(handle, 132))
    assert run.datasource == "None" and run.status("meta-data") is None and run.files["meta-data"].error
    assert wait_for(lambda: agent_address(api, "pve1", 132))


def test_ds_nocloud_fetches_the_seed_but_never_applies_it(serve: Serve, seeds: SeedServer) -> None:
    handle = serve()
    api = pve_api(handle)
    clone(api, 133)
    url = seeds.seed("vm133", vendor_data=phone_home_vendor_data(seeds))
    api.nodes("pve1").qemu(133).config.put(smbios1=smbios_with_seed(f"ds=nocloud;s={url}"))
    api.nodes("pve1").qemu(133).status.start.post()
    run = wait_for(lambda: finished(handle, 133))
    assert len(seeds.gets("/seed/vm133/")) == 3 and run.seed_mode == "nocloud"
    assert run.datasource == "None" and seeds.posts == []


def test_every_boot_fetches_the_seed_again(serve: Serve, seeds: SeedServer) -> None:
    handle = serve()
    api = pve_api(handle)
    clone(api, 134)
    url = seeds.seed("vm134", vendor_data=phone_home_vendor_data(seeds), instance_id="i-134")
    api.nodes("pve1").qemu(134).config.put(smbios1=smbios_with_seed(f"ds=nocloud-net;s={url}"))
    api.nodes("pve1").qemu(134).status.start.post()
    wait_for(lambda: finished(handle, 134))
    task_done(api, "pve1", api.nodes("pve1").qemu(134).status.reboot.post())
    wait_for(lambda: finished(handle, 134, boots=2))
    runs = handle.sim.cloud_init_runs(134)
    assert [r.boot for r in runs] == [1, 2] and all(r.datasource == "NoCloudNet" for r in runs)
    assert seeds.gets("/seed/vm134/meta-data") == ["/seed/vm134/meta-data"] * 2
    assert [path for path, _form in seeds.posts] == ["/phone/i-134"] * 2
    assert seeds.posts[0][1]["pub_key_ed25519"] == seeds.posts[1][1]["pub_key_ed25519"]  # same instance, same key
    assert wait_for(lambda: agent_address(api, "pve1", 134)) == guest_ipv4(134)


def test_reboot_takes_the_agent_away_until_the_guest_is_up_again(serve: Serve) -> None:
    handle = serve(time_scale=0.01, boot_secs=50)
    api = pve_api(handle)
    clone(api, 135)
    api.nodes("pve1").qemu(135).status.start.post()
    wait_for(lambda: agent_address(api, "pve1", 135))
    task_done(api, "pve1", api.nodes("pve1").qemu(135).status.reboot.post())
    wait_for(lambda: handle.sim.vm(135).agent is None)
    assert wait_for(lambda: agent_address(api, "pve1", 135)) == guest_ipv4(135)
    assert handle.sim.boots[135] == 2


# ----------------------------------------------------------------------------------------------------- CLI


def test_cli_serves_until_sigterm_and_keeps_the_secret_off_stdout(tmp_path: Path) -> None:
    state = tmp_path / "state"
    process = subprocess.Popen(
        [sys.executable, "-m", "simulator", "--state-dir", str(state), "--port", "0", "--time-scale", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    try:
        assert process.stdout is not None
        lines = [process.stdout.readline() for _ in range(5)]
        url = next(line.split(": ", 1)[1].strip() for line in lines if line.startswith("url: "))
        secret = (state / "token").read_text().strip()
        assert stat.S_IMODE((state / "token").stat().st_mode) == 0o600
        host, port = urllib.parse.urlsplit(url).hostname, urllib.parse.urlsplit(url).port
        api = ProxmoxAPI(
            host,
            port=port,
            user="root@pam",
            token_name="provisioner",
            token_value=secret,
            verify_ssl=str(state / "simulator.crt"),
        )
        assert {n["node"] for n in api.nodes.get()} == {"pve1", "pve2"}
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=30)
        assert process.returncode == 0
        assert secret not in "".join(lines) + out + err
    finally:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
            process.wait()
