"""Pure-logic units: naming, SSH keys, cloud-init documents, placement, state mapping, redaction, flavours."""

from __future__ import annotations

import base64
import struct
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from engine import cloudinit
from engine.flavours import FlavourFileError, read_flavour_file
from engine.jobs.kinds import DELETE_FAULT
from engine.jobs.redact import MASK, Redactor
from engine.models import Instance, Lifecycle, utcnow
from engine.naming import hostname, vm_name
from engine.placement import GiB, NoCapacity, Request, Reservation, choose_node, node_loads
from engine.proxmox import NodeInfo, Snapshot, VmInfo, disk_storages, first_global_ipv4
from engine.service import InstanceView
from engine.sshkeys import SK_ECDSA, SK_ED25519, InvalidSSHKey, normalise_key, site_keys
from tests.conftest import ROOT
from web_provider.routes import instance_out
from web_provider.schemas import iso
from web_provider.states import VisaState, visa_state

ED25519 = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHVmPnHqL3iOx0hB3fm4tJq0pS0KyfHlLQ0n8Qd3JYJb alice@example.org"


def test_vm_name_is_dns_safe_and_keeps_valid_names():
    assert vm_name("VISA-INSTANCE-42", 100) == "VISA-INSTANCE-42"
    assert vm_name("VISA_INSTANCE_42", 100) == "VISA-INSTANCE-42"
    assert vm_name("__", 123) == "vm-123"
    assert len(vm_name("x" * 100, 1)) == 63
    assert hostname("VISA-INSTANCE-42", 1) == "visa-instance-42"


def test_normalise_key_accepts_a_valid_key_and_rejects_garbage():
    assert normalise_key("  " + ED25519.replace(" ", "   ") + "\n") == ED25519
    for bad in (
        "",
        "ssh-ed25519",
        "ssh-dss AAAA",
        "ssh-ed25519 notbase64!!",
        ED25519 + "\n" + ED25519,
        "ssh-rsa AAAAC3NzaC1lZDI1NTE5AAAAIHVmPnHqL3iOx0hB3fm4tJq0pS0KyfHlLQ0n8Qd3JYJb",
    ):
        with pytest.raises(InvalidSSHKey):
            normalise_key(bad)


def test_rsa_keys_need_2048_bits():
    def rsa_key(bits: int) -> str:
        public = rsa.generate_private_key(public_exponent=65537, key_size=bits).public_key()
        return public.public_bytes(Encoding.OpenSSH, PublicFormat.OpenSSH).decode() + " someone@example.org"

    strong = rsa_key(2048)
    assert normalise_key(strong) == strong
    for weak in (rsa_key(1024), rsa_key(2047)):
        with pytest.raises(InvalidSSHKey, match="at least 2048 bits"):
            normalise_key(weak)


def ssh_key(key_type: str, *fields: bytes) -> str:
    """An OpenSSH public key line whose blob is these SSH wire-format strings."""
    blob = b"".join(struct.pack(">I", len(field)) + field for field in fields)
    return f"{key_type} {base64.b64encode(blob).decode()} fido@example.org"


