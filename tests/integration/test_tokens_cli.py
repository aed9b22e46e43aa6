"""`provisioner tokens` and `provisioner audit` as processes, with the service running: a token made by the CLI opens
/v1 with its role at once and closes it when revoked, the service keeps only its digest, and the audit log read over
the API (`provisioner audit`) names who made and used it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import OPERATOR_TOKEN, ROOT, LiveService, wait_for


def cli(service: LiveService, *args: str, token: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {
        "PATH": "/usr/bin:/bin",
        "PROVISIONER_DATABASE_URL": service.runtime.settings.db_url,
        "PROVISIONER_STATE_DIR": str(service.runtime.settings.state_dir),
        "PROVISIONER_CONFIG": str(Path(service.runtime.settings.state_dir) / "no-such-cli.toml"),
        **({"PROVISIONER_TOKEN": token} if token else {}),
    }
    return subprocess.run(
        [sys.executable, "-m", "provisioner.cli", *args], env=env, capture_output=True, text=True, timeout=60, cwd=ROOT
    )


def test_a_token_made_by_the_cli_opens_v1_with_its_role_and_the_audit_log_names_it(service: LiveService):
    made = cli(service, "tokens", "create", "ci-viewer", "--role", "viewer", "--max-vms", "2")
    assert made.returncode == 0, made.stderr
    token = made.stdout.strip()
    assert token.startswith("pvt_") and "shown once" in made.stderr
    as_viewer = {"Authorization": f"Bearer {token}"}
    assert service.anonymous.get("/v1/jobs", headers=as_viewer).status_code == 200
    assert service.anonymous.post("/v1/jobs/x/cancel", headers=as_viewer).status_code == 403
    assert token not in Path(service.runtime.settings.db_url.removeprefix("sqlite:///")).read_bytes().decode("latin-1")

    listed = cli(service, "tokens", "list")
    assert "ci-viewer" in listed.stdout and "viewer" in listed.stdout and "max_vms=2" in listed.stdout
    assert token not in listed.stdout
    assert cli(service, "tokens", "create", "ci-viewer", "--role", "admin").returncode == 2, "the name is taken"

    assert service.client.post("/api/instances", json={"name": ""}).status_code == 400
    audit = cli(service, "audit", "--url", service.base, "--json", "--limit", "20", token=OPERATOR_TOKEN)
    assert audit.returncode == 0, audit.stderr
    entries = json.loads(audit.stdout)
    actions = [(e["actor"], e["action"], e["target"]) for e in entries]
    assert actions[0] == ("visa", "create_instance", None) and entries[0]["status"] == 400
    assert actions[1][1:] == ("create_token", "token=ci-viewer") and actions[1][0].startswith("cli:")
    assert cli(service, "audit", "--url", service.base, token=token).returncode == 1, "a viewer reads no audit log"

    assert cli(service, "tokens", "revoke", "ci-viewer").returncode == 0
    wait_for(
        lambda: service.anonymous.get("/v1/jobs", headers=as_viewer).status_code == 401,
        timeout=10,
        what="the revoked token to be refused (the guard rechecks a token every 2 s)",
    )
    assert cli(service, "tokens", "revoke", "nobody").returncode == 2
    assert cli(service, "audit", "--url", service.base).returncode == 2, "no token: bad input"
