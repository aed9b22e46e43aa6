"""Service configuration, from the environment (pydantic-settings).

The reference provider's variable names are accepted unchanged, so an existing VISA site can switch
by changing its container image; everything this project adds is prefixed ``PROVISIONER_``.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from common.validators import check_token, country_code, ip_address

REFERENCE = "VISA_WEB_PROVIDER_PROXMOX_"
PROJECT_ROOT = Path(__file__).resolve().parent.parent


def env(*names: str) -> AliasChoices:
    return AliasChoices(*names)


class Settings(BaseSettings):
    # Errors never echo the input: it holds the tokens and the Proxmox password.
    model_config = SettingsConfigDict(
        env_ignore_empty=True, extra="ignore", populate_by_name=True, hide_input_in_errors=True
    )

    # --- HTTP service (reference names)
    server_host: str = Field("127.0.0.1", validation_alias=env(REFERENCE + "SERVER_HOST"))
    server_port: int = Field(4000, ge=1, le=65535, validation_alias=env(REFERENCE + "SERVER_PORT"))
    auth_token: SecretStr | None = Field(None, validation_alias=env(REFERENCE + "SERVER_AUTH_TOKEN"))
    insecure_no_auth: bool = Field(False, validation_alias=env("PROVISIONER_INSECURE_NO_AUTH"))
    operator_api: bool = Field(True, validation_alias=env("PROVISIONER_OPERATOR_API"))
    operator_token: SecretStr | None = Field(None, validation_alias=env("PROVISIONER_OPERATOR_TOKEN"))

    # --- Proxmox (reference names); no endpoint means "run the embedded simulator"
    proxmox_endpoint: str | None = Field(None, validation_alias=env(REFERENCE + "ENDPOINT"))
    proxmox_user: str = Field("root@pam", validation_alias=env(REFERENCE + "USER"))
    proxmox_password: SecretStr | None = Field(None, validation_alias=env(REFERENCE + "PASSWORD"))
    proxmox_timeout_ms: int = Field(10000, ge=100, validation_alias=env(REFERENCE + "TIMEOUT"))
    proxmox_verify_tls: bool = Field(True, validation_alias=env("PROVISIONER_PROXMOX_VERIFY_TLS"))
    proxmox_ca_file: Path | None = Field(None, validation_alias=env("PROVISIONER_PROXMOX_CA_FILE"))

    # --- Placement and naming (reference names)
    select_coeff: int = Field(4 * 1024**3, ge=0, validation_alias=env(REFERENCE + "SELECT_COEFF"))
    metadata_server: str | None = Field(None, validation_alias=env(REFERENCE + "METADATA_SERVER"))
    project_id: str | None = Field(None, validation_alias=env(REFERENCE + "PROJECT_ID"))
    server_name_prefix: str = Field("VISA-INSTANCE", validation_alias=env("VISA_CLOUD_SERVER_NAME_PREFIX"))
    max_start_retry: int = Field(10, ge=0, le=100, validation_alias=env("VISA_CLOUD_SERVER_MAX_START_RETRY"))

    # --- Our own settings
    state_dir: Path = Field(PROJECT_ROOT / ".run", validation_alias=env("PROVISIONER_STATE_DIR"))
    database_url: str | None = Field(None, validation_alias=env("PROVISIONER_DATABASE_URL"))
    flavours_file: Path = Field(
        Path(__file__).parent / "defaults" / "flavours.yml", validation_alias=env("PROVISIONER_FLAVOURS_FILE")
    )
    ansible_dir: Path = Field(PROJECT_ROOT, validation_alias=env("PROVISIONER_ANSIBLE_DIR"))

    ssh_public_keys: str = Field("", validation_alias=env("PROVISIONER_SSH_PUBLIC_KEYS"))
    ssh_public_key_files: str = Field("", validation_alias=env("PROVISIONER_SSH_PUBLIC_KEY_FILES"))
    ssh_key_metadata_field: str = Field("sshPublicKey", validation_alias=env("PROVISIONER_SSH_KEY_METADATA_FIELD"))
    # The provisioner's own key in every guest (engine/guestkey.py): key changes on running VMs and cloud-init's
    # output in a VM's logs log in with it. false: no such key, and neither is offered.
    guest_access: bool = Field(True, validation_alias=env("PROVISIONER_GUEST_ACCESS"))
    guest_key_file: Path | None = Field(None, validation_alias=env("PROVISIONER_GUEST_KEY_FILE"))
    cloud_init_user: str = Field(
        "visa", pattern=r"^[a-z_][a-z0-9_-]{0,31}$", validation_alias=env("PROVISIONER_CLOUD_INIT_USER")
    )
    seed_datasource: str = Field(
        "nocloud-net", pattern=r"^(nocloud|nocloud-net)$", validation_alias=env("PROVISIONER_SEED_DATASOURCE")
    )

    max_instances: int = Field(1000, ge=1, le=2**31 - 1, validation_alias=env("PROVISIONER_MAX_INSTANCES"))
    cpu_overcommit: float = Field(4.0, gt=0, validation_alias=env("PROVISIONER_CPU_OVERCOMMIT"))
    memory_overcommit: float = Field(1.0, gt=0, validation_alias=env("PROVISIONER_MEMORY_OVERCOMMIT"))
    vmid_min: int = Field(100000, ge=100, validation_alias=env("PROVISIONER_VMID_MIN"))
    vmid_max: int = Field(199999, le=999999999, validation_alias=env("PROVISIONER_VMID_MAX"))
    vm_storage: str | None = Field(None, validation_alias=env("PROVISIONER_VM_STORAGE"))
    full_clone: bool = Field(True, validation_alias=env("PROVISIONER_FULL_CLONE"))
    nodes: str = Field("", validation_alias=env("PROVISIONER_NODES"))

    max_batch: int = Field(50, ge=1, le=200, validation_alias=env("PROVISIONER_MAX_BATCH"))
    max_parallel_runs: int = Field(2, ge=1, le=16, validation_alias=env("PROVISIONER_MAX_PARALLEL_RUNS"))  # per worker
    # Worker processes `provisioner run` starts on this machine (0: none, workers run elsewhere: `provisioner worker`).
    workers: int = Field(1, ge=0, le=64, validation_alias=env("PROVISIONER_WORKERS"))
    worker_heartbeat_s: float = Field(5.0, gt=0, le=300, validation_alias=env("PROVISIONER_WORKER_HEARTBEAT"))
    # A worker silent this long is lost: its jobs go to other workers (the kinds that must not run twice fail).
    worker_lost_after_s: float = Field(30.0, gt=0, validation_alias=env("PROVISIONER_WORKER_LOST_AFTER"))
    # A stopping worker (SIGTERM) lets its runs finish this long before it interrupts them and hands them back.
    worker_drain_s: float = Field(600.0, ge=0, validation_alias=env("PROVISIONER_WORKER_DRAIN"))
    # Which queue hands jobs to workers: "embedded" (the job table and this machine's bell), "procrastinate" (on
    # PostgreSQL: workers on any number of machines), "auto": procrastinate on PostgreSQL, embedded on SQLite.
    queue: Literal["auto", "embedded", "procrastinate"] = Field("auto", validation_alias=env("PROVISIONER_QUEUE"))
    batch_window_ms: int = Field(300, ge=0, le=10000, validation_alias=env("PROVISIONER_BATCH_WINDOW_MS"))
    job_timeout_s: int = Field(1800, ge=10, validation_alias=env("PROVISIONER_JOB_TIMEOUT"))
    address_timeout_s: int = Field(600, ge=5, validation_alias=env("PROVISIONER_ADDRESS_TIMEOUT"))
    # A running instance whose guest has not phoned home this long after its create is reported as failed.
    ready_timeout_s: int = Field(900, ge=10, validation_alias=env("PROVISIONER_READY_TIMEOUT"))
    refresh_interval_s: float = Field(2.0, gt=0, validation_alias=env("PROVISIONER_REFRESH_INTERVAL"))
    stale_after_s: float = Field(30.0, gt=0, validation_alias=env("PROVISIONER_STALE_AFTER"))
    job_nice: int = Field(19, ge=0, le=19, validation_alias=env("PROVISIONER_JOB_NICE"))
    keep_runs: int = Field(200, ge=0, validation_alias=env("PROVISIONER_KEEP_RUNS"))
    # An instance whose deletes keep failing (its VM still exists) shows ERROR this long after the delete; the
    # reconciler goes on deleting it.
    delete_error_after_s: int = Field(900, ge=10, validation_alias=env("PROVISIONER_DELETE_ERROR_AFTER"))
    # Who owns a VM: the tag `provisioner-<first 16 characters>` on every VM this provider creates; the reconciler
    # adopts only VMs with it. Unset: the discovery provider id (from DISCOVERY_PROVIDER_KEY_FILE).
    provider_id: str | None = Field(
        None, pattern=r"^[a-z0-9]{16,128}$", validation_alias=env("PROVISIONER_PROVIDER_ID")
    )
    # Also adopt VMs named with VISA_CLOUD_SERVER_NAME_PREFIX (the reference provider's, when a site switches over).
    adopt_reference_vms: bool = Field(False, validation_alias=env("PROVISIONER_ADOPT_REFERENCE_VMS"))

    # --- Discovery: this provider's side (the registry reads its own DISCOVERY_* variables, discovery/settings.py)
    discovery_enabled: bool = Field(True, validation_alias=env("PROVISIONER_DISCOVERY"))
    discovery_url: str | None = Field(None, validation_alias=env("DISCOVERY_URL"))  # unset: the embedded registry
    provider_key_file: Path | None = Field(None, validation_alias=env("DISCOVERY_PROVIDER_KEY_FILE"))
    # The providers whose host records inventory/discovery.yml uses (comma-separated ids); unset: this provider's.
    trusted_providers: str | None = Field(None, validation_alias=env("DISCOVERY_TRUSTED_PROVIDERS"))
    provider_name: str = Field(
        "proxmox-provisioner",
        min_length=1,
        max_length=64,
        validation_alias=env("PROVISIONER_PROVIDER_NAME", "GOLEM_PROVIDER_NAME"),
    )
    provider_country: str = Field("SE", validation_alias=env("PROVISIONER_PROVIDER_COUNTRY", "GOLEM_PROVIDER_COUNTRY"))
    provider_ip: str | None = Field(None, validation_alias=env("PROVISIONER_PROVIDER_IP", "PROVISIONER_IP"))
    provider_platform: str = Field(
        "x86_64", pattern=r"^[A-Za-z0-9_.-]{1,32}$", validation_alias=env("PROVISIONER_PROVIDER_PLATFORM")
    )
    advertise_interval_s: float = Field(
        240, ge=10, validation_alias=env("PROVISIONER_ADVERTISEMENT_INTERVAL", "GOLEM_PROVIDER_ADVERTISEMENT_INTERVAL")
    )
    cpu_threshold_pct: float = Field(90, gt=0, le=100, validation_alias=env("PROVISIONER_CPU_THRESHOLD"))
    memory_threshold_pct: float = Field(85, gt=0, le=100, validation_alias=env("PROVISIONER_MEMORY_THRESHOLD"))
    storage_threshold_pct: float = Field(90, gt=0, le=100, validation_alias=env("PROVISIONER_STORAGE_THRESHOLD"))

    # --- Golem compatibility: an unauthenticated listener the Golem requestor CLI rents VMs from (README)
    golem_compat: bool = Field(False, validation_alias=env("PROVISIONER_GOLEM_COMPAT"))
    golem_host: str | None = Field(None, validation_alias=env("PROVISIONER_GOLEM_HOST"))  # unset: the advertised IP
    golem_port: int = Field(7466, ge=1, le=65535, validation_alias=env("PROVISIONER_GOLEM_PORT"))
    golem_ssh_ports: str = Field(
        "50800-50900", pattern=r"^[0-9]{1,5}-[0-9]{1,5}$", validation_alias=env("PROVISIONER_GOLEM_SSH_PORTS")
    )
    golem_max_vms: int = Field(5, ge=0, validation_alias=env("PROVISIONER_GOLEM_MAX_VMS"))
    golem_max_vm_cpus: int = Field(8, ge=1, validation_alias=env("PROVISIONER_GOLEM_MAX_VM_CPUS"))
    golem_max_vm_memory_gb: int = Field(16, ge=1, validation_alias=env("PROVISIONER_GOLEM_MAX_VM_MEMORY_GB"))
    golem_max_vm_storage_gb: int = Field(100, ge=10, validation_alias=env("PROVISIONER_GOLEM_MAX_VM_STORAGE_GB"))
    golem_lease_s: int = Field(3600, ge=60, validation_alias=env("PROVISIONER_GOLEM_LEASE"))
    # Requests one client address may make per minute (every route; a 429 beyond).
    golem_rate_limit: int = Field(60, ge=1, validation_alias=env("PROVISIONER_GOLEM_RATE_LIMIT"))
    golem_image: str | None = Field(None, validation_alias=env("PROVISIONER_GOLEM_IMAGE"))  # unset: the first template
    # Monthly prices the advertisement carries (the requestor CLI shows them); 0: unset.
    price_usd_per_core_month: float = Field(0, ge=0, validation_alias=env("PROVISIONER_PRICE_USD_PER_CORE_MONTH"))
    price_usd_per_gb_ram_month: float = Field(0, ge=0, validation_alias=env("PROVISIONER_PRICE_USD_PER_GB_RAM_MONTH"))
    price_usd_per_gb_storage_month: float = Field(
        0, ge=0, validation_alias=env("PROVISIONER_PRICE_USD_PER_GB_STORAGE_MONTH")
    )
    price_glm_per_core_month: float = Field(0, ge=0, validation_alias=env("PROVISIONER_PRICE_GLM_PER_CORE_MONTH"))
    price_glm_per_gb_ram_month: float = Field(0, ge=0, validation_alias=env("PROVISIONER_PRICE_GLM_PER_GB_RAM_MONTH"))
    price_glm_per_gb_storage_month: float = Field(
        0, ge=0, validation_alias=env("PROVISIONER_PRICE_GLM_PER_GB_STORAGE_MONTH")
    )

    # --- Embedded simulator (used only when no endpoint is set)
    sim_host: str = Field("127.0.0.1", validation_alias=env("PROVISIONER_SIM_HOST"))
    sim_port: int = Field(8006, ge=0, le=65535, validation_alias=env("PROVISIONER_SIM_PORT"))
    sim_time_scale: float = Field(1.0, ge=0, validation_alias=env("PROVISIONER_SIM_TIME_SCALE"))
    sim_clone_secs: float = Field(2.0, ge=0, validation_alias=env("PROVISIONER_SIM_CLONE_SECS"))
    sim_start_secs: float = Field(1.0, ge=0, validation_alias=env("PROVISIONER_SIM_START_SECS"))
    sim_boot_secs: float = Field(8.0, ge=0, validation_alias=env("PROVISIONER_SIM_BOOT_SECS"))
    # none: the emulated boot; container / vm: every VM the simulator starts is a real Debian guest.
    sim_guests: str = Field("none", pattern=r"^(none|container|vm)$", validation_alias=env("PROVISIONER_SIM_GUESTS"))

    @field_validator("proxmox_endpoint")
    @classmethod
    def _endpoint_is_https_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parts = urlsplit(value)
        if parts.scheme not in ("https", "http") or not parts.hostname:
            raise ValueError("must be a URL such as https://pve.example.org:8006/api2/json/")
        return value

    @field_validator("provider_country")
    @classmethod
    def _country(cls, value: str) -> str:
        return country_code(value)

    @field_validator("provider_ip")
    @classmethod
    def _ip(cls, value: str | None) -> str | None:
        return ip_address(value) if value is not None else None

    @model_validator(mode="after")
    def _check(self) -> Settings:
        self._check_credentials()
        if self.vmid_min > self.vmid_max:
            raise ValueError("PROVISIONER_VMID_MIN must not exceed PROVISIONER_VMID_MAX")
        low, high = self.golem_ssh_port_range.start, self.golem_ssh_port_range.stop - 1
        if not 1 <= low <= high <= 65535:
            raise ValueError("PROVISIONER_GOLEM_SSH_PORTS must be a range LOW-HIGH of ports, LOW <= HIGH")
        if self.golem_compat and self.golem_max_vms > len(self.golem_ssh_port_range):
            raise ValueError("PROVISIONER_GOLEM_MAX_VMS must not exceed the ports in PROVISIONER_GOLEM_SSH_PORTS")
        if self.queue == "procrastinate" and not self.on_postgresql:
            raise ValueError("PROVISIONER_QUEUE=procrastinate needs PostgreSQL (PROVISIONER_DATABASE_URL)")
        if self.proxmox_endpoint and self.proxmox_password is None:
            raise ValueError(f"{REFERENCE}PASSWORD (password or API token secret) is required with an endpoint")
        return self

    def _check_credentials(self) -> None:
        tokens = {f"{REFERENCE}SERVER_AUTH_TOKEN": self.auth_token, "PROVISIONER_OPERATOR_TOKEN": self.operator_token}
        if self.uses_token:  # a Proxmox API token secret is a bearer secret too; a password may hold spaces
            tokens[f"{REFERENCE}PASSWORD"] = self.proxmox_password
        for variable, secret in tokens.items():
            if secret is not None:
                check_token(variable, secret.get_secret_value())
        if self.auth_token is None and not self.insecure_no_auth:
            raise ValueError(
                f"{REFERENCE}SERVER_AUTH_TOKEN is not set; refusing to serve without authentication "
                "(set PROVISIONER_INSECURE_NO_AUTH=true for a development instance)"
            )
        if self.operator_api and self.operator_token is None and not self.insecure_no_auth:
            raise ValueError(
                "PROVISIONER_OPERATOR_TOKEN is not set; the operator API (/v1) needs its own token "
                "(or set PROVISIONER_OPERATOR_API=false to serve without it)"
            )
        if self.auth_token is not None and self.auth_token == self.operator_token:
            raise ValueError(f"PROVISIONER_OPERATOR_TOKEN must differ from {REFERENCE}SERVER_AUTH_TOKEN")

    # --- derived values

    @property
    def simulated(self) -> bool:
        return self.proxmox_endpoint is None

    @property
    def emulated_guests(self) -> bool:
        """The embedded simulator's guests are a timer, with no SSH: key changes reach their seeds only."""
        return self.simulated and self.sim_guests == "none"

    @property
    def proxmox_host(self) -> str:
        return urlsplit(self.proxmox_endpoint or "").hostname or ""

    @property
    def proxmox_port(self) -> int:
        return urlsplit(self.proxmox_endpoint or "").port or 8006

    @property
    def uses_token(self) -> bool:
        return "!" in self.proxmox_user

    @property
    def node_allowlist(self) -> frozenset[str]:
        return frozenset(n.strip() for n in self.nodes.split(",") if n.strip())

    @cached_property
    def db_url(self) -> str:
        return self.database_url or f"sqlite:///{self.state_dir / 'provisioner.db'}"

    @property
    def on_postgresql(self) -> bool:
        return self.db_url.startswith(("postgresql:", "postgresql+"))

    @property
    def queue_backend(self) -> Literal["embedded", "procrastinate"]:
        if self.queue == "auto":
            return "procrastinate" if self.on_postgresql else "embedded"
        return self.queue

    def secret_values(self) -> list[str]:
        """Every secret this service is configured with, for the redactor: tokens, passwords, the database's."""
        values = [s.get_secret_value() for s in (self.auth_token, self.operator_token, self.proxmox_password) if s]
        if self.database_url:
            try:
                password = make_url(self.database_url).password
            except ArgumentError:
                password = None
            if password:
                values.append(str(password))
        return values

    @property
    def bell_dir(self) -> Path:
        """Where this machine's workers and API process wake each other (engine/jobs/bell.py)."""
        return self.state_dir / "bell"

    @property
    def runs_dir(self) -> Path:
        return self.state_dir / "runs"

    @property
    def guest_key_path(self) -> Path:
        return self.guest_key_file or self.state_dir / "guest_ed25519"

    @property
    def seed_key_path(self) -> Path:
        return self.state_dir / "seed.key"

    @property
    def seed_base_url(self) -> str:
        """The NoCloud seed base URL as guests reach it, ending in '/'."""
        if self.metadata_server:
            return self.metadata_server.rstrip("/") + "/"
        host = "127.0.0.1" if self.server_host in ("0.0.0.0", "::", "") else self.server_host
        return f"http://{host}:{self.server_port}/seed/"

    @property
    def provider_key_path(self) -> Path:
        return self.provider_key_file or self.state_dir / "discovery-provider.key"

    @property
    def advertised_ip(self) -> str:
        """The address requestors reach this provider at: PROVISIONER_PROVIDER_IP, else the listen address."""
        if self.provider_ip:
            return self.provider_ip
        try:
            return ip_address(self.server_host) if self.server_host not in ("0.0.0.0", "::") else "127.0.0.1"
        except ValueError:
            return "127.0.0.1"

    @property
    def golem_ssh_port_range(self) -> range:
        low, _, high = self.golem_ssh_ports.partition("-")
        return range(int(low), int(high) + 1)

    @property
    def golem_listen_host(self) -> str:
        """Where the Golem listener and its SSH forwards listen: the address the requestor CLI connects to."""
        return self.golem_host or self.advertised_ip

    @property
    def seed_path_prefix(self) -> str:
        """The path under which this service serves seeds (the path of the seed base URL)."""
        return urlsplit(self.seed_base_url).path.rstrip("/") or "/seed"


def load_settings(**overrides: object) -> Settings:
    return Settings(**overrides)  # type: ignore[arg-type]
