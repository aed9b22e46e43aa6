"""The verify role's checks, weights and score (the collection's provisioner.proxmox.verify_* filters).

The observed values have the shape of what the role registers (proxmox_vm_info, proxmox_firewall_info, the uri
loop over the seed, the commands in the guest); the weights are the role's defaults.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import yaml
from ansible_collections.provisioner.proxmox.plugins.filter.verify import FilterModule
from ansible_collections.provisioner.proxmox.plugins.plugin_utils import verify_score

from tests.conftest import ROOT

DEFAULTS = yaml.safe_load((ROOT / "roles/verify/defaults/main.yml").read_text())
TOKEN = "s3cr3t-seed-token-of-the-vm"
SEED = f"http://127.0.0.1:8080/seed/{TOKEN}/"
SITE_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHVmPnHqL3iOx0hB3fm4tJq0pS0KyfHlLQ0n8Qd3JYJb site@example.org"
OTHER_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBfw4Zz7wqdTd6a6cvSfbDX0Qf3u4s0aS2xUwW3Sb3cV user@example.org"
BOOT = "#!/bin/bash\necho provisioned > /var/tmp/molecule\n"
META = {"owner": "bob", "screenWidth": "1920", "instruments": ""}
PROXMOX_AND_SEED = [
    "name",
    "node",
    "cores",
    "memory",
    "disk",
    "power_state",
    "address",
    "smbios_seed",
    "firewall_groups",
    "seed_meta_data",
    "seed_user",
    "seed_ssh_keys",
    "seed_user_data",
]
FILTERS = FilterModule().filters()


def expected(**overrides: Any) -> dict[str, Any]:
    """What was requested, as roles/verify/vars/main.yml hands it over (__verify_expected)."""
    values = {key.removeprefix("verify_"): value for key, value in DEFAULTS.items()}
    values.update(
        vmid=4601,
        name="molecule-verify",
        node="pve2",
        cores=2,
        memory_mb=2048,
        disk_gb=8,
        firewall_groups=["default", "ssh"],
        seed_url=SEED,
        user="visa",
        ssh_keys=[SITE_KEY],
        metadata=META,
        user_data=BOOT,
        guest_private_key_file=None,
        guest_host_key=None,
        hostname=None,
    )
    values.update(overrides)
    return values


def serial(url: str) -> str:
    return base64.b64encode(f"ds=nocloud-net;s={url}".encode()).decode()


def page(document: str, status: int, content: str = "", msg: str = "") -> dict[str, Any]:
    """One result of the role's uri loop."""
    return {"__verify_seed_document": document, "status": status, "content": content, "msg": msg}


def observed(**overrides: Any) -> dict[str, Any]:
    """What the role reads for a VM made as requested (__verify_observed), before any guest check."""
    vendor = {"users": [{"name": "visa", "ssh_authorized_keys": [SITE_KEY]}], "phone_home": {"url": SEED + "ph"}}
    values = {
        "vm_info": {
            "proxmox_vms": [
                {
                    "name": "molecule-verify",
                    "node": "pve2",
                    "status": "running",
                    "config": {
                        "cores": 2,
                        "memory": "2048",
                        "scsi0": "ceph-vm:vm-4601-disk-0,size=8G",
                        "smbios1": f"base64=1,serial={serial(SEED)},uuid=1234",
                    },
                }
            ]
        },
        "vm_net": {
            "proxmox_vms": [
                {
                    "network": [
                        {"name": "lo", "ip-addresses": [{"ip-address-type": "ipv4", "ip-address": "127.0.0.1"}]},
                        {"name": "eth0", "ip-addresses": [{"ip-address-type": "ipv4", "ip-address": "198.18.0.5"}]},
                    ]
                }
            ]
        },
        "firewall": {
            "firewall_rules": [
                {"pos": 0, "type": "group", "action": "ssh", "enable": 1},
                {"pos": 1, "type": "group", "action": "default", "enable": 1},
                {"pos": 2, "type": "group", "action": "web", "enable": 0},
            ]
        },
        "seed": {
            "results": [
                page("meta-data", 200, yaml.safe_dump({"instance-id": "i-4601", "local-hostname": "vm", "meta": META})),
                page("user-data", 200, BOOT),
                page("vendor-data", 200, "#cloud-config\n" + yaml.safe_dump(vendor)),
            ]
        },
    }
    values.update(overrides)
    return values


