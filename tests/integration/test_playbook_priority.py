"""The playbook processes yield the CPU to the API: every session a run starts (ansible-playbook's, and each Ansible
fork's after its setsid()) gets PROVISIONER_JOB_NICE as its scheduling autogroup's nice (engine/jobs/playbook_site)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from engine.jobs.runner import PLAYBOOK_SITE

PROBE = """
import os, sys
def group():
    return open("/proc/self/autogroup").read().split()[-1]
print("leader", group(), flush=True)
if os.fork() == 0:
    print("child", group(), flush=True)  # same session: the leader's group
    os.setsid()
    print("new-session", group(), flush=True)
    os._exit(0)
os.wait()
"""

pytestmark = pytest.mark.skipif(
    not Path("/proc/self/autogroup").exists(), reason="the kernel groups no sessions (no /proc/self/autogroup)"
)


def groups(env: dict[str, str]) -> dict[str, str]:
    result = subprocess.run(
        ["setsid", sys.executable, "-c", PROBE],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    return dict(line.split() for line in result.stdout.splitlines())


def test_each_session_of_a_run_gets_the_job_niceness_as_its_autogroups():
    assert groups({"PYTHONPATH": str(PLAYBOOK_SITE), "PROVISIONER_PLAYBOOK_NICE": "19"}) == {
        "leader": "19",
        "child": "19",
        "new-session": "19",
    }


def test_without_the_run_environment_nothing_changes():
    assert set(groups({}).values()) == {"0"}
