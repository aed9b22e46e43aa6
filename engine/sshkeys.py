"""SSH public keys: parsing, validation and the site's configured key set."""

from __future__ import annotations

import binascii
from pathlib import Path

from cryptography.hazmat.primitives.serialization import load_ssh_public_key

ALLOWED_TYPES = (
    "ssh-ed25519",
    "ssh-rsa",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
)


class InvalidSSHKey(ValueError):
    pass


def normalise_key(text: str) -> str:
    """One OpenSSH public key line, validated; returns it with single spaces and no trailing newline."""
    line = " ".join(text.strip().split())
    if not line or "\n" in text.strip():
        raise InvalidSSHKey("expected exactly one public key line")
    parts = line.split(" ", 2)
    if len(parts) < 2 or parts[0] not in ALLOWED_TYPES:
        raise InvalidSSHKey(f"unsupported key type {parts[0][:40]!r}")
    if parts[0].startswith("sk-"):
        try:
            binascii.a2b_base64(parts[1])
        except binascii.Error as exc:
            raise InvalidSSHKey("key data is not base64") from exc
        return line
    try:
        load_ssh_public_key(f"{parts[0]} {parts[1]}".encode())
    except (ValueError, binascii.Error) as exc:
        raise InvalidSSHKey(f"malformed {parts[0]} key") from exc
    return line


def site_keys(inline: str, files: str) -> list[str]:
    """The keys configured for every instance: inline (newline or ';' separated) and key files."""
    candidates = [k for k in inline.replace(";", "\n").splitlines() if k.strip()]
    for name in (f.strip() for f in files.split(",") if f.strip()):
        try:
            content = Path(name).expanduser().read_text(encoding="utf-8")
        except OSError as exc:
            raise InvalidSSHKey(f"cannot read SSH key file {name}: {exc.strerror}") from exc
        candidates += [k for k in content.splitlines() if k.strip() and not k.lstrip().startswith("#")]
    keys: list[str] = []
    for index, candidate in enumerate(candidates, 1):
        try:
            key = normalise_key(candidate)
        except InvalidSSHKey as exc:
            raise InvalidSSHKey(f"configured SSH key #{index}: {exc}") from exc
        if key not in keys:
            keys.append(key)
    return keys
