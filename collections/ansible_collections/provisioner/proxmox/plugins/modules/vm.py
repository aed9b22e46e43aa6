#!/usr/bin/python
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later


DOCUMENTATION = r"""
module: vm
short_description: Converge one Proxmox VE QEMU VM from a template in one call
description:
  - Clones a template to an explicit VMID when the VM does not exist, then converges what is asked for and
    nothing else, in this order, with one config read and at most one config update
    (C(PUT /nodes/{node}/qemu/{vmid}/config), guarded by the config digest).
  - The spec (name, cores, memory, tags, description, guest agent option), the NoCloud seed in the SMBIOS
    serial (C(ds=nocloud-net;s=<url>), base64, the VM's uuid kept) and the removal of Proxmox cloud-init
    drives; the boot disk grows to I(disk_gb) (it never shrinks); firewall security-group rules are added,
    enabled or deleted; the VM is started; the module waits for an IPv4 address from the guest agent.
  - Every input and cluster check (node online, template, VMID owner, security groups) runs before the
    first change, so bad input changes nothing. A VMID held by another guest is never adopted.
  - Lock errors (a clone still copying, a backup), proxy errors (502-504) and an unreachable node (595) are
    retried with exponential backoff for up to I(retry_timeout) seconds; a task that ends on a lock error is
    started again.
  - The connection options and their C(PROXMOX_*) environment fallbacks are community.proxmox's.
  - It exists because a create is CPU-bound on the controller with one module process per step (eight per
    VM with the community.proxmox modules); this is one process per VM.
version_added: 0.1.0
author: proxmox-provisioner maintainers
extends_documentation_fragment:
  - community.proxmox.proxmox.documentation
  - community.proxmox.attributes
attributes:
  check_mode:
    support: full
  diff_mode:
    support: none
options:
  vmid:
    description: VMID of the VM (100 to 999999999).
    type: int
    required: true
  node:
    description:
      - Node the VM lives on; the clone's target when it differs from I(template_node).
      - Required to clone; for an existing VM it defaults to the node the VM is on.
    type: str
  name:
    description:
      - Name of the VM (a DNS name). Required to clone.
      - An existing VM with another name is refused, not renamed or adopted.
    type: str
  template_vmid:
    description: Template to clone when the VM does not exist (ignored otherwise).
    type: int
  template_node:
    description: Node holding the template.
    type: str
  full_clone:
    description: Full (true) or linked (false) clone.
    type: bool
    default: true
  storage:
    description: Target storage of a full clone; unset keeps the template's storage.
    type: str
  cores:
    description: vCPUs (at least 1). Unset leaves them alone.
    type: int
  memory_mb:
    description: RAM in MiB (at least 16). Unset leaves it alone.
    type: int
  disk:
    description: Config key of the boot disk that I(disk_gb) applies to.
    type: str
    default: scsi0
  disk_gb:
    description: Size of the boot disk in GiB (at least 1). It only ever grows. Unset leaves it alone.
    type: int
  tags:
    description: Tags of the VM as an exact set (order and duplicates do not matter). Unset or empty leaves them alone.
    type: list
    elements: str
  description:
    description: Description (notes) of the VM, compared without surrounding spaces. Unset or empty leaves it alone.
    type: str
  agent:
    description:
      - C(true) turns the QEMU guest agent option on when it is off (other agent options are kept). Unset (or
        C(false)) leaves the option alone, so a power, firewall or delete call never changes it.
    type: bool
  cloud_init_seed_url:
    description:
      - NoCloud seed URL (http or https, ending in C(/)), written to the SMBIOS serial. Unset leaves smbios1 alone.
      - Secret-ish (it usually carries a per-VM token); it and the serial derived from it never appear in output.
    type: str
  cloud_init_datasource:
    description:
      - Datasource id in the serial. C(nocloud-net) works on cloud-init 22.4 and 25.x; C(nocloud) implies
        C(dsmode=local) and ends as DataSourceNone on 22.4.
    type: str
    default: nocloud-net
    choices: [nocloud-net, nocloud]
  remove_cloud_init_drives:
    description:
      - Delete Proxmox cloud-init drives (C(vm-<id>-cloudinit) volumes). A guest given both a drive and an HTTP
        seed silently drops the drive's user, keys and network, so seed mode removes them.
      - Defaults to true when I(cloud_init_seed_url) is set, false otherwise.
    type: bool
  cloud_init_user:
    description:
      - Native mode (no HTTP seed; everything on a Proxmox cloud-init drive) - the default user (C(ciuser)).
      - Setting any C(cloud_init_user), C(cloud_init_ssh_keys), C(cloud_init_ipconfig0) or C(cloud_init_nameserver)
        selects native mode, which excludes I(cloud_init_seed_url) (a guest given both drops the drive's data).
    type: str
  cloud_init_ssh_keys:
    description:
      - Native mode - the user's SSH public keys (OpenSSH lines).
      - Each is validated; a malformed key fails before any change.
    type: list
    elements: str
  cloud_init_ipconfig0:
    description: Native mode - the first NIC's address, e.g. C(ip=dhcp) or C(ip=192.0.2.10/24,gw=192.0.2.1).
    type: str
  cloud_init_nameserver:
    description: Native mode - DNS servers, space separated.
    type: str
  cloud_init_drive:
    description:
      - Native mode - the config key of the cloud-init drive, added when the VM has none. Debian's cloud kernel
        sees no C(ide2)/C(sata) drive on a q35 VM; use a C(scsiN) key there.
    type: str
    default: ide2
  cloud_init_drive_storage:
    description: Native mode - the storage of a new cloud-init drive; unset uses the boot disk's storage.
    type: str
  firewall_groups:
    description: Security groups to have on the VM (a missing rule is added, a disabled one enabled).
    type: list
    elements: str
    default: []
  firewall_groups_absent:
    description: Security groups whose rules are deleted from the VM.
    type: list
    elements: str
    default: []
  state:
    description:
      - C(present) leaves the power state alone; C(started) starts the VM if it is not running; C(stopped)
        stops it if it runs; C(restarted) reboots a running VM and starts a stopped one.
      - C(absent) stops the VM if it runs (see I(force)) and deletes it with its disks (purge). An absent VM is
        fine; a template, a container or (with I(name)) a VM with another name is never deleted.
    type: str
    choices: [present, started, stopped, restarted, absent]
    default: present
  force:
    description:
      - C(stopped) and C(absent) stop the VM at once (C(status/stop)) instead of an ACPI shutdown that may
        take up to I(stop_timeout) seconds; C(restarted) resets it instead of an ACPI reboot.
    type: bool
    default: false
  stop_timeout:
    description: Seconds an ACPI shutdown may take before the module fails (the VM keeps running).
    type: int
    default: 120
  start_retries:
    description: Further start attempts after a failed start (lock errors are retried regardless).
    type: int
    default: 0
  start_retry_delay:
    description: Seconds between start attempts.
    type: int
    default: 5
  wait_for_address:
    description:
      - Wait until the guest agent reports an IPv4 address (neither loopback nor link-local).
      - Needs I(state=started) or I(state=restarted).
    type: bool
    default: false
  address_timeout:
    description: Seconds to wait for the address.
    type: int
    default: 300
  address_poll_interval:
    description: Seconds between two guest-agent polls.
    type: float
    default: 1.0
  timeout:
    description: Seconds to wait for each PVE task (clone, resize, start, reboot, delete); full clones take minutes.
    type: int
    default: 900
  retry_timeout:
    description: Seconds a lock error or a transient failure is retried for before the module fails.
    type: int
    default: 120
requirements:
  - proxmoxer >= 2.0
  - requests
"""

