# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Filters of the verify role (roles/verify): its checks, score and report, computed in Python.

`expected` is what was requested (the role's verify_* inputs without the prefix, __verify_expected) and `observed`
what the role read (__verify_observed); plugins/plugin_utils/verify_score.py describes both.
"""

from ansible_collections.provisioner.proxmox.plugins.plugin_utils import verify_score


def verify_input_problems(expected):
    """The input errors the role's argument spec cannot express (an empty list when there are none)."""
    return verify_score.input_problems(expected)


def verify_facts(observed, expected):
    """What the role's tasks decide on: exists, status, seed_applies, guest_applies, guest_address, guest_up,
    guest_home, known_hosts."""
    return verify_score.Observation(observed, expected).for_tasks(expected)


def verify_result(observed, expected):
    """The fact verify_result: {vmid, score, threshold, passed, checks: [{name, weight, expected, actual, pass}]}."""
    return verify_score.result(observed, expected)


def verify_report(result, exists):
    """The report's lines: the headline, then one line per check."""
    return verify_score.report(result, exists)


def verify_failure(result, exists):
    """The message of a VM that failed: the headline and the checks that failed."""
    return verify_score.failure(result, exists)


class FilterModule:
    def filters(self):
        return {
            "verify_input_problems": verify_input_problems,
            "verify_facts": verify_facts,
            "verify_result": verify_result,
            "verify_report": verify_report,
            "verify_failure": verify_failure,
        }
