"""The Molecule scenarios' helpers in molecule/shared/: the service starter and the seed server."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from engine import cloudinit
from tests.conftest import ROOT

SHARED = ROOT / "molecule" / "shared"
TOKEN = "t" * 43


def load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"molecule_shared_{name}", SHARED / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = sys.modules[spec.name] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


service = load("service")
seed_server = load("seed_server")


def sleeper(before: float = 0) -> list[str]:
    """A service that prints its `url:` line (after `before` seconds) and runs until stopped."""
    code = f"import time; time.sleep({before}); print('url: http://x/', flush=True); time.sleep(600)"
    return [sys.executable, "-c", code]


def test_start_waits_for_the_ready_line_and_stop_ends_the_process(tmp_path: Path):
    started = service.start(tmp_path, sleeper(0.3), "url: ", timeout=30)
    assert started["changed"] and started["ready"] == {"url": "http://x/"}
    pid = started["pid"]
    again = service.start(tmp_path, sleeper(), "url: ", timeout=30)
    assert again == {"changed": False, "pid": pid, "ready": {"url": "http://x/"}}
    assert service.stop(tmp_path, timeout=10) == {"changed": True, "pid": pid}
    assert service.start_time(pid) is None
    assert not (tmp_path / service.PID_FILE).exists()
    assert service.stop(tmp_path, timeout=10) == {"changed": False}


def test_a_service_that_exits_fails_with_its_output(tmp_path: Path):
    command = [sys.executable, "-c", "import sys; print('no port for me', flush=True); sys.exit(3)"]
    with pytest.raises(service.ServiceError, match="exited before it was ready:\nno port for me"):
        service.start(tmp_path, command, "url: ", timeout=30)


def test_a_silent_service_is_stopped_after_the_timeout(tmp_path: Path):
    with pytest.raises(service.ServiceError, match=r"no line starting with 'url: ' within 0\.5 s"):
        service.start(tmp_path, [sys.executable, "-c", "import time; time.sleep(600)"], "url: ", timeout=0.5)
    assert not (tmp_path / service.PID_FILE).exists()


def test_stop_never_signals_a_process_it_did_not_start(tmp_path: Path):
    # This very process, recorded with another start time: a reused pid.
    (tmp_path / service.PID_FILE).write_text(f"{os.getpid()} {service.start_time(os.getpid()) + 1}\n")
    assert service.stop(tmp_path, timeout=1) == {"changed": False, "pid": os.getpid()}


@pytest.fixture
def seeds(tmp_path: Path) -> Iterator[Any]:
    (tmp_path / "seeds").mkdir()
    server = seed_server.SeedServer(("127.0.0.1", 0), tmp_path)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def get(url: str, data: bytes | None = None) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, data=data, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def test_seed_server_serves_what_the_service_renders_and_records_phone_home(seeds: Any, tmp_path: Path):
    fields = {"instance_id": "iid-7", "hostname": "vm-7", "user": "visa", "ssh_keys": ["ssh-ed25519 AAAA k@x"],
              "metadata": {"owner": "bob"}, "boot_command": None}  # fmt: skip
    (tmp_path / "seeds" / f"{TOKEN}.json").write_text(json.dumps(fields))
    context = cloudinit.SeedContext(**fields, phone_home_url=f"{seeds.base_url}{TOKEN}/phone-home")
    for name, render in seed_server.RENDERERS.items():
        assert get(f"{seeds.base_url}{TOKEN}/{name}") == (200, render(context))
    vendor = yaml.safe_load(get(f"{seeds.base_url}{TOKEN}/vendor-data")[1])
    assert vendor["phone_home"]["url"] == f"{seeds.base_url}{TOKEN}/phone-home"
    assert get(f"{seeds.base_url}{'u' * 43}/meta-data")[0] == 404
    assert get(f"{seeds.base_url}{TOKEN}/secrets")[0] == 404
    for _ in range(2):
        assert get(f"{seeds.base_url}{TOKEN}/phone-home", b"instance_id=iid-7&hostname=vm-7")[0] == 200
    record = json.loads((tmp_path / "phone-home" / f"{TOKEN}.json").read_text())
    assert record == {"count": 2, "fields": {"instance_id": "iid-7", "hostname": "vm-7"}}


def test_a_seed_read_through_another_address_phones_home_there(seeds: Any, tmp_path: Path):
    """Real guests reach this server through the simulator's forward: the seed's own URL, not this server's."""
    forwarded = f"http://198.18.3.1:8642/seed/{TOKEN}/"
    fields = {"instance_id": "iid-8", "hostname": "vm-8", "user": "visa", "ssh_keys": [], "metadata": {},
              "boot_command": None, "seed_url": forwarded}  # fmt: skip
    (tmp_path / "seeds" / f"{TOKEN}.json").write_text(json.dumps(fields))
    vendor = yaml.safe_load(get(f"{seeds.base_url}{TOKEN}/vendor-data")[1])
    assert vendor["phone_home"]["url"] == f"{forwarded}phone-home"


def test_seed_server_log_never_shows_a_token(seeds: Any, capsys: pytest.CaptureFixture[str]):
    get(f"{seeds.base_url}{TOKEN}/meta-data")
    logged = capsys.readouterr().err  # the request's line is written before its answer is sent
    assert "GET <token>/meta-data 404" in logged.splitlines()
    assert TOKEN not in logged
