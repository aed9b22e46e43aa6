"""Registry errors: a stable code and status each, answered as the Golem discovery server documents them.

The body is the top-level envelope `{"code", "message", "timestamp"}`, mirrored under `"detail"` for clients
written against the upstream server, which (by accident) nested its errors there.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

HOSTS_PATH = "/api/v1/hosts"


class RegistryError(Exception):
    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers


def missing_credentials(message: str = "missing provider credentials") -> RegistryError:
    return RegistryError(401, "AUTH_003", message)


def bad_signature(message: str) -> RegistryError:
    return RegistryError(401, "AUTH_001", message)


def not_allowed() -> RegistryError:
    return RegistryError(
        403, "AUTH_002", "this provider is not allowed to write to this registry (DISCOVERY_ALLOWED_PROVIDERS)"
    )


def not_owner(message: str) -> RegistryError:
    return RegistryError(403, "AUTH_004", message)


def advertisement_not_found() -> RegistryError:
    return RegistryError(404, "ADV_004", "advertisement not found")


def host_not_found() -> RegistryError:
    return RegistryError(404, "HOST_004", "host not found")


def too_many_hosts(limit: int) -> RegistryError:
    return RegistryError(
        409, "HOST_LIMIT", f"a provider may register at most {limit} hosts (DISCOVERY_MAX_HOSTS_PER_PROVIDER)"
    )


def body_too_large(limit: int) -> RegistryError:
    return RegistryError(413, "BODY_TOO_LARGE", f"bodies are limited to {limit} bytes")


def bad_read_token() -> RegistryError:
    return RegistryError(401, "AUTH_005", "missing or invalid read token (Authorization: Bearer …)")


def rate_limited(retry_after_s: int) -> RegistryError:
    return RegistryError(429, "RATE_001", "rate limit exceeded", {"Retry-After": str(retry_after_s)})


def envelope(code: str, message: str, now: datetime | None = None) -> dict[str, Any]:
    stamp = (now or datetime.now(UTC)).isoformat().replace("+00:00", "Z")
    return {"code": code, "message": message, "timestamp": stamp, "detail": {"code": code, "message": message}}


def error_response(error: RegistryError) -> JSONResponse:
    return JSONResponse(envelope(error.code, error.message), status_code=error.status, headers=error.headers)


def _invalid_code(request: Request) -> str:
    return "HOST_002" if request.url.path.startswith(HOSTS_PATH) else "ADV_002"


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RegistryError)
    async def registry_error(_request: Request, exc: RegistryError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        if first.get("type") == "json_invalid":
            message = "the request body is not valid JSON"
        else:
            where = ".".join(str(p) for p in first.get("loc", ())[1:]) or "body"
            message = f"{where}: {first.get('msg', 'invalid')}"
        return error_response(RegistryError(400, _invalid_code(request), message))

    # Starlette still re-raises it afterwards, so the server logs the traceback.
    @app.exception_handler(Exception)
    async def unexpected(_request: Request, _exc: Exception) -> JSONResponse:
        return error_response(RegistryError(500, "INTERNAL_ERROR", "internal error"))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "NOT_FOUND", 405: "METHOD_NOT_ALLOWED"}.get(exc.status_code, "HTTP_ERROR")
        message = "no such resource" if exc.status_code == 404 else str(exc.detail)
        headers = dict(exc.headers) if exc.headers else None
        return error_response(RegistryError(exc.status_code, code, message, headers))
