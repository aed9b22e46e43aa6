"""Installs the VISA contract on an application: auth before routing, JSON errors with stable codes."""

from __future__ import annotations

import hmac
import logging
import re

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette._utils import get_route_path
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from engine.errors import ProvisionerError
from web_provider import routes
from web_provider.schemas import error_body

log = logging.getLogger(__name__)
API_PREFIX = "/api"
INSTANCE_PATH = re.compile(r"^/api/instances/(?P<id>[^/]+)$")


def is_api(path: str) -> bool:
    return path == API_PREFIX or path.startswith(API_PREFIX + "/")


def install(app: FastAPI, token: str | None) -> None:
    """Add the /api routes; `token` None disables authentication (explicit insecure development mode)."""
    app.add_middleware(VisaGuard, token=token)
    app.include_router(routes.router)


class VisaGuard:
    """For /api paths: the token before routing, and a JSON error (never a 5xx for GET of one instance)
    when a route fails unexpectedly.

    A plain ASGI middleware: Starlette's BaseHTTPMiddleware would cost every request an extra task and a
    response stream, which shows in the latency of a burst of creates.
    """

    def __init__(self, app: ASGIApp, token: str | None) -> None:
        self.app = app
        self.expected = token.encode() if token is not None else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # The path the router matches (Starlette's own rule): scope["path"] begins with the root path, which uvicorn's
        # --root-path and a Mount set, so checking it instead would let every /api route through unauthenticated.
        path = get_route_path(scope) if scope["type"] == "http" else ""
        if not is_api(path):
            await self.app(scope, receive, send)
            return
        if self.expected is not None:
            given = Headers(scope=scope).get("x-auth-token", "").encode()
            if not hmac.compare_digest(given, self.expected):
                denied = JSONResponse(error_body("unauthorized", "missing or invalid X-Auth-Token"), status_code=401)
                await denied(scope, receive, send)
                return
        answered = False

        async def tracked_send(message: Message) -> None:
            nonlocal answered
            answered = answered or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracked_send)
        except Exception:
            log.exception("unhandled error on %s %s", scope["method"], path)
            if answered:
                raise
            await unhandled_error_response(scope["method"], path)(scope, receive, send)


def unhandled_error_response(method: str, path: str) -> JSONResponse:
    match = INSTANCE_PATH.match(path)
    if method == "GET" and match and match.group("id") != "identifiers":
        # VISA treats any failure of this call as "deleted" and orphans the VM.
        fallback = routes.unknown_instance_fallback(match.group("id"))
        return JSONResponse(fallback.model_dump(), status_code=200)
    return JSONResponse(error_body("internal_error", "internal error"), status_code=500)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ProvisionerError)
    async def provisioner_error(_request: Request, exc: ProvisionerError) -> JSONResponse:
        return JSONResponse(error_body(exc.code, exc.message), status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        if any(e.get("type") == "json_invalid" for e in errors):
            return JSONResponse(error_body("malformed_json", "the request body is not valid JSON"), status_code=400)
        details = [
            {"field": ".".join(str(p) for p in e.get("loc", ())[1:]) or "body", "problem": e.get("msg", "")}
            for e in errors
        ]
        first = details[0] if details else {"field": "body", "problem": "invalid"}
        return JSONResponse(
            error_body("invalid_request", f"{first['field']}: {first['problem']}", details), status_code=400
        )

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        message = "no such resource" if exc.status_code == 404 else str(exc.detail)
        return JSONResponse(error_body(code, message), status_code=exc.status_code, headers=exc.headers)
