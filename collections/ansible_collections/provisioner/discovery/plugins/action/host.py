# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""provisioner.discovery.host in the controller's task process.

The module's work is two HTTPS requests at most, and every module run is a new Python process (~0.4 CPU-s on
the controller): for a batch of 50 creates that was as much CPU as creating the VMs. This action plugin runs the
module's own code (argument spec, converge, result) in the task's worker instead; registry connections come from
the controller's environment (DISCOVERY_URL, DISCOVERY_PROVIDER_KEY_FILE), as the engine sets it.
"""

from __future__ import annotations

from ansible.plugins.action import ActionBase
from ansible_collections.provisioner.discovery.plugins.module_utils.registry import RegistryError, converged
from ansible_collections.provisioner.discovery.plugins.modules.host import (
    ARGUMENT_SPEC,
    REQUIRED_IF,
    comparable,
    converge,
)


class _Task:
    """What converge() uses of an AnsibleModule."""

    def __init__(self, params, check_mode, diff):
        self.params = params
        self.check_mode = check_mode
        self._diff = diff


class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    _requires_connection = False

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        _, params = self.validate_argument_spec(argument_spec=ARGUMENT_SPEC, required_if=REQUIRED_IF)
        task = _Task(params, self._play_context.check_mode, self._play_context.diff)
        try:
            result.update(converged(task, converge, "host", comparable))
        except RegistryError as exc:
            result.update(failed=True, msg=str(exc), status=exc.status, code=exc.code)
        return result
