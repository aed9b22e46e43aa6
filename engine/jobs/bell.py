"""A doorbell between the processes of one machine: "jobs are waiting", "a run ended".

The store is the truth; the bell only saves a wait. Every listener owns a FIFO in the bell directory named
`<topic>-<pid>-<random>`; `ring(topic)` writes one byte, without blocking, to every FIFO of that topic. A listener
that died leaves a FIFO nobody reads: opening it for writing fails (ENXIO), and the ringer removes it. A full FIFO
(a listener that has not woken up yet) already rings, so the byte is dropped. Listeners also wake on their own every
so often (`wait(timeout)`), so a lost ring costs at most that timeout.

FIFOs rather than Unix sockets: their path has no 108-byte limit, and they need no address to bind.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import secrets
import select
import stat
from pathlib import Path

from common.files import make_private_dir

log = logging.getLogger(__name__)

JOBS = "jobs"  # rung when a job is queued or asked to be canceled: the workers look at the store
RUNS = "runs"  # rung when a run ended: the API refreshes its cluster view


def ring(directory: Path, topic: str) -> None:
    """Wake every listener of topic in directory (never blocks, never fails)."""
    try:
        names = [entry.name for entry in os.scandir(directory) if entry.name.startswith(topic + "-")]
    except FileNotFoundError:
        return
    for name in names:
        path = directory / name
        try:
            fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
        except OSError as exc:
            if exc.errno in (errno.ENXIO, errno.ENOENT):  # nobody reads it any more
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
            continue
        try:
            os.write(fd, b"!")
        except BlockingIOError:
            pass  # it rings already
        finally:
            os.close(fd)


class Listener:
    """One process's ear for one topic; `close()` removes its FIFO."""

    def __init__(self, directory: Path, topic: str) -> None:
        make_private_dir(directory)
        self.path = directory / f"{topic}-{os.getpid()}-{secrets.token_hex(4)}"
        os.mkfifo(self.path, 0o600)
        # Read and write: the FIFO never reports end-of-file while this process holds it.
        self._fd = os.open(self.path, os.O_RDWR | os.O_NONBLOCK)
        assert stat.S_ISFIFO(os.fstat(self._fd).st_mode)

    def wait(self, timeout: float) -> bool:
        """Until rung or timeout seconds passed; True if rung. Every ring before the call counts once."""
        if self._fd < 0:
            return False
        readable, _, _ = select.select([self._fd], [], [], max(0.0, timeout))
        if not readable:
            return False
        with contextlib.suppress(BlockingIOError):
            while os.read(self._fd, 4096):
                pass
        return True

    def interrupt(self) -> None:
        """Wake this listener's `wait` (from another thread)."""
        with contextlib.suppress(OSError):
            os.write(self._fd, b"!")

    def close(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
