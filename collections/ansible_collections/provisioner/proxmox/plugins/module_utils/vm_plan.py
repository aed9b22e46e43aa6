# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Changes as the vm module's parts plan them: the same list is carried out, or only reported in check mode.

Each part's planner compares what the VM has with what was asked and returns Change(label, apply) items; no
part has a check-mode branch of its own, so what check mode reports is what a real run does.
"""

from collections import namedtuple

# label: what the change does, as the module's `changes` result shows it (never a secret value).
# apply: a callable that makes the change (requests to Proxmox); not called in check mode.
Change = namedtuple("Change", ["label", "apply"])


def carry_out(changes, check_mode, done):
    """Append each change's label to done, in order, and apply it unless in check mode."""
    for change in changes:
        done.append(change.label)
        if not check_mode:
            change.apply()
