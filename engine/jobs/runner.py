"""One ansible-runner run of one playbook over a batch of hosts (one host per VM).

This is the only module that imports ansible_runner. Secrets reach Ansible through the process
environment only (`suppress_env_files`), the per-VM variables through the inventory, which is deleted
when the run ends; events are kept in memory, scrubbed and handed to a sink instead of being written
to the artifacts directory.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ansible_runner
import ansible_runner.interface
import yaml

from engine.jobs.outcome import ADDRESS, REPORTED_FACTS, EventRecord, HostOutcome, RunOutcome
from engine.jobs.processes import kill_run_processes
from engine.jobs.redact import Redactor

log = logging.getLogger(__name__)

# The module whose result carries the guest's address (`address`, when it waited for one): proxmox_vm's call in
# create.yml, proxmox_vm_power's in start.yml and reboot.yml. Read from its result, whatever the task is named.
VM_MODULE = "provisioner.proxmox.vm"
STDOUT_LIMIT = 4000
PLAYBOOK_SITE = Path(__file__).with_name("playbook_site")  # sitecustomize for the run's Python processes
FAILED_EVENTS = ("runner_on_failed", "runner_on_unreachable", "runner_item_on_failed")


EventSink = Callable[[list[EventRecord]], None]


@dataclass
class PlaybookRun:
    ansible_dir: Path
    runs_dir: Path
    run_id: str
    playbook: str
    hostvars: dict[str, dict[str, Any]]
    env: dict[str, str]
    redactor: Redactor
    timeout_s: int
    sink: EventSink
    on_process: Callable[[int], None] = lambda _pgid: None  # told the run's process group once it is known
    nice: int = 0  # the CPU niceness of the run's processes and of their sessions' autogroups (playbook_site/)
    group: str = "batch"
    flush_every_s: float = 0.5
    _hosts: dict[str, HostOutcome] = field(default_factory=dict, init=False)
    _buffer: list[EventRecord] = field(default_factory=list, init=False)
    _buffer_lock: threading.Lock = field(default_factory=threading.Lock, init=False)
    _last_flush: float = field(default=0.0, init=False)
    _pgid: int | None = field(default=None, init=False)
    _played_out: bool = field(default=False, init=False)  # the play's final stats arrived

    @property
    def private_data_dir(self) -> Path:
        return self.runs_dir / self.run_id

    def execute(self, cancel: threading.Event) -> RunOutcome:
        self._hosts = {host: HostOutcome() for host in self.hostvars}
        pdd = self.private_data_dir
        pdd.mkdir(parents=True, mode=0o700, exist_ok=False)
        try:
            runner = ansible_runner.interface.init_runner(
                private_data_dir=str(pdd),
                project_dir=str(self.ansible_dir),
                playbook=str(self.ansible_dir / "playbooks" / self.playbook),
                inventory=self._inventory(),
                extravars={"target": self.group},
                envvars=self._environment(),
                forks=max(1, len(self.hostvars)),
                settings={"suppress_ansible_output": True, "job_timeout": self.timeout_s, "pexpect_timeout": 0.2},
                suppress_env_files=True,
                quiet=True,
                ident="run",
                event_handler=self._on_event,
                status_handler=self._on_status,
                cancel_callback=cancel.is_set,
            )
            runner.config.env = allowed_environment(runner.config.env, self._environment())
            runner.run()
        except Exception as exc:  # ansible-runner could not start the run at all
            log.exception("run %s could not start", self.run_id)
            return RunOutcome("error", None, self._hosts, f"the playbook run could not start: {type(exc).__name__}")
        finally:
            self._flush(force=True)
            self._scrub_command_file()
            self._cleanup()
        if runner.status in ("canceled", "timeout"):
            kill_run_processes(self.run_id)  # what ansible-playbook forked outlives its stop
        return self._outcome(runner.status, runner.rc)

    # --- inputs

    def _inventory(self) -> str:
        """One host per VM, as YAML whose every string value is `!unsafe`: the values come from requests (names,
        groups…) and are never templates, so Ansible must not evaluate a `{{ … }}` a client put in one."""
        python = sys.executable
        hosts = {
            host: unsafe(vars_) | {"ansible_connection": "local", "ansible_python_interpreter": python}
            for host, vars_ in self.hostvars.items()
        }
        inventory = {"all": {"children": {self.group: {"hosts": hosts}}}}
        return yaml.dump(inventory, Dumper=InventoryDumper, sort_keys=False, width=1 << 16)

    def _environment(self) -> dict[str, str]:
        env = {
            "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
            "ANSIBLE_CONFIG": str(self.ansible_dir / "ansible.cfg"),
            "ANSIBLE_PIPELINING": "True",
            "ANSIBLE_HOST_KEY_CHECKING": "False",
            "ANSIBLE_RETRY_FILES_ENABLED": "False",
            "ANSIBLE_LOCALHOST_WARNING": "False",
            "ANSIBLE_DEPRECATION_WARNINGS": "False",
        }
        env.update(self.env)
        if self.nice > 0:
            env["PYTHONPATH"] = str(PLAYBOOK_SITE)
            env["PROVISIONER_PLAYBOOK_NICE"] = str(self.nice)
        return env

    # --- secrets in runner's own files

    def _on_status(self, status: dict[str, Any], **_: Any) -> None:
        # ansible-runner writes the child's whole environment (our PROXMOX_* secrets included) into
        # artifacts/<ident>/command before it spawns the process; scrub it as soon as the process runs.
        if status.get("status") == "running":
            self._scrub_command_file()

    def _scrub_command_file(self) -> None:
        path = self.private_data_dir / "artifacts" / "run" / "command"
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return
        path.write_text(json.dumps(self.redactor.data(record)), encoding="utf-8")

    # --- events

    def _on_event(self, event: dict[str, Any]) -> bool:
        if self._pgid is None and isinstance(event.get("pid"), int):
            self._note_process(event["pid"])
        data = event.get("event_data") or {}
        host = data.get("host")
        name = str(event.get("event") or "")
        if name == "playbook_on_stats":
            self._played_out = True
        outcome = self._hosts.get(host) if host else None
        res: dict[str, Any] = data["res"] if isinstance(data.get("res"), dict) else {}
        if outcome is not None:
            outcome.seen = True
            if res.get("changed"):
                outcome.changed = True
            from_vm_module = VM_MODULE in (data.get("resolved_action"), data.get("task_action"))
            if name == "runner_on_ok" and from_vm_module and res.get(ADDRESS):
                outcome.facts[ADDRESS] = str(res[ADDRESS])
            if name == "runner_on_ok" and isinstance(facts := res.get("ansible_facts"), dict):
                outcome.facts.update((key, facts[key]) for key in REPORTED_FACTS if key in facts)
            if name in FAILED_EVENTS and not data.get("ignore_errors"):
                outcome.ok = False
                outcome.failed_task = data.get("task")
                outcome.failed_action = data.get("resolved_action") or data.get("task_action")
                outcome.error = self.redactor.text(_failure_message(res))
        record = EventRecord(
            host=host,
            counter=int(event.get("counter") or 0),
            event=name,
            task=data.get("task"),
            changed=bool(res.get("changed")),
            stdout=self.redactor.text(str(event.get("stdout") or ""))[:STDOUT_LIMIT],
            data=self.redactor.data(_event_summary(data, res)),
        )
        with self._buffer_lock:
            self._buffer.append(record)
        self._flush()
        return False  # never write the event (with its module results) into the artifacts directory

    def _note_process(self, pid: int) -> None:
        try:
            pgid = os.getpgid(pid)
        except OSError:
            return
        if pgid != os.getpgid(0):  # pexpect starts ansible-playbook in a session of its own; never record ours
            self._pgid = pgid
            self.on_process(pgid)

    def _flush(self, force: bool = False) -> None:
        now = time.monotonic()
        with self._buffer_lock:
            if not self._buffer or (not force and now - self._last_flush < self.flush_every_s):
                return
            batch, self._buffer = self._buffer, []
            self._last_flush = now
        try:
            self.sink(batch)
        except Exception:
            log.exception("run %s: storing %d events failed", self.run_id, len(batch))

    # --- results

    def _outcome(self, status: str, rc: int | None) -> RunOutcome:
        explanation = None
        if status == "timeout":
            explanation = f"the playbook run exceeded {self.timeout_s} s and was stopped"
        elif status == "canceled":
            explanation = "the playbook run was canceled"
        for outcome in self._hosts.values():
            if status in ("timeout", "canceled") and outcome.ok:
                outcome.ok = False
                outcome.error = explanation
            elif status != "successful" and not self._played_out and outcome.ok:
                # No failure of its own was reported, but the run died (killed, crashed) before its play ended.
                outcome.ok, outcome.unfinished = False, True
                outcome.error = f"the playbook run ended before this VM was done ({status}, exit code {rc})"
            elif status == "failed" and not outcome.seen and outcome.ok:
                outcome.ok = False
                outcome.error = "the playbook failed before reaching this VM (see the job events)"
        return RunOutcome(status, rc, self._hosts, explanation)

    def _cleanup(self) -> None:
        """Keep only the artifacts (stdout, status, rc); the inventory holds per-VM seed URLs."""
        for name in ("inventory", "env", "project"):
            shutil.rmtree(self.private_data_dir / name, ignore_errors=True)


class Unsafe(str):
    """A string Ansible must not template (YAML `!unsafe`)."""


class InventoryDumper(yaml.SafeDumper):
    pass


InventoryDumper.add_representer(Unsafe, lambda dumper, value: dumper.represent_scalar("!unsafe", str(value)))


def unsafe(value: Any) -> Any:
    """value with every string in it (keys aside) an Unsafe one."""
    if isinstance(value, str):
        return Unsafe(value)
    if isinstance(value, dict):
        return {key: unsafe(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [unsafe(item) for item in value]
    return value


# What the playbook's processes may inherit from the service's environment: what finding programs, the locale and
# TLS trust need. Secrets (the service's tokens, the database URL) stay out; what Ansible needs is given explicitly.
INHERITED = frozenset(
    {"PATH", "HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR", "TERM"}
    | {"REQUESTS_CA_BUNDLE", "SSL_CERT_FILE", "SSL_CERT_DIR", "CURL_CA_BUNDLE", "VIRTUAL_ENV"}
)


def allowed_environment(prepared: dict[str, str], given: dict[str, str]) -> dict[str, str]:
    """ansible-runner's prepared environment (ours copied over os.environ, plus its callback plugin's settings)
    without what came from the service's own environment, except the INHERITED names."""
    ours = os.environ
    return {
        key: value
        for key, value in prepared.items()
        if key in given or key in INHERITED or key not in ours or ours[key] != value
    }


def _failure_message(res: dict[str, Any]) -> str:
    message = res.get("msg") or res.get("reason") or res.get("stderr") or "task failed"
    if not isinstance(message, str):
        message = json.dumps(message, default=str)
    return message[:2000]


def _event_summary(data: dict[str, Any], res: dict[str, Any]) -> dict[str, Any]:
    summary: dict[str, Any] = {k: data[k] for k in ("host", "play", "task", "task_action", "role") if data.get(k)}
    if res:
        summary["res"] = {k: res[k] for k in ("msg", "changed", "failed", "skipped", "vmid") if k in res}
    if data.get("ok") is not None and isinstance(data.get("ok"), dict):  # playbook_on_stats
        summary["stats"] = {k: data.get(k) for k in ("ok", "changed", "failures", "dark", "skipped")}
    return summary