def test_security_keys_are_checked_by_their_wire_format():
    ed = Ed25519PrivateKey.generate().public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    p256 = ec.generate_private_key(ec.SECP256R1()).public_key()
    point = p256.public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
    compressed = p256.public_bytes(Encoding.X962, PublicFormat.CompressedPoint)
    off_curve = point[:-1] + bytes([point[-1] ^ 1])
    for good in (
        ssh_key(SK_ED25519, SK_ED25519.encode(), ed, b"ssh:"),
        ssh_key(SK_ECDSA, SK_ECDSA.encode(), b"nistp256", point, b"ssh:example.org"),
    ):
        assert normalise_key(good) == good
    for bad in (
        ssh_key(SK_ED25519, b"ssh-ed25519", ed, b"ssh:"),  # another type inside
        ssh_key(SK_ED25519, SK_ED25519.encode(), ed[:31], b"ssh:"),
        ssh_key(SK_ED25519, SK_ED25519.encode(), ed, b"web:"),
        ssh_key(SK_ED25519, SK_ED25519.encode(), ed),  # no application
        ssh_key(SK_ED25519, SK_ED25519.encode(), ed, b"ssh:", b"trailing"),
        ssh_key(SK_ECDSA, SK_ED25519.encode(), b"nistp256", point, b"ssh:"),
        ssh_key(SK_ECDSA, SK_ECDSA.encode(), b"nistp384", point, b"ssh:"),
        ssh_key(SK_ECDSA, SK_ECDSA.encode(), b"nistp256", off_curve, b"ssh:"),
        ssh_key(SK_ECDSA, SK_ECDSA.encode(), b"nistp256", compressed, b"ssh:"),
        ssh_key(SK_ECDSA, SK_ECDSA.encode(), b"nistp256", b"", b"ssh:"),
        f"{SK_ED25519} AAAA",
        f"{SK_ED25519} AAAAGnNrLXNzaC1lZDI1NTE5QG9wZW5zc2guY29t",  # the type string only
        f"{SK_ED25519} {base64.b64encode(struct.pack('>I', 99) + SK_ED25519.encode()).decode()}",  # truncated
        f"{SK_ECDSA} notbase64!!",
    ):
        with pytest.raises(InvalidSSHKey, match="malformed"):
            normalise_key(bad)


def test_site_keys_reads_inline_and_files_and_deduplicates(tmp_path: Path):
    keyfile = tmp_path / "keys.pub"
    keyfile.write_text(f"# site keys\n{ED25519}\n", encoding="utf-8")
    assert site_keys(ED25519, str(keyfile)) == [ED25519]
    with pytest.raises(InvalidSSHKey, match="#2"):
        site_keys(f"{ED25519};ssh-ed25519 broken", "")


def _ctx(**overrides: object) -> cloudinit.SeedContext:
    values: dict[str, object] = {
        "instance_id": "iid-1",
        "hostname": "visa-instance-1",
        "user": "visa",
        "ssh_keys": [ED25519],
        "metadata": {"owner": "bob", "instruments": ""},
        "boot_command": None,
        "phone_home_url": "http://seed/tok/phone-home",
        "project_id": "prod",
    }
    values.update(overrides)
    return cloudinit.SeedContext(**values)  # type: ignore[arg-type]


def test_seed_documents_have_the_shape_guests_need():
    meta = yaml.safe_load(cloudinit.meta_data(_ctx()))
    assert meta == {
        "instance-id": "iid-1",
        "local-hostname": "visa-instance-1",
        "meta": {"owner": "bob", "instruments": ""},
        "project_id": "prod",
    }
    assert cloudinit.user_data(_ctx()) == "#cloud-config\n{}\n"
    script = "#!/bin/bash\necho 'hi: {{ x }}'\n"
    assert cloudinit.user_data(_ctx(boot_command=script)) == script
    vendor = cloudinit.vendor_data(_ctx())
    assert vendor.startswith("#cloud-config\n")
    document = yaml.safe_load(vendor)
    assert document["users"][0]["name"] == "visa"
    assert document["users"][0]["ssh_authorized_keys"] == [ED25519]
    assert document["manage_etc_hosts"] is True
    assert document["phone_home"]["url"] == "http://seed/tok/phone-home"


def test_yaml_injection_in_metadata_stays_data():
    meta = yaml.safe_load(cloudinit.meta_data(_ctx(metadata={"owner": "x\ninstance-id: evil", "k: v": "- a"})))
    assert meta["instance-id"] == "iid-1"
    assert meta["meta"] == {"owner": "x\ninstance-id: evil", "k: v": "- a"}


def test_smbios_serial_encodes_the_nocloud_net_seed():
    serial = cloudinit.smbios_serial("nocloud-net", "http://10.0.0.1:4000/seed/abc/")
    assert base64.b64decode(serial).decode() == "ds=nocloud-net;s=http://10.0.0.1:4000/seed/abc/"


def _snapshot(vms: list[VmInfo]) -> Snapshot:
    nodes = {n: NodeInfo(n, True, 8, 32 * GiB) for n in ("pve1", "pve2")}
    nodes["pve3"] = NodeInfo("pve3", False, 64, 256 * GiB)
    return Snapshot(taken_at=0, nodes=nodes, vms={vm.vmid: vm for vm in vms})


