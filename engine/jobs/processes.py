"""What a run leaves behind when the service dies under it: its playbook processes and its inputs.

ansible-runner starts ansible-playbook in a session (and process group) of its own, so a killed service leaves
the playbook running. Its process group is recorded on the run's jobs (`Store.record_run_process`); before a
restart runs those jobs again, the group is killed. A recorded group is killed only while its leader is still
that run's ansible-playbook (its command line names the run's directory, which the run id names): after a
reboot the number may belong to anything.
"""

from __future__ import annotations

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
    """SIGKILL the run's process group if it is still that run's; True if it was killed."""
    if run.pgid is None or run.pgid <= 1 or not _leads_run(run.pgid, run.run_id):
        return False
    try:
        os.killpg(run.pgid, signal.SIGKILL)
    except ProcessLookupError:
        return False
    log.warning("killed the playbook processes of run %s (process group %d)", run.run_id, run.pgid)
    return True


def scrub_run_inputs(runs_dir: Path) -> None:
    """Remove every run's inputs (call when no run is active): a crashed run never removed its own."""
    if not runs_dir.is_dir():
        return
    for run_dir in runs_dir.iterdir():
        for name in RUN_INPUTS:
            shutil.rmtree(run_dir / name, ignore_errors=True)


def _leads_run(pid: int, run_id: str) -> bool:
    """Is pid an ansible-playbook of this run (its inventory and extra-vars paths hold the run's directory)?"""
    try:
        cmdline = (Path("/proc") / str(pid) / "cmdline").read_bytes()
    except OSError:
        return False
    return run_id.encode() in cmdline
