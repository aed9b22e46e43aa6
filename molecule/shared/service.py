"""Start and stop the Molecule scenarios' background services (the Proxmox simulator, the seed server).

  python molecule/shared/service.py start --dir DIR --ready 'PREFIX' [--timeout 60] -- COMMAND [ARG...]
  python molecule/shared/service.py stop --dir DIR [--timeout 30]

`start` runs COMMAND detached from Ansible (its own session, stdin /dev/null, stdout and stderr to
DIR/service.log), records its pid and start time in DIR/service.pid and waits until the log has a line
starting with PREFIX. It prints one JSON object: {"changed": bool, "pid": int, "ready": {key: value of the
`key: value` log lines up to that line}}. A service already running from DIR is not started again (changed
false; it is still waited for). A service that exits or stays silent fails the call with the end of its log.

`stop` ends the process recorded in DIR/service.pid (SIGTERM, SIGKILL after the timeout) only if it is still
the one `start` started (same pid and start time), then removes the pid file. Nothing recorded: changed
false. Both commands exit 1 with a message on stderr when they fail.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

PID_FILE = "service.pid"
LOG_FILE = "service.log"
POLL_SECONDS = 0.1
LOG_TAIL_LINES = 30


class ServiceError(Exception):
    """The service could not be started or stopped; the message says why."""


@dataclass(frozen=True)
class Recorded:
    """A process as DIR/service.pid records it: its pid and its start time (clock ticks after boot), which
    together name one process even after the pid is reused."""

    pid: int
    started: int

    @classmethod
    def of(cls, pid: int) -> Recorded | None:
        started = start_time(pid)
        return None if started is None else cls(pid, started)

    @classmethod
    def read(cls, directory: Path) -> Recorded | None:
        try:
            pid, started = (int(field) for field in (directory / PID_FILE).read_text().split())
        except (FileNotFoundError, ValueError):
            return None
        return cls(pid, started)

    def write(self, directory: Path) -> None:
        (directory / PID_FILE).write_text(f"{self.pid} {self.started}\n")

    def alive(self) -> bool:
        """True while this very process runs (a zombie or another process with the same pid does not count)."""
        return start_time(self.pid) == self.started


def start_time(pid: int) -> int | None:
    """The start time of a live process (field 22 of /proc/<pid>/stat), None if it is gone or a zombie."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None if fields[0] == "Z" else int(fields[19])


def ready_lines(log: Path, prefix: str) -> dict[str, str] | None:
    """The `key: value` lines of the log up to the first one starting with prefix; None before that line."""
    lines = log.read_text(errors="replace").splitlines() if log.exists() else []
    last = next((n for n, line in enumerate(lines) if line.startswith(prefix)), None)
    if last is None:
        return None
    return dict(line.split(": ", 1) for line in lines[: last + 1] if ": " in line)


def log_tail(log: Path) -> str:
    lines = log.read_text(errors="replace").splitlines() if log.exists() else []
    return "\n".join(lines[-LOG_TAIL_LINES:]) or "(empty log)"


def start(directory: Path, command: list[str], prefix: str, timeout: float) -> dict[str, object]:
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    log = directory / LOG_FILE
    running = Recorded.read(directory)
    if running is not None and running.alive():
        return {"changed": False, "pid": running.pid, "ready": wait_ready(directory, running.alive, prefix, timeout)}
    with log.open("wb") as out:
        process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    recorded = Recorded.of(process.pid)
    if recorded is None:
        process.wait()
        raise ServiceError(f"{command[0]} exited at once with status {process.returncode}:\n{log_tail(log)}")
    recorded.write(directory)
    ready = wait_ready(directory, lambda: process.poll() is None, prefix, timeout)
    return {"changed": True, "pid": process.pid, "ready": ready}


def wait_ready(directory: Path, alive: Callable[[], bool], prefix: str, timeout: float) -> dict[str, str]:
    """The service's `key: value` lines once it is ready; an error if it exits or stays silent (then it is stopped)."""
    log = directory / LOG_FILE
    deadline = time.monotonic() + timeout
    while (ready := ready_lines(log, prefix)) is None:
        if not alive():
            raise ServiceError(f"the service exited before it was ready:\n{log_tail(log)}")
        if time.monotonic() > deadline:
            stop(directory, timeout=5)
            raise ServiceError(f"no line starting with {prefix!r} within {timeout:g} s:\n{log_tail(log)}")
        time.sleep(POLL_SECONDS)
    return ready


def stop(directory: Path, timeout: float) -> dict[str, object]:
    recorded = Recorded.read(directory)
    if recorded is None:
        return {"changed": False}
    changed = recorded.alive()
    if changed:
        deadline = time.monotonic() + timeout
        with contextlib.suppress(ProcessLookupError):  # it may end on its own at any moment
            os.kill(recorded.pid, signal.SIGTERM)
            while recorded.alive():
                if time.monotonic() > deadline:
                    os.kill(recorded.pid, signal.SIGKILL)
                    deadline = time.monotonic() + timeout
                time.sleep(POLL_SECONDS)
    (directory / PID_FILE).unlink(missing_ok=True)
    return {"changed": changed, "pid": recorded.pid}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="service.py", description=(__doc__ or "").split("\n")[0])
    actions = parser.add_subparsers(dest="action", required=True)
    starting = actions.add_parser("start", help="start COMMAND detached and wait until it is ready")
    starting.add_argument("--dir", type=Path, required=True, help="pid file and log go here")
    starting.add_argument("--ready", required=True, help="the service is ready once a log line starts with this")
    starting.add_argument("--timeout", type=float, default=60.0)
    starting.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND [ARG...]")
    stopping = actions.add_parser("stop", help="stop the service started from --dir")
    stopping.add_argument("--dir", type=Path, required=True)
    stopping.add_argument("--timeout", type=float, default=30.0)
    args = parser.parse_args(argv)
    directory = Path(os.path.abspath(args.dir))
    try:
        if args.action == "start":
            command = args.command[1:] if args.command[:1] == ["--"] else args.command
            if not command:
                parser.error("start needs a COMMAND after --")
            result = start(directory, command, args.ready, args.timeout)
        else:
            result = stop(directory, args.timeout)
    except (ServiceError, OSError) as e:
        sys.stderr.write(f"{e}\n")
        return 1
    sys.stdout.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
