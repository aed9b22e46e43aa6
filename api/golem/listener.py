"""The Golem listener's life inside the service's: its own uvicorn server on its own socket, in the service's event
loop, and the SSH forwarder beside it. The service's process handles the signals: this server never installs any."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Iterator

import uvicorn

from api.golem.app import GOLEM_OWNER, GolemApi, build_app
from api.golem.forwarder import Forwarder
from api.golem.ratelimit import RateLimit
from engine.db import Database
from engine.forwards import Forwards
from engine.service import Provisioner

log = logging.getLogger(__name__)


class _EmbeddedServer(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:  # the outer server's handlers stay
        yield


class GolemListener:
    def __init__(self, service: Provisioner, db: Database) -> None:
        settings = service.settings
        self.host, self.port = settings.golem_listen_host, settings.golem_port
        self.forwarder = Forwarder(Forwards(db, GOLEM_OWNER, settings.golem_ssh_port_range), self.host)
        app = build_app(GolemApi(service, self.forwarder), RateLimit(settings.golem_rate_limit))
        config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off", proxy_headers=False)
        self._server = _EmbeddedServer(config)
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Listening once this returns (a port already taken is an OSError here, at the service's start)."""
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.host, self.port))
        except OSError:
            sock.close()
            raise
        self.forwarder.start()
        self._task = asyncio.create_task(self._server.serve(sockets=[sock]), name="golem-listener")
        while not self._server.started and not self._task.done():
            await asyncio.sleep(0.01)
        log.info("Golem-compatible provider listening on http://%s:%d", self.host, self.port)

    async def stop(self) -> None:
        self._server.should_exit = True
        if self._task is not None:
            await self._task
        await self.forwarder.stop()