EXAMPLES = r"""
- name: Clone template 9000 to VM 4242, size it, point it at its seed, open ssh, start it, wait for its address
  provisioner.proxmox.vm:
    vmid: 4242
    name: web-1
    node: pve2
    template_vmid: 9000
    template_node: pve1
    cores: 2
    memory_mb: 4096
    disk_gb: 20
    tags: [provisioner, web]
    cloud_init_seed_url: "https://provisioner.example.org/seed/{{ vault_seed_token }}/"
    firewall_groups: [ssh]
    state: started
    wait_for_address: true
  register: web_1

- name: Delete VM 4242 whatever its power state (an absent VM is fine)
  provisioner.proxmox.vm:
    vmid: 4242
    name: web-1
    state: absent
    force: true

- name: Remove a security group from an existing VM
  provisioner.proxmox.vm:
    vmid: 4242
    node: pve2
    firewall_groups_absent: [ssh]
"""

RETURN = r"""
vmid:
  description: The VMID.
  returned: always
  type: int
node:
  description: The node the VM is on (unset when the module failed before finding out).
  returned: always
  type: str
changes:
  description: What changed (or, in check mode, would change), in order. Values that may be secret are not shown.
  returned: always
  type: list
  elements: str
  sample:
    - clone template 9000 on pve1 to pve2
    - set cores, memory, smbios1
    - grow scsi0 from 3G to 20G
    - start
status:
  description: The VM's power state at the end; C(absent) when there is no VM (deleted, or check mode would clone it).
  returned: always
  type: str
address:
  description: The guest agent's first IPv4 address, when I(wait_for_address) is true.
  returned: when waited for
  type: str
retries:
  description: How many requests were sent again after a lock error or a transient failure.
  returned: always
  type: int
"""

