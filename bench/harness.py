"""50 concurrent creates on the reference provider's own measurement harness: seconds until all are ACTIVE.

The harness is `../shared/examples/fakepve_harness.py` (fakepve seeded as the 2-node, 4-CPU cluster the reference
was measured on, shared/notes/reference-baseline.md), run as it is, at time-scale 0. The service runs with its
default settings, except the overcommit, raised so that 50 VMs fit on the harness's nodes. Reported: the time from
the first POST until every instance is ACTIVE, against the reference's 55.3 s for 50 creates one after another on
the same harness, and the CPU seconds the service and everything it started (workers, ansible-playbook, its forks
and modules) used, per VM.

    python bench/harness.py [--creates 50] [--workers 1] [--harness PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).parent))
from bench import KEY, OPERATOR_TOKEN, ROOT, TOKEN, burst, free_port, wait_all_active, wait_ready

HARNESS = ROOT.parent / "shared" / "examples" / "fakepve_harness.py"
REFERENCE_SERIAL_S = 55.3  # 50 creates one after another, all ACTIVE (reference-baseline.md, 2b)
GOAL_S = 25.0


# The harness's own token secret ("refbench-secret") is shorter than the service accepts (16 characters; Proxmox's
# are UUIDs), so the harness file is run unchanged, with one more API token added to its cluster as it seeds it.
LAUNCH = """
import asyncio, runpy, sys
harness = runpy.run_path(sys.argv[1])
seed = harness["seed"]
def seed_with_bench_token(pve):
    seed(pve)
    pve.apitokens["root@pam!bench"] = "bench-token-secret-0123456789"
harness["main"].__globals__["seed"] = seed_with_bench_token
sys.argv = [sys.argv[1], *sys.argv[2:]]
parser = harness["argparse"].ArgumentParser()
for flag in ("--certdir",):
    parser.add_argument(flag, required=True)
for flag in ("--time-scale", "--clone-secs", "--start-secs", "--boot-secs"):
    parser.add_argument(flag, type=float, default=0.0)
parser.add_argument("--no-cluster-tasks", action="store_true")
asyncio.run(harness["main"](parser.parse_args(sys.argv[1:])))
"""


def start_harness(path: Path, workdir: Path) -> subprocess.Popen[str]:
    harness = subprocess.Popen(
        [sys.executable, "-c", LAUNCH, str(path), "--certdir", str(workdir / "certs"), "--time-scale", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    line = harness.stdout.readline() if harness.stdout else ""
    if "fakepve-harness ready" not in line:
        harness.kill()
        raise SystemExit(f"the harness did not start: {line.strip()}")
    return harness


def start_service(workdir: Path, workers: int) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE")} | {
        "VISA_WEB_PROVIDER_PROXMOX_ENDPOINT": "https://127.0.0.3:8006/api2/json/",
        "VISA_WEB_PROVIDER_PROXMOX_USER": "root@pam!bench",
        "VISA_WEB_PROVIDER_PROXMOX_PASSWORD": "bench-token-secret-0123456789",
        "PROVISIONER_PROXMOX_CA_FILE": str(workdir / "certs" / "fakepve.crt"),
        "VISA_WEB_PROVIDER_PROXMOX_SERVER_AUTH_TOKEN": TOKEN,
        "PROVISIONER_OPERATOR_TOKEN": OPERATOR_TOKEN,
        "VISA_WEB_PROVIDER_PROXMOX_SERVER_PORT": str(port),
        "PROVISIONER_STATE_DIR": str(workdir / "service"),
        "PROVISIONER_SSH_PUBLIC_KEYS": KEY,
        "PROVISIONER_LOG_LEVEL": "WARNING",
        "PROVISIONER_WORKERS": str(workers),
        # The harness's nodes have 4 CPUs each: 50 VMs of 2 vCPUs need the overcommit raised.
        "PROVISIONER_CPU_OVERCOMMIT": "32",
        "PROVISIONER_MEMORY_OVERCOMMIT": "64",
    }
    service = subprocess.Popen(
        [sys.executable, "-m", "provisioner.cli", "run"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL
    )
    base = f"http://127.0.0.1:{port}"
    if wait_ready(base, 90):
        return service, base
    service.kill()
    raise SystemExit("the service did not get ready")


def children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def one_run(harness_path: Path, creates: int, workers: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="provisioner-harness-") as tmp:
        workdir = Path(tmp)
        harness = start_harness(harness_path, workdir)
        try:
            cpu_before = children_cpu_s()
            service, base = start_service(workdir, workers)
            client = httpx.Client(base_url=base, headers={"X-Auth-Token": TOKEN}, timeout=120)
            try:
                port = int(base.rsplit(":", 1)[1])
                started = time.perf_counter()
                # The harness's cluster defines no security groups.
                answers = asyncio.run(burst(port, list(range(1000, 1000 + creates)), groups=()))
                ids = [json.loads(body)["id"] for _, _, status, body in answers if status == 201]
                refused = [body for _, _, status, body in answers if status != 201]
                if refused:
                    raise SystemExit(f"{len(refused)} of {creates} creates refused: {refused[0]}")
                seconds = wait_all_active(client, ids, started)
            finally:
                client.close()
                service.terminate()
                service.wait(timeout=60)
            cpu = children_cpu_s() - cpu_before  # the service and every process it started, reaped in turn
        finally:
            harness.terminate()
            harness.wait(timeout=30)
    return {"all_active_s": seconds, "cpu_s_per_vm": cpu / creates}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--creates", type=int, default=50)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--harness", type=Path, default=HARNESS)
    args = parser.parse_args()
    if not args.harness.is_file():
        raise SystemExit(f"no harness at {args.harness} (the shared examples are not next to this checkout)")
    runs = []
    for attempt in range(args.repeat):
        runs.append(one_run(args.harness, args.creates, args.workers))
        print(f"run {attempt + 1}/{args.repeat}: {json.dumps(runs[-1])}", flush=True)
    best = min(run["all_active_s"] for run in runs)
    cpu = min(run["cpu_s_per_vm"] for run in runs)
    print(f"\n{args.creates} concurrent creates on the reference's harness, {args.workers} worker process(es)")
    every = ", ".join(f"{run['all_active_s']:.1f}" for run in runs)
    print(f"  all ACTIVE after        {best:.1f} s (runs: {every})")
    print(f"  reference, serially     {REFERENCE_SERIAL_S} s: ratio {best / REFERENCE_SERIAL_S:.2f}; goal {GOAL_S} s")
    print(f"  CPU of the service tree {cpu:.2f} CPU-s per VM (start-up included)")
    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    (out / "harness.json").write_text(json.dumps({"args": vars(args) | {"harness": str(args.harness)}, "runs": runs}))


if __name__ == "__main__":
    main()
