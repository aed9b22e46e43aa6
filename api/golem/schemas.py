"""The Golem provider protocol's bodies, as the requestor CLI sends and reads them (shared notes: golem-compat)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

NAME = r"^[a-z0-9][a-z0-9-]*[a-z0-9]$"
ZERO_ADDRESS = "0x" + "0" * 40  # no payment contract: streams are not checked


class Resources(BaseModel):
    cpu: Literal[1, 2, 4, 8, 16]
    memory: Literal[1, 2, 4, 8, 16, 32, 64]  # GB
    storage: Annotated[int, Field(ge=10)]  # GB


class CreateVm(BaseModel):
    model_config = ConfigDict(extra="ignore")  # newer requestors send more; upstream ignores it too

    name: Annotated[str, Field(min_length=3, max_length=64, pattern=NAME)]
    size: Literal["small", "medium", "large", "xlarge"] | None = None
    resources: Resources | None = None
    image: Annotated[str, Field(max_length=64)] | None = None  # an Ubuntu release upstream; the site's image here
    ssh_key: Annotated[str, Field(max_length=16 * 1024, pattern=r"^(ssh-rsa|ssh-ed25519) ")]
    stream_id: Annotated[int, Field(ge=0)] | None = None  # stored, never checked: no payments here

    @field_validator("name")
    @classmethod
    def _no_double_dash(cls, name: str) -> str:
        if "--" in name:
            raise ValueError("must not contain '--'")
        return name


class AddKey(BaseModel):
    key: Annotated[str, Field(max_length=16 * 1024, pattern=r"^(ssh-rsa|ssh-ed25519) ")]
    name: Annotated[str, Field(max_length=255)] | None = None


class ResourcesOut(BaseModel):
    cpu: int
    memory: int
    storage: int


class VmInfo(BaseModel):
    id: str  # the VM's name: the CLI addresses VMs by it
    name: str
    status: str  # creating, running, stopping, stopped, restarting, deleting, error, unknown
    resources: ResourcesOut
    ip_address: str  # the listener's: the CLI connects there, to ssh_port
    ssh_port: int | None
    created_at: str
    updated_at: str
    error_message: str | None


class Access(BaseModel):
    ssh_host: str
    ssh_port: int | None
    vm_id: str
    multipass_name: str  # upstream's internal name; ours: the VMID
    status: str | None = None  # "creating" while the forward is not up


class CreateJob(BaseModel):
    job_id: str
    vm_id: str
    status: str


class JobInfo(BaseModel):
    job_id: str
    vm_id: str
    status: Literal["creating", "ready", "failed"]
    error: str | None
    created_at: str
    updated_at: str


class ProviderInfo(BaseModel):
    provider_id: str
    stream_payment_address: str = ZERO_ADDRESS
    glm_token_address: str = ZERO_ADDRESS
    ip_address: str
    country: str
    platform: str
