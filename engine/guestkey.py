"""The provisioner's own SSH key for logging in to guests: every VM's seed authorizes its public half, and the
playbooks that change a running guest (its authorized keys) and the cloud-init log reader log in with it.

It is the file PROVISIONER_GUEST_KEY_FILE, or one made on first use in the state directory (ed25519, OpenSSH
format, 0600). Workers on other machines need the same file (the setting, on every machine).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from common.files import write_private
from engine.sshkeys import InvalidSSHKey, normalise_key

COMMENT = "proxmox-provisioner"


@dataclass(frozen=True)
class GuestKey:
    path: Path  # the private key, for ssh -i and ansible_ssh_private_key_file
    public: str  # its OpenSSH public line, as the seeds authorize it

    @classmethod
    def load_or_create(cls, path: Path) -> GuestKey:
        if not path.exists():
            path.parent.mkdir(parents=True, mode=0o700, exist_ok=True)
            key = Ed25519PrivateKey.generate()
            pem = key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
            )
            write_private(path, pem.decode("ascii"))
        return cls.load(path)

    @classmethod
    def load(cls, path: Path) -> GuestKey:
        try:
            key = serialization.load_ssh_private_key(path.read_bytes(), password=None)
        except OSError as exc:
            raise InvalidSSHKey(f"cannot read the guest key {path}: {exc.strerror}") from exc
        except (ValueError, TypeError) as exc:  # no secret in the message: only that it is not an unencrypted key
            raise InvalidSSHKey(f"the guest key {path} is not an unencrypted OpenSSH private key") from exc
        public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        return cls(path, normalise_key(f"{public.decode('ascii')} {COMMENT}"))
