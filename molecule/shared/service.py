"""Start and stop the Molecule scenarios' background services (the Proxmox simulator, the seed server).

  python molecule/shared/service.py start --dir DIR --ready 'PREFIX' [--timeout 60] -- COMMAND [ARG...]
  python molecule/shared/service.py stop --dir DIR [--timeout 30]

`start` runs COMMAND detached from Ansible (its own session, stdin /dev/null, stdout and stderr to
DIR/service.log), records its pid in DIR/service.pid and waits until the log has a line starting with PREFIX.
It prints one JSON object: {"changed": bool, "pid": int, "ready": {key: value of every `key: value` log line}}.
A service already running from DIR is left alone (changed false). A service that exits or stays silent fails
the call with the end of its log.

`stop` ends the process recorded in DIR/service.pid (SIGTERM, SIGKILL after the timeout) only if it is still
the one started from DIR (its command line names DIR), then removes the pid file. Nothing recorded: changed
false. Both commands exit 1 with a message on stderr when they fail.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

PID_FILE = "service.pid"
LOG_FILE = "service.log"
POLL_SECONDS = 0.1
LOG_TAIL_LINES = 30


class ServiceError(Exception):
    """The service could not be started or stopped; the message says why."""


def running_from(pid: int, directory: Path) -> bool:
    """True if pid is a live (not zombie) process whose command line names the directory."""
    proc = Path(f"/proc/{pid}")
    try:
        state = (proc / "stat").read_text().rpartition(")")[2].split()[0]
        argv = (proc / "cmdline").read_bytes().split(b"\0")
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state != "Z" and os.fsencode(str(directory)) in argv


def recorded_pid(directory: Path) -> int | None:
    try:
        return int((directory / PID_FILE).read_text().strip())
    except (FileNotFoundError, ValueError):
        return None


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
    pid = recorded_pid(directory)
    if pid is not None and running_from(pid, directory):
        ready = ready_lines(log, prefix)
        if ready is not None:
            return {"changed": False, "pid": pid, "ready": ready}
    with log.open("wb") as out:
        process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    (directory / PID_FILE).write_text(f"{process.pid}\n")
    deadline = time.monotonic() + timeout
    while (ready := ready_lines(log, prefix)) is None:
        if process.poll() is not None:
            raise ServiceError(f"{command[0]} exited with status {process.returncode}:\n{log_tail(log)}")
        if time.monotonic() > deadline:
            stop(directory, timeout=5)
            raise ServiceError(f"no line starting with {prefix!r} within {timeout:g} s:\n{log_tail(log)}")
        time.sleep(POLL_SECONDS)
    return {"changed": True, "pid": process.pid, "ready": ready}


def stop(directory: Path, timeout: float) -> dict[str, object]:
    pid = recorded_pid(directory)
    if pid is None:
        return {"changed": False}
    changed = running_from(pid, directory)
    if changed:
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while running_from(pid, directory):
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                deadline = time.monotonic() + timeout
            time.sleep(POLL_SECONDS)
    (directory / PID_FILE).unlink(missing_ok=True)
    return {"changed": changed, "pid": pid}


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
    # absolute, not resolved: the services' command lines must name the very same path (running_from).
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