import base64
import binascii
import re
import time
from urllib.parse import quote, unquote

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.provisioner.proxmox.plugins.module_utils.pve import (
    PveClient,
    PveFailure,
    pve_argument_spec,
)
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.serialization import load_ssh_public_key

DNS_NAME = re.compile(r"^([A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?\.)*[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?$")
DISK_KEY = re.compile(r"^(ide|sata|scsi|virtio)[0-9]+$")
# A Proxmox cloud-init drive: vm-<id>-cloudinit (base-<id>-cloudinit on a template), or <storage>:cloudinit
# as sent before PVE allocates the volume.
CLOUD_INIT_VOLUME = re.compile(r"(^|[:/])((vm|base)-[0-9]+-)?cloudinit(,|$)")
SSH_KEY_TYPES = (
    "ssh-ed25519",
    "ssh-rsa",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
)
EMPTY_CDROM = re.compile(r"^(none|cdrom),media=cdrom$")
NATIVE_OPTIONS = ("cloud_init_user", "cloud_init_ssh_keys", "cloud_init_ipconfig0", "cloud_init_nameserver")
DISK_SIZE = re.compile(r"(?:^|,)size=([0-9]+(?:\.[0-9]+)?)([KMGT]?)(?:,|$)")
SIZE_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
SEED_URL = re.compile(r"^https?://[^\s;,]+/$")
GIB = 1 << 30
# The guest agent is not up yet (still booting): "QEMU guest agent is not running", a guest-ping timeout.
AGENT_NOT_YET = re.compile(r"guest agent is not running|got timeout|guest-ping", re.I)


# ----------------------------------------------------------------------------------- pure decisions


def input_problems(p):
    """Everything wrong with the parameters on their own."""
    problems = []
    if not 100 <= p["vmid"] <= 999999999:
        problems.append("vmid must be between 100 and 999999999 (got {})".format(p["vmid"]))
    if p["name"] is not None and not DNS_NAME.match(p["name"]):
        problems.append("name {!r} is not a valid DNS name".format(p["name"]))
    for key, least in (("cores", 1), ("memory_mb", 16), ("disk_gb", 1)):
        if p[key] is not None and p[key] < least:
            problems.append(f"{key} must be at least {least} (got {p[key]})")
    if not DISK_KEY.match(p["disk"]):
        problems.append("disk {!r} is not a disk key such as scsi0".format(p["disk"]))
    if p["template_vmid"] is not None and p["template_vmid"] == p["vmid"]:
        problems.append("template_vmid {} is the VM itself".format(p["template_vmid"]))
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
    both = sorted(set(p["firewall_groups"]) & set(p["firewall_groups_absent"]))
    if both:
        problems.append("groups both wanted and unwanted: {}".format(", ".join(both)))
    if p["wait_for_address"] and p["state"] not in ("started", "restarted"):
        problems.append("wait_for_address needs state=started or state=restarted")
    return problems


