"""Validators the service's settings and the discovery registry's schemas share."""

from __future__ import annotations

import ipaddress

from iso3166 import countries_by_alpha2


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
