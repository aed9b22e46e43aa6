"""Property-based tests (hypothesis) of what parses client input: ids, names, SSH keys, sizes and metadata. Whatever
the input, each either answers or refuses with its own error, never anything else."""

from __future__ import annotations

import base64
import re
import struct

import pytest
import yaml
from ansible_collections.provisioner.proxmox.plugins.module_utils.vm_disk import disk_bytes, size_label
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from engine import cloudinit
from engine.naming import MAX_VMID, as_vmid, hostname, vm_name
from engine.sshkeys import InvalidSSHKey, normalise_key
from web_provider.schemas import InstanceCreate

EXAMPLES = settings(max_examples=300, deadline=None, derandomize=True, database=None)
LABEL = "^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$"


@EXAMPLES
@given(st.one_of(st.text(), st.integers(), st.from_regex(r"\s*[0-9]{1,12}\s*", fullmatch=True)))
def test_an_id_is_a_vmid_in_range_or_none(value: str | int) -> None:
    vmid = as_vmid(value)
    assert vmid is None or 0 <= vmid <= MAX_VMID


@EXAMPLES
@given(st.integers(min_value=0, max_value=MAX_VMID))
def test_every_vmid_reads_back(vmid: int) -> None:
    assert as_vmid(str(vmid)) == vmid == as_vmid(vmid)


@EXAMPLES
@given(st.text(max_size=300), st.integers(min_value=100, max_value=MAX_VMID))
def test_a_name_always_makes_a_valid_proxmox_name(name: str, vmid: int) -> None:
    label = vm_name(name, vmid)
    assert len(label) <= 63
    assert re.fullmatch(LABEL, label), label
    assert vm_name(label, vmid) == label  # a valid name is kept as it is
    assert hostname(name, vmid) == label.lower()


@EXAMPLES
@given(st.text(max_size=2000))
def test_any_text_is_a_key_or_a_refusal(text: str) -> None:
    try:
        line = normalise_key(text)
    except InvalidSSHKey:
        return
    assert normalise_key(line) == line


def ssh_string(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


@EXAMPLES
@given(st.text(alphabet=st.characters(codec="ascii", exclude_categories=("Cc",)), max_size=40))
def test_a_valid_ed25519_key_is_kept_with_its_comment(comment: str) -> None:
    raw = Ed25519PrivateKey.generate().public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    blob = base64.b64encode(ssh_string(b"ssh-ed25519") + ssh_string(raw)).decode()
    line = f"ssh-ed25519 {blob} {comment}".strip()
    assert normalise_key(line) == " ".join(line.split())


@EXAMPLES
@given(st.binary(max_size=200), st.sampled_from(["sk-ssh-ed25519@openssh.com", "sk-ecdsa-sha2-nistp256@openssh.com"]))
def test_random_security_key_blobs_are_refused_cleanly(blob: bytes, kind: str) -> None:
    with pytest.raises(InvalidSSHKey):
        normalise_key(f"{kind} {base64.b64encode(blob).decode()}")


@EXAMPLES
@given(st.integers(min_value=1, max_value=2**50))
def test_a_disk_size_reads_back_from_its_label(size: int) -> None:
    assert disk_bytes(f"local-lvm:vm-100-disk-0,size={size_label(size)}") == size or size_label(size).endswith("bytes")


@EXAMPLES
@given(st.text(max_size=100))
def test_any_drive_value_has_a_size_or_none(value: str) -> None:
    assert disk_bytes(value) >= -1


metadata_values = st.one_of(st.none(), st.text(max_size=200), st.integers(), st.booleans(), st.floats())


@EXAMPLES
@given(st.dictionaries(st.text(max_size=50), metadata_values, max_size=20))
def test_metadata_is_accepted_or_refused_and_what_is_accepted_reaches_the_guest_unchanged(metadata: dict) -> None:
    body = {"name": "VISA-INSTANCE-1", "imageId": "9000", "flavourId": "small", "metadata": metadata}
    try:
        create = InstanceCreate.model_validate(body)
    except ValidationError:
        return
    assert create.metadata is not None
    context = cloudinit.SeedContext("iid-1", "h", "visa", [], dict(create.metadata), None, "http://s/p")
    assert yaml.safe_load(cloudinit.meta_data(context))["meta"] == create.metadata
