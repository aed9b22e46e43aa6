"""TCP forwards from the Golem listener's address to Golem VMs' SSH: `<listen host>:<port>` → `<guest>:22`.

asyncio streams in the API process (no root, no NAT rules to keep in step, nothing left behind when the process
ends): every second the forward table (engine/forwards.py) is synced and the listeners made to match it, so a
restart restores the forwards of the VMs that run, and a deleted VM's port closes and is free again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from typing import Any

from engine.forwards import Forwards, ForwardTarget

log = logging.getLogger(__name__)

SYNC_S = 1.0
CONNECT_TIMEOUT_S = 10.0
CHUNK = 64 * 1024
GUEST_SSH_PORT = 22


@dataclass
class Listener:
    server: asyncio.Server
    target: ForwardTarget
    connections: set[asyncio.Task[Any]] = field(default_factory=set)


class Forwarder:
    def __init__(self, forwards: Forwards, host: str, sync_s: float = SYNC_S) -> None:
        self._forwards = forwards
        self._host = host
        self._sync_s = sync_s
        self._listeners: dict[int, Listener] = {}
        self._task: asyncio.Task[None] | None = None

    def port_of(self, instance_id: int) -> int | None:
        """The port forwarding to the VM now (its listener is up), else None."""
        return next((p for p, listener in self._listeners.items() if listener.target.instance_id == instance_id), None)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="golem-forwarder")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for port in list(self._listeners):
            await self._close(port)

    async def sync(self) -> None:
        """The listeners made to match the table, once."""
        wanted = await asyncio.to_thread(self._forwards.sync)
        for port, listener in list(self._listeners.items()):
            if wanted.get(port) != listener.target:  # gone, down, or another VM or address on the port
                await self._close(port)
        for port, target in wanted.items():
            if port not in self._listeners and target.up and target.address:
                await self._open(target)

    async def _run(self) -> None:
        while True:
            try:
                await self.sync()
            except Exception:
                log.exception("could not sync the Golem SSH forwards")
            await asyncio.sleep(self._sync_s)

    async def _open(self, target: ForwardTarget) -> None:
        connections: set[asyncio.Task[Any]] = set()

        async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            task = asyncio.current_task()
            if task is not None:
                connections.add(task)
            try:
                await _splice(reader, writer, target.address or "")
            finally:
                connections.discard(task)

        try:
            server = await asyncio.start_server(accept, self._host, target.port, reuse_address=True)
        except OSError as exc:
            log.warning("cannot forward %s:%d to VM %d: %s", self._host, target.port, target.instance_id, exc)
            return
        self._listeners[target.port] = Listener(server, target, connections)
        log.info("forwarding %s:%d to VM %d at %s:22", self._host, target.port, target.instance_id, target.address)

    async def _close(self, port: int) -> None:
        listener = self._listeners.pop(port)
        listener.server.close()
        for task in list(listener.connections):
            task.cancel()
        await listener.server.wait_closed()


async def _splice(client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter, address: str) -> None:
    try:
        guest_reader, guest_writer = await asyncio.wait_for(
            asyncio.open_connection(address, GUEST_SSH_PORT), CONNECT_TIMEOUT_S
        )
    except (OSError, TimeoutError):
        client_writer.close()
        return
    try:
        await asyncio.gather(_pump(client_reader, guest_writer), _pump(guest_reader, client_writer))
    finally:
        for writer in (client_writer, guest_writer):
            writer.close()


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(CHUNK):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except (ConnectionError, OSError):
        writer.close()
