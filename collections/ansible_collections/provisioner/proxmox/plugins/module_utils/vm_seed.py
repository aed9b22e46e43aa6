# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Where the guest's cloud-init finds its data (config keys).

Seed mode: the NoCloud seed URL in the SMBIOS serial (base64, the VM's uuid kept) and no Proxmox cloud-init
drive. Native mode: ciuser, sshkeys, ipconfig0 and nameserver on a Proxmox cloud-init drive.
"""

import base64
import binascii
import re
from urllib.parse import quote, unquote

from ansible_collections.provisioner.proxmox.plugins.module_utils.vm_disk import DISK_KEY
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.serialization import load_ssh_public_key

SEED_URL = re.compile(r"^https?://[^\s;,]+/$")
NATIVE_OPTIONS = ("cloud_init_user", "cloud_init_ssh_keys", "cloud_init_ipconfig0", "cloud_init_nameserver")
# A Proxmox cloud-init drive: vm-<id>-cloudinit (base-<id>-cloudinit on a template), or <storage>:cloudinit
# as sent before PVE allocates the volume.
CLOUD_INIT_VOLUME = re.compile(r"(^|[:/])((vm|base)-[0-9]+-)?cloudinit(,|$)")
EMPTY_CDROM = re.compile(r"^(none|cdrom),media=cdrom$")
SSH_KEY_TYPES = (
    "ssh-ed25519",
    "ssh-rsa",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
)


def input_problems(p):
    problems = []
    if p["cloud_init_seed_url"] is not None and not SEED_URL.match(p["cloud_init_seed_url"]):
        problems.append("cloud_init_seed_url must be an http(s) URL ending in '/' without ';', ',' or spaces")
    if native_mode(p) and p["cloud_init_seed_url"] is not None:
        problems.append(
            "cloud_init_seed_url excludes the native cloud-init options (a guest given both drops the drive's data)"
        )
    if native_mode(p) and not DISK_KEY.match(p["cloud_init_drive"]):
        problems.append("cloud_init_drive {!r} is not a drive key such as ide2 or scsi1".format(p["cloud_init_drive"]))
    for index, key in enumerate(p["cloud_init_ssh_keys"] or [], 1):
        problem = ssh_key_problem(key)
        if problem:
            problems.append(f"cloud_init_ssh_keys #{index}: {problem}")
    return problems


def native_mode(p):
    return any(p.get(option) for option in NATIVE_OPTIONS)


def is_asked(p):
    return p["cloud_init_seed_url"] is not None or bool(p["remove_cloud_init_drives"]) or native_mode(p)


def ssh_key_problem(key):
    """Why an OpenSSH public key line is unusable, or None (parsed with cryptography, an ansible-core dependency)."""
    parts = str(key).strip().split()
    if len(parts) < 2:
        return "expected '<type> <base64 key> [comment]'"
    if parts[0] not in SSH_KEY_TYPES:
        return f"unsupported key type {parts[0][:40]!r}"
    try:
        base64.b64decode(parts[1], validate=True)
    except (binascii.Error, ValueError):
        return "the key data is not base64"
    if parts[0].startswith("sk-"):  # security-key types: cryptography cannot load them
        return None
    try:
        load_ssh_public_key(f"{parts[0]} {parts[1]}".encode())
    except (ValueError, binascii.Error, UnsupportedAlgorithm):
        return f"malformed {parts[0]} key"
    return None


def seed_serial(p):
    """The SMBIOS serial that points cloud-init at the seed (secret: it carries the seed URL), or None."""
    if p["cloud_init_seed_url"] is None:
        return None
    return base64.b64encode("ds={};s={}".format(p["cloud_init_datasource"], p["cloud_init_seed_url"]).encode()).decode()


def config_problems(p, config):
    drive = config.get(p["cloud_init_drive"])
    if native_mode(p) and not cloud_init_drives(config) and drive is not None and not EMPTY_CDROM.match(str(drive)):
        return [f"{p['cloud_init_drive']} holds {drive!r}; choose a free cloud_init_drive for the cloud-init drive"]
    return []


def changes(p, config, serial):
    """(updates, deletes): the config keys to set and the drives to delete so cloud-init finds its data."""
    updates = {}
    if serial is not None:
        smbios1 = wanted_smbios1(serial, config.get("smbios1"))
        if smbios1 is not None:
            updates["smbios1"] = smbios1
    if native_mode(p):
        updates.update(native_changes(p, config))
    deletes = cloud_init_drives(config) if p["remove_cloud_init_drives"] else []
    return updates, deletes


def smbios_fields(value):
    """smbios1 as an ordered list of (key, value); values may contain '=' (base64 padding)."""
    fields = []
    for part in str(value or "").split(","):
        if part:
            key, _, val = part.partition("=")
            fields.append((key, val))
    return fields


def wanted_smbios1(serial, current):
    """smbios1 carrying serial with the VM's uuid kept, or None when current already is exactly that."""
    have = dict(smbios_fields(current))
    want = [("base64", "1"), ("serial", serial)]
    if have.get("uuid"):
        want.append(("uuid", have["uuid"]))
    if have == dict(want):
        return None
    return ",".join("{}={}".format(*kv) for kv in want)


def cloud_init_drives(config):
    """The config keys of the VM's Proxmox cloud-init drives, sorted."""
    return sorted(k for k, v in config.items() if DISK_KEY.match(k) and CLOUD_INIT_VOLUME.search(str(v)))


def native_changes(p, config):
    """The ci* settings that differ, and a cloud-init drive when the VM has none."""
    changes = {}
    if p["cloud_init_user"] and config.get("ciuser") != p["cloud_init_user"]:
        changes["ciuser"] = p["cloud_init_user"]
    if p["cloud_init_ssh_keys"]:
        want = "\n".join(" ".join(k.split()) for k in p["cloud_init_ssh_keys"])
        if unquote(str(config.get("sshkeys", ""))).strip() != want:
            # PVE wants this one value URL-encoded on top of the form encoding.
            changes["sshkeys"] = quote(want, safe="")
    for option, key in (("cloud_init_ipconfig0", "ipconfig0"), ("cloud_init_nameserver", "nameserver")):
        if p[option] and config.get(key) != p[option]:
            changes[key] = p[option]
    if not cloud_init_drives(config):
        storage = p["cloud_init_drive_storage"] or str(config.get(p["disk"], "")).split(":", 1)[0]
        changes[p["cloud_init_drive"]] = f"{storage}:cloudinit"
    return changes
