"""Files that hold secrets."""

from __future__ import annotations

import os
from pathlib import Path


def make_private_dir(path: Path) -> None:
    """A directory only its owner may enter (0700), made if missing; its mode is set even if it existed."""
    path.mkdir(parents=True, mode=0o700, exist_ok=True)
    os.chmod(path, 0o700)


def write_private(path: Path, text: str) -> None:
    """Write text to path readable by the owner only (0600), whatever the umask and even if the file existed."""
    with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w", encoding="utf-8") as out:
        os.chmod(path, 0o600)
        out.write(text)
