"""SSH public keys: parsing, validation and the site's configured key set."""

from __future__ import annotations

import base64
import binascii
import hashlib
import struct
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import load_ssh_public_key

SK_ED25519 = "sk-ssh-ed25519@openssh.com"
SK_ECDSA = "sk-ecdsa-sha2-nistp256@openssh.com"
ALLOWED_TYPES = (
    "ssh-ed25519",
    "ssh-rsa",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    SK_ED25519,
    SK_ECDSA,
)
MIN_RSA_BITS = 2048


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
    if parts[0] in (SK_ED25519, SK_ECDSA):
        _check_security_key(parts[0], parts[1])
        return line
    try:
        key = load_ssh_public_key(f"{parts[0]} {parts[1]}".encode())
    except (ValueError, binascii.Error) as exc:
        raise InvalidSSHKey(f"malformed {parts[0]} key") from exc
    if isinstance(key, rsa.RSAPublicKey) and key.key_size < MIN_RSA_BITS:
        raise InvalidSSHKey(f"RSA keys must have at least {MIN_RSA_BITS} bits, this one has {key.key_size}")
    return line


def key_material(key: str) -> str:
    """The key itself (its base64 field): two lines with it are the same key, whatever their comments."""
    parts = key.split()
    return parts[1] if len(parts) > 1 else key


def fingerprint(key: str) -> str:
    """OpenSSH's fingerprint of a public key line, as `ssh-keygen -l` shows it: SHA256:<base64, no padding>."""
    digest = hashlib.sha256(base64.b64decode(key_material(key))).digest()
    return "SHA256:" + base64.b64encode(digest).decode("ascii").rstrip("=")


def _check_security_key(key_type: str, data: str) -> None:
    """A FIDO key (which cryptography cannot load) by its wire format, OpenSSH's PROTOCOL.u2f: the key type again,
    the public key (for ECDSA the curve name, then an uncompressed point, the only form OpenSSH reads), then the
    application, which OpenSSH requires to start with "ssh:"."""
    malformed = f"malformed {key_type} key"
    try:
        fields = _ssh_strings(base64.b64decode(data, validate=True))
    except (binascii.Error, ValueError) as exc:
        raise InvalidSSHKey(malformed) from exc
    expected = 3 if key_type == SK_ED25519 else 4
    if len(fields) != expected or fields[0] != key_type.encode() or not fields[-1].startswith(b"ssh:"):
        raise InvalidSSHKey(malformed)
    if key_type == SK_ECDSA and (fields[1] != b"nistp256" or not fields[2].startswith(b"\x04")):
        raise InvalidSSHKey(malformed)
    try:
        if key_type == SK_ED25519:
            Ed25519PublicKey.from_public_bytes(fields[1])
        else:
            ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), fields[2])
    except ValueError as exc:
        raise InvalidSSHKey(malformed) from exc


def _ssh_strings(blob: bytes) -> list[bytes]:
    """The SSH wire-format strings (uint32 length, then the bytes) the blob is made of, exactly."""
    fields = []
    while blob:
        if len(blob) < 4 or len(blob) - 4 < (size := struct.unpack(">I", blob[:4])[0]):
            raise ValueError("truncated SSH string")
        fields.append(blob[4 : 4 + size])
        blob = blob[4 + size :]
    return fields


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
