"""The flavour catalogue: validated definitions, loaded from YAML at first start, kept in the database."""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session

from common.validators import Text
from engine.models import Flavour


class FlavourSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._-]+$")
    name: Text = Field(min_length=1, max_length=255)
    cpus: int = Field(ge=1, le=1024)
    ram_mb: int = Field(ge=16, le=16 * 1024 * 1024)
    disk_gb: int = Field(ge=1, le=64 * 1024)
    full_clone: bool | None = None

    def to_row(self) -> Flavour:
        return Flavour(**self.model_dump())


class FlavourFileError(ValueError):
    pass


def read_flavour_file(path: Path) -> list[FlavourSpec]:
    """Parse and validate a flavour file; raises FlavourFileError naming the bad entry."""
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise FlavourFileError(f"cannot read flavour file {path}: {exc}") from exc
    entries = document.get("flavours") if isinstance(document, dict) else None
    if not isinstance(entries, list):
        raise FlavourFileError(f"{path}: expected a top-level 'flavours' list")
    specs: list[FlavourSpec] = []
    for index, entry in enumerate(entries):
        try:
            specs.append(FlavourSpec.model_validate(entry))
        except ValidationError as exc:
            raise FlavourFileError(f"{path}: flavour #{index + 1} is invalid: {exc.errors()[0]['msg']}") from exc
    ids = [spec.id for spec in specs]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise FlavourFileError(f"{path}: duplicate flavour ids {duplicates}")
    return specs


def seed_flavours(session: Session, path: Path) -> int:
    """Load the file's flavours if the catalogue is empty; returns how many were added."""
    specs = read_flavour_file(path)
    if session.scalar(select(Flavour.id).limit(1)) is not None:
        return 0
    session.add_all(spec.to_row() for spec in specs)
    return len(specs)


def list_flavours(session: Session) -> list[Flavour]:
    return list(session.scalars(select(Flavour).order_by(Flavour.cpus, Flavour.ram_mb, Flavour.id)))


def upsert_flavour(session: Session, spec: FlavourSpec) -> Flavour:
    row = session.get(Flavour, spec.id)
    if row is None:
        row = spec.to_row()
        session.add(row)
    else:
        for key, value in spec.model_dump().items():
            setattr(row, key, value)
    return row
