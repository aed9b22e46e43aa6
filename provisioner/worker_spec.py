"""What a worker process is given: the settings and the playbooks' environment (light: the API process imports it
to start its workers without loading ansible-runner)."""

from __future__ import annotations

from dataclasses import dataclass, field

from discovery.signing import load_key, provider_id
from engine.proxmox import ProxmoxConnection
from engine.settings import Settings


@dataclass(frozen=True)
class WorkerSpec:
    """What a worker needs beyond the settings: the playbooks' environment (the Proxmox connection, discovery)."""

    settings: Settings
    ansible_env: dict[str, str] = field(repr=False)
    secrets: list[str] = field(repr=False)  # scrubbed from every event the worker stores
    log_level: str = "INFO"


class WorkerSetupError(RuntimeError):
    """A standalone worker lacks something only the operator can provide."""


def discovery_env(settings: Settings, url: str, own_id: str) -> dict[str, str]:
    """The discovery role's environment in the playbooks (register/unregister hosts with the registry at url)."""
    return {
        "DISCOVERY_URL": url,
        "DISCOVERY_PROVIDER_KEY_FILE": str(settings.provider_key_path),
        "DISCOVERY_HOST_SSH_USER": settings.cloud_init_user,
        "DISCOVERY_TRUSTED_PROVIDERS": settings.trusted_providers or own_id,
    }


def standalone_spec(settings: Settings) -> WorkerSpec:
    """A worker on a machine of its own (`provisioner worker`): the Proxmox endpoint and credentials, the seed key
    and, with discovery, the registry URL and provider key come from this machine's settings and files: the same
    values and the same files as the API machine's."""
    if settings.simulated:
        raise WorkerSetupError(
            "a standalone worker needs the Proxmox endpoint (VISA_WEB_PROVIDER_PROXMOX_ENDPOINT); with the embedded "
            "simulator, `provisioner run` starts its own workers (PROVISIONER_WORKERS)"
        )
    if not settings.seed_key_path.exists():
        raise WorkerSetupError(
            f"no seed key at {settings.seed_key_path}: copy it from the API machine's state directory (mode 0600); "
            "the seed URLs the worker gives the VMs are signed with it"
        )
    connection = ProxmoxConnection.from_settings(settings)
    env = connection.ansible_env()
    if settings.discovery_enabled:
        if settings.discovery_url is None or not settings.provider_key_path.exists():
            raise WorkerSetupError(
                "with discovery, a standalone worker needs DISCOVERY_URL (the registry the API machine uses) and the "
                f"provider key at {settings.provider_key_path}"
            )
        own_id = provider_id(load_key(settings.provider_key_path))
        env |= discovery_env(settings, settings.discovery_url, own_id)
    return WorkerSpec(settings, env, [connection.secret, *settings.secret_values()])