def result(observed_values: dict[str, Any], expected_values: dict[str, Any]) -> dict[str, Any]:
    return FILTERS["verify_result"](observed_values, expected_values)


def failed(verify_result: dict[str, Any]) -> list[str]:
    return [check["name"] for check in verify_result["checks"] if not check["pass"]]


def actual(verify_result: dict[str, Any]) -> dict[str, Any]:
    return {check["name"]: check["actual"] for check in verify_result["checks"]}


def test_what_was_requested_scores_100_and_the_result_holds_no_secret():
    verified = result(observed(), expected())
    assert verified["score"] == 100 and verified["passed"] and verified["vmid"] == 4601
    assert [check["name"] for check in verified["checks"]] == PROXMOX_AND_SEED, "no guest checks without a key"
    assert actual(verified)["smbios_seed"] == "ds=nocloud-net;s=<the requested seed URL>"
    assert actual(verified)["address"] == "198.18.0.5"
    assert actual(verified)["seed_user_data"].startswith("HTTP 200, sha256 ")
    shown = json.dumps(verified) + "\n".join(FILTERS["verify_report"](verified, True))
    assert TOKEN not in shown and "provisioned" not in shown


def test_a_check_that_fails_costs_its_weight_over_the_weight_that_ran():
    verified = result(observed(), expected(cores=3, memory_mb=4096))
    assert verified["score"] == 80 and verified["passed"] and failed(verified) == ["cores", "memory"]
    assert actual(verified)["cores"] == 2 and actual(verified)["memory"] == "2048 MiB"

    elsewhere = expected(name="another-vm", node="pve1", cores=16, memory_mb=65536, disk_gb=100, firewall_groups=[])
    verified = result(observed(), elsewhere)
    assert verified["score"] == 50 and not verified["passed"]
    assert actual(verified)["firewall_groups"] == ["default", "ssh"]
    assert FILTERS["verify_failure"](verified, True) == (
        "VM 4601: score 50 of 100 (threshold 70): failed; failed: name, node, cores, memory, disk, firewall_groups"
    )


def test_a_seed_nobody_serves_fails_the_serial_and_every_document_without_showing_either_url():
    other = f"http://127.0.0.1:8080/seed/{'x' * 43}/"
    not_found = {"results": [page(d, 404) for d in ("meta-data", "user-data", "vendor-data")]}
    verified = result(observed(seed=not_found), expected(seed_url=other, threshold=0))
    assert verified["score"] == 70 and verified["passed"]
    assert failed(verified) == ["smbios_seed", "seed_meta_data", "seed_user", "seed_ssh_keys", "seed_user_data"]
    assert actual(verified)["seed_meta_data"] == "HTTP 404"
    assert actual(verified)["smbios_seed"] == "ds=nocloud-net;s=http://127.0.0.1:8080/<another path>"
    assert TOKEN not in json.dumps(verified) and "x" * 43 not in json.dumps(verified)

    unanswered = {"results": [page("meta-data", -1, msg=f"Status code was -1: Request failed: {other}meta-data")]}
    verified = result(observed(seed=unanswered), expected(seed_url=other))
    assert actual(verified)["seed_meta_data"] == (
        "no answer: Status code was -1: Request failed: <the requested seed URL>meta-data"
    )
    assert actual(verified)["seed_user_data"] == "not fetched"