def _vm(vmid: int, node: str, cpu: int, mem_gib: int, template: bool = False, status: str = "running") -> VmInfo:
    return VmInfo(vmid, f"vm{vmid}", node, status, template, cpu, mem_gib * GiB, 0, None, frozenset())


def test_placement_uses_committed_resources_overcommit_and_reservations():
    snapshot = _snapshot([_vm(1, "pve1", 6, 8), _vm(2, "pve2", 2, 8), _vm(9000, "pve1", 64, 64, template=True)])
    loads = node_loads(snapshot, [Reservation(500, "pve2", 4, 1024)], cpu_ratio=1.0, mem_ratio=1.0)
    assert set(loads) == {"pve1", "pve2"}  # offline node excluded
    assert loads["pve1"].cpu_committed == 6  # the template does not count
    assert loads["pve2"].cpu_committed == 6 and loads["pve2"].mem_committed == 9 * GiB
    request = Request(cores=2, memory_mb=4096, allowed_nodes=None)
    assert choose_node(loads, request, select_coeff=4 * GiB) == "pve1"  # 2 free vCPUs each; pve1 has 1 GiB more RAM
    assert choose_node(loads, request, select_coeff=0) == "pve1"
    with pytest.raises(NoCapacity):
        choose_node(loads, Request(cores=3, memory_mb=1024, allowed_nodes=None), 4 * GiB)
    loads = node_loads(snapshot, [], cpu_ratio=4.0, mem_ratio=1.0)
    assert choose_node(loads, Request(cores=3, memory_mb=1024, allowed_nodes=frozenset({"pve1"})), 4 * GiB) == "pve1"


def test_placement_skips_reservations_already_visible_in_proxmox():
    snapshot = _snapshot([_vm(500, "pve2", 4, 1)])
    loads = node_loads(snapshot, [Reservation(500, "pve2", 4, 1024)], 1.0, 1.0)
    assert loads["pve2"].cpu_committed == 4


def _view(
    lifecycle: Lifecycle,
    job: str | None = None,
    status: str | None = "running",
    address: str | None = "10.0.0.5",
    snapshot_ok: bool = True,
    lock: str | None = None,
    overdue: bool = False,
    delete_overdue: bool = False,
) -> InstanceView:
    instance = Instance(id=100, name="n", lifecycle=lifecycle, address=address)
    return InstanceView(instance, job, status, lock, snapshot_ok, seed_overdue=overdue, delete_overdue=delete_overdue)


@pytest.mark.parametrize(
    ("view", "state"),
    [
        (_view(Lifecycle.BUILDING, "create", None), VisaState.BUILDING),
        (_view(Lifecycle.ERROR), VisaState.ERROR),
        (_view(Lifecycle.DELETING, "delete"), VisaState.DELETED),
        (_view(Lifecycle.DELETING, delete_overdue=True), VisaState.ERROR),  # never DELETED while the VM stays
        (_view(Lifecycle.PROVISIONED), VisaState.ACTIVE),
        (_view(Lifecycle.PROVISIONED, address=None), VisaState.STARTING),
        (_view(Lifecycle.PROVISIONED, "start", "stopped"), VisaState.STARTING),
        (_view(Lifecycle.PROVISIONED, "shutdown"), VisaState.STOPPING),
        (_view(Lifecycle.PROVISIONED, "stop"), VisaState.STOPPING),
        (_view(Lifecycle.PROVISIONED, "reboot"), VisaState.REBOOTING),
        (_view(Lifecycle.PROVISIONED, "firewall"), VisaState.ACTIVE),
        (_view(Lifecycle.PROVISIONED, status="stopped"), VisaState.STOPPED),
        (_view(Lifecycle.PROVISIONED, status="paused"), VisaState.STOPPED),
        (_view(Lifecycle.PROVISIONED, status=None), VisaState.UNKNOWN),
        (_view(Lifecycle.PROVISIONED, snapshot_ok=False), VisaState.UNKNOWN),
        (_view(Lifecycle.PROVISIONED, status="unknown"), VisaState.UNKNOWN),
        (_view(Lifecycle.PROVISIONED, lock="migrate"), VisaState.ACTIVE_MIGRATING),
        (_view(Lifecycle.PROVISIONED, status="stopped", lock="migrate"), VisaState.MIGRATING),
        (_view(Lifecycle.PROVISIONED, overdue=True), VisaState.ERROR),
        (_view(Lifecycle.PROVISIONED, "reboot", overdue=True), VisaState.REBOOTING),
        (_view(Lifecycle.PROVISIONED, status="stopped", overdue=True), VisaState.STOPPED),
    ],
)
def test_visa_state_mapping(view: InstanceView, state: VisaState):
    assert visa_state(view) is state
    assert state.value.isupper()


