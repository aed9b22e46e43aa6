# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""One VM's Proxmox endpoints for the vm module's parts, and how a part says the VM cannot be converged."""


class VmProblems(Exception):
    """What is wrong (bad input, a foreign guest, a missing disk...): the module fails with all of it at once."""

    def __init__(self, problems):
        super().__init__("; ".join(problems))
        self.problems = list(problems)


class VmApi:
    """The VM's requests and PVE tasks, each named for the error message, through the client's retries."""

    def __init__(self, client, vmid, node, timeout):
        self.client = client
        self.api = client.api
        self.vmid = vmid
        self.node = node
        self.timeout = timeout

    @property
    def qemu(self):
        return self.api.nodes(self.node).qemu(self.vmid)

    def request(self, what, request):
        return self.client.call(f"VM {self.vmid}: {what}", request)

    def task(self, doing, start, timeout=None):
        """Run one of the VM's PVE tasks (start() returns its UPID) to its end."""
        self.client.run_task(f"VM {self.vmid}: {doing}", self.node, start, timeout or self.timeout)

    def read_config(self):
        return self.request("reading its configuration", lambda: self.qemu.config.get())

    def read_firewall_rules(self):
        return self.request("reading its firewall rules", lambda: self.qemu.firewall.rules.get())
