"""Reading a guest's cloud-init output (engine/guestlogs.py) through a stand-in `ssh`: what is asked, what is
answered."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from engine.guestlogs import GuestLogin, read_output

HOST_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAb0x2lHbV3tZz9k4xq0sQyq5bHn2x0dP0x7i0H3m7Lp root@vm"


def fake_ssh(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, script: str) -> Path:
    """An `ssh` first on PATH that records its arguments and known_hosts, then runs `script`."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    ssh = bin_dir / "ssh"
    record = tmp_path / "called"
    ssh.write_text(
        "#!/bin/sh\n"
        f'printf "%s\\n" "$@" > {record}\n'
        f'for a in "$@"; do case "$a" in UserKnownHostsFile=*) '
        f'cat "${{a#UserKnownHostsFile=}}" >> {record}.kh;; esac; done\n' + script,
        encoding="utf-8",
    )
    ssh.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    return record


def login(tmp_path: Path) -> GuestLogin:
    return GuestLogin("198.18.0.7", "alice", HOST_KEY, tmp_path / "guest_ed25519")


def test_the_tail_is_read_as_the_users_sudo_with_the_pinned_host_key_and_the_token_masked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    record = fake_ssh(tmp_path, monkeypatch, "printf '40\\nCloud-init v. 25 seed/tok3n/ finished\\n'\n")
    read = asyncio.run(read_output(login(tmp_path), "tok3n"))
    assert read.error is None and read.text == "Cloud-init v. 25 seed/********/ finished\n"
    assert (read.next_offset, read.truncated) == (40, True), "33 bytes of 40: the start was left out"
    args = record.read_text().splitlines()
    assert "StrictHostKeyChecking=yes" in args and "BatchMode=yes" in args and "alice@198.18.0.7" in args
    assert args[args.index("-i") + 1] == str(tmp_path / "guest_ed25519")
    assert args[-1].startswith("sudo -n sh -c 'wc -c < /var/log/cloud-init-output.log && tail -c ")
    assert Path(f"{record}.kh").read_text() == "198.18.0.7 " + " ".join(HOST_KEY.split()[:2]) + "\n"


def test_a_read_from_an_offset_asks_for_the_rest_and_a_failure_is_an_answer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    record = fake_ssh(tmp_path, monkeypatch, "printf '12\\nmore\\n'\n")
    read = asyncio.run(read_output(login(tmp_path), "tok3n", offset=7))
    assert (read.text, read.next_offset, read.truncated, read.error) == ("more\n", 12, False, None)
    assert "tail -c +8 /var/log/cloud-init-output.log | head -c " in record.read_text()

    fake = tmp_path / "bin" / "ssh"
    fake.write_text("#!/bin/sh\necho 'ssh: connect to host 198.18.0.7 port 22: No route to host' >&2\nexit 255\n")
    failed = asyncio.run(read_output(login(tmp_path), "tok3n"))
    assert failed.text == "" and failed.error == (
        "reading /var/log/cloud-init-output.log failed: ssh: connect to host 198.18.0.7 port 22: No route to host"
    )
