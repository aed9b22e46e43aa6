# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
name: hosts
short_description: Hosts registered in the discovery registry
description:
  - Reads C(GET /api/v1/hosts) of the discovery registry and adds every host with C(ansible_host),
    C(ansible_port), C(ansible_user) (when registered), its registered groups and variables, plus
    C(discovery_provider_id) and C(discovery_instance_id).
  - The configuration file's name must end in C(discovery.yml) or C(discovery.yaml).
  - Registered values are data, never templates, and a registered host cannot set C(ansible_*) variables
    (the registry refuses them), so registering a host cannot run anything on the controller.
  - When two providers register the same name, the most recently updated record wins and a warning names the other.
extends_documentation_fragment:
  - constructed
options:
  plugin:
    description: The name of this plugin.
    type: str
    required: true
    choices: [provisioner.discovery.hosts]
  url:
    description: Base URL of the discovery registry.
    type: str
    required: true
    env:
      - name: DISCOVERY_URL
  read_token:
    description: The registry's E(DISCOVERY_READ_TOKEN), sent as a bearer token; not needed when the registry has none.
    type: str
    env:
      - name: DISCOVERY_READ_TOKEN
  group:
    description: Only hosts registered in this group.
    type: str
  provider_ids:
    description: Only hosts registered by these providers (ids as the registry shows them); empty means all.
    type: list
    elements: str
    default: []
  timeout:
    description: Seconds to wait for the registry.
    type: int
    default: 10
  validate_certs:
    description: Verify the registry's TLS certificate (HTTPS URLs).
    type: bool
    default: true
  ca_path:
    description: CA bundle to verify the registry's certificate with.
    type: path
"""

EXAMPLES = r"""
# inventory/discovery.yml; run: ansible-inventory -i inventory/discovery.yml --graph
plugin: provisioner.discovery.hosts
group: visa
keyed_groups:
  - key: discovery_provider_id[:12]
    prefix: provider
"""

from datetime import datetime

from ansible.errors import AnsibleParserError
from ansible.plugins.inventory import BaseInventoryPlugin, Constructable
from ansible.utils.display import Display
from ansible_collections.provisioner.discovery.plugins.module_utils.registry import Registry, RegistryError

display = Display()


class InventoryModule(BaseInventoryPlugin, Constructable):
    NAME = "provisioner.discovery.hosts"

    def verify_file(self, path):
        return super().verify_file(path) and path.endswith(("discovery.yml", "discovery.yaml"))

    def parse(self, inventory, loader, path, cache=True):
        super().parse(inventory, loader, path, cache)
        self._read_config_data(path)
        registry = Registry(
            self.get_option("url"),
            read_token=self.get_option("read_token"),
            timeout=self.get_option("timeout"),
            validate_certs=self.get_option("validate_certs"),
            ca_path=self.get_option("ca_path"),
        )
        group = self.get_option("group")
        try:
            records = registry.request("GET", "/api/v1/hosts", query={"group": group} if group else None)
        except RegistryError as exc:
            raise AnsibleParserError(f"cannot read the discovery registry: {exc}") from None
        for record in self._chosen(records):
            self._add(record)

    def _chosen(self, records):
        """One record per name (the newest), from the configured providers only."""
        providers = set(self.get_option("provider_ids"))
        chosen = {}
        for record in sorted(records, key=lambda r: datetime.fromisoformat(r["updated_at"]), reverse=True):
            if providers and record["provider_id"] not in providers:
                continue
            kept = chosen.setdefault(record["name"], record)
            if kept is not record:
                display.warning(
                    f"discovery: host {record['name']} is registered by providers {kept['provider_id']} and "
                    f"{record['provider_id']}; using the newer record of {kept['provider_id']}"
                )
        return chosen.values()

    def _add(self, record):
        name = record["name"]
        self.inventory.add_host(name)
        for group in record["groups"]:
            self.inventory.add_group(group)
            self.inventory.add_child(group, name)
        hostvars = dict(record["vars"])
        hostvars.update(
            ansible_host=record["address"],
            ansible_port=record["ssh_port"],
            discovery_provider_id=record["provider_id"],
            discovery_instance_id=record["instance_id"],
        )
        if record["ssh_user"]:
            hostvars["ansible_user"] = record["ssh_user"]
        for key, value in hostvars.items():
            self.inventory.set_variable(name, key, value)
        strict = self.get_option("strict")
        self._set_composite_vars(self.get_option("compose"), hostvars, name, strict=strict)
        self._add_host_to_composed_groups(self.get_option("groups"), hostvars, name, strict=strict)
        self._add_host_to_keyed_groups(self.get_option("keyed_groups"), hostvars, name, strict=strict)
