"""The emulated cloud-init: the NoCloud seed named by the SMBIOS serial, and the record of each boot's run."""

from __future__ import annotations

import base64
import email
from dataclasses import dataclass, field
from typing import Any, TypeVar

import yaml

from simulator.properties import split_props

T = TypeVar("T")

NOCLOUD_IDS = ("nocloud", "nocloud-net")
# cloud-init's short keys on the command line / SMBIOS serial.
SEED_KEYS = {"h": "local-hostname", "i": "instance-id", "s": "seedfrom"}


@dataclass(frozen=True)
class SeedRef:
    """Where a guest's cloud-init finds its NoCloud seed (from the SMBIOS serial)."""

    mode: str  # nocloud-net or nocloud
    url: str  # the seedfrom URL; meta-data etc. are appended to it as cloud-init does
    overrides: dict[str, str] = field(default_factory=dict)  # h=/i= given on the serial

    def file_url(self, name: str) -> str:
        """cloud-init's read_seeded: `%s` in the URL is replaced, otherwise the name is appended."""
        return self.url.replace("%s", name) if "%s" in self.url else self.url + name


def smbios_serial(config: dict[str, Any]) -> str | None:
    """The SMBIOS serial of a VM config's smbios1 (base64-decoded when base64=1), or None."""
    _first, props = split_props(str(config.get("smbios1", "")))
    serial = props.get("serial")
    if not serial:
        return None
    if props.get("base64") in ("1", "true"):
        return base64.b64decode(serial, validate=True).decode()
    return serial


def parse_seed(serial: str | None) -> SeedRef | None:
    """The NoCloud seed of a `ds=nocloud-net;s=http://…/` serial (also `ds=nocloud;…`), or None."""
    if not serial:
        return None
    head, *pairs = serial.strip().split(";")
    key, _, mode = head.partition("=")
    if key != "ds" or mode not in NOCLOUD_IDS:
        return None
    found: dict[str, str] = {}
    for pair in pairs:
        name, _, value = pair.partition("=")
        if name:
            found[SEED_KEYS.get(name, name)] = value
    url = found.pop("seedfrom", "")
    if not url.startswith(("http://", "https://")):
        return None
    return SeedRef(mode, url, found)


def cloud_config(text: str) -> dict[str, Any]:
    """The cloud-config of a user-data / vendor-data body: `#cloud-config` YAML or the text/cloud-config parts
    of a MIME multipart; {} for scripts and anything else."""
    if text.startswith("#cloud-config"):
        return yaml_dict(text)
    if not text.lstrip().lower().startswith(("content-type:", "mime-version:")):
        return {}
    merged: dict[str, Any] = {}
    for part in email.message_from_string(text).walk():
        payload = part.get_payload(decode=True)
        if part.get_content_type() == "text/cloud-config" and isinstance(payload, bytes):
            merged.update(yaml_dict(payload.decode(errors="replace")))
    return merged


def yaml_dict(text: str) -> dict[str, Any]:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError:
        return {}
    return data if isinstance(data, dict) else {}


@dataclass
class SeedFile:
    """One seed GET: status None when nothing answered (refused, timeout)."""

    url: str
    status: int | None = None
    body: str = ""
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


@dataclass
class CloudInitRun:
    """What the emulated cloud-init did at one boot of a VM."""

    vmid: int
    boot: int  # 1 at the VM's first boot seen by the simulator, +1 at every (re)start or reboot
    booted_at: float  # time.time() when the boot ran
    seed_mode: str | None = None  # nocloud-net / nocloud, None without a seed in the SMBIOS serial
    seed_url: str | None = None
    files: dict[str, SeedFile] = field(default_factory=dict)  # only those fetched, in order
    fetched_at: float | None = None
    datasource: str = "None"  # 'NoCloudNet' when the seed was applied, else 'None' (DataSourceNone)
    instance_id: str | None = None
    hostname: str | None = None
    phone_home_url: str | None = None
    phone_home_fields: dict[str, str] = field(default_factory=dict)
    phone_home_status: int | None = None
    phone_home_attempts: int = 0
    error: str | None = None
    finished_at: float | None = None  # set once cloud-init is done (phone_home included); None while it runs

    @property
    def done(self) -> bool:
        return self.finished_at is not None

    def status(self, name: str) -> int | None:
        """HTTP status of a seed file (meta-data, user-data, vendor-data); None if not fetched or unanswered."""
        fetched = self.files.get(name)
        return fetched.status if fetched else None

    def body(self, name: str) -> str | None:
        fetched = self.files.get(name)
        return fetched.body if fetched else None
