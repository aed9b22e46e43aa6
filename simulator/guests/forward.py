"""TCP forwarding from the guest network to a service on the host (the seed server behind 127.0.0.1).

Guests reach the simulator's gateway address only; a service that listens on loopback is made reachable there by
a forwarder on ``<gateway>:<port>``. It runs on the simulator's event loop and copies bytes both ways.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

log = logging.getLogger(__name__)

CHUNK = 65536


class Forwarder:
    def __init__(self, listen_host: str, listen_port: int, target_host: str, target_port: int) -> None:
        self.listen = (listen_host, listen_port)
        self.target = (target_host, target_port)
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()

    async def start(self) -> Forwarder:
        self._server = await asyncio.start_server(self._serve, *self.listen, reuse_address=True)
        log.info("forwarding guest network %s:%s to %s:%s", *self.listen, *self.target)
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for task in list(self._connections):
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)

    async def _serve(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            try:
                upstream_reader, upstream_writer = await asyncio.open_connection(*self.target)
            except OSError as e:
                log.info("guest connection to %s:%s refused upstream: %s", *self.target, e)
                return
            try:
                await asyncio.gather(_pipe(client_reader, upstream_writer), _pipe(upstream_reader, client_writer))
            finally:
                upstream_writer.close()
        finally:
            client_writer.close()
            self._connections.discard(task)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
        while data := await reader.read(CHUNK):
            writer.write(data)
            await writer.drain()
    with contextlib.suppress(OSError):
        if writer.can_write_eof():
            writer.write_eof()
