#!/usr/bin/python
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
module: host
short_description: Register or deregister a provisioned host in the discovery registry
description:
  - One signed request - the registry answers whether the record changed, so a second run reports no change.
    In check or diff mode it reads the provider's record first (a signed C(GET /api/v1/hosts)) and writes only
    a difference.
  - Runs in the controller's task process (an action plugin of the same name), without a module process of its
    own - a batch of 50 creates registers its 50 VMs for a fraction of a CPU-second.
  - V(present) registers or updates the host (C(POST /api/v1/hosts)); V(absent) removes it
    (C(DELETE /api/v1/hosts/{name})). Every request is signed with the provider key, so a provider can change
    only its own records.
extends_documentation_fragment:
  - provisioner.discovery.connection
options:
  name:
    description: Inventory name of the host (letters, digits, V(.), V(_), V(-); at most 63 characters).
    type: str
    required: true
  address:
    description: IP address or DNS name Ansible connects to (C(ansible_host)). Required with O(state=present).
    type: str
  ssh_port:
    description: SSH port (C(ansible_port)).
    type: int
    default: 22
  ssh_user:
    description: SSH user (C(ansible_user)); omitted when not set.
    type: str
  groups:
    description: Inventory groups of the host.
    type: list
    elements: str
    default: []
  vars:
    description: Host variables (names must not start with C(ansible_)).
    type: dict
    default: {}
  instance_id:
    description: The provisioner's id of the machine (the VMID).
    type: str
  state:
    description: Whether the host is registered.
    type: str
    choices: [present, absent]
    default: present
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
author:
  - proxmox-provisioner maintainers
"""

EXAMPLES = r"""
- name: Register a VM once it has an address
  provisioner.discovery.host:
    name: web-1
    address: 10.0.3.17
    ssh_user: visa
    groups: [visa, web]
    vars:
      role: frontend
    instance_id: "100042"

- name: Deregister it
  provisioner.discovery.host:
    name: web-1
    state: absent
"""

RETURN = r"""
host:
  description: The registry's record of the host after the task (null when absent).
  returned: always
  type: dict
provider_id:
  description: This provider's id (the hex of the key's public half).
  returned: always
  type: str
"""

import ipaddress

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.provisioner.discovery.plugins.module_utils.registry import (
    connection_argument_spec,
    exit_converged,
)

HOSTS = "/api/v1/hosts"
# The registry's answer to a POST says whether the record changed (discovery/routes.py).
CHANGED_HEADER = "X-Registry-Changed"
COMPARED = ("address", "ssh_port", "ssh_user", "groups", "vars", "instance_id")


def wanted_record(params):
    """The record as the registry will store it (same normalisation), to compare with what it has."""
    address = params["address"]
    try:
        address = str(ipaddress.ip_address(address))
    except ValueError:
        address = address.lower()
    return {
        "name": params["name"],
        "address": address,
        "ssh_port": params["ssh_port"],
        "ssh_user": params["ssh_user"],
        "groups": list(dict.fromkeys(params["groups"])),
        "vars": params["vars"],
        "instance_id": params["instance_id"],
    }


def comparable(record):
    return {field: record.get(field) for field in COMPARED} if record else None


def current_record(registry, name):
    found = registry.request("GET", HOSTS, query={"provider_id": registry.provider_id, "name": name})
    return found[0] if found else None


def converge(module, registry):
    """One request in a plain run (the registry says whether it changed anything); check and diff mode read
    the current record first, to report the difference without writing."""
    params = module.params
    if module.check_mode or module._diff:
        return converge_by_comparing(module, registry)
    if params["state"] == "absent":
        gone = registry.request("DELETE", f"{HOSTS}/{params['name']}", missing_ok=True)
        return gone is not None, None, None
    after, headers = registry.exchange("POST", HOSTS, payload=wanted_record(params))
    return headers.get(CHANGED_HEADER, "true") != "false", after, None


def converge_by_comparing(module, registry):
    params = module.params
    before = current_record(registry, params["name"])
    if params["state"] == "absent":
        if before is None:
            return False, None, before
        if not module.check_mode:
            registry.request("DELETE", f"{HOSTS}/{params['name']}", missing_ok=True)
        return True, None, before
    wanted = wanted_record(params)
    if comparable(before) == comparable(wanted):
        return False, before, before
    after = wanted if module.check_mode else registry.request("POST", HOSTS, payload=wanted)
    return True, after, before


ARGUMENT_SPEC = dict(
    connection_argument_spec(),
    name=dict(type="str", required=True),
    address=dict(type="str"),
    ssh_port=dict(type="int", default=22),
    ssh_user=dict(type="str"),
    groups=dict(type="list", elements="str", default=[]),
    vars=dict(type="dict", default={}),
    instance_id=dict(type="str"),
    state=dict(type="str", choices=["present", "absent"], default="present"),
)
REQUIRED_IF = [("state", "present", ["address"])]


def main():
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, required_if=REQUIRED_IF, supports_check_mode=True)
    exit_converged(module, converge, "host", comparable)


if __name__ == "__main__":
    main()
