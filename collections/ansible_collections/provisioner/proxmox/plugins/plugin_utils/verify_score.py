# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The verify role's inputs check, its checks in order, the weighted score and the report.

e is what was requested: the role's verify_* inputs without the prefix (roles/verify/vars/main.yml,
__verify_expected). observed is what the role read (__verify_observed). The score is 100 x the weight of the
checks that passed over the weight of the checks that ran, rounded down; a check whose expectation was not given
does not run.
"""

import json
import re

from ansible_collections.provisioner.proxmox.plugins.plugin_utils import verify_guest, verify_proxmox, verify_seed
from ansible_collections.provisioner.proxmox.plugins.plugin_utils.verify_text import PUBLIC_KEY, as_int, shown

CHECK_NAMES = (
    "name",
    "node",
    "cores",
    "memory",
    "disk",
    "power_state",
    "address",
    "smbios_seed",
    "firewall_groups",
    "seed_meta_data",
    "seed_user",
    "seed_ssh_keys",
    "seed_user_data",
    "guest_ssh_keys",
    "guest_sudo",
    "guest_hostname",
    "guest_metadata",
    "guest_cloud_init",
    "guest_user_data",
)
IPV4 = re.compile(r"^((25[0-5]|2[0-4][0-9]|1?[0-9]?[0-9])\.){3}(25[0-5]|2[0-4][0-9]|1?[0-9]?[0-9])$")
DISK_KEY = re.compile(r"^(ide|sata|scsi|virtio)[0-9]+$")
SEED_URL = re.compile(r"^https?://[^\s;,]+/$")


def input_problems(e):
    """Input errors the role's argument spec cannot express, all at once."""
    weights = e["weights"]
    problems = []
    if not 0 <= as_int(e["threshold"]) <= 100:
        problems.append("verify_threshold must be between 0 and 100 (got {})".format(e["threshold"]))
    lacking = [name for name in CHECK_NAMES if name not in weights]
    if lacking:
        problems.append(
            "verify_weights lacks {} (give every check a weight, see defaults/main.yml)".format(", ".join(lacking))
        )
    unknown = [name for name in weights if name not in CHECK_NAMES]
    if unknown:
        problems.append("verify_weights names unknown checks: " + ", ".join(unknown))
    bad = [name for name, weight in weights.items() if not re.match(r"^[0-9]+$", str(weight))]
    if bad:
        problems.append("verify_weights must be integers of at least 0: " + ", ".join(bad))
    if not DISK_KEY.match(str(e["disk"])):
        problems.append("verify_disk must be a disk key such as scsi0")
    if e["address"] is not None and not IPV4.match(str(e["address"])):
        problems.append("verify_address {} is not an IPv4 address".format(json.dumps(e["address"])))
    if e["seed_url"] and not SEED_URL.match(e["seed_url"]):
        problems.append("verify_seed_url must be an http(s) URL ending in / without ;, or spaces")
    if str(e["guest"]).lower() not in ("auto", "true", "false", "yes", "no"):
        problems.append("verify_guest must be auto, true or false (got {})".format(json.dumps(e["guest"])))
    if verify_guest.guest_mode(e["guest"]) is True and e["user"] is None:
        problems.append("verify_guest true needs verify_user (the user to log in as)")
    if e["guest_host_key"] is not None and not PUBLIC_KEY.match(str(e["guest_host_key"]).strip()):
        problems.append('verify_guest_host_key must be a public key line such as "ssh-ed25519 AAAA... root@host"')
    if not re.match(r"^[1-9][0-9]*$", str(e["guest_timeout"])):
        problems.append(
            "verify_guest_timeout must be a whole number of seconds, at least 1 (got {})".format(e["guest_timeout"])
        )
    return problems


class Observation:
    """Everything the reads say, as the checks and the role's tasks use it."""

    def __init__(self, observed, e):
        self.proxmox = verify_proxmox.ProxmoxFacts(observed, e)
        self.seed = verify_seed.SeedFacts(observed, e)
        self.guest = verify_guest.GuestFacts(observed, e, self.proxmox, self.seed)

    def for_tasks(self, e):
        """What the role's tasks decide on: whether to read the agent, the seed, the guest, and how to log in."""
        return {
            "exists": self.proxmox.exists,
            "status": self.proxmox.status,
            "seed_applies": self.seed.applies,
            "guest_applies": self.guest.applies,
            "guest_address": self.guest.address,
            "guest_up": self.guest.up,
            "guest_home": self.guest.home,
            "known_hosts": verify_guest.known_hosts_line(e, self.guest.address),
        }

    def checks(self, e):
        """Every check that runs, in CHECK_NAMES order: {name, weight, expected, actual, pass}."""
        listed = (
            verify_proxmox.checks(self.proxmox, e)
            + verify_seed.checks(self.seed, e)
            + verify_guest.checks(self.guest, e)
        )
        return [
            {
                "name": name,
                "weight": as_int(e["weights"].get(name, 0)),
                "expected": expected,
                "actual": actual,
                "pass": passed,
            }
            for name, expected, actual, passed in listed
            if expected is not None
        ]


def score(checks):
    total = sum(check["weight"] for check in checks)
    earned = sum(check["weight"] for check in checks if check["pass"])
    return 100 * earned // total if total > 0 else 0


def result(observed, e):
    """verify_result: {vmid, score, threshold, passed, checks}; no secrets. A VM that does not exist never passes."""
    observation = Observation(observed, e)
    checks = observation.checks(e)
    points, threshold = score(checks), as_int(e["threshold"])
    return {
        "vmid": as_int(e["vmid"]),
        "score": points,
        "threshold": threshold,
        "passed": observation.proxmox.exists and points >= threshold,
        "checks": checks,
    }


def headline(verify_result, exists):
    outcome = "passed" if verify_result["passed"] else "failed" if exists else "failed, the VM does not exist"
    return "VM {vmid}: score {score} of 100 (threshold {threshold}): ".format(**verify_result) + outcome


def report(verify_result, exists):
    """The headline, then one line per check: pass or FAIL, its name and weight, what was expected and found."""
    lines = [headline(verify_result, exists)]
    for check in verify_result["checks"]:
        lines.append(
            "{} {} ({}): expected {}, found {}".format(
                "pass" if check["pass"] else "FAIL",
                check["name"],
                check["weight"],
                shown(check["expected"]),
                shown(check["actual"]),
            )
        )
    return lines


def failure(verify_result, exists):
    """The message of a failed verification: the headline and the checks that failed."""
    failed = [check["name"] for check in verify_result["checks"] if not check["pass"]]
    return headline(verify_result, exists) + ("; failed: " + ", ".join(failed) if failed else "")