def native_mode(p):
    return any(p.get(option) for option in NATIVE_OPTIONS)


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


def cluster_problems(p, guests, nodes, groups):
    """Everything wrong with the parameters against the cluster: nodes, the VMID's owner, the template, groups."""
    problems = []
    node = nodes.get(p["node"])
    if node is None:
        problems.append(
            "node {!r} is not a node of the cluster (nodes: {})".format(p["node"], ", ".join(sorted(nodes)))
        )
    elif node.get("status") != "online":
        problems.append("node {} is not online (status {})".format(p["node"], node.get("status", "unknown")))
    existing = guests.get(p["vmid"])
    if existing is not None:
        foreign = (
            existing.get("type") != "qemu"
            or existing.get("template")
            or (p["name"] is not None and existing.get("name") != p["name"])
            or existing.get("node") != p["node"]
        )
        if foreign:
            problems.append(foreign_guest(p, existing))
    elif p["state"] != "absent":
        problems.extend(template_problems(p, guests))
    unknown = sorted(set(p["firewall_groups"]) - set(groups))
    if unknown:
        problems.append(
            "unknown firewall security group{} {} (the cluster has: {})".format(
                "s" if len(unknown) > 1 else "", ", ".join(unknown), ", ".join(sorted(groups)) or "none"
            )
        )
    return problems


def foreign_guest(p, guest):
    """Why the guest holding the VMID is not the VM asked for (and is left alone)."""
    held = "VMID {} is {} {!r}{} on node {}".format(
        p["vmid"],
        guest.get("type", "a guest"),
        guest.get("name", "(unnamed)"),
        " (a template)" if guest.get("template") else "",
        guest.get("node", "?"),
    )
    wanted = "VM" + (f" {p['name']!r}" if p["name"] is not None else "") + f" on node {p['node']}"
    action = "delete" if p["state"] == "absent" else "adopt"
    return f"{held}, not {wanted}; refusing to {action} it"


def template_problems(p, guests):
    if p["template_vmid"] is None:
        return ["VM {} does not exist".format(p["vmid"])]
    if p["template_node"] is None or p["name"] is None:
        return ["VM {} does not exist; name and template_node are needed to clone it".format(p["vmid"])]
    template = guests.get(p["template_vmid"])
    if template is None:
        return ["template {} does not exist".format(p["template_vmid"])]
    if template.get("type") != "qemu" or not template.get("template"):
        return ["guest {} ({}) is not a QEMU template".format(p["template_vmid"], template.get("name", "unnamed"))]
    if template.get("node") != p["template_node"]:
        return [
            "template {} is on node {}, not on {}".format(
                p["template_vmid"], template.get("node", "?"), p["template_node"]
            )
        ]
    return []


def disk_bytes(value):
    """The size= of a drive value in bytes, or -1 when it has none."""
    match = DISK_SIZE.search(str(value or ""))
    if not match:
        return -1
    return int(float(match.group(1)) * SIZE_UNITS[match.group(2)])


def tag_set(value):
    return sorted({t for t in re.split(r"[,; ]+", str(value or "")) if t})


def smbios_fields(value):
    """smbios1 as an ordered list of (key, value); values may contain '=' (base64 padding)."""
    fields = []
    for part in str(value or "").split(","):
        if part:
            key, _, val = part.partition("=")
            fields.append((key, val))
    return fields


def seed_serial(datasource, seed_url):
    return base64.b64encode((f"ds={datasource};s={seed_url}").encode()).decode()


def wanted_smbios1(serial, current):
    """smbios1 carrying serial with the VM's uuid kept, or None when current already is exactly that."""
    have = dict(smbios_fields(current))
    want = [("base64", "1"), ("serial", serial)]
    if have.get("uuid"):
        want.append(("uuid", have["uuid"]))
    if have == dict(want):
        return None
    return ",".join("{}={}".format(*kv) for kv in want)