@pytest.mark.parametrize(
    ("view", "state"),
    [
        (_view(Lifecycle.BUILDING, "create", None), "building"),
        (_view(Lifecycle.ERROR), "error"),
        (_view(Lifecycle.DELETING, "delete"), "deleting"),
        (_view(Lifecycle.DELETING, delete_overdue=True), "error"),
        (_view(Lifecycle.PROVISIONED), "running"),
        (_view(Lifecycle.PROVISIONED, address=None), "starting"),
        (_view(Lifecycle.PROVISIONED, "reboot", overdue=True), "rebooting"),
        (_view(Lifecycle.PROVISIONED, overdue=True), "error"),
        (_view(Lifecycle.PROVISIONED, status="paused"), "stopped"),
        (_view(Lifecycle.PROVISIONED, lock="migrate"), "running"),
        (_view(Lifecycle.PROVISIONED, snapshot_ok=False), "unknown"),
    ],
)
def test_operator_vm_state_mapping_names_the_same_phases(view: InstanceView, state: str):
    from api.vms import vm_state

    assert vm_state(view) == state


def test_an_instance_whose_deletes_keep_failing_shows_the_delete_fault():
    view = _view(Lifecycle.DELETING, delete_overdue=True)
    view.instance.fault_message, view.instance.fault_details = DELETE_FAULT, "VM 100 is locked (backup)"
    view.instance.delete_requested_at = view.instance.updated_at = view.instance.created_at = utcnow()
    view.instance.image_id, view.instance.flavour_id, view.instance.security_groups = "9000", "small", []
    fault = instance_out(view).fault
    assert fault is not None and (fault.message, fault.details) == (DELETE_FAULT, "VM 100 is locked (backup)")


def test_redactor_masks_secrets_everywhere():
    redactor = Redactor(["s3cr3t-token", "abc", ""])  # secrets of any length; an empty one is none
    assert redactor.text("x s3cr3t-token y") == f"x {MASK} y"
    assert redactor.data({"k s3cr3t-token": ["s3cr3t-token", 1, {"a": "abc", "b": "ab"}]}) == {
        f"k {MASK}": [MASK, 1, {"a": MASK, "b": "ab"}]
    }


def test_flavour_file_is_validated(tmp_path: Path):
    good = tmp_path / "f.yml"
    good.write_text("flavours:\n  - {id: s, name: S, cpus: 1, ram_mb: 1024, disk_gb: 10}\n", encoding="utf-8")
    assert read_flavour_file(good)[0].ram_mb == 1024
    for text, message in [
        ("{}", "top-level"),
        ("flavours:\n  - {id: s, name: S, cpus: 0, ram_mb: 1, disk_gb: 1}\n", "#1"),
        (
            "flavours:\n  - {id: s, name: S, cpus: 1, ram_mb: 64, disk_gb: 1}\n"
            "  - {id: s, name: T, cpus: 1, ram_mb: 64, disk_gb: 1}\n",
            "duplicate",
        ),
        ("flavours: [", "cannot read"),
    ]:
        bad = tmp_path / "bad.yml"
        bad.write_text(text, encoding="utf-8")
        with pytest.raises(FlavourFileError, match=message):
            read_flavour_file(bad)


def test_shipped_flavours_are_valid():
    specs = read_flavour_file(ROOT / "engine" / "defaults" / "flavours.yml")
    assert {s.id for s in specs} >= {"small", "medium"}


def test_iso_dates_are_utc_with_z():
    assert iso(datetime(2024, 5, 1, 10, 11, 12, 345000, tzinfo=UTC)) == "2024-05-01T10:11:12.345Z"
    assert iso(datetime(2024, 5, 1, 10, 11, 12)) == "2024-05-01T10:11:12.000Z"


