"""Benchmark of real guests (needs root and `make guest-deps`), with its baselines measured in the same run.

    python bench/real_guests.py [--creates 10] [--singles 5] [--no-vm] [--cold-build]

Through the VISA API of a service in this process, on a simulator with container guests:
  0. (--cold-build) the Debian 12 container image built into an empty cache, then found in it;
  1. baseline: one create on the emulated simulator (same service code), POST → ACTIVE;
  2. `--singles` creates one after another on container guests: POST → ACTIVE and POST → SSH login (p50/p95),
     as ratios to the emulated create;
  3. `--creates` concurrent creates: POST → all SSH-ready, and as a ratio to one create alone; memory per guest
     (resident memory of every process in the guest);
  4. one QEMU guest (TCG): POST → SSH login.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from simulator import start_simulator  # noqa: E402
from simulator.guests import images  # noqa: E402
from tests.conftest import start_service  # noqa: E402
from tests.helpers.guest_ssh import KeyPair  # noqa: E402
from tests.helpers.real_guests import create, login  # noqa: E402

MIB = 1024 * 1024


def p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


def timed_create(live: Any, work: Path, key: KeyPair, name: str, image: str = "9000", ssh: bool = True) -> dict:
    started = time.monotonic()
    instance_id = create(live, name, image, key)
    live.wait_state(instance_id, "ACTIVE", timeout=900)
    active = time.monotonic() - started
    ready = None
    if ssh:
        login(live, work, instance_id, key, timeout=900)
        ready = time.monotonic() - started
    return {"id": instance_id, "active_s": active, "ssh_s": ready}


def delete_all(live: Any, ids: list[str]) -> None:
    for instance_id in ids:
        live.client.delete(f"/api/instances/{instance_id}")
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if all(live.client.get(f"/api/instances/{i}").status_code == 404 for i in ids):
            return
        time.sleep(1)


def cold_build() -> dict:
    with tempfile.TemporaryDirectory() as cache:
        recipe = images.recipe("debian-12", "container")
        started = time.monotonic()
        images.ensure(recipe, Path(cache))
        built = time.monotonic() - started
        started = time.monotonic()
        images.ensure(recipe, Path(cache))
        return {"build_s": built, "cached_s": time.monotonic() - started}


def run(args: argparse.Namespace) -> None:
    work = Path(tempfile.mkdtemp(prefix="bench-guests-"))
    key = KeyPair.generate(work, "bench")
    if args.cold_build:
        build = cold_build()
        print(
            f"image build (Debian 12 container, cold): {build['build_s']:.1f} s; "
            f"cached lookup {build['cached_s'] * 1000:.1f} ms"
        )

    emulated = start_simulator(work / "sim-none", time_scale=1, clone_secs=0, start_secs=0, boot_secs=0)
    live = start_service(work / "svc-none", emulated, ssh_public_keys=key.public)
    try:
        baseline = timed_create(live, work, key, "VISA-INSTANCE-BASE", ssh=False)["active_s"]
    finally:
        live.stop()
        emulated.stop()
    print(f"baseline, emulated boot: POST → ACTIVE {baseline:.2f} s")

    cluster = start_simulator(work / "sim-ct", time_scale=0, guests="container")
    live = start_service(work / "svc-ct", cluster, ssh_public_keys=key.public, address_timeout_s=300)
    try:
        singles = [timed_create(live, work, key, f"VISA-INSTANCE-S{n}") for n in range(args.singles)]
        delete_all(live, [s["id"] for s in singles])
        active = [s["active_s"] for s in singles]
        ready = [s["ssh_s"] for s in singles]
        single = statistics.median(ready)
        print(
            f"container, one at a time (n={args.singles}): POST → ACTIVE p50 {statistics.median(active):.2f} s "
            f"p95 {p95(active):.2f} s; POST → SSH p50 {single:.2f} s p95 {p95(ready):.2f} s "
            f"({single / baseline:.2f} x the emulated create)"
        )

        started = time.monotonic()
        with ThreadPoolExecutor(args.creates) as pool:
            burst = list(pool.map(lambda n: timed_create(live, work, key, f"VISA-INSTANCE-B{n}"), range(args.creates)))
        all_ready = time.monotonic() - started
        backend = cluster.sim.guests.backend
        memory = [backend.memory_bytes(int(b["id"])) / MIB for b in burst]
        print(
            f"container, {args.creates} concurrent: all SSH-ready in {all_ready:.1f} s "
            f"({all_ready / single:.2f} x one alone); memory per guest p50 {statistics.median(memory):.0f} MiB, "
            f"max {max(memory):.0f} MiB"
        )
        delete_all(live, [b["id"] for b in burst])
    finally:
        live.stop()
        cluster.stop()

    if not args.no_vm:
        cluster = start_simulator(work / "sim-vm", time_scale=0, guests="vm", guest_images=["debian-12"])
        live = start_service(
            work / "svc-vm", cluster, ssh_public_keys=key.public, address_timeout_s=900, job_timeout_s=1800
        )
        try:
            vm = timed_create(live, work, key, "VISA-INSTANCE-QEMU")
            rss = cluster.sim.guests.backend.memory_bytes(int(vm["id"])) / MIB
            print(
                f"QEMU (TCG), one guest: POST → ACTIVE {vm['active_s']:.1f} s, POST → SSH {vm['ssh_s']:.1f} s "
                f"({vm['ssh_s'] / single:.1f} x a container); QEMU RSS {rss:.0f} MiB"
            )
            delete_all(live, [vm["id"]])
        finally:
            live.stop()
            cluster.stop()
    shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--creates", type=int, default=10)
    parser.add_argument("--singles", type=int, default=5)
    parser.add_argument("--no-vm", action="store_true", help="skip the QEMU guest")
    parser.add_argument("--cold-build", action="store_true", help="also time an image build into an empty cache")
    args = parser.parse_args()
    os.environ.pop("REQUESTS_CA_BUNDLE", None)
    os.environ.pop("CURL_CA_BUNDLE", None)
    run(args)


if __name__ == "__main__":
    main()
