"""Prometheus metrics of the service (exposed at /metrics)."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

PROXMOX_READS = Counter("provisioner_proxmox_read_requests_total", "Proxmox API requests made by reads")
JOBS_FINISHED = Counter("provisioner_jobs_finished_total", "Jobs finished, by kind and final state", ["kind", "state"])
RUN_SECONDS = Histogram(
    "provisioner_playbook_run_seconds",
    "Duration of playbook runs",
    ["playbook"],
    buckets=(1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1800),
)
BATCH_SIZE = Histogram("provisioner_batch_size", "VMs per playbook run", buckets=(1, 2, 5, 10, 20, 50, 100, 200))
