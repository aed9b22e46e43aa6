"""What a run leaves behind when its worker dies under it: its playbook processes and its inputs.

ansible-runner starts ansible-playbook in a session of its own, and Ansible starts each fork in a session of its
own too, so a killed worker leaves the playbook and its forks running. Before another worker runs those jobs again,
a worker on the same machine kills every process whose command line names the run's directory (the run id is a
UUID: nothing else names it). A run that ends canceled or timed out is cleaned the same way: ansible-runner stops
ansible-playbook, not the forks that run its modules.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
from pathlib import Path
from typing import Protocol

log = logging.getLogger(__name__)

# A run directory's inputs: the inventory holds every VM's seed URL (with its token).
RUN_INPUTS = ("inventory", "env", "project")


class Run(Protocol):
    @property
    def run_id(self) -> str: ...

    @property
    def pgid(self) -> int | None: ...


def kill_run(run: Run) -> bool:
    """SIGKILL every process of the run; True if there was one."""
    return kill_run_processes(run.run_id)


def kill_run_processes(run_id: str) -> bool:
    """SIGKILL ansible-playbook of run_id and every fork of it, each with its process group (a fork runs its module in
    a session of its own); True if there was one. A process belongs to the run when its command line names the run's
    directory: ansible-playbook's inventory path holds it, and Ansible's forks keep their parent's command line."""
    marker = f"/{run_id}/".encode()
    groups = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if marker in (entry / "cmdline").read_bytes():
                groups.add(os.getpgid(int(entry.name)))
        except (OSError, ProcessLookupError):
            continue
    for pgid in groups - {0, 1, os.getpgrp()}:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
    if groups:
        log.warning("killed the playbook processes of run %s (%d process groups)", run_id, len(groups))
    return bool(groups)


def scrub_run_inputs(runs_dir: Path, run_ids: list[str]) -> None:
    """Remove these runs' inputs: a run whose worker died never removed its own."""
    for run_id in run_ids:
        if not run_id or "/" in run_id or run_id.startswith("."):
            continue
        for name in RUN_INPUTS:
            shutil.rmtree(runs_dir / run_id / name, ignore_errors=True)
