"""Benchmark on the embedded simulator, with baselines measured in the same run.

    python bench/bench.py [--creates 50] [--list 200] [--time-scale 0]

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
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
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
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHVmPnHqL3iOx0hB3fm4tJq0pS0KyfHlLQ0n8Qd3JYJb bench@example.org"
REFERENCE = {
    "creates_ok_of_50": 3,
    "post_seconds": 1.10,
    "serial_50_active_s": 55.3,
    "list_200_s": 0.476,
    "list_200_pve_requests": 201,
    "rss_peak_mib": 113.1,
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(pct / 100 * len(ordered) + 0.5) - 1))]


class Processes:
    def __init__(self, workdir: Path, time_scale: float, running_vms: int) -> None:
        env = {k: v for k, v in os.environ.items() if k not in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE")}
        self.sim_port = free_port()
        sim_dir = workdir / "simulator"
        self.sim = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "engine.simulator",
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
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        lines = {}
        while "token secret file" not in lines:
            line = self.sim.stdout.readline() if self.sim.stdout else ""
            if not line:
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
            VISA_WEB_PROVIDER_PROXMOX_SERVER_PORT=str(self.port),
            PROVISIONER_STATE_DIR=str(workdir / "service"),
            PROVISIONER_SSH_PUBLIC_KEYS=KEY,
            PROVISIONER_LOG_LEVEL="WARNING",
        )
        self.service = subprocess.Popen(
            [str(Path(sys.executable).parent / "provisioner"), "run"],
            cwd=ROOT,
            env=service_env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.base + "/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.2)
        raise SystemExit("the service did not start")

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


def create_body(n: int) -> dict[str, Any]:
    return {
        "name": f"VISA-INSTANCE-{n}",
        "imageId": "9000",
        "flavourId": "small",
        "securityGroups": ["default"],
        "metadata": {"id": str(n), "owner": f"user{n}", "instruments": "", "proposals": ""},
    }


async def burst(base: str, numbers: list[int]) -> list[tuple[int, float, int, str]]:
    async with httpx.AsyncClient(
        base_url=base, headers={"X-Auth-Token": TOKEN}, timeout=60, limits=httpx.Limits(max_connections=len(numbers))
    ) as client:

        async def one(n: int) -> tuple[int, float, int, str]:
            start = time.perf_counter()
            response = await client.post("/api/instances", json=create_body(n))
            return n, time.perf_counter() - start, response.status_code, response.text

        return list(await asyncio.gather(*(one(n) for n in numbers)))


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
    args = parser.parse_args()
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
            answers = asyncio.run(burst(procs.base, numbers))
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
