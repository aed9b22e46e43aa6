"""Benchmark on the embedded simulator, with baselines measured in the same run.

    python bench/bench.py [--creates 50] [--list 200] [--time-scale 0]
    python bench/bench.py --only post [--creates 50] [--repeat 3] [--against REV]

Starts the simulator and the service as separate processes (so the service's RSS is its own), then:
  1. one create alone, POST → ACTIVE (the in-run baseline: N creates one after another take N x this);
  2. N concurrent creates: POST latency p50/p99, time until all are ACTIVE, integrity (each VM carries
     its own request's name and metadata);
  3. GET /api/instances at L instances (the VMs beyond the created ones are running VISA VMs the simulator
     starts with, which the service adopts) vs. the reference's way of answering it (cluster/resources plus
     one guest-agent call per VM), read directly from the same simulator; Proxmox reads per GET;
  4. peak RSS of the service process, and of its process tree (ansible-playbook and forks included).
The reference provider's own figures (shared notes, reference-baseline.md, same simulator kind) are
printed beside ours for context.

`--only post` measures just the POST burst (a fresh simulator and service per repeat): one POST alone (the
in-run baseline), then N concurrent POSTs. `--against REV` measures git revision REV the same way, with
its runs interleaved with this tree's, so both see the same machine load; ratios compare the medians.

The burst client sends each POST on its own keep-alive connection opened beforehand (VISA's REST client
pools its connections) and does nothing else while the answers come in, so a request's latency is the
time from writing it to reading its whole answer, not the client's own queueing.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import io
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import yaml
from proxmoxer import ProxmoxAPI

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "bench-token-0123456789"
OPERATOR_TOKEN = "bench-operator-token-0123456789"
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHVmPnHqL3iOx0hB3fm4tJq0pS0KyfHlLQ0n8Qd3JYJb bench@example.org"
REFERENCE = {
    "creates_ok_of_50": 3,
    "post_seconds": 1.10,
    "serial_50_active_s": 55.3,
    "list_200_s": 0.476,
    "list_200_pve_requests": 201,
    "rss_peak_mib": 113.1,
}


def wait_ready(base: str, timeout: float) -> bool:
    """Until the service at base is ready (its cluster view fresh, a worker taking jobs); False after timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(base + "/readyz", timeout=1).status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    return False


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(pct / 100 * len(ordered) + 0.5) - 1))]


