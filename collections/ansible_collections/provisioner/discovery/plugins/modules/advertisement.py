#!/usr/bin/python
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
module: advertisement
short_description: Post or withdraw this provider's signed advertisement of free capacity
description:
  - Reads the provider's advertisement first (C(GET /api/v1/advertisements/{provider_id})) and reports a change
    only when it differs from the wanted one.
  - The registry forgets advertisements after its TTL (5 minutes by default), so with O(refresh=true) an unchanged
    advertisement is posted again to keep it alive; that is not reported as a change.
  - V(absent) withdraws the advertisement (C(DELETE), signed).
extends_documentation_fragment:
  - provisioner.discovery.connection
options:
  ip_address:
    description: IPv4 or IPv6 address requestors reach the provider at. Required with O(state=present).
    type: str
  country:
    description: ISO 3166-1 alpha-2 country code. Required with O(state=present).
    type: str
  resources:
    description: Free capacity. Required with O(state=present).
    type: dict
    suboptions:
      cpu:
        description: vCPUs.
        type: int
        required: true
      memory:
        description: Memory, GB.
        type: int
        required: true
      storage:
        description: Storage, GB.
        type: int
        required: true
  provider_name:
    description: Name requestors see.
    type: str
  platform:
    description: Architecture, for example V(x86_64).
    type: str
  pricing:
    description: Monthly prices per unit (C(usd_per_core_month), C(usd_per_gb_ram_month), ...).
    type: dict
  refresh:
    description: Post an unchanged advertisement again, so that it does not expire.
    type: bool
    default: true
  state:
    description: Whether the advertisement is published.
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
- name: Advertise 8 vCPUs, 16 GB and 200 GB
  provisioner.discovery.advertisement:
    ip_address: 192.0.2.10
    country: SE
    provider_name: lab-cluster
    platform: x86_64
    resources: {cpu: 8, memory: 16, storage: 200}
"""

RETURN = r"""
advertisement:
  description: The registry's record after the task (null when absent).
  returned: always
  type: dict
provider_id:
  description: This provider's id.
  returned: always
  type: str
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.provisioner.discovery.plugins.module_utils.registry import (
    connection_argument_spec,
    exit_converged,
)

ADVERTISEMENTS = "/api/v1/advertisements"
COMPARED = ("ip_address", "country", "resources", "provider_name", "platform", "pricing")


def wanted_advertisement(params):
    wanted = {
        "ip_address": params["ip_address"],
        "country": params["country"].upper(),
        "resources": params["resources"],
        "provider_name": params["provider_name"],
        "platform": params["platform"],
        "pricing": params["pricing"],
    }
    return {key: value for key, value in wanted.items() if value is not None}


def comparable(record):
    if not record:
        return {}
    return {key: record.get(key) for key in COMPARED if record.get(key) is not None}


def converge(module, registry):
    params = module.params
    path = f"{ADVERTISEMENTS}/{registry.provider_id}"
    before = registry.request("GET", path, missing_ok=True)
    if params["state"] == "absent":
        if before is not None and not module.check_mode:
            registry.request("DELETE", path, missing_ok=True)
        return before is not None, None, before
    wanted = wanted_advertisement(params)
    changed = comparable(before) != comparable(wanted)
    if module.check_mode or not (changed or params["refresh"]):
        return changed, wanted if changed else before, before
    return changed, registry.request("POST", ADVERTISEMENTS, payload=wanted), before


def main():
    module = AnsibleModule(
        argument_spec=dict(
            connection_argument_spec(),
            ip_address=dict(type="str"),
            country=dict(type="str"),
            resources=dict(
                type="dict",
                options=dict(
                    cpu=dict(type="int", required=True),
                    memory=dict(type="int", required=True),
                    storage=dict(type="int", required=True),
                ),
            ),
            provider_name=dict(type="str"),
            platform=dict(type="str"),
            pricing=dict(type="dict"),
            refresh=dict(type="bool", default=True),
            state=dict(type="str", choices=["present", "absent"], default="present"),
        ),
        required_if=[("state", "present", ["ip_address", "country", "resources"])],
        supports_check_mode=True,
    )
    exit_converged(module, converge, "advertisement", comparable)


if __name__ == "__main__":
    main()
