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
  - Only the records of the trusted providers (O(provider_ids)) are used; any key can register a host under any
    name, so records of other providers are ignored. When two trusted providers register the same name, the
    record of the one listed first in O(provider_ids) is used and a warning names both.
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
    description:
      - The providers whose host records are used (ids as the registry shows them, 64 hex digits), in order of
        precedence; required, there is no "every provider".
      - The engine passes E(DISCOVERY_TRUSTED_PROVIDERS) (this provider's own id unless configured) to playbook
        runs and writes it to C(.run/discovery.env).
    type: list
    elements: str
    env:
      - name: DISCOVERY_TRUSTED_PROVIDERS
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
provider_ids:
  - 5f0c6e1d2a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5
keyed_groups:
  - key: discovery_provider_id[:12]
    prefix: provider
"""

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
        providers = self._trusted_providers()
        group = self.get_option("group")
        try:
            records = registry.request("GET", "/api/v1/hosts", query={"group": group} if group else None)
        except RegistryError as exc:
            raise AnsibleParserError(f"cannot read the discovery registry: {exc}") from None
        for record in self._chosen(records, providers):
            self._add(record)

    def _trusted_providers(self):
        providers = [p.strip().lower() for p in self.get_option("provider_ids") or [] if p and p.strip()]
        if not providers:
            raise AnsibleParserError(
                "discovery: no trusted providers; set provider_ids or DISCOVERY_TRUSTED_PROVIDERS to the provider "
                "ids whose hosts to use (the engine writes its own to .run/discovery.env)"
            )
        return list(dict.fromkeys(providers))

    def _chosen(self, records, providers):
        """One record per name, from the trusted providers only: the first listed provider's."""
        rank = {provider: i for i, provider in enumerate(providers)}
        chosen = {}
        for record in sorted((r for r in records if r["provider_id"] in rank), key=lambda r: rank[r["provider_id"]]):
            kept = chosen.setdefault(record["name"], record)
            if kept is not record:
                display.warning(
                    f"discovery: host {record['name']} is registered by trusted providers {kept['provider_id']} and "
                    f"{record['provider_id']}; using the record of {kept['provider_id']} (listed first in provider_ids)"
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
