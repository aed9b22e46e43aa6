"""A provider's side of the registry in Python: request signing for httpx, and a small client."""

from __future__ import annotations

import time
from collections.abc import Callable, Generator
from typing import Any

import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from discovery import signing

ADVERTISEMENTS = "/api/v1/advertisements"


class ProviderAuth(httpx.Auth):
    """Signs every request with the provider key (headers of discovery.signing)."""

    requires_request_body = True

    def __init__(self, key: Ed25519PrivateKey, clock: Callable[[], float] = time.time) -> None:
        self._key = key
        self._clock = clock

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers.update(
            signing.signed_headers(
                self._key, request.method, request.url.path, request.content, int(self._clock()), signing.new_nonce()
            )
        )
        yield request


class RegistryRequestError(RuntimeError):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code


class RegistryClient:
    def __init__(self, base_url: str, key: Ed25519PrivateKey, timeout_s: float = 10.0) -> None:
        self.provider_id = signing.provider_id(key)
        self._http = httpx.Client(base_url=base_url.rstrip("/"), auth=ProviderAuth(key), timeout=timeout_s)

    def advertise(self, advertisement: dict[str, Any]) -> dict[str, Any]:
        """Create or refresh this provider's advertisement."""
        return _answer(self._http.post(ADVERTISEMENTS, json=advertisement))  # type: ignore[no-any-return]

    def withdraw(self) -> bool:
        """Delete this provider's advertisement; False when there was none."""
        response = self._http.delete(f"{ADVERTISEMENTS}/{self.provider_id}")
        if response.status_code == 404:
            return False
        _answer(response)
        return True

    def close(self) -> None:
        self._http.close()


def _answer(response: httpx.Response) -> Any:
    if response.is_success:
        return response.json()
    try:
        body = response.json()
        code, message = str(body["code"]), str(body["message"])
    except (ValueError, KeyError, TypeError):
        code, message = "HTTP_ERROR", response.reason_phrase
    raise RegistryRequestError(response.status_code, code, message)
