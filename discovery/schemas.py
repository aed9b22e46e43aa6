"""Request and response bodies: the Golem discovery server's advertisement shape and our host records."""

from __future__ import annotations

import json
import re
from datetime import datetime
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictInt, field_validator

from common.validators import country_code, ip_address

MAX_CPU = 65_536
MAX_MEMORY_GB = 1_048_576  # 1 PiB
MAX_STORAGE_GB = 1_073_741_824  # 1 EiB
MAX_HOST_VARS_BYTES = 16_384
HOSTNAME = re.compile(
    r"^(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$"
)
# Variables a registered host must not set on an operator's controller: ansible_* (connection, interpreter,
# ssh arguments: a ProxyCommand would run on the controller) are the registry's to derive.
VAR_NAME = re.compile(r"^(?!ansible_)[A-Za-z_][A-Za-z0-9_]{0,63}$")


def host_address(value: str) -> str:
    try:
        return ip_address(value)
    except ValueError:
        if HOSTNAME.match(value):
            return value.lower()
        raise ValueError("must be an IP address or a DNS name") from None


Country = Annotated[str, Field(min_length=2, max_length=2), AfterValidator(country_code)]
IPAddress = Annotated[str, Field(max_length=45), AfterValidator(ip_address)]


class Resources(BaseModel):
    model_config = ConfigDict(extra="forbid")

    cpu: StrictInt = Field(ge=1, le=MAX_CPU, description="vCPUs")
    memory: StrictInt = Field(ge=1, le=MAX_MEMORY_GB, description="memory, GB")
    storage: StrictInt = Field(ge=1, le=MAX_STORAGE_GB, description="storage, GB")


class Pricing(BaseModel):
    """Monthly prices per unit, as the Golem provider sends them."""

    model_config = ConfigDict(extra="ignore")

    usd_per_core_month: float | None = Field(None, ge=0, allow_inf_nan=False)
    usd_per_gb_ram_month: float | None = Field(None, ge=0, allow_inf_nan=False)
    usd_per_gb_storage_month: float | None = Field(None, ge=0, allow_inf_nan=False)
    glm_per_core_month: float | None = Field(None, ge=0, allow_inf_nan=False)
    glm_per_gb_ram_month: float | None = Field(None, ge=0, allow_inf_nan=False)
    glm_per_gb_storage_month: float | None = Field(None, ge=0, allow_inf_nan=False)


class AdvertisementIn(BaseModel):
    # Newer Golem providers send fields we do not keep; they are ignored, not refused.
    model_config = ConfigDict(extra="ignore")

    ip_address: IPAddress
    country: Country
    resources: Resources
    provider_name: str | None = Field(None, min_length=1, max_length=64, pattern=r"^[^\x00-\x1f\x7f]+$")
    platform: str | None = Field(None, min_length=1, max_length=32, pattern=r"^[A-Za-z0-9_.-]+$")
    pricing: Pricing | None = None


class AdvertisementOut(BaseModel):
    provider_id: str
    provider_name: str
    ip_address: str
    country: str
    platform: str | None
    resources: Resources
    pricing: dict[str, Any] | None
    created_at: datetime
    updated_at: datetime


class HostIn(BaseModel):
    model_config = ConfigDict(extra="forbid", coerce_numbers_to_str=True)

    name: str = Field(min_length=1, max_length=63, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    address: Annotated[str, Field(min_length=1, max_length=253), AfterValidator(host_address)]
    ssh_port: StrictInt = Field(22, ge=1, le=65535)
    ssh_user: str | None = Field(None, min_length=1, max_length=32, pattern=r"^[a-z_][a-z0-9_.-]*\$?$")
    groups: list[Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")]] = Field(
        default_factory=list, max_length=32
    )
    vars: dict[str, Any] = Field(default_factory=dict)
    instance_id: str | None = Field(None, min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._:-]+$")

    @field_validator("groups")
    @classmethod
    def _unique_groups(cls, groups: list[str]) -> list[str]:
        return list(dict.fromkeys(groups))

    @field_validator("vars")
    @classmethod
    def _safe_vars(cls, values: dict[str, Any]) -> dict[str, Any]:
        bad = sorted(name for name in values if not VAR_NAME.match(name))
        if bad:
            raise ValueError(f"invalid or reserved variable name(s) {', '.join(bad)} (ansible_* is reserved)")
        if len(json.dumps(values)) > MAX_HOST_VARS_BYTES:
            raise ValueError(f"more than {MAX_HOST_VARS_BYTES} bytes of JSON")
        return values


class HostOut(BaseModel):
    provider_id: str
    name: str
    address: str
    ssh_port: int
    ssh_user: str | None
    groups: list[str]
    vars: dict[str, Any]
    instance_id: str | None
    created_at: datetime
    updated_at: datetime


class Deleted(BaseModel):
    status: str = "success"