def test_disk_storages_and_guest_addresses():
    config = {
        "scsi0": "ceph-vm:base-9000-disk-0,size=3G",
        "ide2": "local-lvm:vm-9000-cloudinit,media=cdrom",
        "net0": "virtio=AA:BB,bridge=vmbr0",
        "efidisk0": "local-lvm:vm-1-disk-1,size=4M",
    }
    assert disk_storages(config) == {"ceph-vm", "local-lvm"}
    interfaces = [
        {"name": "lo", "ip-addresses": [{"ip-address": "127.0.0.1", "ip-address-type": "ipv4"}]},
        {
            "name": "eth0",
            "ip-addresses": [
                {"ip-address": "fe80::1", "ip-address-type": "ipv6"},
                {"ip-address": "169.254.1.1", "ip-address-type": "ipv4"},
                {"ip-address": "10.1.2.3", "ip-address-type": "ipv4"},
            ],
        },
    ]
    assert first_global_ipv4(interfaces) == "10.1.2.3"
    assert first_global_ipv4([]) is None


def test_write_private_tightens_an_existing_file(tmp_path: Path):
    import os
    import stat

    from common.files import write_private

    path = tmp_path / "secret"
    path.write_text("old", encoding="utf-8")
    path.chmod(0o644)
    write_private(path, "new\n")
    assert path.read_text(encoding="utf-8") == "new\n"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


def test_seed_overdue_only_for_running_instances_of_ours_that_never_phoned_home():
    from datetime import timedelta

    from engine.models import utcnow
    from engine.service import _seed_overdue

    deadline = utcnow() - timedelta(seconds=900)
    old, recent = deadline - timedelta(seconds=1), deadline + timedelta(seconds=1)

    def instance(**values) -> Instance:
        fields = {"lifecycle": Lifecycle.PROVISIONED, "address": "198.18.0.10", "adopted": False, "created_at": old}
        return Instance(id=100, name="n", **(fields | values))

    assert _seed_overdue(instance(), "running", deadline)
    assert _seed_overdue(instance(created_at=old.replace(tzinfo=None)), "running", deadline)  # SQLite's naive UTC
    assert not _seed_overdue(instance(created_at=recent), "running", deadline)
    assert not _seed_overdue(instance(phoned_home_at=old), "running", deadline)
    assert not _seed_overdue(instance(adopted=True), "running", deadline)
    assert not _seed_overdue(instance(), "stopped", deadline)
    assert not _seed_overdue(instance(address=None), "running", deadline)
    assert not _seed_overdue(instance(lifecycle=Lifecycle.BUILDING), "running", deadline)


@pytest.mark.parametrize(
    ("text", "vmid"),
    [("9000", 9000), (" 100000 ", 100000), (9001, 9001), ("999999999", 999999999), ("1000000000", None),
     ("²", None), ("٩٠٠٠", None), ("-1", None), ("+5", None), ("1e3", None), ("", None), ("9000\x00", None)],
)  # fmt: skip
def test_vmids_are_ascii_digits_in_range(text: str | int, vmid: int | None):
    from engine.naming import as_vmid

    assert as_vmid(text) == vmid


def test_a_description_is_made_once_per_key_and_anew_for_a_changed_row_or_state() -> None:
    from types import SimpleNamespace

    from common.described import Described, described_on

    made: list[str] = []
    described: Described[str] = Described(maxsize=2)

    def make(text: str) -> str:
        made.append(text)
        return text

    assert described.get((1, "t1", "running"), lambda: make("a")) == "a"
    assert described.get((1, "t1", "running"), lambda: make("b")) == "a", "the same row and state: the same object"
    assert described.get((1, "t2", "running"), lambda: make("c")) == "c", "the row changed"
    assert described.get((1, "t2", "stopped"), lambda: make("d")) == "d", "the state changed"
    assert made == ["a", "c", "d"]
    state = SimpleNamespace()
    assert described_on(state, "x") is described_on(state, "x") is not described_on(SimpleNamespace(), "x")


def test_every_phase_has_a_name_in_each_api() -> None:
    from api.vms import STATES
    from engine.phases import Phase
    from web_provider.states import NAMES

    assert set(NAMES) == set(STATES) == set(Phase)
