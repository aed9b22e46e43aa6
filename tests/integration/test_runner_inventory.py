"""The inventory a playbook run writes, as ansible-playbook reads it: values from requests stay data."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from engine.jobs.redact import Redactor
from engine.jobs.runner import PlaybookRun


def test_variables_from_requests_are_never_templated_by_ansible(tmp_path: Path) -> None:
    hostvars = {"vm-1": {"vm_name": "{{ 6 * 7 }}", "vm_firewall_groups": ["{{ lookup('env', 'HOME') }}"]}}
    run = PlaybookRun(
        ansible_dir=tmp_path,
        runs_dir=tmp_path,
        run_id="r",
        playbook="create.yml",
        hostvars=hostvars,
        env={},
        redactor=Redactor([]),
        timeout_s=60,
        sink=lambda _records: None,
    )
    (tmp_path / "hosts").write_text(run._inventory())
    (tmp_path / "show.yml").write_text(
        "- hosts: all\n  gather_facts: false\n  tasks:\n"
        '    - ansible.builtin.debug:\n        msg: "{{ vm_name }} {{ vm_firewall_groups[0] }}"\n'
    )
    shown = subprocess.run(
        [
            str(Path(sys.executable).parent / "ansible-playbook"),
            "-i",
            str(tmp_path / "hosts"),
            str(tmp_path / "show.yml"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert "{{ 6 * 7 }} {{ lookup('env', 'HOME') }}" in shown.stdout, shown.stdout
