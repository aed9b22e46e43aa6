"""Validators the service's settings and the discovery registry's schemas share."""

from __future__ import annotations

import ipaddress
import re
from datetime import UTC, datetime
from typing import Annotated

from iso3166 import countries_by_alpha2
from pydantic import AfterValidator

MIN_TOKEN_LENGTH = 16
# Visible ASCII: what an HTTP header carries unchanged, so a pasted newline or space cannot silently lock clients out.
TOKEN_CHARACTERS = re.compile(r"[\x21-\x7e]+")


def no_nul(value: str) -> str:
    """Refuse NUL characters: PostgreSQL cannot store them, and no name, id or text of ours needs one."""
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    return value


# A string an API accepts: no NUL characters (a 400 at the door instead of a 500 from the database).
Text = Annotated[str, AfterValidator(no_nul)]


def as_utc(moment: datetime) -> datetime:
    """SQLite gives back naive datetimes for timezone-aware columns; they were stored as UTC."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


# A datetime in a response: always with its time zone (RFC 3339), whichever database it came from.
UtcDateTime = Annotated[datetime, AfterValidator(as_utc)]


def country_code(value: str) -> str:
    code = value.upper()
    if code not in countries_by_alpha2:
        raise ValueError("must be an ISO 3166-1 alpha-2 country code")
    return code


def ip_address(value: str) -> str:
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise ValueError("must be an IPv4 or IPv6 address") from None


def check_token(variable: str, value: str) -> None:
    """A bearer secret the settings accept; the error names the variable, never the value."""
    if len(value) < MIN_TOKEN_LENGTH:
        raise ValueError(f"{variable} must be at least {MIN_TOKEN_LENGTH} characters long")
    if not TOKEN_CHARACTERS.fullmatch(value):
        raise ValueError(f"{variable} must be visible ASCII characters only (no spaces, tabs or line breaks)")