def test_the_seed_s_user_keys_and_metadata_are_compared():
    verified = result(observed(), expected(user="root"))
    assert verified["score"] == 90 and failed(verified) == ["seed_user", "seed_ssh_keys"]
    assert actual(verified)["seed_user"] == "users visa" and actual(verified)["seed_ssh_keys"] == []

    wrong = expected(ssh_keys=[SITE_KEY, OTHER_KEY], metadata={"owner": "alice"}, user_data="#cloud-config\n{}\n")
    verified = result(observed(), wrong)
    assert verified["score"] == 85 and failed(verified) == ["seed_meta_data", "seed_ssh_keys", "seed_user_data"]
    assert actual(verified)["seed_ssh_keys"] == ["ssh-ed25519 AAAAC3Nz...8Qd3JYJb site@example.org"]
    assert actual(verified)["seed_meta_data"].endswith(", meta " + json.dumps(META, sort_keys=True))

    not_yaml = {"results": [page("meta-data", 200, "a: [b"), page("vendor-data", 200, "- a list")]}
    verified = result(observed(seed=not_yaml), expected())
    assert actual(verified)["seed_meta_data"] == "HTTP 200, not valid YAML"
    assert actual(verified)["seed_user"] == "vendor-data is not a YAML mapping"


def test_a_stopped_vm_is_not_asked_for_an_address():
    verified = result(observed(), expected(power_state="stopped"))
    assert "address" not in [check["name"] for check in verified["checks"]]
    assert verified["score"] == 88 and failed(verified) == ["power_state"]


def test_a_vm_that_does_not_exist_fails_whatever_the_threshold():
    verified = result(observed(vm_info={"proxmox_vms": []}, vm_net=None, firewall=None), expected(threshold=0))
    assert not verified["passed"] and verified["score"] == 20
    assert actual(verified)["cores"] == "no VM 4601" and actual(verified)["address"] == "no VM 4601"
    assert FILTERS["verify_failure"](verified, False).startswith(
        "VM 4601: score 20 of 100 (threshold 0): failed, the VM does not exist; failed: name, node"
    )


def test_an_unreadable_firewall_is_a_failed_check_not_an_empty_one():
    unreadable = {"changed": False, "failed": False, "msg": "403 Forbidden"}
    verified = result(observed(firewall=unreadable), expected())
    assert failed(verified) == ["firewall_groups"]
    assert actual(verified)["firewall_groups"] == "unreadable: 403 Forbidden"


def test_inputs_the_argument_spec_cannot_check_are_all_reported():
    assert FILTERS["verify_input_problems"](expected()) == []
    problems = FILTERS["verify_input_problems"](
        expected(
            weights={"cores": 10, "bogus": -1},
            threshold=101,
            disk="hda",
            address="10.0.0.300",
            seed_url="ftp://x/",
            guest="maybe",
            guest_host_key="not a key",
            guest_timeout=0,
        )
    )
    assert problems == [
        "verify_threshold must be between 0 and 100 (got 101)",
        "verify_weights lacks name, node, memory, disk, power_state, address, smbios_seed, firewall_groups, "
        "seed_meta_data, seed_user, seed_ssh_keys, seed_user_data, guest_ssh_keys, guest_sudo, guest_hostname, "
        "guest_metadata, guest_cloud_init, guest_user_data (give every check a weight, see defaults/main.yml)",
        "verify_weights names unknown checks: bogus",
        "verify_weights must be integers of at least 0: bogus",
        "verify_disk must be a disk key such as scsi0",
        'verify_address "10.0.0.300" is not an IPv4 address',
        "verify_seed_url must be an http(s) URL ending in / without ;, or spaces",
        'verify_guest must be auto, true or false (got "maybe")',
        'verify_guest_host_key must be a public key line such as "ssh-ed25519 AAAA... root@host"',
        "verify_guest_timeout must be a whole number of seconds, at least 1 (got 0)",
    ]
    assert FILTERS["verify_input_problems"](expected(guest=True, user=None)) == [
        "verify_guest true needs verify_user (the user to log in as)"
    ]


# --------------------------------------------------------------------------------------------- the guest


def slurped(text: str) -> dict[str, Any]:
    return {"content": base64.b64encode(text.encode()).decode(), "encoding": "base64"}


def in_the_guest(**overrides: Any) -> dict[str, Any]:
    """The guest results of a guest made as requested (tasks/guest.yml's registered results)."""
    status = {"status": "done", "extended_status": "done", "errors": []}
    values = {
        "guest_login": {"changed": False, "elapsed": 1},
        "guest_status_run": {"rc": 0, "stdout": json.dumps(status)},
        "guest_sudo": {"rc": 0, "stderr_lines": []},
        "guest_hostname": {"rc": 0, "stdout": "vm\n"},
        "guest_meta": {"rc": 0, "stdout": json.dumps(META), "stderr_lines": []},
        "guest_passwd": {"rc": 0, "stdout": "visa:x:1000:1000::/home/visa:/bin/bash"},
        "guest_keys_file": slurped(f"# managed by cloud-init\n{SITE_KEY}\n\n"),
        "guest_user_data_file": slurped(BOOT),
    }
    values.update(overrides)
    return observed(**values)


