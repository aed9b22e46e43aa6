#!/usr/bin/python
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later


DOCUMENTATION = r"""
module: vm
short_description: Converge one Proxmox VE QEMU VM from a template in one call
description:
  - Clones a template to an explicit VMID when the VM does not exist, then converges what is asked for and
    nothing else. Each part acts only when its options are given, so a power, firewall or delete call reads
    and changes nothing of the config. In this order, with one config read and at most one config update
    (C(PUT /nodes/{node}/qemu/{vmid}/config), guarded by the config digest).
  - The spec (name, cores, memory, tags, description, guest agent option), the NoCloud seed in the SMBIOS
    serial (C(ds=nocloud-net;s=<url>), base64, the VM's uuid kept) and the removal of Proxmox cloud-init
    drives; the boot disk grows to I(disk_gb) (it never shrinks); firewall security-group rules are enabled,
    deleted or added; the power state; then the module waits for an IPv4 address from the guest agent.
  - Every input and cluster check (node online, template, VMID owner, security groups) runs before the
    first change, so bad input changes nothing. A VMID held by another guest is never adopted.
  - Check mode makes the same reads and reports the changes the same planners compute for a real run; for a
    VM that does not exist yet they compare with the template's config and firewall rules, which the clone
    copies.
  - Lock errors (a clone still copying, a backup), proxy errors (502-504) and an unreachable node (595) are
    retried with exponential backoff for up to I(retry_timeout) seconds; a task that ends on a lock error is
    started again.
  - The connection options and their C(PROXMOX_*) environment fallbacks are community.proxmox's.
  - It exists because a create is CPU-bound on the controller with one module process per step (eight per
    VM with the community.proxmox modules); this is one process per VM. Its parts are in the collection's
    module_utils (C(vm_checks), C(vm_clone), C(vm_spec), C(vm_seed), C(vm_config), C(vm_disk), C(vm_firewall),
    C(vm_power), C(vm_delete), C(vm_address)).
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

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.provisioner.proxmox.plugins.module_utils import (
    vm_address,
    vm_checks,
    vm_clone,
    vm_config,
    vm_delete,
    vm_disk,
    vm_firewall,
    vm_power,
    vm_seed,
    vm_spec,
)
from ansible_collections.provisioner.proxmox.plugins.module_utils.pve import PveClient, PveFailure, pve_argument_spec
from ansible_collections.provisioner.proxmox.plugins.module_utils.vm_api import VmApi, VmProblems
from ansible_collections.provisioner.proxmox.plugins.module_utils.vm_plan import carry_out

ARGUMENT_SPEC = pve_argument_spec(
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
)


def converge(vm, p, check_mode, done):
    """Check, then carry out (or in check mode only report, in done) what the asked parts plan; the result."""
    guest = vm_checks.preflight(vm, p)
    if p["state"] == "absent":
        carry_out(vm_delete.changes(vm, p, guest), check_mode, done)
        return {"status": "absent"}
    cloning = guest is None
    if cloning:
        carry_out(vm_clone.changes(vm, p), check_mode, done)
    config, rules = observe(vm, p, from_template=cloning and check_mode)
    status = "stopped" if cloning else guest.get("status", "stopped")
    changes, status = plan(vm, p, config, rules, status)
    carry_out(changes, check_mode, done)
    if cloning and check_mode:
        return {"status": "absent"}
    result = {"status": status}
    if vm_address.is_asked(p) and not check_mode:
        result["address"] = vm_address.wait_for_address(vm, p)
    return result


def observe(vm, p, from_template):
    """(config, firewall rules) as the asked parts need them, None for what no asked part compares with.

    from_template: the VM is not cloned yet (check mode); the clone will have the template's.
    """
    config = rules = None
    if vm_spec.is_asked(p) or vm_seed.is_asked(p) or vm_disk.is_asked(p):
        config = vm_clone.template_config(vm, p) if from_template else vm.read_config()
    if vm_firewall.is_asked(p):
        rules = vm_clone.template_firewall_rules(vm, p) if from_template else vm.read_firewall_rules()
    return config, rules


def plan(vm, p, config, rules, status):
    """(every change the asked parts need, in the order they are made; the power state after them)."""
    changes = []
    if config is not None:
        problems = vm_checks.config_problems(p, config)
        if problems:
            raise VmProblems(problems)
        changes.extend(vm_config.changes(vm, p, config, vm_seed.seed_serial(p)))
        if vm_disk.is_asked(p):
            changes.extend(vm_disk.changes(vm, p, config))
    if rules is not None:
        changes.extend(vm_firewall.changes(vm, p, rules))
    power, status = vm_power.changes(vm, p, status)
    return changes + power, status


def main():
    module = AnsibleModule(
        argument_spec=ARGUMENT_SPEC,
        required_one_of=[("api_password", "api_token_id")],
        required_together=[("api_token_id", "api_token_secret")],
        supports_check_mode=True,
    )
    p = module.params
    if p["remove_cloud_init_drives"] is None:
        p["remove_cloud_init_drives"] = p["cloud_init_seed_url"] is not None
    serial = vm_seed.seed_serial(p)
    if serial is not None:
        module.no_log_values.add(serial)
    client = PveClient(module)
    vm = VmApi(client, p["vmid"], p["node"], p["timeout"])
    done = []
    try:
        result = converge(vm, p, module.check_mode, done)
    except (PveFailure, VmProblems) as error:
        # A PveFailure names the VM and the step; problems are prefixed here.
        msg = str(error) if isinstance(error, PveFailure) else "VM {}: {}".format(p["vmid"], error)
        module.fail_json(msg=msg, changes=done, vmid=p["vmid"], node=p["node"], retries=client.retries)
    module.exit_json(changed=bool(done), changes=done, vmid=p["vmid"], node=p["node"], retries=client.retries, **result)


if __name__ == "__main__":
    main()
