"""`python -m simulator`: serve a simulated cluster until SIGINT or SIGTERM."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from typing import TypeVar

from simulator.cluster import ClusterSimulator
from simulator.guests.backend import KINDS as GUEST_KINDS
from simulator.guests.system import GuestsUnavailable
from simulator.seeding import add_running_vms
from simulator.serve import SimulatorHandle, parse_forward, start_simulator

T = TypeVar("T")


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m simulator", description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--state-dir", required=True, help="certificate, key and token file go here")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8006)
    parser.add_argument("--time-scale", type=float, default=1.0, help="real seconds per PVE second")
    parser.add_argument("--clone-secs", type=float, default=3.0)
    parser.add_argument("--start-secs", type=float, default=2.0)
    parser.add_argument("--boot-secs", type=float, default=20.0)
    parser.add_argument("--no-seed", action="store_true", help="an empty cluster (one node, no templates)")
    parser.add_argument(
        "--running-vms",
        type=int,
        default=0,
        help="add this many running VISA-INSTANCE-<vmid> VMs (vmid 190000 up) to be adopted",
    )
    parser.add_argument(
        "--guests",
        choices=GUEST_KINDS,
        default=os.environ.get("PROVISIONER_SIM_GUESTS", "none"),
        help="real guests: container (systemd-nspawn) or vm (QEMU); none: the emulated boot "
        "(default: PROVISIONER_SIM_GUESTS or none)",
    )
    parser.add_argument(
        "--expose",
        action="append",
        default=[],
        metavar="PORT=HOST:PORT",
        help="with real guests: forward <guest gateway>:PORT to HOST:PORT (a seed server on loopback); repeatable",
    )
    parser.add_argument("--node-cpus", type=int, default=32)
    parser.add_argument("--node-memory-gib", type=int, default=128)
    return parser.parse_args(argv)


async def _add_running(sim: ClusterSimulator, count: int) -> None:
    add_running_vms(sim, count, 190000, "VISA-INSTANCE")


def _start_from(args: argparse.Namespace) -> SimulatorHandle:
    return start_simulator(
        args.state_dir,
        args.host,
        args.port,
        args.time_scale,
        args.clone_secs,
        args.start_secs,
        args.boot_secs,
        seed=not args.no_seed,
        node_cpus=args.node_cpus,
        node_memory_gib=args.node_memory_gib,
        guests=args.guests,
        progress=lambda line: print(line, file=sys.stderr, flush=True),  # noqa: T201
    )


def main(argv: list[str] | None = None) -> int:
    """Serve until SIGINT or SIGTERM; print the URL, the CA and the token file (never the secret)."""
    args = _arguments(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    done = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: done.set())
    try:
        handle = _start_from(args)
    except GuestsUnavailable as e:
        sys.stderr.write(f"{e}\n")
        return 2
    if args.running_vms:
        handle.call(_add_running(handle.sim, args.running_vms))
    try:
        exposed = [handle.expose(*parse_forward(spec)) for spec in args.expose]
    except (ValueError, RuntimeError, OSError) as e:
        handle.stop()
        sys.stderr.write(f"--expose: {e}\n")
        return 2
    sys.stdout.write(
        f"simulator ready\nurl: {handle.url}\nca: {handle.cafile}\ntoken id: {handle.token_id}\n"
        f"token secret file: {handle.token_file}\n"
        + (f"guest gateway: {handle.guest_gateway}\n" if handle.guest_gateway else "")
        + "".join(f"exposed to guests: {address}\n" for address in exposed)
    )
    sys.stdout.flush()
    try:
        while not done.wait(0.5):
            pass
    finally:
        handle.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