def agent_value(current):
    """The agent option with enabled=1, other options kept; None when the agent is already on."""
    parts = [x for x in str(current or "0").split(",") if x]
    if parts and (parts[0] in ("1", "enabled=1") or "enabled=1" in parts[1:]):
        return None
    return ",".join(["enabled=1"] + [x for x in parts if not re.match(r"^(0|1|enabled=.*)$", x)])


def cloud_init_drives(config):
    """The config keys of the VM's Proxmox cloud-init drives, sorted."""
    return sorted(k for k, v in config.items() if DISK_KEY.match(k) and CLOUD_INIT_VOLUME.search(str(v)))


def config_changes(p, config, serial):
    """(updates, deletes): the config keys to set and to delete so the VM matches p."""
    updates = {}
    if p["name"] is not None and config.get("name") != p["name"]:
        updates["name"] = p["name"]
    if p["cores"] is not None and int(config.get("cores", 1)) != p["cores"]:
        updates["cores"] = p["cores"]
    if p["memory_mb"] is not None and int(config.get("memory", 0)) != p["memory_mb"]:
        updates["memory"] = p["memory_mb"]
    if p["tags"] and tag_set(";".join(p["tags"])) != tag_set(config.get("tags")):
        updates["tags"] = ";".join(tag_set(";".join(p["tags"])))
    if p["description"] and str(config.get("description", "")).strip() != p["description"].strip():
        updates["description"] = p["description"]
    if p["agent"]:
        agent = agent_value(config.get("agent"))
        if agent is not None:
            updates["agent"] = agent
    if serial is not None:
        smbios1 = wanted_smbios1(serial, config.get("smbios1"))
        if smbios1 is not None:
            updates["smbios1"] = smbios1
    deletes = []
    if p["remove_cloud_init_drives"]:
        deletes = cloud_init_drives(config)
    if native_mode(p):
        updates.update(native_changes(p, config))
    return updates, deletes


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


def firewall_plan(rules, wanted, unwanted):
    """(groups to add, positions to enable, positions to delete highest first) for the VM's rules."""
    group_rules = [r for r in rules if r.get("type") == "group"]
    add, enable = [], []
    for group in dict.fromkeys(wanted):
        mine = [r for r in group_rules if r.get("action") == group]
        if not mine:
            add.append(group)
        elif not any(int(r.get("enable") or 0) == 1 for r in mine):
            enable.append(int(mine[0]["pos"]))
    delete = sorted((int(r["pos"]) for r in group_rules if r.get("action") in set(unwanted)), reverse=True)
    return add, enable, delete


def first_ipv4(interfaces):
    for interface in interfaces or []:
        if interface.get("name") == "lo":
            continue
        for address in interface.get("ip-addresses") or []:
            ip = str(address.get("ip-address") or "")
            if address.get("ip-address-type") == "ipv4" and not ip.startswith(("127.", "169.254.")):
                return ip
    return None


def size_label(size):
    for unit in ("T", "G", "M", "K"):
        if size % SIZE_UNITS[unit] == 0:
            return f"{size // SIZE_UNITS[unit]}{unit}"
    return f"{size} bytes"


# ----------------------------------------------------------------------------------- the converger


