"""A guest's identity: its emulated address (in 198.18.0.0/15), MAC, interfaces, SSH host keys, and the hardware
a real guest is started with (guest_spec)."""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import logging
import re
import struct
from typing import Any, TypeVar

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from fakepve import FakeVm

from simulator.cloudinit import smbios_serial
from simulator.guests import cidrive
from simulator.guests.spec import GuestSpec
from simulator.properties import GIB, parse_size, split_props

log = logging.getLogger(__name__)

T = TypeVar("T")

MAC_RE = re.compile(r"^[0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2}){5}$")


# The emulated guests' addresses: in the test range 198.18.0.0/15 (RFC 2544), like the real guests', so nothing
# that talks to a made-up guest address ever reaches a private or public network.
EMULATED_NETWORK = ipaddress.IPv4Network("198.18.0.0/15")


def guest_ipv4(vmid: int) -> str:
    """A stable address per VMID in 198.18.0.0/15 (unique over any 131070 consecutive VMIDs)."""
    span = EMULATED_NETWORK.num_addresses - 2
    return str(EMULATED_NETWORK.network_address + 1 + vmid % span)


def guest_mac(config: dict[str, Any], vmid: int) -> str:
    """The MAC of the VM's first NIC (net0=virtio=BC:24:11:..), lower case as the agent reports it."""
    for key in sorted(k for k in config if re.fullmatch(r"net\d+", k)):
        for part in str(config[key]).split(","):
            value = part.partition("=")[2]
            if MAC_RE.match(value):
                return value.lower()
    return vmid_mac(vmid)


def vmid_mac(vmid: int) -> str:
    """A MAC in Proxmox's BC:24:11 prefix derived from the VMID (lower case)."""
    return f"bc:24:11:{vmid // 65536 % 256:02x}:{vmid // 256 % 256:02x}:{vmid % 256:02x}"


def link_local(mac: str) -> str:
    """The EUI-64 IPv6 link-local address of a MAC."""
    octets = bytes.fromhex(mac.replace(":", ""))
    eui = bytes([octets[0] ^ 0x02]) + octets[1:3] + b"\xff\xfe" + octets[3:]
    return str(ipaddress.IPv6Address(b"\xfe\x80" + bytes(6) + eui))


def _address(ip: str, prefix: int) -> dict[str, Any]:
    kind = "ipv6" if ":" in ip else "ipv4"
    return {"ip-address": ip, "ip-address-type": kind, "prefix": prefix}


def guest_interfaces(vmid: int, mac: str) -> list[dict[str, Any]]:
    """network-get-interfaces as qemu-ga answers it: lo, then eth0 with the guest's IPv4 and link-local."""
    return [
        {
            "name": "lo",
            "hardware-address": "00:00:00:00:00:00",
            "ip-addresses": [_address("127.0.0.1", 8), _address("::1", 128)],
        },
        {
            "name": "eth0",
            "hardware-address": mac,
            "ip-addresses": [
                _address(guest_ipv4(vmid), EMULATED_NETWORK.prefixlen),
                _address(link_local(mac), 64),
            ],
        },
    ]


def _ssh_wire(*parts: bytes) -> str:
    return base64.b64encode(b"".join(struct.pack(">I", len(p)) + p for p in parts)).decode()


def ssh_host_keys(seed: str, hostname: str) -> dict[str, str]:
    """The guest's SSH host public keys (the .pub files: `type AAAA… root@host` and a newline), stable per seed.

    ed25519 and ECDSA are real key pairs derived from the seed; the RSA one is well-formed but not a real key.
    """
    digest = hashlib.sha256(seed.encode()).digest()
    openssh = (serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    edkey = ed25519.Ed25519PrivateKey.from_private_bytes(digest).public_key().public_bytes(*openssh).decode()
    eckey = ec.derive_private_key(int.from_bytes(digest, "big") % (2**255) + 1, ec.SECP256R1())
    ecdsa = eckey.public_key().public_bytes(*openssh).decode()
    modulus = bytearray(hashlib.shake_256(digest).digest(256))
    modulus[0] |= 0x80  # a 2048-bit odd number: an mpint with its sign byte
    modulus[-1] |= 0x01
    rsa = "ssh-rsa " + _ssh_wire(b"ssh-rsa", b"\x01\x00\x01", b"\x00" + bytes(modulus))
    return {
        name: f"{key} root@{hostname}\n"
        for name, key in (("pub_key_ed25519", edkey), ("pub_key_ecdsa", ecdsa), ("pub_key_rsa", rsa))
    }


def guest_spec(vm: FakeVm) -> GuestSpec:
    """A real guest's hardware from the VM's config: SMBIOS serial (decoded) and uuid, net0's MAC, boot disk size."""
    config = vm.config
    try:
        serial = smbios_serial(config)
    except ValueError:
        log.warning("VM %s: smbios1 serial is not valid base64; the guest gets none", vm.vmid)
        serial = None
    _first, smbios = split_props(str(config.get("smbios1", "")))
    disk = 0
    boot = re.search(r"order=([a-z]+\d+)", str(config.get("boot", "")))
    for key in ([boot.group(1)] if boot else []) + ["scsi0", "virtio0", "sata0", "ide0"]:
        _volume, props = split_props(str(config.get(key, "")))
        disk = parse_size(props.get("size", "")) or 0
        if disk:
            break
    return GuestSpec(
        serial=serial,
        uuid=smbios.get("uuid"),
        mac=guest_mac(config, vm.vmid),
        disk_bytes=disk or 3 * GIB,
        cores=int(config.get("cores", 1)) * int(config.get("sockets", 1)),
        memory_mb=int(config.get("memory", 1024)),
        cloud_init=cidrive.documents(config, vm.vmid),
    )
