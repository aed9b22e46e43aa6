"""Request and response bodies, exactly as VISA (3.x) reads and writes them."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from common.validators import Text

MAX_METADATA_ENTRIES = 256
MAX_TEXT = 256 * 1024


class InstanceCreate(BaseModel):
    """POST /api/instances. VISA omits bootCommand when the image has none and sends "" metadata values."""

    model_config = ConfigDict(extra="ignore", coerce_numbers_to_str=True)

    name: Annotated[Text, Field(min_length=1, max_length=255)]
    imageId: Annotated[Text, Field(min_length=1, max_length=32)]
    flavourId: Annotated[Text, Field(min_length=1, max_length=64)]
    securityGroups: list[Annotated[Text, Field(min_length=1, max_length=255)]] | None = None
    metadata: dict[Text, Text | None] | None = None
    bootCommand: Annotated[Text, Field(max_length=MAX_TEXT)] | None = None

    @field_validator("metadata")
    @classmethod
    def _bounded_metadata(cls, value: dict[str, str | None] | None) -> dict[str, str | None] | None:
        if value is None:
            return None
        if len(value) > MAX_METADATA_ENTRIES:
            raise ValueError(f"at most {MAX_METADATA_ENTRIES} metadata entries")
        if sum(len(k) + len(v or "") for k, v in value.items()) > MAX_TEXT:
            raise ValueError(f"metadata larger than {MAX_TEXT} bytes")
        return value


class SecurityGroupBody(BaseModel):
    model_config = ConfigDict(extra="ignore")

    name: Annotated[Text, Field(min_length=1, max_length=255)]


class ImageOut(BaseModel):
    id: str
    name: str
    size: int  # bytes


class FlavourOut(BaseModel):
    id: str
    name: str
    cpus: int
    ram: int  # MB
    disk: int  # GB


class FaultOut(BaseModel):
    message: str
    code: int
    details: str
    created: str


class InstanceOut(BaseModel):
    id: str
    name: str
    state: str
    address: str | None
    imageId: str
    flavourId: str
    createdAt: str
    securityGroups: list[str]
    fault: FaultOut | None


class IdentifierOut(BaseModel):
    id: str
    name: str


class CreatedOut(BaseModel):
    id: str


class MetricsOut(BaseModel):
    maxTotalRamSize: int
    totalRamUsed: int
    maxTotalInstances: int
    totalInstancesUsed: int
    maxTotalCores: int
    totalCoresUsed: int


class MessageOut(BaseModel):
    message: str


def iso(moment: datetime | None) -> str:
    """ISO-8601 in UTC with a Z, the form VISA's Date parsing accepts."""
    if moment is None:
        return ""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def error_body(code: str, message: str, details: Any = None) -> dict[str, Any]:
    body: dict[str, Any] = {"code": code, "message": message}
    if details is not None:
        body["details"] = details
    return body