class VmConverger:
    def __init__(self, module, client):
        self.module = module
        self.p = module.params
        self.client = client
        self.api = client.api
        self.changes = []
        self.serial = None
        if self.p["cloud_init_seed_url"] is not None:
            self.serial = seed_serial(self.p["cloud_init_datasource"], self.p["cloud_init_seed_url"])
            module.no_log_values.add(self.serial)

    @property
    def qemu(self):
        return self.api.nodes(self.p["node"]).qemu(self.p["vmid"])

    def request(self, what, request):
        return self.client.call("VM {}: {}".format(self.p["vmid"], what), request)

    def run(self):
        existing = self.preflight()
        if self.p["state"] == "absent":
            return self.remove(existing)
        if existing is None:
            if self.module.check_mode:
                return self.planned_clone()
            self.clone()
        status = existing.get("status", "stopped") if existing else "stopped"
        self.converge_config()
        self.converge_firewall()
        result = {"status": self.converge_power(status)}
        if self.p["wait_for_address"] and not self.module.check_mode:
            result["address"] = self.wait_for_address()
        return result

    def preflight(self):
        problems = input_problems(self.p)
        if problems:
            self.fail(problems)
        guests = {
            g["vmid"]: g for g in self.request("listing the guests", lambda: self.api.cluster.resources.get(type="vm"))
        }
        nodes = {n["node"]: n for n in self.request("listing the nodes", lambda: self.api.nodes.get())}
        groups = []
        if self.p["firewall_groups"]:
            groups = [
                g["group"]
                for g in self.request("listing the security groups", lambda: self.api.cluster.firewall.groups.get())
            ]
        existing = guests.get(self.p["vmid"])
        if self.p["node"] is None and existing is not None:
            self.p["node"] = existing.get("node")
        elif self.p["node"] is None and self.p["state"] == "absent":
            return None
        elif self.p["node"] is None:
            self.fail(["VM {} does not exist; node is needed to clone it".format(self.p["vmid"])])
        problems = cluster_problems(self.p, guests, nodes, groups)
        if problems:
            self.fail(problems)
        return existing

    def planned_clone(self):
        p = self.p
        self.changes.append(self.clone_label())
        settings = [k for k in ("name", "cores", "memory_mb", "tags", "description") if p[k]]
        if self.serial is not None:
            settings.append("smbios1")
        if native_mode(p):
            settings.append("the native cloud-init settings")
        if settings:
            self.changes.append("set " + ", ".join(settings))
        if p["disk_gb"] is not None:
            self.changes.append("grow {} to {}G if smaller".format(p["disk"], p["disk_gb"]))
        if p["firewall_groups"]:
            self.changes.append("add firewall groups " + ", ".join(dict.fromkeys(p["firewall_groups"])))
        if p["state"] in ("started", "restarted"):
            self.changes.append("start")
        return {"status": "absent"}

    def clone_label(self):
        p = self.p
        return "clone template {} on {} to {}".format(p["template_vmid"], p["template_node"], p["node"])

    def clone(self):
        p = self.p
        self.changes.append(self.clone_label())
        args = {"newid": p["vmid"], "name": p["name"], "full": 1 if p["full_clone"] else 0}
        if p["node"] != p["template_node"]:
            args["target"] = p["node"]
        if p["full_clone"] and p["storage"]:
            args["storage"] = p["storage"]
        template = self.api.nodes(p["template_node"]).qemu(p["template_vmid"])
        self.client.run_task(
            "VM {}: cloning template {}".format(p["vmid"], p["template_vmid"]),
            p["template_node"],
            lambda: template.clone.post(**args),
            p["timeout"],
        )

    def converge_config(self):
        p = self.p
        config = self.request("reading its configuration", lambda: self.qemu.config.get())
        if p["name"] is not None and config.get("name") != p["name"]:
            self.fail(
                [
                    "VMID {} now holds {!r}, not {!r}; refusing to adopt it".format(
                        p["vmid"], config.get("name"), p["name"]
                    )
                ]
            )
        if p["disk_gb"] is not None and p["disk"] not in config:
            disks = sorted(k for k in config if DISK_KEY.match(k))
            self.fail(["its boot disk {} is not in its config (disks: {})".format(p["disk"], ", ".join(disks))])
        drive = config.get(p["cloud_init_drive"])
        if native_mode(p) and not cloud_init_drives(config) and drive is not None and not EMPTY_CDROM.match(str(drive)):
            self.fail(
                [f"{p['cloud_init_drive']} holds {drive!r}; choose a free cloud_init_drive for the cloud-init drive"]
            )
        updates, deletes = config_changes(p, config, self.serial)
        if updates or deletes:
            label = []
            if updates:
                label.append("set " + ", ".join(sorted(updates)))
            if deletes:
                label.append(
                    "delete the cloud-init drive{} {}".format("s" if len(deletes) > 1 else "", ", ".join(deletes))
                )
            self.changes.append("; ".join(label))
            if not self.module.check_mode:
                body = dict(updates)
                if deletes:
                    body["delete"] = ",".join(deletes)
                if config.get("digest"):
                    body["digest"] = config["digest"]
                self.request("updating its configuration", lambda: self.qemu.config.put(**body))
        if p["disk_gb"] is not None:
            self.grow_disk(config.get(p["disk"]))

    def grow_disk(self, drive):
        p = self.p
        have, want = disk_bytes(drive), p["disk_gb"] * GIB
        if have < 0:
            self.fail(["no size= in the value of its boot disk {}".format(p["disk"])])
        if want <= have:
            return
        self.changes.append("grow {} from {} to {}G".format(p["disk"], size_label(have), p["disk_gb"]))
        if self.module.check_mode:
            return
        what = "VM {}: growing {}".format(p["vmid"], p["disk"])
        upid = self.request(
            "growing {}".format(p["disk"]),
            lambda: self.qemu.resize.put(disk=p["disk"], size="{}G".format(p["disk_gb"])),
        )
        if isinstance(upid, str) and upid.startswith("UPID:"):  # PVE 8 runs the resize as a task
            self.client.wait_task(what, p["node"], upid, p["timeout"])

    def converge_firewall(self):
        p = self.p
        if not (p["firewall_groups"] or p["firewall_groups_absent"]):
            return
        rules = self.request("reading its firewall rules", lambda: self.qemu.firewall.rules.get())
        add, enable, delete = firewall_plan(rules, p["firewall_groups"], p["firewall_groups_absent"])
        if add:
            self.changes.append("add firewall groups " + ", ".join(add))
        if enable:
            self.changes.append("enable the firewall group rules at {}".format(", ".join(map(str, enable))))
        if delete:
            self.changes.append("delete the firewall group rules at {}".format(", ".join(map(str, delete))))
        if self.module.check_mode:
            return
        rules_api = self.qemu.firewall.rules
        for pos in enable:
            self.request(f"enabling firewall rule {pos}", lambda pos=pos: rules_api(pos).put(enable=1))
        # Deleting a rule shifts only those after it: highest position first.
        for pos in delete:
            self.request(f"deleting firewall rule {pos}", lambda pos=pos: rules_api(pos).delete())
        # PVE inserts a new rule first: add in reverse so the groups end up in the order asked for.
        for group in reversed(add):
            self.request(
                f"adding firewall group {group}",
                lambda group=group: rules_api.post(type="group", action=group, enable=1),
            )

    def converge_power(self, status):
        state, force = self.p["state"], self.p["force"]
        if state == "started" and status != "running":
            self.act("start", self.start)
            return "running"
        if state == "stopped" and status != "stopped":
            self.act("stop" if force else "shut down", self.stop)
            return "stopped"
        if state == "restarted" and status == "running":
            self.act("reset" if force else "reboot", self.reboot)
        elif state == "restarted":
            self.act("start", self.start)
            return "running"
        return status

    def act(self, change, action):
        self.changes.append(change)
        if not self.module.check_mode:
            action()

    def remove(self, existing):
        if existing is None:
            return {"status": "absent"}
        if existing.get("status") != "stopped":
            self.act("stop" if self.p["force"] else "shut down", self.stop)
        self.act("delete with its disks", self.delete)
        return {"status": "absent"}

    def task(self, doing, start, timeout=None):
        """Run one of the VM's PVE tasks (start() returns its UPID) to its end."""
        p = self.p
        self.client.run_task(f"VM {p['vmid']}: {doing}", p["node"], start, timeout or p["timeout"])

    def stop(self):
        status, stop_timeout = self.qemu.status, self.p["stop_timeout"]
        if self.p["force"]:
            self.task("stopping it", lambda: status.stop.post())
        else:  # PVE's own shutdown timeout ends the task with an error; the wait allows a little more than that.
            self.task("shutting it down", lambda: status.shutdown.post(timeout=stop_timeout), stop_timeout + 30)

    def reboot(self):
        status = self.qemu.status
        if self.p["force"]:
            self.task("resetting it", lambda: status.reset.post())
        else:
            self.task("rebooting it", lambda: status.reboot.post(timeout=self.p["stop_timeout"]))

    def delete(self):
        self.task("deleting it", lambda: self.qemu.delete(purge=1, **{"destroy-unreferenced-disks": 1}))

    def start(self):
        p = self.p
        attempts = p["start_retries"] + 1
        for attempt in range(1, attempts + 1):
            try:
                self.task("starting it", lambda: self.qemu.status.start.post())
                return
            except PveFailure:
                if attempt == attempts:
                    raise
                time.sleep(p["start_retry_delay"])

    def wait_for_address(self):
        p = self.p
        deadline = time.monotonic() + p["address_timeout"]
        last = "no answer yet"
        while True:
            try:
                answer = self.qemu.agent("network-get-interfaces").get()
                address = first_ipv4((answer or {}).get("result"))
                if address:
                    return address
                last = "the agent reports no IPv4 address yet"
            except Exception as error:  # proxmoxer/requests: "not yet" while the guest boots, else fatal
                if not AGENT_NOT_YET.search(str(error)):
                    self.fail([f"reading the guest agent failed: {error}"])
                last = str(error)
            if time.monotonic() + p["address_poll_interval"] > deadline:
                self.fail(
                    [
                        "no IPv4 address from the guest agent within {} s (last answer: {})".format(
                            p["address_timeout"], last
                        )
                    ]
                )
            time.sleep(p["address_poll_interval"])

    def fail(self, problems):
        self.fail_with("VM {}: {}".format(self.p["vmid"], "; ".join(problems)))

    def fail_with(self, msg):
        self.module.fail_json(
            msg=msg, changes=self.changes, vmid=self.p["vmid"], node=self.p["node"], retries=self.client.retries
        )