class Processes:
    """The simulator and the service, each a process of its own, run from the source tree `root`."""

    def __init__(
        self,
        workdir: Path,
        time_scale: float,
        running_vms: int,
        root: Path = ROOT,
        service_env: dict[str, str] | None = None,
        run_args: tuple[str, ...] = (),
    ) -> None:
        env = {k: v for k, v in os.environ.items() if k not in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE")}
        self.sim_port = free_port()
        sim_dir = workdir / "simulator"
        self.sim = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "simulator",
                "--state-dir",
                str(sim_dir),
                "--port",
                str(self.sim_port),
                "--time-scale",
                str(time_scale),
                "--clone-secs",
                "0",
                "--start-secs",
                "0",
                "--boot-secs",
                "0",
                "--running-vms",
                str(running_vms),
                "--node-cpus",
                "128",
                "--node-memory-gib",
                "1024",
            ],
            cwd=root,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        lines = {}
        while "token secret file" not in lines:
            line = self.sim.stdout.readline() if self.sim.stdout else ""
            if not line:
                self.sim.kill()
                raise SystemExit("the simulator did not start")
            key, _, value = line.partition(":")
            lines[key.strip()] = value.strip()
        self.ca = lines["ca"]
        self.secret = Path(lines["token secret file"]).read_text(encoding="utf-8").strip()
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        service_env = dict(
            env,
            VISA_WEB_PROVIDER_PROXMOX_ENDPOINT=f"https://127.0.0.1:{self.sim_port}/api2/json/",
            VISA_WEB_PROVIDER_PROXMOX_USER="root@pam!provisioner",
            VISA_WEB_PROVIDER_PROXMOX_PASSWORD=self.secret,
            PROVISIONER_PROXMOX_CA_FILE=self.ca,
            VISA_WEB_PROVIDER_PROXMOX_SERVER_AUTH_TOKEN=TOKEN,
            PROVISIONER_OPERATOR_TOKEN=OPERATOR_TOKEN,
            VISA_WEB_PROVIDER_PROXMOX_SERVER_PORT=str(self.port),
            PROVISIONER_STATE_DIR=str(workdir / "service"),
            PROVISIONER_SSH_PUBLIC_KEYS=KEY,
            PROVISIONER_LOG_LEVEL="WARNING",
            # The pre-seeded VMs stand for ones the reference provider made: adopted by name, as on a migrated site.
            PROVISIONER_ADOPT_REFERENCE_VMS="true",
        ) | (service_env or {})
        self.service = subprocess.Popen(
            [sys.executable, "-m", "provisioner.cli", "run", *run_args],  # the `provisioner` command, from `root`
            cwd=root,
            env=service_env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        if not wait_ready(self.base, 60):
            self.stop()  # nothing started is left running
            raise SystemExit("the service did not get ready")

    def pve(self) -> ProxmoxAPI:
        return ProxmoxAPI(
            "127.0.0.1",
            port=self.sim_port,
            user="root@pam",
            token_name="provisioner",
            token_value=self.secret,
            verify_ssl=self.ca,
            timeout=30,
        )

    def stop(self) -> None:
        for proc in (self.service, self.sim):
            proc.send_signal(signal.SIGTERM)
        for proc in (self.service, self.sim):
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()


class RssSampler(threading.Thread):
    """Peak VmRSS of one process and of its process tree, sampled every 50 ms."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid, self.peak_self, self.peak_tree = pid, 0, 0
        self.done = threading.Event()

    @staticmethod
    def rss_kib(pid: int) -> int:
        try:
            text = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            return 0
        found = re.search(r"VmRSS:\s+(\d+)", text)
        return int(found.group(1)) if found else 0

    def tree(self) -> list[int]:
        children: dict[int, list[int]] = {}
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                except (OSError, IndexError, ValueError):
                    continue
                children.setdefault(ppid, []).append(int(entry.name))
        found, todo = [], [self.pid]
        while todo:
            pid = todo.pop()
            found.append(pid)
            todo += children.get(pid, [])
        return found

    def run(self) -> None:
        while not self.done.wait(0.05):
            self.peak_self = max(self.peak_self, self.rss_kib(self.pid))
            self.peak_tree = max(self.peak_tree, sum(self.rss_kib(p) for p in self.tree()))


def create_body(n: int, groups: tuple[str, ...] = ("default",)) -> dict[str, Any]:
    return {
        "name": f"VISA-INSTANCE-{n}",
        "imageId": "9000",
        "flavourId": "small",
        "securityGroups": list(groups),
        "metadata": {"id": str(n), "owner": f"user{n}", "instruments": "", "proposals": ""},
    }


def post_request(port: int, n: int, groups: tuple[str, ...] = ("default",)) -> bytes:
    body = json.dumps(create_body(n, groups)).encode()
    head = (
        f"POST /api/instances HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nX-Auth-Token: {TOKEN}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes) -> tuple[int, str]:
    """One HTTP/1.1 request on a keep-alive connection; the answer's status and body."""
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    length = re.search(rb"(?im)^content-length:\s*(\d+)", head)
    body = await reader.readexactly(int(length.group(1)) if length else 0)
    return int(head.split(b" ", 2)[1]), body.decode()


async def burst(
    port: int, numbers: list[int], groups: tuple[str, ...] = ("default",)
) -> list[tuple[int, float, int, str]]:
    """POST every create at once, one pre-opened connection each: (n, seconds, status, body) per create."""
    connections = [await asyncio.open_connection("127.0.0.1", port) for _ in numbers]
    requests = [post_request(port, n, groups) for n in numbers]

    async def one(n: int, connection: tuple[asyncio.StreamReader, asyncio.StreamWriter], request: bytes):
        start = time.perf_counter()
        status, body = await exchange(*connection, request)
        return n, time.perf_counter() - start, status, body

    try:
        return list(await asyncio.gather(*(one(*args) for args in zip(numbers, connections, requests, strict=True))))
    finally:
        for _, writer in connections:
            writer.close()


async def serial_posts(port: int, numbers: list[int]) -> list[tuple[int, float, int, str]]:
    """The same POSTs one after another on one connection: one create alone, the in-run baseline."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    answers = []
    try:
        for n in numbers:
            request = post_request(port, n)
            start = time.perf_counter()
            status, body = await exchange(reader, writer, request)
            answers.append((n, time.perf_counter() - start, status, body))
    finally:
        writer.close()
    return answers


def wait_active(client: httpx.Client, ids: list[str], started: float, timeout: float = 900) -> float:
    pending = set(ids)
    while pending:
        if time.perf_counter() - started > timeout:
            raise SystemExit(f"{len(pending)} instances not ACTIVE after {timeout} s")
        for instance_id in list(pending):
            body = client.get(f"/api/instances/{instance_id}").json()
            state = body["state"]
            if state == "ERROR":
                raise SystemExit(f"instance {instance_id} went to ERROR: {body.get('fault')}")
            if state == "ACTIVE":
                pending.discard(instance_id)
        time.sleep(0.5)
    return time.perf_counter() - started


def wait_all_active(client: httpx.Client, ids: list[str], started: float, timeout: float = 1800) -> float:
    """Seconds from started until every one of ids is ACTIVE, from the list (one request per look)."""
    wanted = set(ids)
    while True:
        states = {i["id"]: i["state"] for i in client.get("/api/instances").json() if i["id"] in wanted}
        if any(state == "ERROR" for state in states.values()):
            raise SystemExit("an instance went to ERROR")
        if len(states) == len(wanted) and set(states.values()) == {"ACTIVE"}:
            return time.perf_counter() - started
        if time.perf_counter() - started > timeout:
            raise SystemExit(f"not every instance ACTIVE after {timeout} s")
        time.sleep(0.5)


# The stores the scale benchmark compares: SQLite with the embedded queue, PostgreSQL (a server of the service's own,
# `provisioner run --local-postgres`) with procrastinate.
STORES = {"sqlite": (), "postgresql": ("--local-postgres",)}


def scale_benchmark(creates: int, worker_counts: list[int], stores: list[str]) -> None:
    """`creates` concurrent creates to all ACTIVE, with each store and number of worker processes, on fresh
    services."""
    results: dict[str, float] = {}
    for store in stores:
        for workers in worker_counts:
            label = f"{store}, {workers} worker(s)"
            results[label] = scale_once(creates, workers, STORES[store])
            print(f"{label}: {creates} creates all ACTIVE in {results[label]:.1f} s", flush=True)
    first = next(iter(results))
    print(f"\n{creates} concurrent creates to all ACTIVE, time-scale 0 (ratio to {first})")
    for label, seconds in results.items():
        print(f"  {label:28} {seconds:6.1f} s, ratio {seconds / results[first]:.2f}")
    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    (out / "scale.json").write_text(json.dumps({"creates": creates, "seconds": results}, indent=2), encoding="utf-8")


def scale_once(creates: int, workers: int, run_args: tuple[str, ...]) -> float:
    with tempfile.TemporaryDirectory(prefix="provisioner-bench-scale-") as tmp:
        Path(tmp).chmod(0o711)  # as root, PostgreSQL's unprivileged user reaches its cluster beside the state directory
        procs = Processes(Path(tmp), 0.0, 0, service_env={"PROVISIONER_WORKERS": str(workers)}, run_args=run_args)
        client = httpx.Client(base_url=procs.base, headers={"X-Auth-Token": TOKEN}, timeout=120)
        try:
            started = time.perf_counter()
            answers = asyncio.run(burst(procs.port, list(range(1000, 1000 + creates))))
            ids = [json.loads(body)["id"] for _, _, status, body in answers if status == 201]
            if len(ids) != creates:
                raise SystemExit(f"{creates - len(ids)} creates refused")
            return wait_all_active(client, ids, started)
        finally:
            client.close()
            procs.stop()


def wait_listed(client: httpx.Client, count: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while len(client.get("/api/instances").json()) < count:
        if time.monotonic() > deadline:
            raise SystemExit(f"fewer than {count} instances listed after {timeout} s")
        time.sleep(1)


def integrity(procs: Processes, created: dict[int, str]) -> int:
    """Instances whose VM name or seed metadata belongs to another request (must be 0)."""
    pve, crossed = procs.pve(), 0
    nodes = {vm["vmid"]: vm["node"] for vm in pve.cluster.resources.get(type="vm")}
    for n, instance_id in created.items():
        config = pve.nodes(nodes[int(instance_id)]).qemu(int(instance_id)).config.get()
        serial = dict(p.split("=", 1) for p in config["smbios1"].split(","))["serial"]
        url = base64.b64decode(serial).decode().split(";s=", 1)[1]
        meta = yaml.safe_load(httpx.get(url + "meta-data", timeout=10).text)
        if config["name"] != f"VISA-INSTANCE-{n}" or meta["meta"]["id"] != str(n):
            crossed += 1
    return crossed


def proxmox_reads(client: httpx.Client) -> float:
    text = client.get("/metrics").text
    found = re.search(r"^provisioner_proxmox_read_requests_total ([0-9.e+]+)$", text, re.M)
    return float(found.group(1)) if found else 0.0


def reference_style_list(pve: ProxmoxAPI) -> tuple[float, int]:
    """The reference's GET /api/instances: cluster/resources, then one agent call per running VM."""
    start = time.perf_counter()
    resources = pve.cluster.resources.get(type="vm")
    requests = 1
    for vm in resources:
        if vm.get("status") == "running" and not vm.get("template"):
            requests += 1
            with contextlib.suppress(Exception):  # an agent that is not up costs the same request
                pve.nodes(vm["node"]).qemu(vm["vmid"]).agent("network-get-interfaces").get()
    return time.perf_counter() - start, requests


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--creates", type=int, default=50)
    parser.add_argument("--list", type=int, default=200)
    parser.add_argument("--time-scale", type=float, default=0.0)
    parser.add_argument(
        "--only",
        choices=["post", "scale"],
        help="one phase only: post (the POST burst), scale (--creates to all ACTIVE with each --workers count)",
    )
    parser.add_argument("--workers", default="1,2,4", help="with --only scale: worker process counts to compare")
    parser.add_argument("--stores", default="sqlite", help="with --only scale: sqlite, postgresql or both (comma)")
    parser.add_argument("--repeat", type=int, default=3, help="with --only post: fresh services per tree")
    parser.add_argument("--against", metavar="REV", help="with --only post: also measure this git revision")
    parser.add_argument("--busy", action="store_true", help="with --only post: send the burst during a playbook run")
    args = parser.parse_args()
    if args.only == "post":
        post_benchmark(args.creates, args.repeat, args.against, args.busy)
    elif args.only == "scale":
        scale_benchmark(args.creates, [int(n) for n in args.workers.split(",")], args.stores.split(","))
    else:
        full_benchmark(args)


def full_benchmark(args: argparse.Namespace) -> None:
    results: dict[str, Any] = {"creates": args.creates, "list_size": args.list}
    with tempfile.TemporaryDirectory(prefix="provisioner-bench-") as tmp:
        adopted = max(0, args.list - 1 - args.creates)
        procs = Processes(Path(tmp), args.time_scale, adopted)
        sampler = RssSampler(procs.service.pid)
        sampler.start()
        client = httpx.Client(base_url=procs.base, headers={"X-Auth-Token": TOKEN}, timeout=60)
        try:
            started = time.perf_counter()
            single = client.post("/api/instances", json=create_body(1)).json()["id"]
            results["single_active_s"] = wait_active(client, [single], started)

            numbers = list(range(1000, 1000 + args.creates))
            started = time.perf_counter()
            answers = asyncio.run(burst(procs.port, numbers))
            latencies = [a[1] for a in answers]
            created = {n: json.loads(text)["id"] for n, _, status, text in answers if status == 201}
            results |= {
                "burst_ok": len(created),
                "post_p50_ms": percentile(latencies, 50) * 1000,
                "post_p99_ms": percentile(latencies, 99) * 1000,
            }
            results["burst_active_s"] = wait_active(client, list(created.values()), started)
            results["crossed_data"] = integrity(procs, created)

            # The rest of the list: running VISA VMs the simulator started with, adopted by the reconciler.
            wait_listed(client, args.list)
            listed = client.get("/api/instances").json()
            results["listed"] = len(listed)
            before = proxmox_reads(client)
            timings = []
            for _ in range(20):
                start = time.perf_counter()
                client.get("/api/instances").raise_for_status()
                timings.append(time.perf_counter() - start)
            window = sum(timings)
            results |= {
                "list_p50_s": statistics.median(timings),
                "list_p95_s": percentile(timings, 95),
                "list_pve_reads_during_20_gets": proxmox_reads(client) - before,
                "list_window_s": window,
            }
            ref_times, ref_requests = [], 0
            for _ in range(5):
                elapsed, ref_requests = reference_style_list(procs.pve())
                ref_times.append(elapsed)
            results |= {"refstyle_list_p50_s": statistics.median(ref_times), "refstyle_list_requests": ref_requests}
        finally:
            sampler.done.set()
            client.close()
            procs.stop()
        results |= {"rss_peak_service_mib": sampler.peak_self / 1024, "rss_peak_tree_mib": sampler.peak_tree / 1024}
    report(results)


SERIAL_POSTS = 4  # the first one warms the service up and is not counted


def post_burst(root: Path, creates: int, busy: bool = False) -> dict[str, Any]:
    """On a fresh simulator and service from `root`: one POST alone, then `creates` concurrent POSTs; with busy, sent
    while a playbook run creates `creates` other VMs."""
    with tempfile.TemporaryDirectory(prefix="provisioner-bench-") as tmp:
        procs = Processes(Path(tmp), 0.0, 0, root)
        client = httpx.Client(base_url=procs.base, headers={"X-Auth-Token": TOKEN}, timeout=60)
        try:
            serial = asyncio.run(serial_posts(procs.port, list(range(1, 1 + SERIAL_POSTS))))
            if any(status != 201 for _, _, status, _ in serial):
                raise SystemExit(f"a single create failed: {serial}")
            # Their playbook run would compete with the burst for the CPU.
            wait_active(client, [json.loads(body)["id"] for *_, body in serial], time.perf_counter())
            if busy:
                asyncio.run(burst(procs.port, list(range(5000, 5000 + creates))))
                wait_cloned(procs, SERIAL_POSTS + creates // 5)
            answers = asyncio.run(burst(procs.port, list(range(1000, 1000 + creates))))
            created = {n: json.loads(body)["id"] for n, _, status, body in answers if status == 201}
            crossed = sum(
                client.get(f"/api/instances/{instance_id}").json()["name"] != f"VISA-INSTANCE-{n}"
                for n, instance_id in created.items()
            )
        finally:
            client.close()
            procs.stop()
    latencies = [a[1] for a in answers]
    return {
        "one_alone_ms": statistics.median(a[1] for a in serial[1:]) * 1000,
        "ok": len(created),
        "distinct_ids": len(set(created.values())),
        "crossed": crossed,
        "p50_ms": percentile(latencies, 50) * 1000,
        "p99_ms": percentile(latencies, 99) * 1000,
    }


def wait_cloned(procs: Processes, count: int, timeout: float = 120) -> None:
    """Until the simulator holds `count` VMs (besides templates): the run's forks are at work, on any tree alike."""
    pve = procs.pve()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        vms = [r for r in pve.cluster.resources.get(type="vm") if not r.get("template")]
        if len(vms) >= count:
            return
        time.sleep(0.05)
    raise SystemExit(f"fewer than {count} VMs after {timeout} s")


def source_tree(rev: str, into: Path) -> Path:
    """The files of git revision `rev` of this repository, extracted into `into`."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev], check=True, capture_output=True).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    return into


def post_benchmark(creates: int, repeat: int, against: str | None, busy: bool = False) -> None:
    with tempfile.TemporaryDirectory(prefix="provisioner-bench-rev-") as tmp:
        trees = {"this tree": ROOT}
        if against:
            trees = {against: source_tree(against, Path(tmp)), **trees}
        runs: dict[str, list[dict[str, Any]]] = {label: [] for label in trees}
        for attempt in range(repeat):
            for label, root in trees.items():
                runs[label].append(post_burst(root, creates, busy))
                print(f"run {attempt + 1}/{repeat} {label}: {json.dumps(runs[label][-1])}", flush=True)
    report_post(creates, runs, busy)


def report_post(creates: int, runs: dict[str, list[dict[str, Any]]], busy: bool = False) -> None:
    """Per tree: the medians over its runs (each run is a fresh service), then this tree's ratio to the other."""
    medians: dict[str, dict[str, float]] = {}
    during = f", sent while a playbook run makes {creates} other VMs" if busy else ""
    services = len(next(iter(runs.values())))
    print(f"\nPOST /api/instances, {creates} concurrent{during}; medians of {services} fresh services")
    for label, results in runs.items():
        median = {key: statistics.median(r[key] for r in results) for key in ("one_alone_ms", "p50_ms", "p99_ms")}
        medians[label] = median
        every_p99 = ", ".join(f"{r['p99_ms']:.0f}" for r in results)
        accepted = min(r["ok"] for r in results)
        distinct = min(r["distinct_ids"] for r in results)
        crossed = max(r["crossed"] for r in results)
        print(f"{label}: accepted {accepted}/{creates}, distinct ids {distinct}, names crossed {crossed}")
        print(f"  one POST alone (in-run baseline)  {median['one_alone_ms']:.1f} ms")
        print(
            f"  burst p50 / p99                   {median['p50_ms']:.0f} / {median['p99_ms']:.0f} ms (p99s {every_p99})"
        )
        print(f"  p99 ÷ {creates} POSTs one after another {median['p99_ms'] / (creates * median['one_alone_ms']):.2f}")
    if len(medians) == 2:
        (base_label, base), (_, ours) = medians.items()
        print(
            f"this tree ÷ {base_label}: p50 {ours['p50_ms'] / base['p50_ms']:.2f}, "
            f"p99 {ours['p99_ms'] / base['p99_ms']:.2f}"
        )
    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    name = "post-busy.json" if busy else "post.json"
    (out / name).write_text(json.dumps({"creates": creates, "busy": busy, "runs": runs}, indent=2), encoding="utf-8")


def report(r: dict[str, Any]) -> None:
    n = r["creates"]
    serial = n * r["single_active_s"]
    rows = [
        ("concurrent creates accepted", f"{r['burst_ok']}/{n}", f"{REFERENCE['creates_ok_of_50']}/50", ""),
        (
            "POST /api/instances p50 / p99",
            f"{r['post_p50_ms']:.0f} / {r['post_p99_ms']:.0f} ms",
            f"{REFERENCE['post_seconds'] * 1000:.0f} ms (single)",
            f"p99 ÷ ref {r['post_p99_ms'] / 1100:.3f}",
        ),
        ("requests given another's data", str(r["crossed_data"]), "3 of 3", ""),
        ("one create alone → ACTIVE (in-run baseline)", f"{r['single_active_s']:.1f} s", "1.1 s + boot", ""),
        (
            f"{n} concurrent → all ACTIVE",
            f"{r['burst_active_s']:.1f} s",
            f"{REFERENCE['serial_50_active_s']} s (serial)",
            f"÷ in-run serial {r['burst_active_s'] / serial:.2f}, ÷ ref {r['burst_active_s'] / 55.3:.2f}",
        ),
        (
            f"GET /api/instances at {r['listed']} p50 (p95)",
            f"{r['list_p50_s'] * 1000:.1f} ({r['list_p95_s'] * 1000:.1f}) ms",
            f"{REFERENCE['list_200_s'] * 1000:.0f} ms",
            f"÷ ref {r['list_p50_s'] / REFERENCE['list_200_s']:.3f}",
        ),
        (
            "  same list, reference's method, in-run",
            f"{r['refstyle_list_p50_s'] * 1000:.1f} ms",
            "",
            f"ours ÷ it {r['list_p50_s'] / r['refstyle_list_p50_s']:.3f}",
        ),
        (
            "Proxmox requests per GET /api/instances",
            f"0 (reads in 20 GETs: {r['list_pve_reads_during_20_gets']:.0f}, background refresh only)",
            f"{REFERENCE['list_200_pve_requests']}",
            f"reference's method in-run: {r['refstyle_list_requests']}",
        ),
        (
            "peak RSS service / with ansible children",
            f"{r['rss_peak_service_mib']:.0f} / {r['rss_peak_tree_mib']:.0f} MiB",
            f"{REFERENCE['rss_peak_mib']} MiB (+98 MiB metadata server)",
            "",
        ),
    ]
    width = max(len(row[0]) for row in rows)
    print(f"{'measure':<{width}}  {'ours':<34} {'reference':<30} ratio")
    for name, ours, ref, ratio in rows:
        print(f"{name:<{width}}  {ours:<34} {ref:<30} {ratio}")
    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    (out / "latest.json").write_text(json.dumps(r, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