GUEST = {"guest_private_key_file": "/keys/site", "guest_host_key": "ssh-ed25519 AAAAC3NzaHostKey root@vm"}


def test_the_guest_checks_run_with_a_login_and_all_pass_on_a_guest_made_as_requested():
    facts = FILTERS["verify_facts"](observed(), expected(**GUEST))
    assert facts["guest_applies"] and facts["guest_address"] == "198.18.0.5" and not facts["guest_up"]
    assert facts["known_hosts"] == "198.18.0.5 ssh-ed25519 AAAAC3NzaHostKey"
    assert FILTERS["verify_facts"](observed(), expected(**GUEST, guest_port=2222))["known_hosts"].startswith(
        "[198.18.0.5]:2222 "
    )
    assert not FILTERS["verify_facts"](observed(), expected())["guest_applies"], "auto needs a key to log in with"

    verified = result(in_the_guest(), expected(**GUEST))
    assert verified["score"] == 100 and len(verified["checks"]) == len(DEFAULTS["verify_weights"])
    assert actual(verified)["guest_hostname"] == "vm"
    assert actual(verified)["guest_cloud_init"] == "status done (exit 0)"
    assert json.loads(actual(verified)["guest_metadata"]) == META


def test_a_wrong_key_costs_the_seed_and_the_guest_check_their_weights():
    verified = result(in_the_guest(), expected(**GUEST, ssh_keys=[SITE_KEY, OTHER_KEY]))
    assert failed(verified) == ["seed_ssh_keys", "guest_ssh_keys"]
    weights = DEFAULTS["verify_weights"]
    assert verified["score"] == 100 * (140 - weights["seed_ssh_keys"] - weights["guest_ssh_keys"]) // 140 == 89


def test_a_guest_that_refuses_the_login_fails_every_guest_check_with_ssh_s_reason():
    refused = {"failed": True, "msg": f"timed out: {SEED}x\nssh: connect: Permission denied (publickey)."}
    verified = result(in_the_guest(guest_login=refused), expected(**GUEST))
    guest_checks = [name for name in failed(verified) if name.startswith("guest_")]
    assert len(guest_checks) == 6 and verified["score"] == 100 * 100 // 140
    assert actual(verified)["guest_sudo"] == "no login as visa@198.18.0.5 within 30 s: Permission denied (publickey)."

    no_address = observed(vm_net={"changed": False, "msg": "QEMU guest agent is not running"})
    verified = result(no_address, expected(**GUEST, guest=True))
    assert actual(verified)["guest_cloud_init"].startswith("no guest address to log in to")
    assert actual(verified)["address"] == "no answer from the guest agent: QEMU guest agent is not running"


def test_cloud_init_errors_are_reported_without_the_seed_url():
    status = {"status": "error", "errors": [f"scripts_user failed fetching {SEED}user-data"]}
    verified = result(
        in_the_guest(guest_status_run={"rc": 1, "stdout": json.dumps(status)}), expected(**GUEST, user_data=BOOT)
    )
    assert failed(verified) == ["guest_cloud_init", "guest_user_data"]
    assert actual(verified)["guest_cloud_init"] == (
        "status error (exit 1): scripts_user failed fetching http://127.0.0.1:8080/<path>"
    )
    assert TOKEN not in json.dumps(verified)


def test_the_report_shows_one_line_per_check():
    verified = result(observed(), expected(cores=3))
    lines = FILTERS["verify_report"](verified, True)
    assert lines[0] == "VM 4601: score 90 of 100 (threshold 70): passed"
    assert lines[3] == "FAIL cores (10): expected 3, found 2"
    assert lines[9] == 'pass firewall_groups (10): expected ["default", "ssh"], found ["default", "ssh"]'
    assert verify_score.score([]) == 0