def main():
    module = AnsibleModule(
        argument_spec=pve_argument_spec(
            vmid={"type": "int", "required": True},
            node={"type": "str"},
            name={"type": "str"},
            template_vmid={"type": "int"},
            template_node={"type": "str"},
            full_clone={"type": "bool", "default": True},
            storage={"type": "str"},
            cores={"type": "int"},
            memory_mb={"type": "int"},
            disk={"type": "str", "default": "scsi0"},
            disk_gb={"type": "int"},
            tags={"type": "list", "elements": "str"},
            description={"type": "str"},
            agent={"type": "bool"},
            cloud_init_seed_url={"type": "str", "no_log": True},
            cloud_init_datasource={"type": "str", "default": "nocloud-net", "choices": ["nocloud-net", "nocloud"]},
            remove_cloud_init_drives={"type": "bool"},
            cloud_init_user={"type": "str"},
            cloud_init_ssh_keys={"type": "list", "elements": "str", "no_log": False},
            cloud_init_ipconfig0={"type": "str"},
            cloud_init_nameserver={"type": "str"},
            cloud_init_drive={"type": "str", "default": "ide2"},
            cloud_init_drive_storage={"type": "str"},
            firewall_groups={"type": "list", "elements": "str", "default": []},
            firewall_groups_absent={"type": "list", "elements": "str", "default": []},
            state={
                "type": "str",
                "default": "present",
                "choices": ["present", "started", "stopped", "restarted", "absent"],
            },
            force={"type": "bool", "default": False},
            stop_timeout={"type": "int", "default": 120},
            start_retries={"type": "int", "default": 0},
            start_retry_delay={"type": "int", "default": 5},
            wait_for_address={"type": "bool", "default": False},
            address_timeout={"type": "int", "default": 300},
            address_poll_interval={"type": "float", "default": 1.0},
            timeout={"type": "int", "default": 900},
        ),
        required_one_of=[("api_password", "api_token_id")],
        required_together=[("api_token_id", "api_token_secret")],
        supports_check_mode=True,
    )
    if module.params["remove_cloud_init_drives"] is None:
        module.params["remove_cloud_init_drives"] = module.params["cloud_init_seed_url"] is not None
    client = PveClient(module)
    converger = VmConverger(module, client)
    try:
        result = converger.run()
    except PveFailure as error:  # its message names the VM and the step
        converger.fail_with(str(error))
    module.exit_json(
        changed=bool(converger.changes),
        changes=converger.changes,
        vmid=module.params["vmid"],
        node=module.params["node"],
        retries=client.retries,
        **result,
    )


if __name__ == "__main__":
    main()
