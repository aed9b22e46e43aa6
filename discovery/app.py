"""The registry application: routes, error envelope, per-client rate limit, body size limit, and the expiry sweeper."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request, Response
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from common.db import Database
from discovery import routes, store
from discovery.context import Registry
from discovery.errors import body_too_large, error_response, install_error_handlers, rate_limited
from discovery.settings import RegistrySettings

log = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).parent / "migrations"
WRITE_LOCK_KEY = 0x646973636F  # "disco": the registry's own PostgreSQL advisory lock (common.db.make_engine)
MAX_BODY_BYTES = 65_536
UNLIMITED_PATHS = frozenset({"/health"})


def create_app(settings: RegistrySettings, clock: Callable[[], float] = time.time) -> FastAPI:
    registry = Registry(settings, Database(settings.db_url, MIGRATIONS, immediate=True, lock_key=WRITE_LOCK_KEY), clock)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        await run_in_threadpool(registry.db.migrate)
        if settings.accept_unsigned_providers:
            log.warning(
                "DISCOVERY_ACCEPT_UNSIGNED_PROVIDERS is on: advertisements with placeholder signatures are "
                "accepted (anyone can write under an unsigned provider's id)"
            )
        sweeper = asyncio.create_task(_sweep_forever(registry))
        try:
            yield
        finally:
            sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sweeper
            registry.db.dispose()

    app = FastAPI(
        title="Discovery registry",
        version="0.1.0",
        lifespan=lifespan,
        openapi_url="/api/v1/openapi.json",
        docs_url="/api/v1/docs",
        redoc_url=None,
    )
    app.state.registry = registry
    install_error_handlers(app)
    app.add_middleware(BodyLimit, max_bytes=MAX_BODY_BYTES)

    # Added last, so it runs first: a rate-limited client's body is never read.
    @app.middleware("http")
    async def guard(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        if request.url.path in UNLIMITED_PATHS:
            return await call_next(request)
        retry_after = registry.per_client.hit(request.client.host if request.client else "unknown")
        if retry_after is not None:
            return error_response(rate_limited(retry_after))
        return await call_next(request)

    app.include_router(routes.api)
    app.include_router(routes.health)
    return app


class BodyLimit:
    """Answers 413 for a body over max_bytes before the application sees any of it: at once when Content-Length
    says so, else once the bytes received pass the limit (a chunked body declares no length)."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = Headers(scope=scope).get("content-length", "")
        if length.isdigit() and int(length) > self.max_bytes:
            await error_response(body_too_large(self.max_bytes))(scope, receive, send)
            return
        body = bytearray()
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            if len(body) > self.max_bytes:
                await error_response(body_too_large(self.max_bytes))(scope, receive, send)
                return
            more = message.get("more_body", False)
        await self.app(scope, _replay(bytes(body), receive), send)


def _replay(body: bytes, receive: Receive) -> Receive:
    """The whole body as one message, then the client's own messages (a disconnect)."""
    pending = [{"type": "http.request", "body": body, "more_body": False}]

    async def replayed() -> Message:
        return pending.pop() if pending else await receive()

    return replayed


def sweep_once(registry: Registry) -> tuple[int, int]:
    with registry.db.session() as session:
        return store.sweep(session, registry.now(), registry.settings.advertisement_ttl_s)


async def _sweep_forever(registry: Registry) -> None:
    while True:
        await asyncio.sleep(registry.settings.cleanup_interval_s)
        try:
            ads, nonces = await run_in_threadpool(sweep_once, registry)
        except Exception:
            log.exception("the expiry sweep failed; trying again in %s s", registry.settings.cleanup_interval_s)
            continue
        if ads:
            log.info("removed %d expired advertisement(s)", ads)
        log.debug("forgot %d nonce(s) past the signature window", nonces)
