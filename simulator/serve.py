"""The simulator served over TLS on its own event loop in a daemon thread, with real guests when asked."""

from __future__ import annotations

import asyncio
import os
import secrets
import threading
from collections.abc import Callable, Coroutine, Iterable
from pathlib import Path
from typing import Any, TypeVar

from fakepve import settle
from fakepve.certs import make_cert

from common.files import write_private
from simulator.cluster import ClusterSimulator
from simulator.guests.backend import KINDS as GUEST_KINDS
from simulator.guests.backend import GuestBackend
from simulator.properties import GIB
from simulator.seeding import REAL_GUEST_TEMPLATES, seed_cluster

T = TypeVar("T")

TOKEN_ID = "root@pam!provisioner"
START_TIMEOUT = 30.0


class SimulatorHandle:
    """A seeded ClusterSimulator served over TLS on its own event loop in a daemon thread."""

    token_id = TOKEN_ID

    def __init__(self, sim: ClusterSimulator, cafile: str, token_secret: str, token_file: str) -> None:
        self.sim = sim
        self.cafile = cafile
        self.token_secret = token_secret
        self.token_file = token_file
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name=f"simulator-{id(sim)}", daemon=True)
        self._stopped = False
        self._thread.start()

    @property
    def host(self) -> str:
        return str(self.sim.host)

    @property
    def port(self) -> int:
        return int(self.sim.port)

    @property
    def url(self) -> str:
        """https://host:port (the API is under /api2/json)."""
        return f"https://{self.host}:{self.port}"

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_forever()

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = START_TIMEOUT) -> T:
        """Run a coroutine on the simulator's loop and wait for its result (thread-safe)."""
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    @property
    def guest_gateway(self) -> str | None:
        """With real guests: the simulator's address on the guest network; None with the emulated boot."""
        return self.sim.guests.backend.gateway if self.sim.guests is not None else None

    def expose(self, port: int, target_host: str, target_port: int) -> str:
        """Make a host service reachable from real guests at <gateway>:port; returns that address as host:port."""
        if self.sim.guests is None:
            raise RuntimeError("the simulator runs no real guests")
        self.call(self.sim.guests.expose(port, target_host, target_port))
        return f"{self.guest_gateway}:{port}"

    def stop(self) -> None:
        """Stop serving, cancel whatever still runs on the loop and end the thread, then remove every real guest
        and the guest network (idempotent)."""
        if self._stopped:
            return
        self._stopped = True
        try:
            self.call(settle())
            self.call(self.sim.stop())
            self.call(_cancel_pending())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(START_TIMEOUT)
            if not self._thread.is_alive():
                self._loop.close()
            if self.sim.guests is not None:
                self.sim.guests.backend.close()

    def __enter__(self) -> SimulatorHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


async def _cancel_pending() -> None:
    """Cancel the tasks left on the loop (tasks still running at time_scale > 0) and wait for them."""
    current = asyncio.current_task()
    pending = [t for t in asyncio.all_tasks() if t is not current]
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)


def start_simulator(
    state_dir: str | os.PathLike[str],
    host: str = "127.0.0.1",
    port: int = 0,
    time_scale: float = 0.0,
    clone_secs: float = 0,
    start_secs: float = 0,
    boot_secs: float = 0,
    seed: bool = True,
    *,
    node_cpus: int = 32,
    node_memory_gib: int = 128,
    guests: str = "none",
    progress: Callable[[str], None] | None = None,
    guest_images: Iterable[str] | None = None,
) -> SimulatorHandle:
    """Serve a (seeded) ClusterSimulator at https://host:port (port 0: a free one) with the boot sidecar running.

    state_dir receives simulator.crt (the CA to verify against), simulator.key and token (the secret of
    root@pam!provisioner, mode 0600). guests: none (emulated boot), container or vm (real guests: their images
    are built first if the cache lacks them, `progress` hears about it; simulator.guests.system.GuestsUnavailable
    when the host cannot run them). guest_images: the images to make ready (default: every real template's); a VM of a
    template whose image is not among them fails to start.
    """
    if guests not in GUEST_KINDS:
        raise ValueError(f"guests must be one of {', '.join(GUEST_KINDS)}, not {guests!r}")
    state = Path(state_dir)
    state.mkdir(parents=True, exist_ok=True)
    certfile, keyfile, _der = make_cert(str(state), name="simulator", hosts=(host,))
    sim = ClusterSimulator(host=host, port=port)
    sim.time_scale = time_scale
    sim.clone_secs, sim.start_secs, sim.boot_secs = clone_secs, start_secs, boot_secs
    sim.node_cpus, sim.node_memory = node_cpus, node_memory_gib * GIB
    if guests != "none":
        backend = GuestBackend(guests, state / "guests", progress=progress)
        wanted = [spec.image for spec in REAL_GUEST_TEMPLATES if spec.image]
        backend.open(wanted if guest_images is None else [name for name in wanted if name in set(guest_images)])
        sim.use_guests(backend)
    if seed:
        seed_cluster(sim)
    secret = secrets.token_urlsafe(32)
    sim.apitokens[TOKEN_ID] = secret
    token_file = state / "token"
    write_private(token_file, secret + "\n")
    try:
        handle = SimulatorHandle(sim, certfile, secret, str(token_file))
    except BaseException:
        if sim.guests is not None:
            sim.guests.backend.close()
        raise
    try:
        handle.call(sim.start(certfile, keyfile))
    except BaseException:
        handle.stop()
        raise
    return handle


def parse_forward(spec: str) -> tuple[int, str, int]:
    """PORT=HOST:PORT as (gateway port, target host, target port)."""
    port, _, target = spec.partition("=")
    host, _, target_port = target.rpartition(":")
    if not (port.isdigit() and target_port.isdigit() and host):
        raise ValueError(f"{spec!r} is not PORT=HOST:PORT")
    return int(port), host, int(target_port)
