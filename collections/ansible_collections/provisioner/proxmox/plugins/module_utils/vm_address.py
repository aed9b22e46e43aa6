# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Waiting for the guest agent's IPv4 address (a read, after the changes; never in check mode)."""

import re
import time

from ansible_collections.provisioner.proxmox.plugins.module_utils.vm_api import VmProblems

# The guest agent is not up yet (still booting): "QEMU guest agent is not running", a guest-ping timeout.
AGENT_NOT_YET = re.compile(r"guest agent is not running|got timeout|guest-ping", re.I)


def input_problems(p):
    if p["wait_for_address"] and p["state"] not in ("started", "restarted"):
        return ["wait_for_address needs state=started or state=restarted"]
    return []


def is_asked(p):
    return bool(p["wait_for_address"])


def wait_for_address(vm, p):
    """Poll network-get-interfaces until an IPv4 address shows; "not yet" answers are waited out."""
    deadline = time.monotonic() + p["address_timeout"]
    last = "no answer yet"
    while True:
        try:
            answer = vm.qemu.agent("network-get-interfaces").get()
            address = first_ipv4((answer or {}).get("result"))
            if address:
                return address
            last = "the agent reports no IPv4 address yet"
        except Exception as error:  # proxmoxer/requests: "not yet" while the guest boots, else fatal
            if not AGENT_NOT_YET.search(str(error)):
                raise VmProblems([f"reading the guest agent failed: {error}"]) from error
            last = str(error)
        if time.monotonic() + p["address_poll_interval"] > deadline:
            raise VmProblems(
                [
                    "no IPv4 address from the guest agent within {} s (last answer: {})".format(
                        p["address_timeout"], last
                    )
                ]
            )
        time.sleep(p["address_poll_interval"])


def first_ipv4(interfaces):
    """The first IPv4 address that is neither loopback nor link-local, or None."""
    for interface in interfaces or []:
        if interface.get("name") == "lo":
            continue
        for address in interface.get("ip-addresses") or []:
            ip = str(address.get("ip-address") or "")
            if address.get("ip-address-type") == "ipv4" and not ip.startswith(("127.", "169.254.")):
                return ip
    return None
