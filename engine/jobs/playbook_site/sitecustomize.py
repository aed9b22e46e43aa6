"""Imported at start by every Python process of a playbook run (the run puts this directory on its PYTHONPATH):
each session the run starts gets the run's CPU niceness as its scheduling autogroup's.

Why: ansible-playbook runs in a session of its own (ansible-runner's pty) and every Ansible fork calls setsid(), so
each is its own autogroup when the kernel groups by session (`/proc/sys/kernel/sched_autogroup_enabled`). A plain
nice value only orders processes within one autogroup, so 50 forks at nice 10 still took 50 shares of the CPU
against the API's one: a burst of POSTs sent during a 50-VM run waited seconds. An autogroup's own nice weighs it
against the others (sched(7)); a process may raise it for its own group.
"""

import os

_NICE = os.environ.get("PROVISIONER_PLAYBOOK_NICE", "")


def _lower_own_group() -> None:
    """The autogroup of this process's session, if this process leads the session (a group of its own)."""
    if not _NICE.isdigit() or os.getsid(0) != os.getpid():
        return
    try:
        with open("/proc/self/autogroup", "w", encoding="ascii") as autogroup:
            autogroup.write(str(min(19, int(_NICE))))
    except OSError:
        pass  # no autogroups here: the plain nice value the processes inherit is what counts


_setsid = os.setsid


def _setsid_lowered() -> None:
    _setsid()
    _lower_own_group()


_lower_own_group()
os.setsid = _setsid_lowered
