"""Who may call /v1 (OperatorGuard, before routing), and the audit trail of every request that may change something,
on /v1 and VISA's /api alike (AuditTrail). Plain ASGI middlewares, like VISA's guard: Starlette's BaseHTTPMiddleware
would cost every request an extra task and a response stream."""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
from collections.abc import Callable
from typing import Any

from cachetools import TTLCache
from fastapi import Request
from fastapi.responses import JSONResponse
from starlette._utils import get_route_path
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from engine.audit import Entry
from engine.models import VISA_OWNER
from engine.tokens import ADMIN, Principal, digest

log = logging.getLogger(__name__)

PREFIX = "/v1"
VISA_PREFIX = "/api"
READS = frozenset({"GET", "HEAD", "OPTIONS"})
TOKEN_RECHECK_S = 2.0
MAX_RECORDED_BODY = 64 * 1024  # bytes of a request body the audit trail reads its parameters from


class TokenLookupFailed(Exception):
    """The store did not answer whether a token is valid."""


def under(path: str, prefix: str) -> bool:
    return path == prefix or path.startswith(prefix + "/")


async def principal_of(request: Request) -> Principal:
    """The caller of a /v1 route, as OperatorGuard found it."""
    return request.state.principal  # type: ignore[no-any-return]


class OperatorGuard:
    """Every /v1 request needs a token before routing (`Authorization: Bearer <token>`, or `X-Auth-Token`): the
    settings' operator token (the built-in admin) or one made with `provisioner tokens create`. A known path, an
    unknown one, a wrong method and a malformed body all answer the same 401, so an unauthenticated caller learns
    nothing about the routes; a viewer's token is refused anything but reads (403). With no operator token
    configured (insecure development mode) every caller is the built-in admin."""

    def __init__(self, app: ASGIApp, token: str | None) -> None:
        self.app = app
        self.expected = token.encode() if token is not None else None
        # Stored tokens found valid, by digest, for TOKEN_RECHECK_S: a burst costs one lookup per token, not one per
        # request; a revoked token is refused within that time. Only valid tokens are kept, so guesses cost memory
        # nothing.
        self._recent: TTLCache[str, Principal] = TTLCache(maxsize=4096, ttl=TOKEN_RECHECK_S)
        self._looking: dict[str, asyncio.Future[Principal | None]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # The path the router matches, without the root path (see web_provider.http.VisaGuard).
        path = get_route_path(scope) if scope["type"] == "http" else ""
        if not under(path, PREFIX):
            await self.app(scope, receive, send)
            return
        try:
            principal = await self._principal(scope)
        except TokenLookupFailed:
            body = {"code": "store_unavailable", "message": "the token could not be checked; try again"}
            await JSONResponse(body, status_code=503)(scope, receive, send)
            return
        if principal is None:
            body = {"code": "unauthorized", "message": "missing or invalid operator token (Authorization: Bearer …)"}
            await JSONResponse(body, status_code=401, headers={"WWW-Authenticate": "Bearer"})(scope, receive, send)
            return
        scope.setdefault("state", {})["principal"] = principal
        if not principal.may_write and scope["method"] not in READS:
            body = {"code": "forbidden", "message": f"token {principal.name!r} is a viewer's: it only reads"}
            await JSONResponse(body, status_code=403)(scope, receive, send)
            return
        await self.app(scope, receive, send)

    async def _principal(self, scope: Scope) -> Principal | None:
        if self.expected is None:
            return ADMIN
        headers = Headers(scope=scope)
        scheme, _, credentials = headers.get("authorization", "").partition(" ")
        given = credentials if scheme.lower() == "bearer" else headers.get("x-auth-token", "")
        if hmac.compare_digest(given.encode(), self.expected):
            return ADMIN
        if not given:
            return None
        key = digest(given)
        principal: Principal | None = self._recent.get(key)
        if principal is not None:
            return principal
        lookup = self._looking.get(key)
        if lookup is None:  # the requests of a burst that carry the same token share one lookup
            lookup = asyncio.ensure_future(run_in_threadpool(scope["app"].state.provisioner.authenticate, given))
            self._looking[key] = lookup
            lookup.add_done_callback(lambda _done: self._looking.pop(key, None))
        try:
            principal = await asyncio.shield(lookup)
        except Exception:
            log.exception("could not look the token up")
            raise TokenLookupFailed from None
        if principal is not None:
            self._recent[key] = principal
        return principal


class AuditTrail:
    """Every authenticated request to /api or /v1 that may change something, answered or refused, goes to the audit
    log: the actor ("visa" on /api, the token's name on /v1), the route's name as the action, the target (the path's
    ids, or the id a create answered), the query and JSON body as parameters (secrets removed by the log), the status
    and the client's address. Installed inside the guards: what they refuse unauthenticated is not an action."""

    def __init__(self, app: ASGIApp, actor_of: Callable[[Scope, str], str | None] | None = None) -> None:
        self.app = app
        self._actor_of = actor_of or self._actor  # who acts, from the scope and the path (None: not audited)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = get_route_path(scope) if scope["type"] == "http" else ""
        actor = self._actor_of(scope, path) if scope["type"] == "http" else None
        if actor is None or scope["method"] in READS:
            await self.app(scope, receive, send)
            return
        body = bytearray()
        answer = bytearray()
        status = 0

        async def reading() -> Message:
            message = await receive()
            if message["type"] == "http.request" and len(body) < MAX_RECORDED_BODY:
                body.extend(message.get("body", b"")[: MAX_RECORDED_BODY - len(body)])
            return message

        async def answering(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body" and len(answer) < 4096:
                answer.extend(message.get("body", b"")[: 4096 - len(answer)])
            await send(message)

        try:
            await self.app(scope, reading, answering)
        finally:
            await self._record(scope, path, actor, status or 500, bytes(body), bytes(answer))

    @staticmethod
    def _actor(scope: Scope, path: str) -> str | None:
        if under(path, VISA_PREFIX):
            return VISA_OWNER
        principal = scope.get("state", {}).get("principal")
        return principal.name if under(path, PREFIX) and principal is not None else None

    async def _record(self, scope: Scope, path: str, actor: str, status: int, body: bytes, answer: bytes) -> None:
        route = scope.get("route")
        path_params: dict[str, Any] = scope.get("path_params") or {}
        target = ",".join(f"{key}={value}" for key, value in path_params.items()) or None
        created = _json(answer)
        if target is None and isinstance(created, dict) and "id" in created and status < 300:
            target = f"id={created['id']}"
        params: dict[str, Any] = {}
        sent = _json(body) if body else None
        if sent is not None:
            params = sent if isinstance(sent, dict) else {"body": sent}
        if scope.get("query_string"):
            params = {**params, "query": scope["query_string"].decode("latin-1")[:1024]}
        client = scope.get("client")
        entry = Entry(
            actor=actor,
            action=getattr(route, "name", None) or f"{scope['method']} {path}"[:64],
            target=target,
            status=status,
            params=params,
            client=client[0] if client else None,
        )
        try:
            await scope["app"].state.provisioner.record(entry)
        except Exception:
            log.exception("could not append to the audit log: %s by %s on %s", entry.action, actor, target)


def _json(raw: bytes) -> Any:
    try:
        return json.loads(raw) if raw else None
    except ValueError:
        return {"unreadable_body_bytes": len(raw)}
