"""Seed tokens: the one credential a guest has, in its seed URL. The store keeps only their digests.

A token is derived when it is needed (the create's seed URL, the redactor) as HMAC-SHA256(seed key, "<vmid>:<nonce>"),
from a random per-instance nonce in the store and a key in a 0600 file of the state directory: a copy of the
database alone gives no working seed URL. A guest's request is looked up by the SHA-256 digest of the token it
presents. Instances stored before digests (an older release) keep their clear token until they are deleted.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from pathlib import Path

from common.files import write_private
from engine.models import Instance

KEY_BYTES = 32


class SeedTokens:
    def __init__(self, key: bytes) -> None:
        if len(key) < KEY_BYTES:
            raise ValueError(f"a seed key has at least {KEY_BYTES} bytes")
        self._key = key

    @classmethod
    def from_file(cls, path: Path) -> SeedTokens:
        """The key in path, made (0600) on first use."""
        if not path.exists():
            path.parent.mkdir(parents=True, mode=0o700, exist_ok=True)
            write_private(path, secrets.token_hex(KEY_BYTES) + "\n")
        return cls(bytes.fromhex(path.read_text(encoding="ascii").strip()))

    @staticmethod
    def digest(token: str) -> str:
        return hashlib.sha256(token.encode()).hexdigest()

    def new(self, vmid: int) -> dict[str, str]:
        """The store columns of a new instance's seed: its nonce and its token's digest."""
        nonce = secrets.token_hex(16)
        return {"seed_nonce": nonce, "seed_token_hash": self.digest(self._derive(vmid, nonce))}

    def token(self, instance: Instance) -> str:
        if instance.seed_nonce is None:  # stored by an older release, with its clear token
            return instance.seed_token or ""
        return self._derive(instance.id, instance.seed_nonce)

    def _derive(self, vmid: int, nonce: str) -> str:
        mac = hmac.new(self._key, f"{vmid}:{nonce}".encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(mac).rstrip(b"=").decode("ascii")
