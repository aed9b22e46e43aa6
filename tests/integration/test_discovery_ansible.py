"""The discovery Ansible content as operators run it: inventory/discovery.yml (ansible-inventory), the discovery
role (playbooks/register.yml) and playbooks/advertise.yml, against a live registry (and the simulator)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from discovery import signing
from discovery.client import ProviderAuth
from engine.proxmox import ProxmoxConnection
from simulator import add_running_vms
from tests.conftest import ROOT, recap, start_test_registry

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("ansible")]
BIN = Path(sys.executable).parent
READ_TOKEN = "read-token-for-the-inventory-0123"
TEMPLATE = "{{ lookup('ansible.builtin.pipe', 'id') }}"


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    handle = start_test_registry(tmp_path_factory.mktemp("registry"), read_token=READ_TOKEN)
    yield handle
    handle.stop()


@pytest.fixture(scope="module")
def key_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("provider") / "provider.key"
    signing.load_or_create_key(path)
    return path


def ansible(command: str, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"), **env}
    return subprocess.run(
        [str(BIN / command), *args], env=full_env, cwd=ROOT, capture_output=True, text=True, timeout=300
    )


def hosts_of(registry: Any, key_file: Path) -> list[dict[str, Any]]:
    auth = ProviderAuth(signing.load_key(key_file))
    return httpx.get(f"{registry.url}/api/v1/hosts", auth=auth).json()  # type: ignore[no-any-return]


# --- inventory plugin


@pytest.fixture(scope="module")
def registered(registry: Any, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """The ids of two providers: ours registered inv-web-1 (with a template string in its vars) and inv-db-1; the
    other, later, registered the same two names elsewhere (a takeover attempt) and inv-other-1."""
    keys = tmp_path_factory.mktemp("inventory-providers")
    ours, theirs = signing.load_or_create_key(keys / "a.key"), signing.load_or_create_key(keys / "b.key")
    with httpx.Client(base_url=registry.url, auth=ProviderAuth(ours)) as one:
        one.post(
            "/api/v1/hosts",
            json={
                "name": "inv-web-1",
                "address": "10.0.3.17",
                "ssh_user": "visa",
                "groups": ["visa", "web"],
                "vars": {"role": "frontend", "probe": TEMPLATE},
                "instance_id": "100042",
            },
        ).raise_for_status()
        one.post(
            "/api/v1/hosts", json={"name": "inv-db-1", "address": "db1.example.org", "ssh_port": 2222, "groups": ["db"]}
        ).raise_for_status()
    with httpx.Client(base_url=registry.url, auth=ProviderAuth(theirs)) as two:
        for name in ("inv-web-1", "inv-db-1", "inv-other-1"):
            two.post("/api/v1/hosts", json={"name": name, "address": "10.9.9.9", "groups": ["visa"]}).raise_for_status()
    return signing.provider_id(ours), signing.provider_id(theirs)


def inventory(registry: Any, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """ansible-inventory -i inventory/discovery.yml, failing when the plugin fails (not an empty inventory)."""
    defaults = {
        "DISCOVERY_URL": registry.url,
        "DISCOVERY_READ_TOKEN": READ_TOKEN,
        "ANSIBLE_INVENTORY_UNPARSED_FAILED": "true",
    }
    return ansible("ansible-inventory", "-i", "inventory/discovery.yml", *args, **(defaults | env))


def listed(answer: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert answer.returncode == 0, answer.stderr
    # ansible-inventory marks strings it will not template (all of the plugin's) as {"__ansible_unsafe": ...}.
    return json.loads(answer.stdout, object_hook=lambda d: d.get("__ansible_unsafe", d))  # type: ignore[no-any-return]


def test_the_inventory_lists_the_trusted_providers_hosts_with_their_connection_groups_and_vars(
    registry: Any, registered: tuple[str, str]
):
    ours, _ = registered
    answer = inventory(registry, "--list", DISCOVERY_TRUSTED_PROVIDERS=ours)
    hosts = listed(answer)
    assert set(hosts["_meta"]["hostvars"]) == {"inv-web-1", "inv-db-1"}  # nothing of the other provider
    web = hosts["_meta"]["hostvars"]["inv-web-1"]
    assert web["ansible_host"] == "10.0.3.17" and web["ansible_port"] == 22 and web["ansible_user"] == "visa"
    assert web["role"] == "frontend" and web["discovery_instance_id"] == "100042"
    assert web["discovery_provider_id"] == ours
    assert "inv-web-1" in hosts["visa"]["hosts"] and "inv-web-1" in hosts["web"]["hosts"]
    assert "inv-web-1" in hosts[f"discovery_provider_{ours[:12]}"]["hosts"]
    db = hosts["_meta"]["hostvars"]["inv-db-1"]
    assert (db["ansible_host"], db["ansible_port"]) == ("db1.example.org", 2222) and "ansible_user" not in db
    assert "registered by" not in answer.stderr

    graph = inventory(registry, "--graph", DISCOVERY_TRUSTED_PROVIDERS=ours.upper())
    assert graph.returncode == 0 and "@visa:" in graph.stdout and "inv-web-1" in graph.stdout
    assert "inv-other-1" not in graph.stdout
    assert READ_TOKEN not in graph.stdout + graph.stderr + answer.stdout + answer.stderr


@pytest.mark.parametrize("first", [0, 1])
def test_a_name_two_trusted_providers_claim_goes_to_the_one_listed_first_with_a_warning(
    registry: Any, registered: tuple[str, str], first: int
):
    order = [registered[first], registered[1 - first]]
    answer = inventory(registry, "--list", DISCOVERY_TRUSTED_PROVIDERS=",".join(order))
    hosts = listed(answer)["_meta"]["hostvars"]
    assert {hosts[name]["discovery_provider_id"] for name in ("inv-web-1", "inv-db-1")} == {order[0]}
    assert hosts["inv-other-1"]["discovery_provider_id"] == registered[1]
    warned = " ".join(answer.stderr.split())
    assert f"host inv-db-1 is registered by trusted providers {order[0]} and {order[1]}" in warned
    assert f"using the record of {order[0]}" in warned


def test_the_inventory_refuses_to_trust_every_provider_by_default(registry: Any, registered: Any):  # noqa: ARG001
    refused = inventory(registry, "--list")
    assert refused.returncode != 0
    assert "DISCOVERY_TRUSTED_PROVIDERS" in refused.stderr and "inv-web-1" not in refused.stdout


def test_registered_values_are_never_templated_on_the_controller(registry: Any, registered: tuple[str, str]):
    shown = ansible(
        "ansible",
        "-i",
        "inventory/discovery.yml",
        "inv-web-1",
        "-m",
        "ansible.builtin.debug",
        "-a",
        "var=probe",
        DISCOVERY_URL=registry.url,
        DISCOVERY_READ_TOKEN=READ_TOKEN,
        DISCOVERY_TRUSTED_PROVIDERS=registered[0],
    )
    assert shown.returncode == 0, shown.stdout + shown.stderr
    assert TEMPLATE in shown.stdout and "uid=" not in shown.stdout


def test_the_inventory_fails_clearly_without_the_read_token(registry: Any, registered: tuple[str, str]):
    refused = inventory(registry, "--list", DISCOVERY_READ_TOKEN="", DISCOVERY_TRUSTED_PROVIDERS=registered[0])
    assert refused.returncode != 0
    assert "AUTH_005" in refused.stderr


# --- role


def register(registry: Any, key_file: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return ansible(
        "ansible-playbook",
        "playbooks/register.yml",
        *args,
        DISCOVERY_URL=registry.url,
        DISCOVERY_PROVIDER_KEY_FILE=str(key_file),
    )


def test_the_role_registers_idempotently_supports_check_mode_and_deregisters(registry: Any, key_file: Path):
    wanted = [
        "-e",
        "discovery_host_name=role-web-1",
        "-e",
        "discovery_host_address=10.0.4.1",
        "-e",
        '{"discovery_host_groups": ["visa"], "discovery_instance_id": 100077}',
    ]
    first = register(registry, key_file, *wanted)
    assert first.returncode == 0, first.stdout[-3000:]
    assert recap(first.stdout)["localhost"]["changed"] == 1
    [record] = hosts_of(registry, key_file)
    assert (record["name"], record["address"], record["groups"], record["instance_id"]) == (
        "role-web-1",
        "10.0.4.1",
        ["visa"],
        "100077",
    )
    second = register(registry, key_file, *wanted)
    assert second.returncode == 0 and recap(second.stdout)["localhost"]["changed"] == 0, second.stdout[-3000:]

    planned = register(registry, key_file, *wanted, "-e", "discovery_host_address=10.0.4.2", "--check", "--diff")
    assert planned.returncode == 0 and recap(planned.stdout)["localhost"]["changed"] == 1
    assert "10.0.4.2" in planned.stdout and hosts_of(registry, key_file)[0]["address"] == "10.0.4.1"

    gone = register(registry, key_file, "-e", "discovery_host_name=role-web-1", "-e", "discovery_state=absent")
    assert gone.returncode == 0 and recap(gone.stdout)["localhost"]["changed"] == 1
    assert hosts_of(registry, key_file) == []
    again = register(registry, key_file, "-e", "discovery_host_name=role-web-1", "-e", "discovery_state=absent")
    assert again.returncode == 0 and recap(again.stdout)["localhost"]["changed"] == 0


def test_the_role_refuses_missing_inputs_before_any_request(registry: Any, key_file: Path):
    no_address = register(registry, key_file, "-e", "discovery_host_name=role-web-2")
    assert no_address.returncode != 0 and "discovery_host_address is required" in no_address.stdout
    no_name = register(registry, key_file, "-e", "discovery_host_address=10.0.4.1")
    assert no_name.returncode != 0 and "discovery_host_name" in no_name.stdout
    no_url = ansible(
        "ansible-playbook",
        "playbooks/register.yml",
        "-e",
        "discovery_host_name=x",
        "-e",
        "discovery_host_address=10.0.0.1",
        DISCOVERY_PROVIDER_KEY_FILE=str(key_file),
    )
    assert no_url.returncode != 0 and "DISCOVERY_URL" in no_url.stdout
    assert hosts_of(registry, key_file) == []


# --- advertise.yml


def advertise(
    simulator: Any, registry: Any, key_file: Path, *args: str, **env: str
) -> subprocess.CompletedProcess[str]:
    connection = ProxmoxConnection(
        simulator.host, simulator.port, simulator.token_id, simulator.token_secret, 10, str(simulator.cafile)
    )
    return ansible(
        "ansible-playbook",
        "playbooks/advertise.yml",
        *args,
        **connection.ansible_env(),
        DISCOVERY_URL=registry.url,
        DISCOVERY_PROVIDER_KEY_FILE=str(key_file),
        **env,
    )


def test_advertise_posts_the_free_capacity_from_committed_resources_and_withdraws_it_over_a_threshold(
    simulator: Any, registry: Any, key_file: Path
):
    public = f"{registry.url}/api/v1/advertisements/{signing.provider_id(signing.load_key(key_file))}"
    first = advertise(simulator, registry, key_file, PROVISIONER_PROVIDER_COUNTRY="fr")
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-2000:]
    assert recap(first.stdout)["localhost"]["changed"] == 1
    posted = httpx.get(public).json()
    assert posted["country"] == "FR" and posted["provider_name"] == "proxmox-provisioner"
    # Two 32-CPU, 128 GiB nodes, overcommit 4 and 1, no guest yet; storage 100 GiB per node in the simulator.
    assert posted["resources"] == {"cpu": 128, "memory": 128, "storage": 100}
    again = advertise(simulator, registry, key_file, PROVISIONER_PROVIDER_COUNTRY="fr")
    assert again.returncode == 0 and recap(again.stdout)["localhost"]["changed"] == 0
    assert httpx.get(public).json()["updated_at"] >= posted["updated_at"]

    simulator.call(_add_guests(simulator))  # one 2-vCPU, 4 GiB guest on each node
    busier = advertise(simulator, registry, key_file, PROVISIONER_PROVIDER_COUNTRY="fr")
    assert busier.returncode == 0 and recap(busier.stdout)["localhost"]["changed"] == 1
    assert httpx.get(public).json()["resources"] == {"cpu": 126, "memory": 124, "storage": 100}
    # 4 GiB of 128 committed is over a 1 % memory threshold on every node: nothing to offer, withdrawn.
    full = advertise(simulator, registry, key_file, PROVISIONER_MEMORY_THRESHOLD="1")
    assert full.returncode == 0 and recap(full.stdout)["localhost"]["changed"] == 1, full.stdout[-3000:]
    assert httpx.get(public).status_code == 404
    assert simulator.token_secret not in first.stdout + first.stderr + full.stdout + full.stderr


async def _add_guests(simulator: Any) -> None:
    add_running_vms(simulator.sim, 2, 4400, "guest")
