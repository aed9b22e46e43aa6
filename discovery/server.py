"""Serving the registry: in a thread of another process (`make run`'s embedded registry, tests) or alone."""

from __future__ import annotations

import signal
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import uvicorn

from discovery.app import create_app
from discovery.settings import RegistrySettings

WILDCARDS = ("0.0.0.0", "::", "")


@dataclass
class RegistryHandle:
    url: str
    server: uvicorn.Server
    thread: threading.Thread

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)


def local_url(host: str, port: int) -> str:
    """The URL local clients use for a listen address (a wildcard is reached on loopback)."""
    if host in WILDCARDS:
        host = "127.0.0.1"
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def start_registry(
    settings: RegistrySettings, clock: Callable[[], float] = time.time, timeout_s: float = 30.0
) -> RegistryHandle:
    """Serve the registry from a daemon thread; the socket is bound first, so port 0 gets a free port."""
    family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
    sock = socket.socket(family)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((settings.host, settings.port))
    except OSError as exc:
        sock.close()
        raise RuntimeError(
            f"the discovery registry cannot listen on {settings.host}:{settings.port}: {exc.strerror}"
        ) from None
    config = uvicorn.Config(create_app(settings, clock), log_level="warning", access_log=False, lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="discovery-registry", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout_s
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            sock.close()
            raise RuntimeError("the discovery registry did not start (see the log above)")
        time.sleep(0.05)
    return RegistryHandle(local_url(settings.host, sock.getsockname()[1]), server, thread)


def serve(settings: RegistrySettings, announce: Callable[[str], None]) -> None:
    """Serve the registry in this process until SIGINT or SIGTERM (`make discovery`); announce(url) once it
    listens (with DISCOVERY_PORT=0 that is the only way to learn the port)."""
    handle = start_registry(settings)
    stopping = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stopping.set())
    announce(handle.url)
    stopping.wait()
    handle.stop()
