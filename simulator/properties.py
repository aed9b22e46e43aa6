"""PVE property strings and sizes as the simulator parses and prints them."""

from __future__ import annotations

import re
from typing import Any, TypeVar

from fakepve import PveError

T = TypeVar("T")

KIB, MIB, GIB, TIB = 1024, 1024**2, 1024**3, 1024**4
SIZE_UNITS = {"K": KIB, "M": MIB, "G": GIB, "T": TIB}
RESIZE_RE = re.compile(r"^(\+)?(\d+(?:\.\d+)?)([KMGT])?$")


def split_props(text: str) -> tuple[str | None, dict[str, str]]:
    """(bare first value or None, {key: value}) of a PVE property string such as a drive or smbios1."""
    first, props = None, {}
    for n, part in enumerate(str(text).split(",")):
        key, eq, value = part.partition("=")
        if eq:
            props[key] = value
        elif part and n == 0:
            first = part
    return first, props


def join_props(first: str | None, props: dict[str, str]) -> str:
    """A property string as PVE prints it: the bare value first, then the options in alphabetical order."""
    return ",".join(([first] if first else []) + [f"{key}={props[key]}" for key in sorted(props)])


def format_size(size: int) -> str:
    """PVE::JSONSchema::format_size: the largest unit that divides the size (20G, 3584M, 1536K, 17)."""
    for unit in "TGMK":
        if size and size % SIZE_UNITS[unit] == 0:
            return f"{size // SIZE_UNITS[unit]}{unit}"
    return str(size)


def parse_size(text: str) -> int | None:
    """Bytes in a size such as 8G, 3584M or 1024 (bytes), or None."""
    found = re.fullmatch(r"(\d+(?:\.\d+)?)([KMGT])?", str(text).strip())
    if not found:
        return None
    return int(float(found.group(1)) * SIZE_UNITS.get(found.group(2) or "", 1))


def resized(current: int, request: str) -> int:
    """The new size in bytes for a resize request (`20G` absolute, `+5G` relative), as qemu-server computes it."""
    found = RESIZE_RE.match(request)
    if not found:
        raise PveError(500, "internal error")
    value = float(found.group(2)) * SIZE_UNITS.get(found.group(3) or "", 1)
    return int(value + current if found.group(1) else value)


def agent_enabled(config: dict[str, Any]) -> bool:
    """True if the VM config enables the QEMU guest agent (`1`, `enabled=1`, `1,fstrim_cloned_disks=1`)."""
    first, props = split_props(str(config.get("agent", "0")))
    value = props.get("enabled", first or "0")
    return value.lower() in ("1", "true", "yes", "on")
