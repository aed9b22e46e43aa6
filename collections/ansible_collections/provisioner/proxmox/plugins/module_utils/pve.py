# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Proxmox VE API access for the provisioner.proxmox modules.

The connection is community.proxmox's (the same options and PROXMOX_* environment fallbacks, through its
ProxmoxAnsible class); this adds what converging a VM in one module process needs: retries with backoff on
lock errors and transient failures, and running a PVE task to its end.
"""

import random
import re
import time

from ansible_collections.community.proxmox.plugins.module_utils.proxmox import (
    ProxmoxAnsible,
    proxmox_auth_argument_spec,
)

try:
    from proxmoxer import ResourceException
    from requests.exceptions import ConnectionError as RequestsConnectionError
    from requests.exceptions import Timeout as RequestsTimeout
except ImportError:  # ProxmoxAnsible reports the missing library
    ResourceException = RequestsConnectionError = RequestsTimeout = ()

# Another task holds the guest's config lock (a clone still copying, a backup, a migration), or pmxcfs was
# briefly unavailable: the request was not carried out and can be sent again.
LOCK_ERROR = re.compile(r"can't lock file|is locked \(|cfs-lock|clone not finished", re.I)
# Proxies and pveproxy restarts (502-504) and a node that is briefly unreachable (PVE's 595).
TRANSIENT_STATUS = frozenset((502, 503, 504, 595))


def retry_argument_spec():
    return {
        "retry_timeout": {"type": "int", "default": 120},
    }


class PveFailure(Exception):
    """A request or task that failed for good (after any retries)."""


class TaskFailure(PveFailure):
    """A PVE task that ended with an error (its exit status is the message's tail)."""


def _status(error):
    return getattr(error, "status_code", None)


def is_retryable(error):
    """True for failures that left nothing half-done: lock contention, proxies, refused connections."""
    if isinstance(error, ResourceException):
        return _status(error) in TRANSIENT_STATUS or bool(LOCK_ERROR.search(str(error)))
    if isinstance(error, TaskFailure):
        return bool(LOCK_ERROR.search(str(error)))
    return isinstance(error, (RequestsConnectionError, RequestsTimeout))


class PveClient(ProxmoxAnsible):
    """community.proxmox's authenticated proxmoxer client with retries and task handling."""

    def __init__(self, module):
        super().__init__(module)
        self.api = self.proxmox_api
        self.retry_timeout = module.params.get("retry_timeout") or 0
        self.retries = 0

    def call(self, what, request):
        """request() with retries on retryable failures until retry_timeout; PveFailure(what: error) after."""
        deadline = time.monotonic() + self.retry_timeout
        delay = 0.5
        while True:
            try:
                return request()
            except Exception as error:  # proxmoxer and requests raise several unrelated types
                if not is_retryable(error) or time.monotonic() + delay > deadline:
                    if isinstance(error, PveFailure):
                        raise
                    raise PveFailure(f"{what}: {error}") from error
                self.retries += 1
                time.sleep(delay * random.uniform(0.8, 1.2))
                delay = min(delay * 2, 8.0)

    def run_task(self, what, node, start, timeout):
        """start() returns a UPID; wait for that task. A task that ends on a lock error is started again."""
        return self.call(what, lambda: self.wait_task(what, node, start(), timeout))

    def wait_task(self, what, node, upid, timeout):
        deadline = time.monotonic() + timeout
        delay = 0.1
        while True:
            status = self.call(
                f"{what}: reading the task status", lambda: self.api.nodes(node).tasks(upid).status.get()
            )
            if status.get("status") == "stopped":
                exit_status = str(status.get("exitstatus", ""))
                if exit_status == "OK" or exit_status.startswith("WARNINGS"):
                    return status
                raise TaskFailure("{}: task {} ended with {}".format(what, upid, exit_status or "no exit status"))
            if time.monotonic() > deadline:
                raise PveFailure(f"{what}: task {upid} still running after {timeout} s")
            time.sleep(delay)
            delay = min(delay * 1.5, 2.0)


def pve_argument_spec(**options):
    """community.proxmox's connection options, the retry budget, and the module's own options."""
    spec = proxmox_auth_argument_spec()
    spec.update(retry_argument_spec())
    spec.update(options)
    return spec
