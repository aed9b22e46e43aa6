"""Provider request signatures: ed25519 over the method, path, timestamp, nonce and the body's SHA-256.

A provider's id is the lowercase hex of its 32-byte raw public key, so the id alone verifies a signature
and nobody can write under another provider's id. The signed string is

    METHOD "\\n" PATH "\\n" X-Timestamp "\\n" X-Nonce "\\n" hex(sha256(raw body))

with PATH the request path without the query string. Keys are stored as unencrypted PKCS#8 PEM (what
`openssl genpkey -algorithm ed25519` writes), readable by the owner only.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import secrets
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
    load_pem_private_key,
)

from common.files import write_private

SIGNATURE_WINDOW_S = 300
PROVIDER_ID = re.compile(r"^[0-9a-f]{64}$")
NONCE = re.compile(r"^[A-Za-z0-9_-]{16,64}$")


class KeyFileError(ValueError):
    pass


def canonical_message(method: str, path: str, timestamp: str, nonce: str, body: bytes) -> bytes:
    return "\n".join((method, path, timestamp, nonce, hashlib.sha256(body).hexdigest())).encode()


def provider_id(key: Ed25519PrivateKey) -> str:
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw).hex()


def public_key(provider: str) -> Ed25519PublicKey | None:
    """The key a provider id stands for, or None when the id is not one."""
    if not PROVIDER_ID.match(provider):
        return None
    try:
        return Ed25519PublicKey.from_public_bytes(bytes.fromhex(provider))
    except ValueError:
        return None


def verify(key: Ed25519PublicKey, signature_b64: str, message: bytes) -> bool:
    try:
        key.verify(base64.b64decode(signature_b64, validate=True), message)
    except (InvalidSignature, binascii.Error, ValueError):
        return False
    return True


def new_nonce() -> str:
    return secrets.token_urlsafe(24)


def signed_headers(
    key: Ed25519PrivateKey, method: str, path: str, body: bytes, timestamp: int, nonce: str
) -> dict[str, str]:
    message = canonical_message(method, path, str(timestamp), nonce, body)
    return {
        "X-Provider-ID": provider_id(key),
        "X-Timestamp": str(timestamp),
        "X-Nonce": nonce,
        "X-Provider-Signature": base64.b64encode(key.sign(message)).decode("ascii"),
    }


def load_key(path: Path) -> Ed25519PrivateKey:
    try:
        key = load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise KeyFileError(f"cannot read the provider key {path}: {type(exc).__name__}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(f"the provider key {path} is not an ed25519 key")
    return key


def load_or_create_key(path: Path) -> Ed25519PrivateKey:
    """The provider key at path, generated (mode 0600) on first use."""
    if path.exists():
        return load_key(path)
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
    path.parent.mkdir(parents=True, exist_ok=True)
    write_private(path, pem.decode("ascii"))
    return key
