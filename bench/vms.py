"""Operator VMs' figures against VISA's, measured in one run on the same service (`make bench-vms`):

  1. 50 concurrent POST /v1/vms, each with its own Idempotency-Key (p50/p99), beside 50 concurrent VISA POSTs
     (the baseline), in turn, each kind first in every other round; then the same 50 once more: each answers its
     first VM, and none is made twice. Medians of 4 rounds.
  2. GET /v1/vms at 1,000 VMs (p50/p95) beside GET /api/instances over the same 1,000 (the baseline), and the
     Proxmox requests each GET makes (none: both answer from the store and the cluster view).

The 1,000 are VMs the simulator starts with, which the service adopts as VISA's; for the second list they are
handed to an operator token in the database (the list's cost is the store and the cluster view, not how they came).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import create_engine, update

from bench import (
    KEY,
    OPERATOR_TOKEN,
    ROOT,
    TOKEN,
    Processes,
    exchange,
    percentile,
    post_request,
    proxmox_reads,
    wait_listed,
)

sys.path.insert(0, str(ROOT))
from engine.db import Database
from engine.models import Instance, TokenRole
from engine.tokens import Tokens


def vm_request(port: int, token: str, n: int) -> bytes:
    body = json.dumps({"name": f"bench-{n}", "image": "9000", "size": "small", "ssh_keys": [KEY]}).encode()
    head = (
        f"POST /v1/vms HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {token}\r\n"
        f"Idempotency-Key: bench-{n}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def concurrently(port: int, requests: list[bytes]) -> list[tuple[float, int, str]]:
    """Every request at once, one pre-opened connection each: (seconds, status, body) per request."""
    connections = [await asyncio.open_connection("127.0.0.1", port) for _ in requests]

    async def one(connection: tuple[asyncio.StreamReader, asyncio.StreamWriter], request: bytes):
        start = time.perf_counter()
        status, body = await exchange(*connection, request)
        return time.perf_counter() - start, status, body

    try:
        return list(await asyncio.gather(*(one(c, r) for c, r in zip(connections, requests, strict=True))))
    finally:
        for _, writer in connections:
            writer.close()


def latency(answers: list[tuple[float, int, str]], expected: int) -> dict[str, float]:
    statuses = {status for _, status, _ in answers}
    if statuses != {expected}:
        raise SystemExit(f"unexpected answers: {statuses}: {answers[0][2][:300]}")
    times = [seconds * 1000 for seconds, _, _ in answers]
    return {"p50": percentile(times, 50), "p99": percentile(times, 99)}


def timed_gets(client: httpx.Client, path: str, params: dict[str, Any], rounds: int) -> tuple[dict[str, float], float]:
    """p50/p95 in ms of `rounds` GETs, and the Proxmox reads the service made per GET meanwhile."""
    client.get(path, params=params).raise_for_status()  # warm
    reads_before = proxmox_reads(client)
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        client.get(path, params=params).raise_for_status()
        times.append((time.perf_counter() - start) * 1000)
    reads = (proxmox_reads(client) - reads_before) / rounds
    return {"p50": percentile(times, 50), "p95": percentile(times, 95)}, reads


ROOM = {"PROVISIONER_MAX_INSTANCES": "100000", "PROVISIONER_CPU_OVERCOMMIT": "64", "PROVISIONER_MEMORY_OVERCOMMIT": "4"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--creates", type=int, default=50)
    parser.add_argument("--list", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=30, help="GETs per list measured")
    parser.add_argument("--repeat", type=int, default=4, help="bursts of each kind, interleaved (medians reported)")
    args = parser.parse_args()
    results = post_phase(args.creates, args.repeat) | list_phase(args.list, args.rounds)
    report(results, args.creates)


class Service:
    """A fresh service on the simulator (with `running` VMs for it to adopt), and an operator token for it."""

    def __init__(self, tmp: Path, running: int) -> None:
        self.procs = Processes(tmp, 0.0, running, service_env=ROOM)
        self.db_url = f"sqlite:///{tmp / 'service' / 'provisioner.db'}"
        database = Database(self.db_url)
        self.token = (
            OPERATOR_TOKEN if os.environ.get("BENCH_ADMIN") else Tokens(database).create("bench", TokenRole.OPERATOR)
        )
        database.dispose()
        base = self.procs.base
        self.operator = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {self.token}"}, timeout=60)
        self.visa = httpx.Client(base_url=base, headers={"X-Auth-Token": TOKEN}, timeout=60)

    def stop(self) -> None:
        self.operator.close()
        self.visa.close()
        self.procs.stop()


def post_phase(creates: int, repeat: int) -> dict[str, Any]:
    """Bursts of VISA creates and of operator creates on one service, in turn, each first in every other round (each
    burst meets the playbook runs and phone-homes the previous one started); then every operator burst again."""
    runs: dict[str, list[dict[str, float]]] = {"visa_post_ms": [], "vm_post_ms": [], "vm_replay_ms": []}
    with tempfile.TemporaryDirectory(prefix="provisioner-bench-vms-") as tmp:
        service = Service(Path(tmp), 0)
        port, token = service.procs.port, service.token
        try:
            for round_ in range(repeat):
                numbers = range(round_ * creates, (round_ + 1) * creates)
                visa_posts = [post_request(port, 5000 + n) for n in numbers]
                vm_posts = [vm_request(port, token, n) for n in numbers]
                first: list[tuple[float, int, str]] = []
                for kind in ("visa", "vm") if round_ % 2 == 0 else ("vm", "visa"):
                    if kind == "visa":
                        runs["visa_post_ms"].append(latency(asyncio.run(concurrently(port, visa_posts)), 201))
                    else:
                        first = asyncio.run(concurrently(port, vm_posts))
                        runs["vm_post_ms"].append(latency(first, 202))
                again = asyncio.run(concurrently(port, vm_posts))
                runs["vm_replay_ms"].append(latency(again, 202))
                ids = sorted(json.loads(body)["vm"]["id"] for _, _, body in first)
                if sorted(json.loads(body)["vm"]["id"] for _, _, body in again) != ids or len(set(ids)) != creates:
                    raise SystemExit("a replayed create answered another VM")
        finally:
            service.stop()
    return {name: {k: statistics.median(r[k] for r in values) for k in ("p50", "p99")} for name, values in runs.items()}


def list_phase(size: int, rounds: int) -> dict[str, Any]:
    """GET /api/instances over `size` VISA VMs, then GET /v1/vms over the same VMs handed to the operator token."""
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="provisioner-bench-vms-") as tmp:
        service = Service(Path(tmp), size)
        try:
            wait_listed(service.visa, size)
            results["visa_list_ms"], results["visa_list_reads"] = timed_gets(service.visa, "/api/instances", {}, rounds)
            engine = create_engine(service.db_url)
            with engine.begin() as connection:
                connection.execute(update(Instance).where(Instance.owner == "visa").values(owner="bench"))
            engine.dispose()
            params = {"limit": 1000}
            results["listed"] = len(service.operator.get("/v1/vms", params=params).json()["vms"])
            results["vm_list_ms"], results["vm_list_reads"] = timed_gets(service.operator, "/v1/vms", params, rounds)
        finally:
            service.stop()
    return results


def report(r: dict[str, Any], creates: int) -> None:
    def ratio(ours: float, base: float) -> str:
        return f"{ours / base:.2f}x" if base else "-"

    lines = [
        f"{creates} concurrent POST /api/instances (baseline; medians of the bursts) p50 / p99: "
        f"{r['visa_post_ms']['p50']:.1f} / {r['visa_post_ms']['p99']:.1f} ms",
        f"{creates} concurrent POST /v1/vms with Idempotency-Keys p50 / p99: "
        f"{r['vm_post_ms']['p50']:.1f} / {r['vm_post_ms']['p99']:.1f} ms "
        f"(p99 {ratio(r['vm_post_ms']['p99'], r['visa_post_ms']['p99'])} the baseline)",
        f"the same {creates} again (each answers its first VM) p50 / p99: "
        f"{r['vm_replay_ms']['p50']:.1f} / {r['vm_replay_ms']['p99']:.1f} ms",
        f"GET /api/instances at {r['listed']} (baseline) p50 / p95: "
        f"{r['visa_list_ms']['p50']:.1f} / {r['visa_list_ms']['p95']:.1f} ms, "
        f"{r['visa_list_reads']:.1f} Proxmox requests per GET",
        f"GET /v1/vms at {r['listed']} p50 / p95: {r['vm_list_ms']['p50']:.1f} / {r['vm_list_ms']['p95']:.1f} ms "
        f"(p50 {ratio(r['vm_list_ms']['p50'], r['visa_list_ms']['p50'])} the baseline), "
        f"{r['vm_list_reads']:.1f} Proxmox requests per GET",
    ]
    print("\n".join(lines))
    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    (out / "vms.json").write_text(json.dumps(r, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
